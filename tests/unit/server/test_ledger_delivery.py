# SPDX-License-Identifier: Apache-2.0
"""The ledger's delivery bookkeeping across failures: a commit that
failed for the controller but happened, and (issue 11) deliveries in
flight when a controller dies."""

import pytest

from guestha.server import keeper as keeper_mod
from guestha.server import ledger as ledger_mod
from guestha.server.ledger import Ledger
from tests.unit.server.test_ledger import fault
from tests.unit.server.test_ledger import OTHER
from tests.unit.server.test_ledger import state


class Deliveries(object):
    def __init__(self):
        self.work = []

    def redispatch(self, work):
        self.work.extend(work)
        return len(work)


def make(path, wall, server_id, hostname=None, sinks=("log",)):
    ledger = Ledger(path, server_id, sinks=sinks, lease=30.0, clock=wall,
                    hostname=hostname or "host-%s" % server_id)
    ledger.register()
    return ledger


def commit_then_fail(ledger):
    """Make the ledger's next commit happen, and fail for it (the
    connection breaks before the answer); undone after that commit."""
    from oslo_db import exception as db_exc
    real_store = ledger._store

    def committed_then_lost(conn, requests):
        real_store(conn, requests)
        conn.commit()  # the database has it ...
        ledger._store = real_store
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")  # ...

    ledger._store = committed_then_lost


# -- a commit that failed for us but happened ------------------------------

def test_an_uncertain_commit_resent_to_another_controller_is_dispatched(
        path, wall):
    """The CI failure of the MariaDB storm (issue 11): the database
    restarts while a controller commits a batch; the commit happens, the
    answer is lost, the agent sends the batch again and it reaches
    ANOTHER controller, which finds the events stored and answers
    "accepted" without dispatching them.  Their owner lives, so nobody
    took them over: they stayed pending for ever.  The owner's keeper
    dispatches them as soon as the database answers."""
    mine = make(path, wall, "ctl-a")
    other = make(path, wall, "ctl-b")
    batch = [fault(), state()]
    commit_then_fail(mine)
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.accept(batch)
    again = other.accept(batch)  # the resend, to ctl-b
    assert again.new == [] and sorted(again.duplicates) == sorted(
        e["id"] for e in batch)
    assert mine.counts() == {"pending": 3}  # log x2, actions x1

    deliveries = Deliveries()
    keeper = keeper_mod.LedgerKeeper(mine, deliveries, 86400, 30.0,
                                     clock=lambda: wall.now)
    keeper.upkeep(wall.now)
    assert [(e["id"], sorted(t)) for e, t in deliveries.work] == [
        (batch[0]["id"], sorted(["log", ledger_mod.ACTIONS])),
        (batch[1]["id"], ["log"])]
    # once: the next round, and the agent's next resend to ctl-a, find
    # nothing more to dispatch
    keeper.upkeep(wall.now)
    assert len(deliveries.work) == 2
    assert mine.accept(batch).new == []
    assert mine.uncertain == 0


def test_an_uncertain_commit_that_did_not_happen_is_forgotten(path, wall):
    from oslo_db import exception as db_exc
    mine = make(path, wall, "ctl-a")
    other = make(path, wall, "ctl-b")
    real_store = mine._store

    def lost(conn, requests):
        mine._store = real_store
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    mine._store = lost
    batch = [fault()]
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.accept(batch)
    assert mine.uncertain == 1
    assert mine.settle_uncertain() == []
    assert mine.uncertain == 0
    # the resend stores it, wherever it goes, and that one dispatches it
    assert [e["id"] for e in other.accept(batch).new] == [batch[0]["id"]]


def test_an_uncertain_commit_that_did_not_happen_is_stored_by_the_resend(
        path, wall):
    """The failed commit did not happen, the resend comes back and
    stores the events: new there, and the keeper, which finds them in the
    ledger under this controller's name, must not dispatch them again."""
    from oslo_db import exception as db_exc
    mine = make(path, wall, "ctl-a")
    real_store = mine._store

    def lost(conn, requests):
        mine._store = real_store
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    mine._store = lost
    batch = [fault(), state()]
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.accept(batch)
    assert len(mine.accept(batch).new) == 2
    assert mine.uncertain == 0
    assert mine.settle_uncertain() == []


def test_the_resend_and_the_keeper_dispatch_an_uncertain_event_once(
        path, wall):
    mine = make(path, wall, "ctl-a")
    batch = [state()]
    commit_then_fail(mine)
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.accept(batch)
    # the resend comes back to ctl-a first: new there, once
    assert [e["id"] for e in mine.accept(batch).new] == [batch[0]["id"]]
    assert mine.settle_uncertain() == []


def test_an_action_record_whose_commit_failed_for_us_is_handed_on(
        path, wall):
    """The corrective-action worker records an action; the commit happens
    but fails for it; deciding again records the same id: handed on to
    the sinks once, not dropped as "stored before"."""
    from oslo_db import exception as db_exc
    mine = make(path, wall, "ctl-a")
    record = dict(state(), type="action")
    real_run = mine._run

    def commit_then_fail_once(work):
        mine._run = real_run
        real_run(work)
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    mine._run = commit_then_fail_once
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.record(record)
    assert mine.record(record) is True
    assert mine.record(record) is False


# -- what the driver raises itself -------------------------------------------

def driver_error():
    """What PyMySQL raises, unwrapped, when the database goes away while
    SQLAlchemy sets a new connection's isolation level (its
    ``engine_connect`` event, outside its exception wrapping)."""
    import pymysql
    return pymysql.err.OperationalError(
        2013, "Lost connection to MySQL server during query")


def test_an_unwrapped_driver_error_is_a_database_failure(path, wall):
    """The CI failure of the MariaDB storm (issue 11), second cause: the
    keeper's flush let PyMySQL's own OperationalError through and lost
    the delivery outcomes it had taken from the queue; those deliveries
    stayed pending for ever under a live owner."""
    mine = make(path, wall, "ctl-a")
    ev = state()
    assert len(mine.accept([ev]).new) == 1
    mine.mark_later(ev["id"], "log", ledger_mod.DONE)

    def away(conn):
        raise driver_error()

    real_run = mine._run
    mine._run = lambda work: real_run(away)
    with pytest.raises(ledger_mod.DB_ERRORS):
        mine.flush()
    assert mine.failures == 1   # the keeper sees the database failed
    mine._run = real_run
    assert mine.flush() == 1    # the database is back: written now
    assert mine.counts() == {"done": 1}


def test_an_outcome_is_kept_whatever_the_flush_raises(path, wall):
    mine = make(path, wall, "ctl-a")
    ev = state()
    mine.accept([ev])
    mine.mark_later(ev["id"], "log", ledger_mod.DONE)
    real_mark = mine.mark

    def broken(results, now=None):
        raise RuntimeError("a bug")

    mine.mark = broken
    with pytest.raises(RuntimeError):
        mine.flush()
    mine.mark = real_mark
    assert mine.flush() == 1
    assert mine.counts() == {"done": 1}


def test_an_agents_batch_meets_an_unwrapped_driver_error(path, wall):
    import oslo_messaging

    from guestha.server import endpoint as endpoint_mod
    from tests.unit.server import test_endpoint as fakes

    mine = make(path, wall, "ctl-a")
    endpoint = endpoint_mod.ControllerEndpoint(
        mine, fakes.Recorder(), fakes.FakeGroups())

    def away(conn, batch):
        raise driver_error()

    mine._store = away
    with pytest.raises(oslo_messaging.ExpectedException) as info:
        endpoint.report_events({}, "compute-1", [state()])
    assert isinstance(info.value.exc_info[1],
                      endpoint_mod.LedgerUnavailable)


# -- deliveries in flight, and in doubt after a death (issue 11) ------------

def dead(ledger, wall):
    """``ledger``'s controller dies: SIGKILL, its lease runs out."""
    wall.advance(31)


def test_only_the_deliveries_in_flight_come_back_flagged(path, wall):
    """A controller marks a batch in flight, the sink takes it, and the
    controller dies before it marks it done: the batch is in doubt.  The
    controller that takes over sends it again flagged ``redelivered``,
    and what was only pending, not flagged."""
    mine = make(path, wall, "ctl-a")
    taker = make(path, wall, "ctl-b")
    sent, done, waiting = state(), state(), fault()
    mine.accept([sent, done, waiting])
    assert mine.begin_sending("log", [sent["id"], done["id"]]) == {
        sent["id"], done["id"]}
    mine.mark([(done["id"], "log", ledger_mod.DONE)])
    assert mine.counts() == {"inflight": 1, "done": 1, "pending": 2}

    dead(mine, wall)
    taker.renew()
    work = taker.claim_orphans()
    by_id = {(e["id"], bool(e.get(ledger_mod.REDELIVERED))): sorted(t)
             for e, t in work}
    assert by_id == {(sent["id"], True): ["log"],
                     (waiting["id"], False): sorted(
                         ["log", ledger_mod.ACTIONS])}
    # the event itself is as the agent sent it, but for the flag and
    # whose sink may have it
    flagged, = [e for e, _ in work if e.get(ledger_mod.REDELIVERED)]
    assert flagged[ledger_mod.REDELIVERED_FROM] == "ctl-a"
    unflagged = dict(redelivered=None, redelivered_from=None)
    assert dict(flagged, **unflagged) == dict(sent, **unflagged)


def test_a_restarted_controller_flags_its_own_in_doubt_deliveries(
        path, wall):
    mine = Ledger(path, "ctl-a", sinks=("log",), lease=30.0, clock=wall,
                  hostname="host-ctl-a", pid=_dead_pid())
    mine.register()
    sent, waiting = state(), state()
    mine.accept([sent, waiting])
    mine.begin_sending("log", [sent["id"]])
    # SIGKILL, and the same server_id starts again on the same host
    again = Ledger(path, "ctl-a", sinks=("log",), lease=30.0, clock=wall,
                   hostname="host-ctl-a")
    again.register()
    work = again.pending()
    assert [(e["id"], bool(e.get("redelivered")), t) for e, t in work] == [
        (sent["id"], True, ["log"]), (waiting["id"], False, ["log"])]
    assert work[0][0]["redelivered_from"] == "ctl-a"


def _dead_pid():
    from tests.unit.server.test_ledger import dead_pid
    return dead_pid()


def test_a_controller_taken_for_dead_does_not_send_what_it_lost(
        path, wall):
    """The database was away longer than a lease: ctl-a's lease ran out
    although it lives, and ctl-b took its work over.  ctl-a still holds
    the events in its sink's queue: it sends none of them (ctl-b does),
    so they are not sent twice unflagged."""
    mine = make(path, wall, "ctl-a")
    taker = make(path, wall, "ctl-b")
    # two instances: one of lost's would follow it (handed over to ctl-b)
    lost, kept = state(), state(OTHER)
    mine.accept([lost])
    dead(mine, wall)
    taker.renew()
    assert [e["id"] for e, _ in taker.claim_orphans()] == [lost["id"]]
    mine.renew()   # it lives: its lease again
    mine.accept([kept])
    assert mine.begin_sending("log", [lost["id"], kept["id"]]) == {
        kept["id"]}
    assert taker.begin_sending("log", [lost["id"]]) == {lost["id"]}


def test_a_delivery_done_is_not_sent_again(path, wall):
    mine = make(path, wall, "ctl-a")
    ev = state()
    mine.accept([ev])
    mine.mark([(ev["id"], "log", ledger_mod.DONE)])
    assert mine.begin_sending("log", [ev["id"]]) == set()


def test_in_flight_deliveries_are_owed_until_done(path, wall):
    mine = make(path, wall, "ctl-a")
    ev = state()
    mine.accept([ev], now=wall.now - 100)
    mine.begin_sending("log", [ev["id"]])
    assert mine.prune(wall.now) == 0   # not forgotten while in flight
    mine.mark([(ev["id"], "log", ledger_mod.DONE)])
    assert mine.prune(wall.now) == 1
