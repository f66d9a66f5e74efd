# SPDX-License-Identifier: Apache-2.0
"""The REST API's tables as the ledger keeps them (guestha.db.views):
state reports applied in the agent's order, a departure from a host the
instance left ignored, faults closed by their recovery, action records,
pruning."""

import sqlalchemy as sa

from guestha.db import models
from guestha import records
from guestha.server import actions as actions_mod
from guestha.server.ledger import Ledger

A = "0a000000-0000-4000-8000-00000000000a"
T0 = 1_800_000_000.0


def ledger_at(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"), "ctl-a",
                    sinks=("log",), clock=lambda: T0 + 1000)
    ledger.register()
    return ledger


def rows(ledger, table):
    with ledger._engine.connect() as conn:
        return conn.execute(sa.select(table)).all()


def state(host, name, at, project="p1"):
    return records.make_state(A, host, name, None, at,
                              details={"project_id": project})


def test_states_apply_in_the_agents_order_whatever_the_arrival(tmp_path):
    ledger = ledger_at(tmp_path)
    ledger.accept([state("c1", "monitored", T0 + 2)], now=T0 + 3)
    ledger.accept([state("c1", "unregistered", T0 + 1)], now=T0 + 4)
    [row] = rows(ledger, models.instance_states)
    assert (row.state, row.at, row.updated) == ("monitored", T0 + 2, T0 + 3)
    # one batch with two reports: the newer wins
    ledger.accept([state("c1", "suspended", T0 + 6),
                   state("c1", "faulted", T0 + 5)], now=T0 + 7)
    assert rows(ledger, models.instance_states)[0].state == "suspended"


def test_a_live_migration_leaves_the_instance_on_its_new_host(tmp_path):
    ledger = ledger_at(tmp_path)
    ledger.accept([state("c1", "monitored", T0)], now=T0)
    # the destination reports first, the source's "gone" comes later
    ledger.accept([state("c2", "suspended", T0 + 1)], now=T0 + 1)
    ledger.accept([state("c1", "gone", T0 + 2)], now=T0 + 2)
    [row] = rows(ledger, models.instance_states)
    assert (row.host, row.state) == ("c2", "suspended")
    # a gone from its own host is applied
    ledger.accept([state("c2", "gone", T0 + 3)], now=T0 + 3)
    assert rows(ledger, models.instance_states)[0].state == "gone"


def test_faults_recoveries_actions_and_pruning(tmp_path):
    ledger = ledger_at(tmp_path)
    old = records.make_fault(A, "c1", "missed", "x" * 5000, "reboot", T0, 1000,
                             1)
    new = records.make_fault(A, "c1", "unhealthy", "db", None, T0 + 500,
                             1000, 0)
    ledger.accept([state("c1", "faulted", T0), old], now=T0)
    ledger.accept([records.make_recovery(A, "c1", old["id"], T0 + 10)],
                  now=T0 + 10)
    ledger.accept([new], now=T0 + 500)
    ledger.record(actions_mod.action_record(
        old, "reboot", "failed: " + "e" * 1000, "why", "ctl-a", T0 + 1),
        now=T0 + 1)
    faults = {r.id: r for r in rows(ledger, models.faults)}
    assert faults[old["id"]].recovered_at == T0 + 10
    assert len(faults[old["id"]].reason) == records.MAX_REASON
    assert faults[new["id"]].recovered_at is None
    [action] = rows(ledger, models.actions)
    assert len(action.outcome) == 255  # cut to the column
    # the same events again (an agent's resend): nothing twice
    ledger.accept([old, new], now=T0 + 600)
    assert len(rows(ledger, models.faults)) == 2
    # pruning: the recovered fault and the action go, the open one stays
    ledger.flush()
    with ledger._engine.begin() as conn:
        conn.execute(models.deliveries.update().values(state="done"))
    ledger.prune(T0 + 100)
    assert [r.id for r in rows(ledger, models.faults)] == [new["id"]]
    assert rows(ledger, models.actions) == []
    assert len(rows(ledger, models.instance_states)) == 1
