# SPDX-License-Identifier: Apache-2.0
"""Revision 004 (Nova's state changes for the relay): a ledger at 003
with rows in it is upgraded in place, its rows kept, and the relay's
table is there to record in."""

import json

import sqlalchemy as sa

from guestha.db import api as db_api
from guestha.db import migration
from guestha.db import models
from guestha import records
from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock

A = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
T0 = 1_800_000_000.0


def test_upgrade_from_003_keeps_the_rows_and_adds_state_changes(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    engine = db_api.create_engine(path)
    migration.upgrade(engine, "003")
    fault = records.make_fault(A, "compute-1", "missed", "no answer", None,
                               T0, 1000, 2)
    with engine.begin() as conn:
        conn.execute(models.events.insert().values(
            id=fault["id"], type="fault", instance=A, host="compute-1",
            body=json.dumps(fault), received=T0, server="ctl-old", seq=1))
        conn.execute(models.deliveries.insert().values(
            event_id=fault["id"], sink="log", state="pending", attempts=0,
            updated=T0))
    assert "state_changes" not in sa.inspect(engine).get_table_names()

    ledger = Ledger(path, "ctl-old", sinks=("log",),
                    clock=ManualClock(T0 + 1))   # migrates a SQLite file
    try:
        assert migration.current(engine) == migration.head() == "004"
        ledger.register()
        assert [(e["id"], t) for e, t in ledger.pending()] == [
            (fault["id"], ["log"])]
        assert ledger.record_state_change("m1", A, "stopped",
                                          "instance.power_off.end")
        assert [c["id"] for c, _ in ledger.claim_state_changes(T0)] == [
            "m1"]
    finally:
        ledger.close()
        engine.dispose()
