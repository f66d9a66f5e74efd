# SPDX-License-Identifier: Apache-2.0
"""What the REST API reads (guestha-api, issue 12).

* ``instance_states``: each instance's latest monitoring state, as its
  agent reported it, with its project and host.
* ``faults``: every fault, with its recovery.
* ``actions``: every corrective-action record.

:mod:`guestha.db.views` says how the controllers keep them.  The events
the ledger still holds (``[server] ledger_retention``) are copied in, so
the API starts with the recent history.

Revision ID: 003
Revises: 002
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

from guestha.db import views

revision = "003"
down_revision = "002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "instance_states",
        sa.Column("instance", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(64)),
        sa.Column("name", sa.String(255)),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("interval_ms", sa.Integer),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("updated", sa.Double(), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        mysql_charset="utf8mb4")
    op.create_index("instance_states_by_project", "instance_states",
                    ["project_id", "instance"])
    op.create_index("instance_states_by_host", "instance_states", ["host"])
    op.create_table(
        "faults",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("action", sa.String(16)),
        sa.Column("interval_ms", sa.Integer),
        sa.Column("misses", sa.Integer),
        sa.Column("detected_at", sa.Double(), nullable=False),
        sa.Column("received", sa.Double(), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("recovered_at", sa.Double()),
        sa.Column("recovery_id", sa.String(36)),
        mysql_charset="utf8mb4")
    op.create_index("faults_by_instance", "faults",
                    ["instance", "detected_at"])
    op.create_index("faults_by_time", "faults", ["detected_at", "id"])
    op.create_table(
        "actions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("fault_id", sa.String(36)),
        sa.Column("kind", sa.String(64)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("step", sa.String(16)),
        sa.Column("recommended", sa.String(16)),
        sa.Column("allowed", sa.String(16)),
        sa.Column("outcome", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        mysql_charset="utf8mb4")
    op.create_index("actions_by_instance", "actions", ["instance", "at"])
    op.create_index("actions_by_time", "actions", ["at", "id"])
    _copy_events(op.get_bind())


def _copy_events(conn):
    """The events the ledger holds, into the new tables, oldest first."""
    events = sa.table("events", sa.column("id"), sa.column("type"),
                      sa.column("body"), sa.column("received"),
                      sa.column("server"), sa.column("seq"))
    query = sa.select(events.c.body, events.c.received,
                      events.c.server).where(
        events.c.type.in_(("fault", "recovery", "state", "action"))
    ).order_by(events.c.received, events.c.seq)
    # read first: SQLite cannot write while a cursor of the same
    # connection is open on the table read
    views.copy_events(conn, conn.execute(query).all())
