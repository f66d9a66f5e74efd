# SPDX-License-Identifier: Apache-2.0
"""The ledger's delivery bookkeeping across failures: a commit that
failed for the controller but happened, and what the database driver
raises itself (issue 11)."""

import pytest

from guestha.server import ledger as ledger_mod
from guestha.server.ledger import Ledger
from guestha.server import service
from tests.support.clock import ManualClock
from tests.unit.server.test_ledger import fault
from tests.unit.server.test_ledger import state


class Deliveries(object):
    def __init__(self):
        self.work = []

    def redispatch(self, work):
        self.work.extend(work)
        return len(work)


@pytest.fixture
def wall():
    return ManualClock()


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "ledger.sqlite")


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
    keeper = service.LedgerKeeper(mine, deliveries, 86400, 30.0,
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
        mine, fakes.Recorder(), fakes.Recorder(), fakes.FakeGroups())

    def away(conn, batch):
        raise driver_error()

    mine._store = away
    with pytest.raises(oslo_messaging.ExpectedException) as info:
        endpoint.report_events({}, "compute-1", [state()])
    assert isinstance(info.value.exc_info[1],
                      endpoint_mod.LedgerUnavailable)
