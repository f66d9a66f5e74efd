# SPDX-License-Identifier: Apache-2.0
"""The log sink on real files, behind the real dispatcher and its thread,
loaded through stevedore from the default configuration, while the real
logrotate rotates the file: every event lands exactly once, in order,
across the rotated files and the new one."""

import glob
import json
import os
import shutil
import subprocess
import threading
import time

from oslo_config import cfg
import pytest

from guestha.conf import sinks as sinks_conf
from guestha import records
from guestha.sinks import base
from guestha.sinks import log as log_sink

pytestmark = pytest.mark.functional

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"

LOGROTATE_CONF = """\
%(path)s {
    rotate 10
    missingok
    nocompress
    create 0640
}
"""


def make_events(count):
    events = []
    for n in range(count):
        f = records.make_fault(
            instance=INSTANCE, host="compute-1", kind="missed",
            reason="fault %d" % n, action=None, detected_at=1.7e9 + n,
            interval_ms=1000, misses=2)
        events += [f, records.make_recovery(
            instance=INSTANCE, host="compute-1", fault_id=f["id"],
            recovered_at=1.7e9 + n + 0.5)]
    return events


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f]


@pytest.fixture
def dispatcher(tmp_path):
    conf = cfg.ConfigOpts()
    sinks_conf.register_opts(conf)
    conf([], project="guestha-test")
    conf.set_override("log_path", str(tmp_path / "log" / "events.jsonl"),
                      group="sinks")
    d = base.SinkDispatcher.from_conf(conf)       # [sinks] enabled = log
    assert isinstance(d.sink("log"), log_sink.LogSink)
    d.start()
    yield d
    d.stop(timeout=10)


@pytest.mark.skipif(shutil.which("logrotate") is None,
                    reason="logrotate is not installed")
def test_every_event_once_and_in_order_across_logrotate(tmp_path,
                                                        dispatcher):
    path = str(tmp_path / "log" / "events.jsonl")
    rotate_conf = tmp_path / "logrotate.conf"
    rotate_conf.write_text(LOGROTATE_CONF % {"path": path})
    events = make_events(1500)

    def produce():
        for n, event in enumerate(events):
            dispatcher.submit(event)
            if n % 100 == 0:
                time.sleep(0.01)

    producer = threading.Thread(target=produce)
    started = time.monotonic()
    producer.start()
    rotations = 0
    while producer.is_alive() or rotations < 2:
        time.sleep(0.05)
        if os.path.exists(path):
            subprocess.run(["logrotate", "-f", "-s",
                            str(tmp_path / "state"), str(rotate_conf)],
                           check=True)
            rotations += 1
    producer.join()
    assert dispatcher.stop(timeout=10)
    took = time.monotonic() - started

    rotated = sorted(glob.glob(path + ".*"),
                     key=lambda p: -int(p.rsplit(".", 1)[1]))
    assert len(rotated) >= 2
    written = []
    for p in rotated + [path]:
        written += read_ids(p)
    assert written == [e["id"] for e in events]
    assert dispatcher.sink("log").reopened >= 2
    stats = dispatcher.stats()["log"]
    assert stats["sent"] == len(events)
    assert stats["failed_attempts"] == 0
    print("%d events, %d rotations, %.2f s" % (len(events), rotations,
                                               took))


def test_a_missing_directory_is_created_and_a_lost_one_waited_for(
        tmp_path, dispatcher):
    path = tmp_path / "log" / "events.jsonl"
    first, second = make_events(1)
    dispatcher.submit(first)
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_ids(path) == [first["id"]]
    # The directory goes away and a file stands in its way: the sink
    # retries (back-off) until the place is writable again.
    shutil.rmtree(path.parent)
    path.parent.write_text("not a directory")
    dispatcher.submit(second)
    deadline = time.monotonic() + 5
    while (dispatcher.stats()["log"]["failed_attempts"] == 0
           and time.monotonic() < deadline):
        time.sleep(0.01)
    path.parent.unlink()
    assert dispatcher.stop(timeout=10)
    assert read_ids(path) == [second["id"]]
