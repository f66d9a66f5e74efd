# SPDX-License-Identifier: Apache-2.0
"""The reporter against a fake controller API on a fake clock: order,
batching, partial answers, back-off, restarts, a full or unwritable outbox,
and best-effort relays."""

import logging
import sqlite3
import threading
import uuid

import kombu.exceptions
import oslo_messaging
import pytest

from guestha.agent.outbox import Outbox
from guestha.agent import reporter as reporter_mod
from guestha.agent.reporter import Reporter
from guestha import records
from guestha.rpc import api as rpc_api
from tests.support.clock import ManualClock
from tests.unit.agent.castrecorder import CastRecorder

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


class FakeAPI(CastRecorder):
    """Answers report_events from a script: each entry is an exception to
    raise, a callable ``f(ids) -> answer``, or None (accept all); when the
    script is used up, accepts all."""

    def __init__(self, script=()):
        super().__init__()
        self.script = list(script)
        self.calls = []        # the ids of every report_events call
        self.timeouts = []
        self.accepted = []     # ids, in the order accepted
        self.during_call = None

    def report_events(self, events, timeout=None):
        ids = [e["id"] for e in events]
        self.calls.append(ids)
        self.timeouts.append(timeout)
        if self.during_call:
            self.during_call()
        step = self.script.pop(0) if self.script else None
        if isinstance(step, BaseException):
            raise step
        answer = step(ids) if step else {"accepted": ids, "rejected": {}}
        self.accepted.extend(answer["accepted"])
        return answer


def fault(n):
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind="missed",
        reason="event %d" % n, action=None, detected_at=1.7e9 + n,
        interval_ms=1000, misses=1)


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    yield box
    box.close()


def make(outbox, api, **kwargs):
    kwargs.setdefault("clock", ManualClock(100.0))
    kwargs.setdefault("rng", lambda: 0.5)  # jitter factor exactly 1
    return Reporter(outbox, api, **kwargs)


#: Longer than any wait of these tests (the longest back-off with its
#: jitter, the disk's retry).
LATER = 3600.0


def due_step(reporter, clock):
    """The sender thread's :meth:`~Reporter.step` once everything it waits
    for is due: it retries the disk if that fails, and makes a delivery
    attempt.

    :returns: what the step returns: 0 if more events are pending, None if
        nothing is (wait for a submit), the back-off after a failed
        delivery, at most ``disk_retry`` while the disk fails.
    """
    clock.advance(LATER)
    return reporter.step()


def drain(reporter, clock, limit=100):
    delays = []
    for _ in range(limit):
        delay = due_step(reporter, clock)
        delays.append(delay)
        if delay is None:
            return delays
    raise AssertionError("still delivering after %d attempts" % limit)


def test_delivers_in_order_in_batches(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(outbox, api, clock=clock, batch=100, timeout=7)
    events = [fault(n) for n in range(250)]
    for e in events:
        rep.submit(e)

    assert drain(rep, clock) == [0.0, 0.0, None]
    assert [len(c) for c in api.calls] == [100, 100, 50]
    assert api.accepted == [e["id"] for e in events]
    assert api.timeouts == [7, 7, 7]
    stats = rep.stats()
    assert (stats["pending"], stats["delivered"], stats["retries"]) == (
        0, 250, 0)
    assert stats["last_error"] is None


def test_nothing_to_send_means_no_call(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(outbox, api, clock=clock)
    assert due_step(rep, clock) is None
    assert api.calls == []


def test_partial_acceptance_acks_exactly_the_accepted(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI([lambda ids: {"accepted": ids[:30], "rejected": {}}])
    rep = make(outbox, api, clock=clock, batch=100, backoff=(0.5, 30.0))
    events = [fault(n) for n in range(100)]
    for e in events:
        rep.submit(e)

    # progress, so a short pause, not a growing back-off
    assert due_step(rep, clock) == 0.5
    assert len(outbox) == 70
    assert rep.stats()["last_error"] == "the controller accepted 30 of 100 " \
                                        "events"
    assert drain(rep, clock) == [None]
    assert api.calls[1] == [e["id"] for e in events[30:]]
    assert api.accepted == [e["id"] for e in events]
    assert rep.stats()["delivered"] == 100


def test_accepted_ids_outside_the_batch_are_ignored(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI([lambda ids: {"accepted": [str(uuid.uuid4()), ids[1]],
                                "rejected": {}}])
    rep = make(outbox, api, clock=clock)
    events = [fault(n) for n in range(3)]
    for e in events:
        rep.submit(e)

    due_step(rep, clock)
    assert [e["id"] for _, e in outbox.peek(10)] == [events[0]["id"],
                                                     events[2]["id"]]
    assert rep.stats()["delivered"] == 1


def test_nothing_accepted_backs_off_like_a_failure(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI([lambda ids: {"accepted": [], "rejected": {}}] * 2)
    rep = make(outbox, api, clock=clock, backoff=(0.5, 30.0))
    rep.submit(fault(0))
    assert due_step(rep, clock) == 0.5
    assert due_step(rep, clock) == 1.0
    assert due_step(rep, clock) is None
    assert rep.stats()["retries"] == 2


def test_rejected_events_are_dropped_and_logged(outbox, caplog):
    clock = ManualClock(100.0)
    events = [fault(n) for n in range(3)]
    api = FakeAPI([lambda ids: {"accepted": [ids[0], ids[2]],
                                "rejected": {ids[1]: "unknown version"}}])
    rep = make(outbox, api, clock=clock)
    for e in events:
        rep.submit(e)

    with caplog.at_level(logging.ERROR, logger=reporter_mod.__name__):
        assert due_step(rep, clock) is None
    assert len(outbox) == 0
    stats = rep.stats()
    assert (stats["delivered"], stats["rejected"]) == (2, 1)
    [record] = caplog.records
    assert events[1]["id"] in record.getMessage()
    assert INSTANCE in record.getMessage()


@pytest.mark.parametrize("error", [
    oslo_messaging.MessagingTimeout("no answer"),
    oslo_messaging.MessageDeliveryFailure("broker down"),
    kombu.exceptions.OperationalError("[Errno 111] Connection refused"),
    ConnectionResetError(104, "reset"),
    rpc_api.InvalidAnswer("no accepted list"),
])
def test_transport_errors_are_retried(outbox, error):
    clock = ManualClock(100.0)
    api = FakeAPI([error])
    rep = make(outbox, api, clock=clock)
    e = fault(0)
    rep.submit(e)

    assert due_step(rep, clock) == 0.5
    assert len(outbox) == 1
    assert rep.stats()["last_error"].startswith(type(error).__name__)
    assert due_step(rep, clock) is None
    assert api.calls == [[e["id"]], [e["id"]]]
    assert rep.stats()["last_error"] is None


def test_backoff_doubles_to_its_cap_and_resets_after_a_success(outbox):
    clock = ManualClock(100.0)
    timeout = oslo_messaging.MessagingTimeout("no answer")
    api = FakeAPI([timeout] * 8 + [None, timeout])
    rep = make(outbox, api, clock=clock, backoff=(0.5, 30.0))
    rep.submit(fault(0))

    delays = [due_step(rep, clock) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert rep.stats()["retries"] == 8
    assert due_step(rep, clock) is None     # delivered

    rep.submit(fault(1))
    assert due_step(rep, clock) == 0.5      # back to the first step
    assert rep.stats()["retries"] == 9


@pytest.mark.parametrize("rng, factor", [(0.0, 0.8), (1.0, 1.2)])
def test_backoff_jitter_is_twenty_percent_either_way(outbox, rng, factor):
    clock = ManualClock(100.0)
    api = FakeAPI([oslo_messaging.MessagingTimeout("no answer")] * 10)
    rep = make(outbox, api, clock=clock, backoff=(0.5, 30.0),
               rng=lambda: rng)
    rep.submit(fault(0))
    delays = [due_step(rep, clock) for _ in range(10)]
    # the waits after 1, 3 and 10 failed attempts
    assert [delays[0], delays[2], delays[9]] == pytest.approx(
        [0.5 * factor, 2.0 * factor, 30.0 * factor])


def test_order_holds_across_failures(outbox):
    clock = ManualClock(100.0)
    events = [fault(n) for n in range(12)]
    api = FakeAPI([None,
                   oslo_messaging.MessagingTimeout("lost"),
                   lambda ids: {"accepted": ids[:2], "rejected": {}},
                   oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(outbox, api, clock=clock, batch=5)
    for e in events[:8]:
        rep.submit(e)
    due_step(rep, clock)      # 0-4 delivered
    due_step(rep, clock)      # 5-7 lost
    for e in events[8:]:
        rep.submit(e)
    drain(rep, clock)

    assert api.accepted == [e["id"] for e in events]
    # every call started at the oldest undelivered event
    assert [c[0] for c in api.calls] == [events[n]["id"]
                                         for n in (0, 5, 5, 7, 7)]


def test_restart_with_pending_events_delivers_them_once(tmp_path):
    clock = ManualClock(100.0)
    path = str(tmp_path / "outbox.sqlite")
    events = [fault(n) for n in range(150)]
    box = Outbox(path, 1000)
    down = FakeAPI([oslo_messaging.MessagingTimeout("no controller")])
    rep = make(box, down, clock=clock)
    for e in events[:120]:
        rep.submit(e)
    due_step(rep, clock)
    box.close()                   # the agent stops

    box = Outbox(path, 1000)      # and starts again
    up = FakeAPI()
    rep = make(box, up, clock=clock, batch=100)
    assert rep.stats()["pending"] == 120
    for e in events[120:]:
        rep.submit(e)
    drain(rep, clock)

    assert up.accepted == [e["id"] for e in events]
    assert len(box) == 0
    box.close()


def test_a_full_outbox_keeps_the_newest(tmp_path):
    clock = ManualClock(100.0)
    box = Outbox(str(tmp_path / "outbox.sqlite"), 100)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(box, api, clock=clock)
    events = [fault(n) for n in range(150)]
    rep.submit(events[0])
    due_step(rep, clock)
    for e in events[1:]:
        rep.submit(e)

    stats = rep.stats()
    assert (stats["pending"], stats["dropped"]) == (100, 50)
    drain(rep, clock)
    assert api.accepted == [e["id"] for e in events[50:]]


class FlakyOutbox(Outbox):
    broken = False

    def put_many(self, entries):
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        return super().put_many(entries)


def test_an_unwritable_outbox_keeps_events_in_memory_in_order(tmp_path):
    clock = ManualClock(100.0)
    box = FlakyOutbox(str(tmp_path / "outbox.sqlite"), 1000)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(box, api, clock=clock)
    events = [fault(n) for n in range(6)]
    rep.submit(events[0])
    box.broken = True
    for e in events[1:4]:
        rep.submit(e)
    assert rep.stats()["pending"] == 4
    assert due_step(rep, clock) == 0.5        # the bus is down

    box.broken = False
    rep.submit(events[4])         # queues behind the held ones
    rep.submit(events[5])
    assert (rep.stats()["on_disk"], rep.stats()["in_memory"]) == (1, 5)
    drain(rep, clock)
    assert api.accepted == [e["id"] for e in events]
    assert len(box) == 0
    box.close()


def test_in_flight_time_shows_a_hanging_call(outbox):
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(outbox, api, clock=clock)
    seen = []

    def during():
        clock.now += 42.0
        seen.append(rep.stats()["in_flight_s"])
    api.during_call = during
    rep.submit(fault(0))
    due_step(rep, clock)

    assert seen == [42.0]
    assert rep.stats()["in_flight_s"] is None


# -- relays -------------------------------------------------------------------

def test_relays_are_cast_in_order_from_the_queue(outbox):
    api = FakeAPI()
    rep = make(outbox, api)
    rep.cast_relay("relay_broadcast", instance=INSTANCE, payload_b64="aGk=",
                   seq=1)
    rep.cast_relay("query_status", instance=INSTANCE, seq=2)
    rep.cast_relay("agent_alive", instances=[])
    assert api.casts == []        # nothing on the caller's thread

    rep.relays.cast_pending()
    assert api.casts == [
        ("relay_broadcast", {"instance": INSTANCE, "payload_b64": "aGk=",
                             "seq": 1}),
        ("query_status", {"instance": INSTANCE, "seq": 2}),
        ("agent_alive", {"instances": []}),
    ]
    assert rep.stats()["relay_sent"] == 3


def test_unknown_relay_method_is_a_programming_error(outbox):
    rep = make(outbox, FakeAPI())
    with pytest.raises(ValueError, match="report_events"):
        rep.cast_relay("report_events", events=[])


def test_relay_failures_are_counted_and_logged_once_a_minute(
        outbox, caplog):
    clock = ManualClock(100.0)
    api = FakeAPI()
    api.cast_error = oslo_messaging.MessageDeliveryFailure("down")
    rep = make(outbox, api, clock=clock, relay_log_interval=60.0)

    with caplog.at_level(logging.WARNING, logger=reporter_mod.__name__):
        for step in (0, 10, 20, 61):
            clock.now += step
            rep.cast_relay("query_status", instance=INSTANCE, seq=step)
            rep.relays.cast_pending()

    assert rep.stats()["relay_failed"] == 4
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert INSTANCE in messages[0] and "0 more failed" in messages[0]
    assert "2 more failed" in messages[1]


def test_a_full_relay_queue_drops_the_oldest(outbox):
    api = FakeAPI()
    rep = make(outbox, api, relay_queue=3)
    for seq in range(5):
        rep.cast_relay("query_status", instance=INSTANCE, seq=seq)
    rep.relays.cast_pending()
    assert [kw["seq"] for _, kw in api.casts] == [2, 3, 4]
    assert rep.stats()["relay_dropped"] == 2


# -- the threads --------------------------------------------------------------
#
# Real threads, synchronised by events, never by sleeps or time budgets
# (how fast submit is while a call hangs is measured by
# benchmarks/agent_scale.py and tests/functional/test_reporting_rabbit.py).

class SignallingAPI(FakeAPI):
    """A FakeAPI that notifies a condition on every call and cast."""

    def __init__(self, script=()):
        super().__init__(script)
        self.changed = threading.Condition()

    def report_events(self, events, timeout=None):
        try:
            return super().report_events(events, timeout)
        finally:
            with self.changed:
                self.changed.notify_all()

    def _cast(self, method, kwargs):
        super()._cast(method, kwargs)
        with self.changed:
            self.changed.notify_all()

    def wait(self, predicate):
        # the timeout only ends a test that would hang; nothing is timed
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=30)


def test_threads_deliver_and_stop(outbox):
    api = SignallingAPI([oslo_messaging.MessagingTimeout("first one lost")])
    rep = Reporter(outbox, api, backoff=(0.01, 0.05))
    rep.start()
    try:
        events = [fault(n) for n in range(30)]
        for e in events:
            rep.submit(e)
        rep.cast_relay("agent_alive", instances=[])
        api.wait(lambda: len(api.accepted) == 30 and api.casts)
    finally:
        assert rep.stop(timeout=30) is True
    assert api.accepted == [e["id"] for e in events]


def test_a_hanging_call_blocks_neither_submit_nor_relays(outbox):
    release = threading.Event()
    hanging = threading.Event()
    api = SignallingAPI()

    def hang():
        hanging.set()
        release.wait(30)
    api.during_call = hang
    rep = Reporter(outbox, api)
    rep.start()
    try:
        rep.submit(fault(0))
        assert hanging.wait(30)               # the call hangs now
        for n in range(1, 51):
            rep.submit(fault(n))
            rep.cast_relay("query_status", instance=INSTANCE, seq=n)
        # all submitted and cast while the call still hangs
        api.wait(lambda: len(api.casts) == 50)
        assert not release.is_set()
        assert rep.stats()["pending"] == 51
        assert rep.stop(timeout=0) is False   # still in the call
    finally:
        release.set()
    assert rep.stop(timeout=30) is True
    assert rep.stats()["pending"] == 50


def test_submit_to_a_closed_outbox_keeps_the_event(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite"), 10)
    rep = make(box, FakeAPI())
    box.close()
    rep.submit(fault(0))
    assert rep.stats()["pending"] == 1
