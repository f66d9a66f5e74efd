# SPDX-License-Identifier: Apache-2.0
"""The ledger's tables, as SQLAlchemy Core sees them at the newest
migration (``migrations/versions``).  :mod:`guestha.server.ledger` says
what each holds; the migrations, not ``metadata.create_all``, create them.
"""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

#: Event bodies are JSON of at most a few KiB, but MySQL's TEXT stops at
#: 64 KiB and a guest's ``details`` are not bounded by the protocol.
BODY = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")
#: Epoch seconds: MySQL's FLOAT is single precision (a 2-minute grain).
SECONDS = sa.Double()

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("instance", sa.String(36), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("body", BODY, nullable=False),
    sa.Column("received", SECONDS, nullable=False),
    sa.Column("server", sa.String(255), nullable=False),
    # the order of arrival within one ``received`` (version 2; SQLite's
    # rowid in version 1)
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("updated", SECONDS, nullable=False),
)

servers = sa.Table(
    "servers", metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", SECONDS, nullable=False),
    sa.Column("heartbeat", SECONDS, nullable=False),
)

action_slots = sa.Table(
    "action_slots", metadata,
    sa.Column("instance", sa.String(36), nullable=False),
    sa.Column("at", SECONDS, nullable=False),
    sa.Column("fault_id", sa.String(255), nullable=False),
)

#: One row per capped instance, locked (SELECT ... FOR UPDATE) while a
#: controller counts and takes a slot, so that two controllers cannot both
#: take the last one (version 2).
action_caps = sa.Table(
    "action_caps", metadata,
    sa.Column("instance", sa.String(36), primary_key=True),
    sa.Column("updated", SECONDS, nullable=False),
)
