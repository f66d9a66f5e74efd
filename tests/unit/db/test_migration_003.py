# SPDX-License-Identifier: Apache-2.0
"""Revision 003 (the REST API's tables): a ledger at 002 with events in
it is upgraded, and the API's tables start with what the events said."""

import json
import uuid

import sqlalchemy as sa

from guestha.db import api as db_api
from guestha.db import migration
from guestha.db import models
from guestha import records
from guestha.server import actions as actions_mod

A = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
B = "1d8f4a0b-6c3e-4f72-9a4b-0e5d3c2b1f60"
PROJECT = "5d2f8c1e9b7a4f60a1c3e5d7f9b2a4c6"
T0 = 1_800_000_000.0


def _insert(conn, event, received, server="ctl-old", seq=0):
    conn.execute(models.events.insert().values(
        id=event["id"], type=event["type"], instance=event["instance"],
        host=event.get("host") or "", body=json.dumps(event),
        received=received, server=server, seq=seq))


def test_upgrade_from_002_copies_the_ledgers_events(tmp_path):
    engine = db_api.create_engine(str(tmp_path / "ledger.sqlite"))
    migration.upgrade(engine, "002")
    fault_a = records.make_fault(A, "compute-1", "missed", "no answer",
                                 "reboot", T0, 1000, 2)
    recovery_a = records.make_recovery(A, "compute-1", fault_a["id"], T0 + 5,
                                       kind="missed", reason="answers again")
    fault_b = records.make_fault(B, "compute-2", "unhealthy", "db down", None,
                                 T0 + 1, 500, 0)
    action = actions_mod.action_record(
        fault_a, "reboot", "refused: cap", "3 actions in 3600 s",
        "ctl-old", T0 + 2, step="hard")
    old_state = records.make_state(A, "compute-1", "unregistered", "waiting",
                                   T0 - 10, details={"project_id": "old"})
    new_state = records.make_state(A, "compute-1", "monitored", None, T0 - 5,
                                   details={"project_id": PROJECT,
                                            "interval_ms": 1000})
    with engine.begin() as conn:
        # the newer state arrived first: the agent's clock orders them
        _insert(conn, new_state, T0 - 4, seq=1)
        _insert(conn, old_state, T0 - 3, seq=2)
        _insert(conn, fault_a, T0, seq=3)
        _insert(conn, fault_b, T0 + 1, seq=4)
        _insert(conn, action, T0 + 2, server="ctl-2", seq=5)
        _insert(conn, recovery_a, T0 + 5, seq=6)
        # a row no version wrote: skipped, not fatal
        conn.execute(models.events.insert().values(
            id=str(uuid.uuid4()), type="fault", instance=B, host="x",
            body="not json", received=T0, server="ctl-old", seq=7))
    migration.upgrade(engine, "003")
    assert migration.current(engine) == "003"
    with engine.connect() as conn:
        faults = {r.id: r for r in conn.execute(sa.select(models.faults))}
        acts = conn.execute(sa.select(models.actions)).all()
        states = conn.execute(sa.select(models.instance_states)).all()
    assert set(faults) == {fault_a["id"], fault_b["id"]}
    a = faults[fault_a["id"]]
    assert (a.instance, a.host, a.kind, a.action, a.interval_ms, a.misses,
            a.detected_at, a.server) == (A, "compute-1", "missed", "reboot",
                                         1000, 2, T0, "ctl-old")
    assert (a.recovered_at, a.recovery_id) == (T0 + 5, recovery_a["id"])
    b = faults[fault_b["id"]]
    assert (b.recovered_at, b.recovery_id, b.reason) == (None, None,
                                                         "db down")
    assert [(r.id, r.fault_id, r.action, r.step, r.outcome, r.server, r.at)
            for r in acts] == [(action["id"], fault_a["id"], "reboot",
                                "hard", "refused: cap", "ctl-old", T0 + 2)]
    assert [(r.instance, r.state, r.project_id, r.interval_ms, r.at,
             r.event_id) for r in states] == [
        (A, "monitored", PROJECT, 1000, T0 - 5, new_state["id"])]


def test_import_of_an_older_ledger_fills_the_apis_tables(tmp_path):
    from tests.unit.db import test_migration as v1

    old = str(tmp_path / "server-ledger.sqlite")
    events = v1.faults(3)
    v1.write_v1(old, events)
    target = db_api.create_engine(str(tmp_path / "shared.sqlite"))
    migration.upgrade(target)
    assert migration.import_ledger(old, target)["events"] == 3
    with target.connect() as conn:
        faults = conn.execute(sa.select(models.faults.c.id)).scalars().all()
    assert sorted(faults) == sorted(e["id"] for e in events)
    # again: nothing new, nothing twice
    migration.import_ledger(old, target)
    with target.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            models.faults)).scalar() == 3
