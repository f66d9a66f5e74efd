# SPDX-License-Identifier: Apache-2.0
"""Order per instance across controllers (issue 11): an instance's new
events follow the controller that owes its earliest undelivered one.

Two or three ledgers on one SQLite file pose as controllers, on one
manual wall clock; "dispatched" is what each would hand to its sinks:
the new events of ``accept`` it does not hand over, and the work of
``take_handed`` (which takes what ``settle_uncertain`` found as well)
and ``claim_orphans``.
"""

import pytest

from guestha.server import deliveries as deliveries_mod
from guestha.server import keeper as keeper_mod
from guestha.server import ledger as ledger_mod
from tests.support.clock import ManualClock
from tests.unit.server.test_ledger import fault
from tests.unit.server.test_ledger import OTHER
from tests.unit.server.test_ledger import recovery
from tests.unit.server.test_ledger_delivery import commit_then_fail
from tests.unit.server.test_ledger_delivery import dead
from tests.unit.server.test_ledger_delivery import make


def dispatched(ledger, events):
    """Accept ``events``; the ids this controller dispatches itself."""
    accepted = ledger.accept(events)
    return [e["id"] for e in accepted.new if not ledger.handed_over(e["id"])]


def ids(work):
    """The events of ``work`` in order (a fault's action and its sinks'
    in-doubt deliveries are entries of their own)."""
    return list(dict.fromkeys(e["id"] for e, _ in work))


def flagged(work):
    return [e["id"] for e, _ in work if e.get("redelivered")]


def done(ledger, *events):
    ledger.mark([(e["id"], "log", ledger_mod.DONE) for e in events])


def test_the_next_event_of_an_instance_goes_to_the_owner_of_the_first(
        path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault()
    assert dispatched(a, [f1]) == [f1["id"]]
    r1, elsewhere = recovery(f1), fault(OTHER)
    # ctl-b dispatches only the other instance's event; ctl-a gets r1
    assert dispatched(b, [r1, elsewhere]) == [elsewhere["id"]]
    assert b.handed_count == 1
    assert a.owner(r1["id"]) == "ctl-a"
    assert b.take_handed() == []
    work = a.take_handed()
    assert [(e["id"], sorted(t)) for e, t in work] == [(r1["id"], ["log"])]
    assert a.take_handed() == []   # taken once
    # ctl-a took it: in its sink's queue, after f1; it is in flight and
    # sent like any other
    assert a.begin_sending("log", [f1["id"], r1["id"]]) == {
        f1["id"], r1["id"]}
    assert b.begin_sending("log", [r1["id"]]) == set()


def test_a_fault_handed_over_takes_its_action_along(path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1, f2 = fault(), fault()
    dispatched(a, [f1])
    assert dispatched(b, [f2]) == []
    assert [(e["id"], sorted(t)) for e, t in a.take_handed()] == [
        (f2["id"], [ledger_mod.ACTIONS, "log"])]


def test_once_the_earlier_events_are_delivered_a_controller_dispatches_itself(
        path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    done(a, f1)
    r1 = recovery(f1)
    assert dispatched(b, [r1]) == [r1["id"]]
    assert b.handed_count == 0 and a.take_handed() == []


def test_an_action_still_pending_elsewhere_does_not_hold_the_next_event(
        path, wall):
    """Only the sinks' deliveries count: a corrective action may take
    minutes."""
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault()
    dispatched(a, [f1])
    done(a, f1)   # the log has it; the action is still pending
    r1 = recovery(f1)
    assert dispatched(b, [r1]) == [r1["id"]]


def test_delivered_while_handed_over_it_is_taken_at_the_next_look(
        path, wall):
    """The owner marks the earlier event done right after the other
    controller handed it the next one (the race): it still takes it at
    its next look, and the controller after that dispatches itself."""
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    r1 = recovery(f1)
    assert dispatched(b, [r1]) == []   # f1 still owed: handed to ctl-a
    done(a, f1)                         # ... and f1 done a moment later
    assert ids(a.take_handed()) == [r1["id"]]
    f2 = fault(action=None)
    # r1 is owed by ctl-a (taken, not yet sent): ctl-b hands f2 on too
    assert dispatched(b, [f2]) == []
    done(a, r1)
    assert ids(a.take_handed()) == [f2["id"]]
    done(a, f2)
    f3 = fault(action=None)
    assert dispatched(b, [f3]) == [f3["id"]]


def test_an_owner_that_has_not_taken_what_it_was_handed_hands_itself_more(
        path, wall):
    """ctl-a was handed r1 and has not looked yet; an event of the same
    instance that reaches ctl-a itself waits for that look, so it does
    not overtake r1 in ctl-a's queue."""
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    r1, f2 = recovery(f1), fault(action=None)
    assert dispatched(b, [r1]) == []
    assert dispatched(a, [f2]) == []
    assert a.handed_count == 1
    assert ids(a.take_handed()) == [r1["id"], f2["id"]]
    # all taken: the next one is dispatched at once
    f3 = fault(action=None)
    assert dispatched(a, [f3]) == [f3["id"]]


def test_handed_over_events_keep_the_ledger_order_whatever_the_clocks(
        path, tmp_path):
    """ctl-b's host clock is 5 s behind ctl-a's: what ctl-b hands over
    still comes after ctl-a's earlier events (a take-over orders by the
    ledger's ``received``)."""
    ahead, behind = ManualClock(), ManualClock()
    behind.advance(-5)
    a, b = make(path, ahead, "ctl-a"), make(path, behind, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    a.begin_sending("log", [f1["id"]])
    r1 = recovery(f1)
    dispatched(b, [r1])
    ahead.advance(31)   # ctl-a dies; ctl-c takes over
    c = make(path, ahead, "ctl-c")
    work = c.claim_orphans()
    assert ids(work) == [f1["id"], r1["id"]]
    assert flagged(work) == [f1["id"]]


def test_a_dead_owners_events_are_taken_over_in_order(path, wall):
    """ctl-a dies with f1 in flight and r1 handed to it; ctl-b, not yet
    knowing, hands it f2 too.  ctl-c takes the three over in the order
    they came, only f1 flagged; what comes next follows ctl-c."""
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    c = make(path, wall, "ctl-c")
    f1 = fault(action=None)
    dispatched(a, [f1])
    assert a.begin_sending("log", [f1["id"]]) == {f1["id"]}
    r1 = recovery(f1)
    assert dispatched(b, [r1]) == []
    dead(a, wall)   # SIGKILL: its lease runs out
    b.renew()
    f2 = fault(action=None)
    assert dispatched(b, [f2]) == []   # to ctl-a still: it owes f1
    c.renew()
    work = c.claim_orphans()
    assert ids(work) == [f1["id"], r1["id"], f2["id"]]
    assert flagged(work) == [f1["id"]]
    assert [e["redelivered_from"] for e, _ in work
            if e.get("redelivered")] == ["ctl-a"]
    assert c.take_handed() == []   # taken with the rest, once
    r2 = recovery(f2)
    assert dispatched(b, [r2]) == []
    assert ids(c.take_handed()) == [r2["id"]]


def test_a_restarted_owner_dispatches_what_it_was_handed_in_order(
        path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    r1 = recovery(f1)
    dispatched(b, [r1])
    # ctl-a stops before its next look, and starts again
    again = make(path, wall, "ctl-a")
    assert ids(again.pending()) == [f1["id"], r1["id"]]
    assert again.take_handed() == []


def test_an_event_after_one_whose_commit_failed_waits_for_the_settling(
        path, wall):
    """f1's commit failed for ctl-a but happened; until the keeper
    settles it, ctl-a has not queued it, so r1 waits too, and the keeper
    dispatches f1 then r1."""
    a = make(path, wall, "ctl-a")
    f1 = fault(action=None)
    commit_then_fail(a)
    with pytest.raises(ledger_mod.DB_ERRORS):
        a.accept([f1])
    r1 = recovery(f1)
    assert dispatched(a, [r1]) == []
    sent = Sent()
    keeper = keeper_mod.LedgerKeeper(a, sent, 86400, 30.0, clock=wall)
    keeper.upkeep(wall())
    assert ids(sent.work) == [f1["id"], r1["id"]]
    keeper.upkeep(wall())
    assert ids(sent.work) == [f1["id"], r1["id"]]


def test_an_uncertain_event_handed_here_and_queued_is_not_queued_again(
        path, wall):
    """ctl-a's commit of f1 failed and did not happen; the agent sent f1
    to ctl-b, which handed it to ctl-a (ctl-a owes f0), and ctl-a queued
    it at its look.  Settling its failed commit later must not hand f1 on
    again: it would go behind what ctl-a queued since."""
    from oslo_db import exception as db_exc
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f0 = fault(action=None)
    dispatched(a, [f0])
    real_store = a._store

    def lost(conn, requests):
        a._store = real_store
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    a._store = lost
    f1 = recovery(f0)
    with pytest.raises(ledger_mod.DB_ERRORS):
        a.accept([f1])
    assert dispatched(b, [f1]) == []        # handed to ctl-a
    assert ids(a.take_handed()) == [f1["id"]]
    assert a.settle_uncertain() == []
    assert a.take_handed() == []


class Sent(object):
    def __init__(self):
        self.work = []

    def redispatch(self, work):
        self.work.extend(work)
        return len(work)


class Submitted(list):
    def submit(self, event, sinks=None):
        self.append(event["id"])


def test_deliveries_do_not_dispatch_what_the_ledger_handed_over(
        path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    sinks, actions = Submitted(), Submitted()
    deliveries = deliveries_mod.Deliveries(b, sinks, actions)
    f1, f2, elsewhere = fault(), fault(), fault(OTHER)
    dispatched(a, [f1])
    for event in b.accept([f2, elsewhere]).new:
        deliveries.dispatch(event)
    assert sinks == actions == [elsewhere["id"]]
    # counted where it was accepted, once
    assert sum(n for _, n in deliveries.received.items()) == 2


def test_the_keeper_dispatches_what_was_handed_at_each_look(path, wall):
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    r1 = recovery(f1)
    dispatched(b, [r1])
    sent = Sent()
    keeper = keeper_mod.LedgerKeeper(a, sent, 86400, 30.0, clock=wall)
    keeper.upkeep(wall())
    assert ids(sent.work) == [r1["id"]]
    keeper.upkeep(wall())
    assert ids(sent.work) == [r1["id"]]


def test_a_look_whose_commit_failed_but_happened_takes_them_again(
        path, wall):
    """The keeper's look took r1 (the database committed) but the answer
    was lost: r1 is pending, owned by ctl-a and in no queue; the next
    look takes it, once."""
    from oslo_db import exception as db_exc
    a, b = make(path, wall, "ctl-a"), make(path, wall, "ctl-b")
    f1 = fault(action=None)
    dispatched(a, [f1])
    r1 = recovery(f1)
    dispatched(b, [r1])
    real_count = a._count_attempts

    def counted_then_lost(conn, rows, now):
        real_count(conn, rows, now)
        conn.commit()  # the database has it ...
        a._count_attempts = real_count
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    a._count_attempts = counted_then_lost
    with pytest.raises(ledger_mod.DB_ERRORS):
        a.take_handed()
    assert a.counts().get(ledger_mod.HANDED) is None
    assert ids(a.take_handed()) == [r1["id"]]
    assert a.take_handed() == []
