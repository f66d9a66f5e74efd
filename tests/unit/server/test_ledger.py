# SPDX-License-Identifier: Apache-2.0
"""The ledger: durable acceptance, duplicates, deliveries, leases and
take-over, the action cap, and several processes on one file."""

import json
import multiprocessing
import os
import subprocess
import sys
import uuid

import pytest

from guestha import records
from guestha.server import ledger as ledger_mod
from guestha.server.ledger import ACTIONS
from guestha.server.ledger import DONE
from guestha.server.ledger import DROPPED
from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock

INSTANCE = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
HOST = "compute-1"
OTHER = "5d1f0b7e-2c4a-4f6b-9e8d-3a7c1b2e4f60"


def fault(instance=INSTANCE, action="reboot"):
    return records.make_fault(instance, HOST, "missed", "no answer", action,
                              1_700_000_000.0, 1000, 1)


def recovery(of):
    return records.make_recovery(of["instance"], HOST, of["id"],
                                 1_700_000_001.0, kind=of["kind"])


def state(instance=INSTANCE):
    return records.make_state(instance, HOST, "monitored", None,
                              1_700_000_000.0)


@pytest.fixture
def clock():
    return ManualClock()


def make(path, clock, server_id="ctl-a", sinks=("log",), pid=None, **kw):
    ledger = Ledger(path, server_id, sinks=sinks, lease=30.0, clock=clock,
                    pid=pid, **kw)
    ledger.register()
    return ledger


# -- accept ---------------------------------------------------------------

def test_accept_stores_new_events_and_reports_duplicates(path, clock):
    ledger = make(path, clock)
    events = [fault(), state(), fault()]
    first = ledger.accept(events)
    assert [e["id"] for e in first.new] == [e["id"] for e in events]
    assert first.duplicates == [] and first.rejected == {}

    extra = state()
    again = ledger.accept(events + [extra])
    assert [e["id"] for e in again.new] == [extra["id"]]
    assert again.duplicates == [e["id"] for e in events]
    assert again.accepted_ids == {e["id"] for e in events + [extra]}


def test_duplicate_inside_one_batch_is_new_once(path, clock):
    ledger = make(path, clock)
    event = fault()
    result = ledger.accept([event, dict(event)])
    assert [e["id"] for e in result.new] == [event["id"]]
    assert result.duplicates == [event["id"]]


def test_invalid_events_are_rejected_and_the_rest_accepted(path, clock):
    ledger = make(path, clock)
    good = fault()
    bad_version = dict(fault(), version="9.9")
    missing = fault()
    del missing["kind"]
    result = ledger.accept([good, bad_version, missing, "junk"])
    assert [e["id"] for e in result.new] == [good["id"]]
    assert set(result.rejected) == {bad_version["id"], missing["id"], "#3"}
    assert "version" in result.rejected[bad_version["id"]]
    assert "kind" in result.rejected[missing["id"]]


def test_deliveries_per_sink_and_actions_for_faults_only(path, clock):
    ledger = make(path, clock, sinks=("log", "vitrage"))
    f, s = fault(), state()
    ledger.accept([f, s])
    pending = {e["id"]: sorted(targets) for e, targets in ledger.pending()}
    assert pending == {f["id"]: [ACTIONS, "log", "vitrage"],
                       s["id"]: ["log", "vitrage"]}


def test_accepted_events_survive_a_new_process(path, clock):
    ledger = make(path, clock)
    f = fault()
    ledger.accept([f])
    ledger.close()     # as if the process died: nothing marked
    again = Ledger(path, "ctl-a", sinks=("log",), clock=clock)
    work = again.pending()
    assert [(e, sorted(t)) for e, t in work] == [(f, [ACTIONS, "log"])]
    # and an agent resending it gets it accepted, not new
    assert again.accept([f]).duplicates == [f["id"]]


def test_mark_done_and_dropped(path, clock):
    ledger = make(path, clock)
    a, b = state(), state()
    ledger.accept([a, b])
    ledger.mark_later(a["id"], "log", DONE)
    ledger.mark_later(b["id"], "log", DROPPED)
    assert ledger.flush() == 2
    assert ledger.pending() == []
    assert ledger.counts() == {"done": 1, "dropped": 1}


def test_pending_counts_attempts(path, clock):
    ledger = make(path, clock)
    ledger.accept([state()])
    ledger.pending()
    ledger.pending()
    with ledger._engine.connect() as conn:
        attempts, = conn.exec_driver_sql(
            "SELECT attempts FROM deliveries").fetchone()
    assert attempts == 3


def test_record_stores_an_action_record_once(path, clock):
    ledger = make(path, clock, sinks=("log",))
    record = {"type": "action", "id": str(uuid.uuid4()),
              "instance": INSTANCE, "host": HOST, "action": "reboot"}
    assert ledger.record(record) is True
    assert ledger.record(record) is False
    assert [(e["id"], t) for e, t in ledger.pending()] == [
        (record["id"], ["log"])]


def test_reserved_sink_name(path, clock):
    with pytest.raises(ledger_mod.LedgerError):
        Ledger(path, "x", sinks=(ACTIONS,), clock=clock)


# -- recoveries -------------------------------------------------------------

def test_recovered_since_and_fault_recovered(path, clock):
    ledger = make(path, clock)
    f = fault()
    ledger.accept([f])
    assert not ledger.fault_recovered(f)
    clock.now += 10
    ledger.accept([recovery(f)])
    assert ledger.fault_recovered(f)
    assert ledger.recovered_since(INSTANCE, clock.now - 5)
    assert not ledger.recovered_since(INSTANCE, clock.now + 1)
    other = fault()
    ledger.accept([other])
    assert not ledger.fault_recovered(other)


# -- leases and take-over ----------------------------------------------------

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_server_id_in_use_by_a_live_process(path, clock):
    make(path, clock, server_id="ctl-a", pid=os.getppid())
    with pytest.raises(ledger_mod.ServerIdInUse):
        make(path, clock, server_id="ctl-a")


def test_server_id_of_a_dead_process_is_taken_over(path, clock):
    make(path, clock, server_id="ctl-a", pid=dead_pid())
    make(path, clock, server_id="ctl-a")  # no error


def test_claim_orphans_of_a_dead_pid(path, clock):
    a = make(path, clock, server_id="ctl-a", pid=dead_pid())
    b = make(path, clock, server_id="ctl-b")
    events = [fault(), state()]
    a.accept(events)
    a.mark([(events[1]["id"], "log", DONE)])
    taken = b.claim_orphans()
    assert [(e["id"], sorted(t)) for e, t in taken] == [
        (events[0]["id"], [ACTIONS, "log"])]
    assert b.owner(events[0]["id"]) == "ctl-b"
    assert b.owner(events[1]["id"]) == "ctl-a"   # finished: left alone
    assert b.claim_orphans() == []               # once
    assert [e["id"] for e, _ in b.pending()] == [events[0]["id"]]
    assert b.live_servers() == ["ctl-b"]


def test_claim_orphans_waits_for_the_lease(path, clock):
    # a controller on another host: only its lease tells
    a = make(path, clock, server_id="ctl-a", hostname="other-host", pid=1)
    b = make(path, clock, server_id="ctl-b")
    a.accept([state()])
    clock.now += 20
    assert b.claim_orphans() == []
    assert b.live_servers() == ["ctl-a", "ctl-b"]
    a.renew()
    clock.now += 20
    assert b.claim_orphans() == []
    clock.now += 11
    b.renew()
    assert len(b.claim_orphans()) == 1
    assert b.live_servers() == ["ctl-b"]


def test_unregistered_controller_is_taken_over_at_once(path, clock):
    a = make(path, clock, server_id="ctl-a")
    b = make(path, clock, server_id="ctl-b")
    a.accept([state()])
    assert b.claim_orphans() == []
    a.unregister()
    assert len(b.claim_orphans()) == 1


def test_restart_with_the_same_id_redispatches_its_own(path, clock):
    a = make(path, clock, server_id="ctl-a", pid=dead_pid())
    f = fault()
    a.accept([f])
    a.close()
    restarted = make(path, clock, server_id="ctl-a")
    assert [e["id"] for e, _ in restarted.pending()] == [f["id"]]


# -- the action cap -----------------------------------------------------------

def test_action_slots_cap_per_window(path, clock):
    ledger = make(path, clock)
    faults = [str(uuid.uuid4()) for _ in range(4)]
    assert ledger.take_action_slot(INSTANCE, faults[0], 100, 2) == (True, 0)
    clock.now += 10
    assert ledger.take_action_slot(INSTANCE, faults[1], 100, 2) == (True, 1)
    assert ledger.take_action_slot(INSTANCE, faults[2], 100, 2) == (
        False, 2)
    other = "7a1d9e2c-3b4f-4a5e-9c8d-1e2f3a4b5c6d"
    assert ledger.take_action_slot(other, faults[2], 100, 2) == (True, 0)
    clock.now += 91    # the first slot left the window
    assert ledger.take_action_slot(INSTANCE, faults[3], 100, 2) == (True, 1)


def test_action_slot_once_per_fault(path, clock):
    ledger = make(path, clock)
    fault_id = str(uuid.uuid4())
    assert ledger.take_action_slot(INSTANCE, fault_id, 100, 5)[0] is True
    assert ledger.take_action_slot(INSTANCE, fault_id, 100, 5) == (None, 0)


# -- housekeeping -------------------------------------------------------------

def test_prune_keeps_pending_and_recent(path, clock):
    ledger = make(path, clock)
    old_done, old_pending = state(), state()
    ledger.accept([old_done, old_pending])
    ledger.mark([(old_done["id"], "log", DONE)])
    ledger.take_action_slot(INSTANCE, str(uuid.uuid4()), 10, 5)
    clock.now += 1000
    recent = state()
    ledger.accept([recent])
    ledger.mark([(recent["id"], "log", DONE)])
    assert ledger.prune(clock.now - 500) == 1
    assert ledger.owner(old_done["id"]) is None
    assert ledger.owner(old_pending["id"]) == "ctl-a"
    assert ledger.owner(recent["id"]) == "ctl-a"
    # a pruned id is new again (retention bounds deduplication)
    assert len(ledger.accept([old_done]).new) == 1


def test_newer_schema_is_refused(path, clock):
    ledger = make(path, clock)
    with ledger._engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = "
                             "'999_from_the_future'")
    ledger.close()
    with pytest.raises(ledger_mod.LedgerError, match="999_from_the_future"):
        Ledger(path, "ctl-a", clock=clock)


# -- several processes on one file --------------------------------------------

def _accept_in_process(path, server_id, batches, out):
    ledger = Ledger(path, server_id, sinks=("log",))
    ledger.register()
    new = []
    for batch in batches:
        new.extend(e["id"] for e in ledger.accept(batch).new)
    with open(out, "w") as f:
        json.dump(new, f)


def test_concurrent_processes_store_each_event_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    events = [state() for _ in range(600)]
    workers = 4
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for n in range(workers):
        # every process sends every event, in its own order and batching
        order = events[n:] + events[:n] if n % 2 else list(reversed(events))
        batches = [order[i:i + 7 + n] for i in range(0, len(order), 7 + n)]
        out = str(tmp_path / ("new-%d.json" % n))
        proc = ctx.Process(target=_accept_in_process,
                           args=(path, "ctl-%d" % n, batches, out))
        proc.start()
        procs.append((proc, out))
    new = []
    for proc, out in procs:
        proc.join(120)
        assert proc.exitcode == 0
        with open(out) as f:
            new.extend(json.load(f))
    assert sorted(new) == sorted(e["id"] for e in events)
    ledger = Ledger(path, "check")
    # one instance: what came after another process's were handed to it
    counts = ledger.counts()
    assert set(counts) <= {"pending", "handed"}
    assert sum(counts.values()) == len(events)


# -- group commit and a failing database --------------------------------------

def test_calls_that_come_together_share_one_commit(path, clock):
    import threading
    ledger = make(path, clock)
    stores = []
    entered = threading.Event()
    release = threading.Event()
    real_store = ledger._store

    def store(conn, batch):
        stores.append([len(req.valid) for req in batch])
        if len(stores) == 1:  # the first commit holds until the others wait
            entered.set()
            assert release.wait(30)
        return real_store(conn, batch)

    ledger._store = store
    first = [fault()]
    later = [[fault(), fault()], [state()], [fault()]]
    results = {}

    def call(name, batch):
        results[name] = ledger.accept(batch)

    threads = [threading.Thread(target=call, args=("first", first))]
    threads[0].start()
    assert entered.wait(30)
    for n, batch in enumerate(later):
        threads.append(threading.Thread(target=call, args=(n, batch)))
        threads[-1].start()
    with ledger._gc_cond:  # all three queued behind the first commit
        while len(ledger._gc_queue) < len(later):
            ledger._gc_cond.wait(1)
    release.set()
    for thread in threads:
        thread.join(30)
    # two transactions: the first call's, then the three queued together
    assert sorted(stores[1]) == [1, 1, 2] and len(stores) == 2
    assert [e["id"] for e in results["first"].new] == [first[0]["id"]]
    for n, batch in enumerate(later):
        assert [e["id"] for e in results[n].new] == [e["id"] for e in batch]
    # the same event in two calls of one commit: new once
    ev = fault()
    assert len(ledger.accept([ev]).new) == 1


def test_a_failing_database_accepts_nothing_and_the_retry_does(path, clock):
    from oslo_db import exception as db_exc
    ledger = make(path, clock)
    batch = [fault(), state()]
    real_store = ledger._store

    def down(conn, batch):
        raise db_exc.DBConnectionError("lost connection to the database")

    ledger._store = down
    with pytest.raises(ledger_mod.DB_ERRORS):
        ledger.accept(batch)
    assert ledger.counts() == {}
    ledger._store = real_store
    result = ledger.accept(batch)  # the agent sends it again
    assert [e["id"] for e in result.new] == [e["id"] for e in batch]


def test_a_lost_race_is_run_again(path, clock):
    from oslo_db import exception as db_exc
    ledger = make(path, clock)
    real_store = ledger._store
    calls = []

    def deadlock_once(conn, batch):
        calls.append(1)
        if len(calls) == 1:
            raise db_exc.DBDeadlock()
        return real_store(conn, batch)

    ledger._store = deadlock_once
    assert len(ledger.accept([fault()]).new) == 1
    assert len(calls) == 2


def test_the_cap_is_counted_once_by_two_controllers(path, clock):
    a = make(path, clock, "ctl-a")
    b = make(path, clock, "ctl-b")
    granted = [ledger.take_action_slot(INSTANCE, str(uuid.uuid4()), 3600, 2)
               for ledger in (a, b, a, b)]
    assert [g for g, _ in granted] == [True, True, False, False]


def test_a_commit_that_failed_for_us_but_happened_is_dispatched_on_resend(
        path, clock):
    from oslo_db import exception as db_exc
    ledger = make(path, clock)
    other = make(path, clock, "ctl-b")
    real_store = ledger._store
    batch = [fault(), state()]
    # of another instance (one of this one's would follow it: handed over)
    elsewhere = fault(OTHER)
    assert len(other.accept([elsewhere]).new) == 1

    def committed_then_lost(conn, requests):
        real_store(conn, requests)
        conn.commit()  # the database has it ...
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")  # ...

    ledger._store = committed_then_lost
    with pytest.raises(ledger_mod.DB_ERRORS):
        ledger.accept(batch + [elsewhere])
    ledger._store = real_store
    # the agent sends it again: this controller never dispatched the two
    # it owns, so they are new (once); the one another controller
    # accepted stays a duplicate
    again = ledger.accept(batch + [elsewhere])
    assert [e["id"] for e in again.new] == [e["id"] for e in batch]
    assert again.duplicates == [elsewhere["id"]]
    third = ledger.accept(batch)
    assert third.new == [] and len(third.duplicates) == 2
