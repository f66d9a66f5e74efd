# SPDX-License-Identifier: Apache-2.0
"""The ledger in a database several controller hosts share.

* ``events.seq``: the order of arrival among events received at the same
  time (SQLite's implicit rowid did that; other databases have none).
  Existing rows keep their order: on SQLite, ``seq`` takes the rowid.
* ``events_by_server`` and ``deliveries_by_state``: a controller's own
  pending work, and the orphans of dead controllers, without a scan (the
  version-1 partial index was SQLite-only).
* ``action_caps``: one row per capped instance, locked while a
  controller counts and takes a slot of the cap.

Revision ID: 002
Revises: 001
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "002"
down_revision = "001"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    op.add_column("events", sa.Column("seq", sa.BigInteger, nullable=False,
                                      server_default="0"))
    if bind.dialect.name == "sqlite":
        op.execute("UPDATE events SET seq = rowid")
        # a guestha-server of version 1 refuses the file from now on
        op.execute("PRAGMA user_version = 2")
    op.create_index("events_by_server", "events", ["server"])
    op.create_index("deliveries_by_state", "deliveries",
                    ["state", "event_id"])
    op.create_table(
        "action_caps",
        sa.Column("instance", sa.String(36), primary_key=True),
        sa.Column("updated", sa.Double(), nullable=False),
        mysql_charset="utf8mb4")
