# SPDX-License-Identifier: Apache-2.0
"""The dispatcher's hooks for the controller's ledger (issue 11):
``before_send`` right before a sink gets a batch (the deliveries go in
flight, and only the controller's own are sent), ``on_results`` right
after, once per batch."""

from guestha.sinks import base
from tests.support.clock import ManualClock
from tests.unit.sinks.test_dispatcher import FakeSink
from tests.unit.sinks.test_dispatcher import fault


def make(sink, before_send, clock=None, **kwargs):
    results = []
    dispatcher = base.SinkDispatcher(
        [sink], clock=clock or ManualClock(), rng=lambda: 0.5,
        on_results=lambda name, events, state: results.append(
            (name, [e["id"] for e in events], state)),
        before_send=before_send, **kwargs)
    return dispatcher, results


def test_before_send_sees_the_batch_before_the_sink():
    sink = FakeSink("a", max_batch=10)
    seen = []

    def before_send(name, events):
        assert sink.calls == []   # the sink has nothing yet
        seen.append((name, [e["id"] for e in events]))
        return events

    d, results = make(sink, before_send)
    events = [fault(n) for n in range(3)]
    for e in events:
        d.submit(e)
    ids = [e["id"] for e in events]
    assert d.step("a") is None
    assert seen == [("a", ids)]
    assert sink.delivered == ids
    assert results == [("a", ids, base.DONE)]   # one report per batch


def test_what_before_send_leaves_out_is_neither_sent_nor_reported():
    sink = FakeSink("a", max_batch=10)
    events = [fault(n) for n in range(3)]
    d, results = make(sink, lambda name, batch: [batch[1]])
    for e in events:
        d.submit(e)
    assert d.step("a") is None
    assert sink.delivered == [events[1]["id"]]
    assert results == [("a", [events[1]["id"]], base.DONE)]
    assert d.stats()["a"]["withdrawn"] == 2


def test_a_batch_before_send_leaves_empty_goes_on_with_the_next():
    sink = FakeSink("a", max_batch=1)
    first, second = fault(1), fault(2)
    d, results = make(sink, lambda name, batch: [
        e for e in batch if e is not first])
    d.submit(first)
    d.submit(second)
    assert d.step("a") == 0.0
    assert d.step("a") is None
    assert sink.delivered == [second["id"]]


def test_a_failing_before_send_holds_the_batch_without_an_attempt():
    """The ledger is away: nothing is sent (the sink would get what the
    ledger cannot mark in flight), and the wait counts no attempt against
    the events: a sink allowed one attempt still gets them."""
    clock = ManualClock()
    sink = FakeSink("a", max_batch=10)
    away = [True]

    def before_send(name, events):
        if away[0]:
            raise ConnectionError("the ledger's database is away")
        return events

    d, results = make(sink, before_send, clock=clock, max_attempts=1,
                      retry_min=1.0)
    ev = fault()
    d.submit(ev)
    for _ in range(5):
        delay = d.step("a")
        assert delay > 0 and sink.calls == []
        clock.advance(delay)
    away[0] = False
    assert d.step("a") is None
    assert sink.delivered == [ev["id"]]
    assert results == [("a", [ev["id"]], base.DONE)]
    assert d.stats()["a"]["deferred"] == 5
    assert d.stats()["a"]["failed_attempts"] == 0


def test_on_result_still_hears_each_event_without_on_results():
    sink = FakeSink("a", max_batch=10)
    heard = []
    d = base.SinkDispatcher([sink], clock=ManualClock(),
                            on_result=lambda e, s, st: heard.append(e["id"]))
    events = [fault(n) for n in range(2)]
    for e in events:
        d.submit(e)
    d.step("a")
    assert heard == [e["id"] for e in events]


def test_drops_and_skips_go_to_on_result_a_delivered_batch_to_on_results():
    """The controller writes a delivered batch's outcome at once (it is
    in flight until then) but queues the others: a skip is reported from
    the submitting thread, an agent's call."""
    sink = FakeSink("a", max_batch=10, event_types=("fault",))
    single, batches = [], []
    d = base.SinkDispatcher(
        [sink], clock=ManualClock(),
        on_result=lambda e, s, st: single.append((e["id"], st)),
        on_results=lambda s, events, st: batches.append(
            ([e["id"] for e in events], st)))
    skipped, sent = dict(fault(1), type="state"), fault(2)
    d.submit(skipped)
    d.submit(sent)
    d.step("a")
    assert single == [(skipped["id"], base.DONE)]
    assert batches == [([sent["id"]], base.DONE)]
