# SPDX-License-Identifier: Apache-2.0
"""Versioned migrations of the controllers' database (alembic).

``guestha-manage db sync`` (:mod:`guestha.cmd.manage`) brings a database
to the newest revision; ``guestha-server`` does it by itself on its
default SQLite file, and on a shared database refuses to start until an
operator has run it (so that controllers of two versions never race to
migrate).  Revision 001 is the schema of the SQLite ledgers made before
migrations existed: such a file is upgraded in place, rows and all.
:func:`import_ledger` copies an old or current SQLite ledger into another
database, when a single controller host becomes several.
"""

import os

from alembic import command
from alembic import config as alembic_config
from alembic import migration as alembic_migration
from alembic import script as alembic_script
import sqlalchemy as sa

from guestha.db import models


class MigrationError(Exception):
    """The database is not at a revision this guestha knows."""


def _config(connection=None):
    cfg = alembic_config.Config()
    cfg.set_main_option("script_location", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head():
    """The newest revision this guestha knows."""
    return alembic_script.ScriptDirectory.from_config(
        _config()).get_current_head()


def current(engine):
    """The database's revision, or None if it has none (empty, or a
    SQLite ledger of version 1)."""
    with engine.connect() as conn:
        return alembic_migration.MigrationContext.configure(
            conn).get_current_revision()


def upgrade(engine, revision="head"):
    """Migrate the database to ``revision``, in one transaction (on SQLite
    a write transaction, so that processes starting together take turns).
    """
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def check(engine):
    """:raises MigrationError: unless the database is at :func:`head`."""
    at, newest = current(engine), head()
    if at == newest:
        return
    known = [s.revision for s in alembic_script.ScriptDirectory.from_config(
        _config()).walk_revisions()]
    if at is not None and at not in known:
        raise MigrationError(
            "the database is at revision %s, which this guestha-server "
            "does not know (newer?); upgrade guestha-server" % at)
    raise MigrationError(
        "the database is at revision %s, this guestha-server needs %s: "
        "run 'guestha-manage db sync'" % (at or "none", newest))


def import_ledger(path, engine):
    """Copy the rows of the SQLite ledger ``path`` (version 1 or a later
    revision) into ``engine``'s database, which must be at :func:`head`.

    Rows the target holds already (same key) are kept as they are, so an
    import can be run again.

    :returns: ``{table: rows copied}``.
    """
    from guestha.db import api as db_api
    from guestha.db import views

    check(engine)
    source = sa.create_engine(db_api.sqlite_url(path))
    copied = {}
    try:
        with source.connect() as src, engine.begin() as dst:
            tables = set(sa.inspect(src).get_table_names())
            for table in (models.events, models.deliveries,
                          models.servers, models.action_slots,
                          models.action_caps, models.instance_states,
                          models.faults, models.actions):
                if table.name not in tables:
                    continue
                columns = [c["name"]
                           for c in sa.inspect(src).get_columns(table.name)]
                query = "SELECT %s%s FROM %s" % (
                    ", ".join(columns),
                    ", rowid" if (table is models.events
                                  and "seq" not in columns) else "",
                    table.name)
                rows = [dict(row._mapping)
                        for row in src.exec_driver_sql(query)]
                for row in rows:
                    if "rowid" in row:
                        row["seq"] = row.pop("rowid")
                new = _insert_new(dst, table, rows)
                copied[table.name] = len(new)
                if table is models.events and "faults" not in tables:
                    # a ledger older than revision 003: the REST API's
                    # tables from its events
                    new.sort(key=lambda row: (row["received"], row["seq"]))
                    views.copy_events(dst, [
                        (row["body"], row["received"], row["server"])
                        for row in new])
    finally:
        source.dispose()
    return copied


def _insert_new(conn, table, rows):
    if not rows:
        return []
    keys = [c.name for c in table.primary_key.columns]
    if not keys:  # action_slots: the whole row is the key
        keys = [c.name for c in table.columns]
    existing = {tuple(row) for row in conn.execute(
        sa.select(*[table.c[k] for k in keys]))}
    new = [row for row in rows if tuple(row[k] for k in keys)
           not in existing]
    if new:
        conn.execute(table.insert(), new)
    return new
