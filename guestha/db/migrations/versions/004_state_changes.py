# SPDX-License-Identifier: Apache-2.0
"""Nova's state changes, recorded for the one relay (issue 11).

* ``state_changes``: each state change of a server-group member a
  controller heard from Nova, once, and which relay told the peers, so
  that a relay elected after the last one died tells what nobody told.

Revision ID: 004
Revises: 003
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = "004"
down_revision = "003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "state_changes",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("instance", sa.String(36), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("received", sa.Double(), nullable=False),
        sa.Column("recorded_by", sa.String(255), nullable=False),
        sa.Column("told_by", sa.String(255)),
        sa.Column("told", sa.Double()),
        mysql_charset="utf8mb4")
    op.create_index("state_changes_untold", "state_changes",
                    ["told_by", "received"])
    op.create_index("state_changes_by_instance", "state_changes",
                    ["instance", "at"])
