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

# -- what the REST API reads (version 3; written by guestha.db.views) --------

#: The latest monitoring state of each instance, as its compute agent
#: reported it (a ``state`` event), with the instance's project.
instance_states = sa.Table(
    "instance_states", metadata,
    sa.Column("instance", sa.String(36), primary_key=True),
    sa.Column("project_id", sa.String(64)),
    sa.Column("name", sa.String(255)),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("state", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text()),
    sa.Column("interval_ms", sa.Integer),
    # the agent's clock: the order of one instance's reports
    sa.Column("at", SECONDS, nullable=False),
    sa.Column("updated", SECONDS, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Index("instance_states_by_project", "project_id", "instance"),
    sa.Index("instance_states_by_host", "host"),
)

#: Every fault, and its recovery once one arrived (open: ``recovered_at``
#: is NULL).
faults = sa.Table(
    "faults", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("instance", sa.String(36), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text()),
    sa.Column("action", sa.String(16)),
    sa.Column("interval_ms", sa.Integer),
    sa.Column("misses", sa.Integer),
    sa.Column("detected_at", SECONDS, nullable=False),
    sa.Column("received", SECONDS, nullable=False),
    sa.Column("server", sa.String(255), nullable=False),
    sa.Column("recovered_at", SECONDS),
    sa.Column("recovery_id", sa.String(36)),
    sa.Index("faults_by_instance", "instance", "detected_at"),
    sa.Index("faults_by_time", "detected_at", "id"),
)

#: Every corrective-action record (:func:`guestha.server.actions.
#: action_record`): what a controller did about a fault, and how it went.
actions = sa.Table(
    "actions", metadata,
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
    sa.Column("at", SECONDS, nullable=False),
    sa.Index("actions_by_instance", "instance", "at"),
    sa.Index("actions_by_time", "at", "id"),
)

# -- Nova's state changes, for the one relay (version 4) ---------------------

#: Every state change of a server-group member that a controller heard from
#: Nova, once (keyed by the notification's message id, the same in every
#: controller's pool), and which relay told the peers (``told_by``, NULL
#: while nobody has): a relay elected after a gap tells what was recorded
#: meanwhile (:meth:`guestha.server.ledger.Ledger.claim_state_changes`).
state_changes = sa.Table(
    "state_changes", metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("instance", sa.String(36), nullable=False),
    sa.Column("state", sa.String(64), nullable=False),
    sa.Column("event", sa.String(255), nullable=False),
    sa.Column("host", sa.String(255)),
    # Nova's time of the notification: the order of one instance's changes
    sa.Column("at", SECONDS, nullable=False),
    sa.Column("received", SECONDS, nullable=False),
    sa.Column("recorded_by", sa.String(255), nullable=False),
    sa.Column("told_by", sa.String(255)),
    sa.Column("told", SECONDS),
    sa.Index("state_changes_untold", "told_by", "received"),
    sa.Index("state_changes_by_instance", "instance", "at"),
)
