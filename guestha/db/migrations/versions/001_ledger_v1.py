# SPDX-License-Identifier: Apache-2.0
"""The ledger as guestha-server kept it in SQLite before migrations
(``PRAGMA user_version = 1``).

A ledger file of that time has these tables already and no alembic
version: they are kept, with their rows, and the file goes on to the
next revision.

Revision ID: 001
Revises:
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = "001"
down_revision = None
branch_labels = None
depends_on = None

BODY = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "events" not in existing:
        op.create_table(
            "events",
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("type", sa.String(16), nullable=False),
            sa.Column("instance", sa.String(36), nullable=False),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("body", BODY, nullable=False),
            sa.Column("received", sa.Double(), nullable=False),
            sa.Column("server", sa.String(255), nullable=False),
            mysql_charset="utf8mb4")
        op.create_index("events_by_instance", "events",
                        ["instance", "type", "received"])
        op.create_index("events_by_received", "events", ["received"])
    if "deliveries" not in existing:
        op.create_table(
            "deliveries",
            sa.Column("event_id", sa.String(36), primary_key=True),
            sa.Column("sink", sa.String(64), primary_key=True),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("updated", sa.Double(), nullable=False),
            mysql_charset="utf8mb4")
    if "servers" not in existing:
        op.create_table(
            "servers",
            sa.Column("id", sa.String(255), primary_key=True),
            sa.Column("hostname", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("started", sa.Double(), nullable=False),
            sa.Column("heartbeat", sa.Double(), nullable=False),
            mysql_charset="utf8mb4")
    if "action_slots" not in existing:
        op.create_table(
            "action_slots",
            sa.Column("instance", sa.String(36), nullable=False),
            sa.Column("at", sa.Double(), nullable=False),
            sa.Column("fault_id", sa.String(255), nullable=False),
            mysql_charset="utf8mb4")
        op.create_index("action_slots_by_instance", "action_slots",
                        ["instance", "at"])
