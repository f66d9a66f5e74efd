# SPDX-License-Identifier: Apache-2.0
"""What a fault report costs the agent's I/O loop: ``Reporter.submit``.

    .venv/bin/python benchmarks/reporter_submit.py
    .venv/bin/python benchmarks/reporter_submit.py --events 20000 --check

A benchmark, not a test: the unit tests of the reporter time nothing, and
the timing targets are here.  The I/O loop calls ``submit`` for every
fault and recovery, so a slow submit delays every guest's challenge.  It
runs the real :class:`~guestha.agent.reporter.Reporter` and
:class:`~guestha.agent.outbox.Outbox` (sqlite in WAL mode, in a temporary
directory, or ``--dir``) with its sender thread, against an in-process
controller API, and measures the latency of ``submit`` (p50, p99, max)
while:

1. **bus up**: every call is answered at once;
2. **call hanging**: a ``report_events`` call hangs (as oslo.messaging's
   first call does while RabbitMQ is down), so events pile up on disk;
3. **disk full**: every write to the outbox fails as sqlite fails on a
   full disk (``database or disk is full``, injected at the outbox), so
   ``submit`` holds the events in memory; the bus is up and the held
   events are delivered from memory;
4. **disk back**: the writes succeed again while ``--events`` (at most
   10,000) are held (the bus down, so they stay held until written): the
   sender writes them in chunks under the lock ``submit`` takes, so a
   ``submit`` waits for one chunk at most.  Events are submitted every
   0.5 ms all along.  Also measured: how long after the disk came back
   every held event was on disk.

Targets (``--check`` exits 1 if one is missed): submit p99 under 5 ms and
max under 50 ms in every phase (before issue 8 a unit test asserted the
max under 50 ms while a call hangs; a loaded 2-core machine made it
flake), and the held events written within ``disk_retry`` (1 s) plus the
time to write them.  It prints a table and, last, one line of JSON.
"""

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks.support import percentile  # noqa: E402
from guestha.agent.outbox import Outbox  # noqa: E402
from guestha.agent.reporter import Reporter  # noqa: E402
from guestha import records  # noqa: E402
from guestha.testing.wait import wait_until  # noqa: E402
import oslo_messaging  # noqa: E402

P99_TARGET_MS = 5.0
MAX_TARGET_MS = 50.0


class Controller(object):
    """report_events answered in-process; ``hang`` holds each call until
    it is cleared, ``down`` fails it as an unreachable broker does."""

    def __init__(self):
        self.hang = threading.Event()
        self.released = threading.Event()
        self.released.set()
        self.down = False
        self.accepted = 0

    def report_events(self, events, timeout=None):
        if self.hang.is_set():
            self.released.wait()
        if self.down:
            raise oslo_messaging.MessageDeliveryFailure("broker down")
        self.accepted += len(events)
        return {"accepted": [e["id"] for e in events], "rejected": {}}

    def agent_alive(self, **kwargs):
        pass


class FullDisk(Outbox):
    """An outbox whose writes fail while ``full`` is set."""

    full = False

    def put_many(self, entries):
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().put_many(entries)

    def ack(self, rowids):
        if self.full and rowids:
            raise sqlite3.OperationalError("database or disk is full")
        return super().ack(rowids)


def fault(n):
    return records.make_fault(
        instance=str(uuid.UUID(int=n % 5000)), host="bench", kind="missed",
        reason="benchmark %d" % n, action=None, detected_at=time.time(),
        interval_ms=1000, misses=3)


def submit_all(reporter, events):
    took = []
    for event in events:
        start = time.perf_counter()
        reporter.submit(event)
        took.append(time.perf_counter() - start)
    return summary(took)


def summary(took):
    return {"events": len(took),
            "p50_ms": round(1e3 * percentile(took, 50), 3),
            "p99_ms": round(1e3 * percentile(took, 99), 3),
            "max_ms": round(1e3 * max(took), 3)}


def settled(predicate, what):
    """Wait (five minutes at most) for the reporter to get to ``what``."""
    wait_until(predicate, 300.0, what, interval=0.01)


def run(directory, n):
    box = FullDisk(os.path.join(directory, "outbox.sqlite"), 10 * n + 1000)
    api = Controller()
    reporter = Reporter(box, api, backoff=(0.05, 0.2))
    reporter.start()
    events = (fault(i) for i in range(10 ** 9))
    results = {}
    try:
        results["bus up"] = submit_all(reporter, [next(events)
                                                  for _ in range(n)])
        settled(lambda: reporter.stats()["pending"] == 0, "nothing pending")

        api.released.clear()
        api.hang.set()
        reporter.submit(next(events))
        settled(lambda: reporter.stats()["in_flight_s"] is not None,
                "a call in flight")
        results["call hanging"] = submit_all(
            reporter, [next(events) for _ in range(n)])
        api.hang.clear()
        api.released.set()
        settled(lambda: reporter.stats()["pending"] == 0, "nothing pending")

        box.full = True
        results["disk full"] = submit_all(reporter, [next(events)
                                                     for _ in range(n)])
        settled(lambda: reporter.stats()["pending"] == 0, "nothing pending")
        box.full = False
        settled(lambda: reporter.stats()["disk_error"] is None,
                "the disk error cleared")

        # hold --events (at most the reporter's bound), the bus down so
        # they stay held, then free the disk and submit meanwhile
        api.down = True
        box.full = True
        held = min(n, 10000)
        for _ in range(held):
            reporter.submit(next(events))
        freed = time.monotonic()
        box.full = False
        # submit all along the writing of the held events, as faults
        # would keep coming (one every 0.5 ms)
        took = []
        written = None
        while written is None or len(took) < n:
            start = time.perf_counter()
            reporter.submit(next(events))
            took.append(time.perf_counter() - start)
            if written is None and reporter.stats()["disk_error"] is None:
                written = time.monotonic()
                while_writing = summary(took)
            time.sleep(0.0005)
        results["disk back"] = summary(took)
        results["disk back"]["while_writing"] = while_writing
        results["disk back"]["held"] = held
        results["disk back"]["written_after_s"] = round(
            written - freed, 3)
        api.down = False
    finally:
        reporter.stop(timeout=10)
        box.close()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10000,
                        help="events submitted in each phase")
    parser.add_argument("--dir", help="directory of the outbox (default: "
                        "a temporary directory)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a target is missed")
    args = parser.parse_args()
    if args.dir:
        results = run(args.dir, args.events)
    else:
        with tempfile.TemporaryDirectory(prefix="guestha-bench-") as d:
            results = run(d, args.events)

    missed = []
    print("%-14s %7s %9s %9s %9s" % ("phase", "events", "p50 ms", "p99 ms",
                                     "max ms"))
    for phase, r in results.items():
        print("%-14s %7d %9.3f %9.3f %9.3f" % (phase, r["events"],
                                               r["p50_ms"], r["p99_ms"],
                                               r["max_ms"]))
        if r["p99_ms"] > P99_TARGET_MS:
            missed.append("%s: p99 %.3f ms > %.1f"
                          % (phase, r["p99_ms"], P99_TARGET_MS))
        if r["max_ms"] > MAX_TARGET_MS:
            missed.append("%s: max %.3f ms > %.1f"
                          % (phase, r["max_ms"], MAX_TARGET_MS))
    back = results["disk back"]
    print("%d held events on disk %.3f s after the disk came back; "
          "meanwhile %d submits: p50 %.3f ms, p99 %.3f ms, max %.3f ms"
          % (back["held"], back["written_after_s"],
             back["while_writing"]["events"],
             back["while_writing"]["p50_ms"],
             back["while_writing"]["p99_ms"],
             back["while_writing"]["max_ms"]))
    for line in missed:
        print("target missed: " + line)
    print(json.dumps(results))
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
