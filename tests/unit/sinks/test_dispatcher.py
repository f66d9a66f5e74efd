# SPDX-License-Identifier: Apache-2.0
"""The sink dispatcher with fake sinks: retries and back-off on a fake
clock, the bounds (attempts, age, queue size), rejections, batches,
per-sink isolation with real threads, and stop.

The tests with threads time nothing: they wait on a condition the fake
sinks notify, and show that one sink does not delay another by holding
it until the other is done."""

import logging
import threading
import time

import pytest

from guestha import records
from guestha.sinks import base
from tests.support.clock import ManualClock

#: notified whenever a fake sink is called or delivers
CHANGED = threading.Condition()

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


class FakeSink(base.FaultSink):
    """Fails (``SinkUnavailable``) ``fail`` times, then delivers; a
    ``script`` of exceptions (or None) overrides that per attempt."""

    def __init__(self, name, fail=0, script=(), max_batch=1,
                 event_types=None, reject_ids=()):
        self.name = name
        self.fail = fail
        self.script = list(script)
        self.max_batch = max_batch
        if event_types is not None:
            self.event_types = frozenset(event_types)
        self.reject_ids = set(reject_ids)
        self.calls = []       # ids of each attempt
        self.delivered = []   # ids, in order
        self.closed = False
        self.block = None     # threading.Event: hold every send until set

    def send_batch(self, events):
        try:
            self._send_batch(events)
        finally:
            with CHANGED:
                CHANGED.notify_all()

    def _send_batch(self, events):
        ids = [e["id"] for e in events]
        with CHANGED:
            self.calls.append(ids)
            CHANGED.notify_all()
        if self.block is not None:
            self.block.wait()
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        if self.fail:
            self.fail -= 1
            raise base.SinkUnavailable(sink=self.name, reason="down")
        bad = self.reject_ids.intersection(ids)
        if bad:
            raise base.SinkRejected(sink=self.name, reason="bad %s" % bad)
        self.delivered.extend(ids)

    def send(self, event):
        self.send_batch([event])

    def close(self):
        self.closed = True


def fault(n=0):
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind="missed",
        reason="fault %d" % n, action="reboot", detected_at=1.7e9 + n,
        interval_ms=1000, misses=2)


def make(sinks, clock=None, **kwargs):
    results = []
    kwargs.setdefault("rng", lambda: 0.5)     # jitter factor exactly 1
    kwargs.setdefault("retry_min", 1.0)
    kwargs.setdefault("retry_max", 60.0)
    dispatcher = base.SinkDispatcher(
        sinks, clock=clock or ManualClock(),
        on_result=lambda e, s, state: results.append((e["id"], s, state)),
        **kwargs)
    return dispatcher, results


def test_delivers_to_every_sink_in_order():
    a, b = FakeSink("a"), FakeSink("b", max_batch=10)
    d, results = make([a, b])
    events = [fault(n) for n in range(3)]
    for e in events:
        d.submit(e)
    ids = [e["id"] for e in events]

    assert [d.step("a") for _ in range(3)] == [0.0, 0.0, None]
    assert d.step("b") is None           # one batch of three
    assert a.delivered == ids and a.calls == [[i] for i in ids]
    assert b.delivered == ids and b.calls == [ids]
    assert sorted(results) == sorted(
        [(i, "a", base.DONE) for i in ids] + [(i, "b", base.DONE)
                                              for i in ids])
    assert d.stats()["a"]["sent"] == 3 and d.stats()["a"]["waiting"] == 0


def test_fails_n_times_then_succeeds_with_exponential_backoff():
    clock = ManualClock()
    sink = FakeSink("s", fail=3)
    d, results = make([sink], clock=clock)
    e = fault()
    d.submit(e)

    delays = []
    for _ in range(3):
        delays.append(d.step("s"))
        # Too early: nothing is sent, the remaining wait is returned.
        assert d.step("s") == pytest.approx(delays[-1])
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0]
    assert d.step("s") is None
    assert sink.delivered == [e["id"]] and len(sink.calls) == 4
    assert results == [(e["id"], "s", base.DONE)]
    stats = d.stats()["s"]
    assert (stats["failed_attempts"], stats["consecutive_failures"],
            stats["last_error"]) == (3, 0, None)


def test_backoff_is_capped_and_jittered():
    sink = FakeSink("s")
    d, _ = make([sink], retry_min=1.0, retry_max=10.0, rng=lambda: 0.0)
    assert d.backoff_delay(1) == pytest.approx(0.8)
    assert d.backoff_delay(30) == pytest.approx(8.0)
    d2, _ = make([FakeSink("s")], retry_min=1.0, retry_max=10.0,
                 rng=lambda: 1.0)
    assert d2.backoff_delay(4) == pytest.approx(9.6)
    assert d2.backoff_delay(5) == pytest.approx(12.0)


def test_gives_up_after_max_attempts_and_logs_the_id(caplog):
    clock = ManualClock()
    sink = FakeSink("vitrage", fail=100)
    d, results = make([sink], clock=clock, max_attempts=3)
    e = fault()
    d.submit(e)
    with caplog.at_level(logging.ERROR, logger="guestha.sinks.base"):
        for _ in range(3):
            clock.advance(d.step("vitrage"))
    assert results == [(e["id"], "vitrage", base.DROPPED)]
    assert d.step("vitrage") is None      # nothing left to send
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert e["id"] in errors[0] and "vitrage" in errors[0]
    assert INSTANCE in errors[0] and "3 attempt" in errors[0]
    assert d.stats()["vitrage"]["dropped_gave_up"] == 1


def test_gives_up_on_events_older_than_give_up_after():
    clock = ManualClock()
    sink = FakeSink("s", fail=100)
    d, results = make([sink], clock=clock, max_attempts=100,
                      give_up_after=30.0, retry_max=20.0)
    old, new = fault(1), fault(2)
    d.submit(old)
    clock.advance(25)
    d.submit(new)
    sink.max_batch = 2
    while not results:
        clock.advance(d.step("s"))
    # The old one went at its first failed attempt past 30 s; the new one
    # is still being tried.
    assert results == [(old["id"], "s", base.DROPPED)]
    assert d.stats()["s"]["waiting"] == 1
    sink.fail = 0
    while d.step("s") is not None:
        clock.advance(60)
    assert sink.delivered == [new["id"]]


def test_retries_keep_the_order_of_a_sink():
    clock = ManualClock()
    sink = FakeSink("s", fail=2)
    d, _ = make([sink], clock=clock)
    events = [fault(n) for n in range(4)]
    for e in events:
        d.submit(e)
    for _ in range(20):
        delay = d.step("s")
        if delay is None:
            break
        clock.advance(delay)
    assert sink.delivered == [e["id"] for e in events]


def test_rejected_event_is_dropped_at_once(caplog):
    sink = FakeSink("s", script=[base.SinkRejected(sink="s", reason="no")])
    d, results = make([sink])
    e1, e2 = fault(1), fault(2)
    d.submit(e1)
    d.submit(e2)
    with caplog.at_level(logging.ERROR, logger="guestha.sinks.base"):
        assert d.step("s") == 0.0
    assert d.step("s") is None
    assert results == [(e1["id"], "s", base.DROPPED),
                       (e2["id"], "s", base.DONE)]
    assert any(e1["id"] in r.getMessage() for r in caplog.records)
    assert d.stats()["s"]["dropped_rejected"] == 1


def test_a_rejected_batch_is_retried_one_by_one():
    events = [fault(n) for n in range(4)]
    sink = FakeSink("s", max_batch=10, reject_ids=[events[2]["id"]])
    d, results = make([sink])
    for e in events:
        d.submit(e)
    while d.step("s") is not None:
        pass
    ids = [e["id"] for e in events]
    assert sink.calls[0] == ids
    assert sink.calls[1:] == [[i] for i in ids]
    assert sink.delivered == [ids[0], ids[1], ids[3]]
    assert (ids[2], "s", base.DROPPED) in results


def test_full_queue_drops_the_oldest_with_an_error(caplog):
    sink = FakeSink("s")
    d, results = make([sink], queue_size=2)
    events = [fault(n) for n in range(3)]
    with caplog.at_level(logging.ERROR, logger="guestha.sinks.base"):
        for e in events:
            d.submit(e)      # never blocks
    assert results == [(events[0]["id"], "s", base.DROPPED)]
    assert any(events[0]["id"] in r.getMessage() and "queue full" in
               r.getMessage() for r in caplog.records)
    while d.step("s") is not None:
        pass
    assert sink.delivered == [events[1]["id"], events[2]["id"]]
    assert d.stats()["s"]["dropped_overflow"] == 1


def test_events_a_sink_does_not_take_are_done_for_it():
    picky = FakeSink("picky", event_types=["recovery"])
    d, results = make([picky])
    e = fault()
    d.submit(e)
    assert d.step("picky") is None
    assert picky.calls == []
    assert results == [(e["id"], "picky", base.DONE)]
    assert d.stats()["picky"]["skipped"] == 1


def test_submit_to_named_sinks_only_and_unknown_names_are_dropped(caplog):
    a, b = FakeSink("a"), FakeSink("b")
    d, results = make([a, b])
    e = fault()
    with caplog.at_level(logging.ERROR, logger="guestha.sinks.base"):
        d.submit(e, sinks=["b", "gone"])
    assert (e["id"], "gone", base.DROPPED) in results
    assert d.step("a") is None and d.step("b") is None
    assert a.calls == [] and b.delivered == [e["id"]]


def test_a_sink_bug_is_retried_like_an_outage(caplog):
    clock = ManualClock()
    sink = FakeSink("s", script=[TypeError("bug")])
    d, results = make([sink], clock=clock)
    e = fault()
    d.submit(e)
    with caplog.at_level(logging.ERROR, logger="guestha.sinks.base"):
        clock.advance(d.step("s"))
    assert d.step("s") is None
    assert sink.delivered == [e["id"]]
    assert any(r.exc_info for r in caplog.records)


def test_distinct_names_and_sane_bounds_are_required():
    with pytest.raises(ValueError):
        base.SinkDispatcher([FakeSink("a"), FakeSink("a")])
    with pytest.raises(ValueError):
        base.SinkDispatcher([FakeSink("a")], retry_min=5, retry_max=1)


# -- with threads ---------------------------------------------------------

def wait_for(predicate):
    # the timeout only ends a test that would hang: nothing is timed
    with CHANGED:
        assert CHANGED.wait_for(predicate, timeout=30), "timed out"


def test_a_sink_that_is_always_down_does_not_delay_another():
    down = FakeSink("down", fail=10 ** 9)
    up = FakeSink("up")
    # down's first attempt ends only once up has delivered everything:
    # if down could delay up, this would never end
    up_done = threading.Event()
    original = down._send_batch

    def held_until_up_is_done(events):
        if len(down.calls) == 0:
            assert up_done.wait(30), "up was delayed by down"
        original(events)
    down._send_batch = held_until_up_is_done
    d, _ = make([down, up], clock=time.monotonic, retry_min=0.01,
                retry_max=0.05, max_attempts=10 ** 6, rng=lambda: 0.5)
    d.start()
    try:
        events = [fault(n) for n in range(50)]
        for e in events:
            d.submit(e)
        wait_for(lambda: len(up.delivered) == 50)
        up_done.set()
        wait_for(lambda: len(down.calls) >= 2)
        assert down.delivered == []
        assert d.stats()["down"]["waiting"] == 50
    finally:
        d.stop(timeout=0.2)


def test_a_hung_sink_does_not_delay_another_and_submit_never_blocks():
    hung, up = FakeSink("hung"), FakeSink("up")
    hung.block = threading.Event()
    d, _ = make([hung, up], clock=time.monotonic, queue_size=10)
    d.start()
    try:
        # hung never returns before the finally: had submit waited for
        # it, this loop would not end
        for n in range(100):
            d.submit(fault(n))
        wait_for(lambda: len(up.delivered) >= 10)
        assert d.stats()["hung"]["dropped_overflow"] >= 89
    finally:
        hung.block.set()
        d.stop(timeout=1.0)


def test_stop_drains_then_closes_the_sinks():
    slow = FakeSink("slow", max_batch=5)
    d, results = make([slow], clock=time.monotonic)
    d.start()
    ids = []
    for n in range(20):
        e = fault(n)
        ids.append(e["id"])
        d.submit(e)
    assert d.stop(timeout=5.0) is True
    assert slow.delivered == ids and slow.closed


def test_stop_leaves_undeliverable_events_owed(caplog):
    down = FakeSink("down", fail=10 ** 9)
    d, results = make([down], clock=time.monotonic, retry_min=0.01,
                      retry_max=0.02)
    d.start()
    e = fault()
    d.submit(e)
    wait_for(lambda: down.calls)
    with caplog.at_level(logging.WARNING, logger="guestha.sinks.base"):
        assert d.stop(timeout=0.2) is False
    assert results == []          # neither done nor dropped: still owed
    assert any(e["id"] in r.getMessage() for r in caplog.records)
    assert down.closed
