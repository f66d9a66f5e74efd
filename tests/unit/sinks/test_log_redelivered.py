# SPDX-License-Identifier: Apache-2.0
"""The log sink as an idempotent consumer (issue 11): an event sent again
flagged ``redelivered`` after its controller was killed between the
sink's write and the ledger's "done" is written only if its line is not
in the file already.  The kill is simulated: a real ledger (SQLite) marks
the batch in flight, the real sink writes it, and the ledger is dropped
before the "done"."""

import json
import os

import pytest

from guestha import records
from guestha.server import ledger as ledger_mod
from guestha.server.ledger import Ledger
from guestha.sinks import log as log_sink
from tests.support.clock import ManualClock

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


def fault(n=0):
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind="missed",
        reason="no answer %d" % n, action=None, detected_at=1.7e9 + n,
        interval_ms=500, misses=3)


def ids_in(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f]


@pytest.fixture
def wall():
    return ManualClock()


@pytest.fixture
def ledger_path(tmp_path):
    return str(tmp_path / "ledger.sqlite")


def controller(ledger_path, wall, server_id, hostname=None):
    ledger = Ledger(ledger_path, server_id, sinks=("log",), lease=30.0,
                    clock=wall, hostname=hostname or "host-" + server_id)
    ledger.register()
    return ledger


def killed_after_the_write(ledger, sink, events):
    """What a sink's worker does, up to the kill: in flight, written;
    never marked done."""
    mine = ledger.begin_sending("log", [e["id"] for e in events])
    sink.send_batch([e for e in events if e["id"] in mine])
    sink.close()


def send(sink, work):
    for event, targets in work:
        if "log" in targets:
            sink.send_batch([event])


def test_a_restarted_controller_does_not_write_its_in_doubt_batch_twice(
        tmp_path, ledger_path, wall):
    path = str(tmp_path / "events.jsonl")
    first = controller(ledger_path, wall, "ctl-a")
    written, waiting = [fault(1), fault(2)], fault(3)
    first.accept(written + [waiting])
    killed_after_the_write(first, log_sink.LogSink(path), written)

    # the same server_id again, after its lease ran out
    wall.advance(31)
    again = controller(ledger_path, wall, "ctl-a")
    work = again.pending(targets=["log"])
    assert [bool(e.get("redelivered")) for e, _ in work] == [True, True, False]
    sink = log_sink.LogSink(path)
    send(sink, work)

    assert ids_in(path) == [e["id"] for e in written + [waiting]]
    assert sink.skipped_redelivered == 2


def test_the_controller_taking_over_looks_in_the_dead_ones_file(
        tmp_path, ledger_path, wall):
    template = str(tmp_path / "events-{server_id}.jsonl")
    dead = controller(ledger_path, wall, "ctl-a")
    taker = controller(ledger_path, wall, "ctl-b")
    written, waiting = fault(1), fault(2)
    dead.accept([written, waiting])
    killed_after_the_write(
        dead, log_sink.LogSink(template, server_id="ctl-a"), [written])

    wall.advance(31)
    taker.renew()
    work = taker.claim_orphans()
    flagged, = [e for e, _ in work if e.get("redelivered")]
    assert flagged["redelivered_from"] == "ctl-a"
    sink = log_sink.LogSink(template, server_id="ctl-b")
    send(sink, work)

    # once over the two files, and the one that was only pending at the
    # taker's, unflagged
    assert ids_in(str(tmp_path / "events-ctl-a.jsonl")) == [written["id"]]
    assert ids_in(sink.path) == [waiting["id"]]
    assert sink.skipped_redelivered == 1


def test_an_in_doubt_event_the_sink_never_got_is_written_flagged(
        tmp_path, ledger_path, wall):
    path = str(tmp_path / "events.jsonl")
    first = controller(ledger_path, wall, "ctl-a")
    before, lost = fault(1), fault(2)
    first.accept([before, lost])
    first.begin_sending("log", [before["id"]])
    sink = log_sink.LogSink(path)
    sink.send(before)
    first.mark([(before["id"], "log", ledger_mod.DONE)])
    # killed after the in-flight mark, before the sink's write
    first.begin_sending("log", [lost["id"]])

    wall.advance(31)
    work = controller(ledger_path, wall, "ctl-a").pending(targets=["log"])
    sink = log_sink.LogSink(path)
    send(sink, work)

    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [(r["id"], r.get("redelivered")) for r in lines] == [
        (before["id"], None), (lost["id"], True)]
    assert lines[1]["redelivered_from"] == "ctl-a"
    assert sink.skipped_redelivered == 0


def test_a_torn_line_is_not_written_and_nothing_is_glued_to_it(tmp_path):
    """Killed in the middle of its write: the last line has no end.  The
    event is not there (it is written again) and the next line starts on
    a line of its own."""
    path = str(tmp_path / "events.jsonl")
    whole, torn = fault(1), fault(2)
    log_sink.LogSink(path).send(whole)
    line = json.dumps(dict(torn, logged_at="x"), separators=(",", ":"))
    with open(path, "a") as f:
        f.write(line[:len(line) // 2])

    sink = log_sink.LogSink(path)
    sink.send_batch([dict(whole, redelivered=True),
                     dict(torn, redelivered=True)])

    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert json.loads(lines[0])["id"] == whole["id"]
    assert lines[1] == line[:len(line) // 2]
    assert json.loads(lines[2])["id"] == torn["id"]
    assert lines[3:] == [""]
    assert sink.skipped_redelivered == 1


def test_only_unflagged_events_are_never_looked_for(tmp_path):
    """An unflagged event is written whatever the file holds: only a
    redelivery is in doubt (and the search costs nothing otherwise)."""
    path = str(tmp_path / "events.jsonl")
    event = fault(1)
    sink = log_sink.LogSink(path)
    sink.send(event)
    sink.send(event)
    assert ids_in(path) == [event["id"]] * 2


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_written_ids_reads_whole_lines_backwards(tmp_path, chunk):
    path = str(tmp_path / "events.jsonl")
    events = [fault(n) for n in range(20)]
    nested = fault(99)
    sink = log_sink.LogSink(path)
    sink.send_batch(events[:10])
    # an "id" that is not the record's own is not the record
    sink.send(dict(events[10], details={"id": nested["id"]}))
    sink.send_batch(events[11:])
    wanted = {events[0]["id"], events[15]["id"], nested["id"], "absent"}

    assert log_sink.written_ids(path, wanted, chunk=chunk) == {
        events[0]["id"], events[15]["id"]}


def test_written_ids_looks_no_further_than_its_bound(tmp_path):
    path = str(tmp_path / "events.jsonl")
    old, new = fault(1), fault(2)
    sink = log_sink.LogSink(path)
    sink.send(old)
    sink.send(new)
    with open(path, "rb") as f:
        last_line = len(f.read().split(b"\n")[1]) + 1
    assert last_line < os.path.getsize(path)
    assert log_sink.written_ids(path, {old["id"], new["id"]},
                                limit=last_line) == {new["id"]}
    assert log_sink.written_ids(str(tmp_path / "none"), {old["id"]}) == set()


def test_the_keys_are_the_ledgers():
    assert log_sink.REDELIVERED == ledger_mod.REDELIVERED
    assert log_sink.REDELIVERED_FROM == ledger_mod.REDELIVERED_FROM


def test_a_path_per_controller_needs_the_server_id(tmp_path):
    with pytest.raises(ValueError):
        log_sink.LogSink(str(tmp_path / "events-{server_id}.jsonl"))
    sink = log_sink.LogSink(str(tmp_path / "e-{server_id}.jsonl"),
                            server_id="ctl-1")
    assert sink.path == str(tmp_path / "e-ctl-1.jsonl")
    assert sink.path_of("ctl-2") == str(tmp_path / "e-ctl-2.jsonl")
