# SPDX-License-Identifier: Apache-2.0
"""The log sink: JSON lines, one per event, batches, rotation, errors."""

import json
import os

import pytest

from guestha import records
from guestha.sinks import base
from guestha.sinks import log as log_sink

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


def fault(n=0):
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind="unhealthy",
        reason="db down \u00e9 %d" % n, action="reboot",
        detected_at=1.7e9 + n, interval_ms=500, misses=0)


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_one_json_object_per_event_with_a_timestamp(tmp_path):
    path = tmp_path / "sub" / "events.jsonl"
    sink = log_sink.LogSink(str(path), wallclock=lambda: 1.8e9)
    events = [fault(n) for n in range(3)]
    sink.send(events[0])
    sink.send_batch(events[1:])
    sink.close()

    lines = read(path)
    assert [line["id"] for line in lines] == [e["id"] for e in events]
    for line, event in zip(lines, events):
        assert line.pop("logged_at") == "2027-01-15T08:00:00.000000+00:00"
        assert line == event
    assert oct(os.stat(path).st_mode & 0o777) == oct(log_sink.FILE_MODE)


def test_takes_every_record_type(tmp_path):
    sink = log_sink.LogSink(str(tmp_path / "e.jsonl"))
    assert sink.accepts({"type": "action"})
    assert sink.accepts({"type": "refusal"})
    assert not sink.accepts("junk")


def test_fsync_once_per_batch(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(log_sink.os, "fsync",
                        lambda fd: calls.append(fd) or real_fsync(fd))
    sink = log_sink.LogSink(str(tmp_path / "e.jsonl"))
    sink.send_batch([fault(n) for n in range(100)])
    assert len(calls) == 1
    log_sink.LogSink(str(tmp_path / "f.jsonl"), fsync=False).send(fault())
    assert len(calls) == 1


def test_reopens_after_rotation_and_removal(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = log_sink.LogSink(str(path))
    first, second, third = fault(1), fault(2), fault(3)
    sink.send(first)
    os.rename(path, tmp_path / "events.jsonl.1")     # logrotate's create
    sink.send(second)
    os.unlink(path)
    sink.send(third)
    assert [e["id"] for e in read(tmp_path / "events.jsonl.1")] == [
        first["id"]]
    assert [e["id"] for e in read(path)] == [third["id"]]
    assert sink.reopened == 2


def test_copytruncate_keeps_appending(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = log_sink.LogSink(str(path))
    sink.send(fault(1))
    with open(path, "r+") as f:
        f.truncate(0)
    sink.send(fault(2))
    assert len(read(path)) == 1
    assert sink.reopened == 0


def test_an_unwritable_place_is_unavailable_then_recovers(tmp_path):
    blocker = tmp_path / "dir"
    blocker.write_text("a file where the directory should be")
    sink = log_sink.LogSink(str(blocker / "events.jsonl"))
    with pytest.raises(base.SinkUnavailable):
        sink.send(fault())
    blocker.unlink()
    sink.send(fault())
    assert len(read(blocker / "events.jsonl")) == 1


def test_a_record_that_is_not_json_is_rejected(tmp_path):
    sink = log_sink.LogSink(str(tmp_path / "e.jsonl"))
    with pytest.raises(base.SinkRejected):
        sink.send({"type": "fault", "id": "x", "details": {1, 2}})
