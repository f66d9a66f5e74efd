# SPDX-License-Identifier: Apache-2.0
"""Migrations of the controllers' database: from empty, and from a SQLite
ledger of version 1 (before migrations) with its rows; the copy of such a
ledger into another database."""

import sqlite3

import pytest
import sqlalchemy as sa

from guestha.db import api as db_api
from guestha.db import migration
from guestha.db import models
from guestha import records
from guestha.server.ledger import ACTIONS
from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock

INSTANCE = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"

# guestha-server's ledger schema before migrations (PRAGMA user_version 1),
# as guestha/server/ledger.py created it
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    body TEXT NOT NULL,
    received REAL NOT NULL,
    server TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_instance
    ON events (instance, type, received);
CREATE INDEX IF NOT EXISTS events_by_received ON events (received);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (event_id, sink)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending
    ON deliveries (event_id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS action_slots (
    instance TEXT NOT NULL,
    at REAL NOT NULL,
    fault_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS action_slots_by_instance
    ON action_slots (instance, at);
"""

NOW = 1_800_000_000.0


def faults(n):
    return [records.make_fault(INSTANCE, "compute-1", "missed", "no answer",
                               "reboot", 1_700_000_000.0 + i, 1000, 1)
            for i in range(n)]


def write_v1(path, events, done=()):
    """A version-1 ledger file: ``events`` all received at the same
    instant by ``ctl-old`` (so only the rowid orders them), pending for
    ``log`` and the actions, except the ``done`` ones."""
    import json
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    for event in events:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (event["id"], event["type"], event["instance"],
                    event["host"], json.dumps(event), NOW, "ctl-old"))
        state = "done" if event["id"] in done else "pending"
        for sink in ("log", ACTIONS):
            db.execute("INSERT INTO deliveries VALUES (?, ?, ?, 1, ?)",
                       (event["id"], sink, state, NOW))
    db.execute("INSERT INTO action_slots VALUES (?, ?, ?)",
               (INSTANCE, NOW - 10, events[0]["id"]))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def columns(engine):
    inspector = sa.inspect(engine)
    return {table: sorted(c["name"] for c in inspector.get_columns(table))
            for table in inspector.get_table_names()
            if table != "alembic_version"}


def test_upgrade_from_empty_makes_the_models_tables(tmp_path):
    engine = db_api.create_engine(str(tmp_path / "new.sqlite"))
    assert migration.current(engine) is None
    migration.upgrade(engine)
    assert migration.current(engine) == migration.head() == "004"
    assert columns(engine) == {
        table.name: sorted(c.name for c in table.columns)
        for table in models.metadata.sorted_tables}
    migration.check(engine)  # at head: no error
    migration.upgrade(engine)  # again: nothing to do
    assert migration.current(engine) == "004"


def test_check_refuses_a_database_behind(tmp_path):
    engine = db_api.create_engine(str(tmp_path / "old.sqlite"))
    migration.upgrade(engine, "001")
    with pytest.raises(migration.MigrationError, match="db sync"):
        migration.check(engine)


def test_a_version_1_ledger_is_upgraded_in_place_with_its_rows(tmp_path):
    path = str(tmp_path / "server-ledger.sqlite")
    events = faults(5)
    # reversed uuids: an order by id would differ from the arrival order
    write_v1(path, events, done={events[1]["id"]})
    ledger = Ledger(path, "ctl-new", sinks=("log",),
                    clock=ManualClock(NOW + 1))
    ledger.register()
    assert migration.current(ledger._engine) == migration.head()
    # a version-1 guestha-server refuses the file from now on
    with ledger._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == 2
    # the old controller's pending work, in the order it arrived
    work = ledger.claim_orphans()
    assert [e["id"] for e, _ in work] == [
        e["id"] for i, e in enumerate(events) if i != 1]
    assert all(targets == [ACTIONS, "log"] for _, targets in work)
    # what it had accepted is known: sent again, not new
    again = ledger.accept(events[:2], now=NOW + 2)
    assert again.new == []
    assert sorted(again.duplicates) == sorted(e["id"] for e in events[:2])
    # and the cap's count carried over
    assert ledger.take_action_slot(INSTANCE, events[0]["id"], 3600, 3,
                                   now=NOW) == (None, 0)
    assert ledger.take_action_slot(INSTANCE, events[2]["id"], 3600, 1,
                                   now=NOW) == (False, 1)


def test_import_ledger_copies_a_version_1_file(tmp_path):
    old = str(tmp_path / "server-ledger.sqlite")
    events = faults(3)
    write_v1(old, events)
    target = db_api.create_engine(str(tmp_path / "shared.sqlite"))
    with pytest.raises(migration.MigrationError):  # not synced yet
        migration.import_ledger(old, target)
    migration.upgrade(target)
    copied = migration.import_ledger(old, target)
    assert copied == {"events": 3, "deliveries": 6, "servers": 0,
                      "action_slots": 1}
    # again: nothing new
    assert set(migration.import_ledger(old, target).values()) == {0}
    ledger = Ledger(str(tmp_path / "shared.sqlite"), "ctl-new",
                    sinks=("log",), clock=ManualClock(NOW + 1))
    ledger.register()
    assert [e["id"] for e, _ in ledger.claim_orphans()] == [
        e["id"] for e in events]
