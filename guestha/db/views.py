# SPDX-License-Identifier: Apache-2.0
"""The tables the REST API reads, kept by the controllers as events
arrive (revision 003).

The ledger's ``events`` table holds what the controllers still owe the
sinks, for ``[server] ledger_retention``; it is not made to be queried
(the bodies are JSON).  Each event the ledger stores for the first time is
also written here, in the same transaction (:func:`record`), so that what
the API shows is exactly what the controllers have accepted:

* ``instance_states``: one row per instance, its latest monitoring state
  as its agent reported it (a ``state`` event, see
  :func:`guestha.records.make_state`), with its project and host.  Reports
  of one instance are applied in the order of the agent's clock (``at``),
  whatever order they arrive in; a ``gone`` from a host the instance has
  left (a live migration: the destination reported first) is ignored.
* ``faults``: one row per fault; its recovery fills ``recovered_at``.
* ``actions``: one row per corrective-action record
  (:func:`guestha.server.actions.action_record`).

:func:`prune` forgets, with the ledger's own pruning, recovered faults,
actions and instances gone for longer than the retention.
"""

import json

import sqlalchemy as sa

from guestha.db.models import actions
from guestha.db.models import faults
from guestha.db.models import instance_states

#: A state report's ``state`` that says the instance left its host.
GONE = "gone"

# Bound parameters per IN (...) list (SQLite's old limit is 999).
_CHUNK = 500


def _text(value, limit=None):
    if value is None:
        return None
    value = str(value)
    return value[:limit] if limit else value


def _int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _number(value, default):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def fault_row(event, received, server):
    return {"id": event["id"], "instance": event["instance"],
            "host": _text(event.get("host"), 255) or "",
            "kind": _text(event.get("kind"), 64) or "unknown",
            "reason": _text(event.get("reason")),
            "action": _text(event.get("action"), 16),
            "interval_ms": _int(event.get("interval_ms")),
            "misses": _int(event.get("misses")),
            "detected_at": _number(event.get("detected_at_ts"), received),
            "received": received, "server": _text(server, 255),
            "recovered_at": None, "recovery_id": None}


def action_row(event, received, server):
    return {"id": event["id"], "instance": event["instance"],
            "host": _text(event.get("host"), 255),
            "fault_id": _text(event.get("fault_id"), 36),
            "kind": _text(event.get("kind"), 64),
            "action": _text(event.get("action"), 64) or "unknown",
            "step": _text(event.get("step"), 16),
            "recommended": _text(event.get("recommended"), 16),
            "allowed": _text(event.get("allowed"), 16),
            "outcome": _text(event.get("outcome"), 255) or "unknown",
            "reason": _text(event.get("reason")),
            "server": _text(event.get("server") or server, 255) or "",
            "at": _number(event.get("at_ts"), received)}


def state_row(event, received):
    details = event.get("details") or {}
    return {"instance": event["instance"],
            "project_id": _text(details.get("project_id"), 64),
            "name": _text(details.get("name"), 255),
            "host": _text(event.get("host"), 255) or "",
            "state": _text(event.get("state"), 64) or "unknown",
            "reason": _text(event.get("reason")),
            "interval_ms": _int(details.get("interval_ms")),
            "at": _number(event.get("at_ts"), received),
            "updated": received, "event_id": event["id"]}


def _chunks(values):
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def record(conn, entries, server):
    """Write new ledger events into the API's tables, in the caller's
    transaction.

    :param entries: ``[(event, received)]``: events the ledger has just
        stored for the first time, in the order they arrived.
    :param server: the controller storing them.
    """
    new_faults, new_actions, recoveries, states = [], [], [], []
    for event, received in entries:
        type_ = event.get("type")
        if type_ == "fault":
            new_faults.append(fault_row(event, received, server))
        elif type_ == "recovery":
            recoveries.append((event, received))
        elif type_ == "action":
            new_actions.append(action_row(event, received, server))
        elif type_ == "state":
            states.append(state_row(event, received))
    if new_faults:
        conn.execute(faults.insert(), new_faults)
    if new_actions:
        conn.execute(actions.insert(), new_actions)
    if recoveries:
        conn.execute(faults.update().where(
            faults.c.id == sa.bindparam("b_fault"),
            faults.c.recovered_at.is_(None)).values(
                recovered_at=sa.bindparam("b_at"),
                recovery_id=sa.bindparam("b_id")), [
            {"b_fault": _text(event.get("fault_id"), 36),
             "b_at": _number(event.get("recovered_at_ts"), received),
             "b_id": event["id"]} for event, received in recoveries])
    if states:
        _apply_states(conn, states)


def copy_events(conn, rows, batch=500):
    """Write ledger rows into the API's tables (a migration, an import):
    ``rows`` are ``(body, received, server)`` in the order of arrival;
    rows whose body is not an event record are skipped."""
    entries, server = [], None
    for body, received, owner in rows:
        try:
            event = json.loads(body)
        except ValueError:
            continue
        if not isinstance(event, dict) or not event.get("id") or not (
                event.get("instance")):
            continue
        if entries and (owner != server or len(entries) >= batch):
            record(conn, entries, server)
            entries = []
        server = owner
        entries.append((event, received))
    if entries:
        record(conn, entries, server)


def _apply_states(conn, states):
    latest = {}
    for row in states:  # the newest report of each instance in the batch
        old = latest.get(row["instance"])
        if old is None or _supersedes(row, old):
            latest[row["instance"]] = row
    stored = {}
    for chunk in _chunks(latest):
        for row in conn.execute(sa.select(
                instance_states.c.instance, instance_states.c.host,
                instance_states.c.at).where(
                    instance_states.c.instance.in_(chunk))):
            stored[row.instance] = {"host": row.host, "at": row.at}
    inserts, updates = [], []
    for instance, row in latest.items():
        old = stored.get(instance)
        if old is None:
            inserts.append(row)
        elif _supersedes(row, old):
            updates.append(dict(row, b_instance=instance))
    if inserts:
        conn.execute(instance_states.insert(), inserts)
    if updates:
        values = {c.name: sa.bindparam(c.name)
                  for c in instance_states.columns if c.name != "instance"}
        conn.execute(instance_states.update().where(
            instance_states.c.instance == sa.bindparam("b_instance")).values(
                **values), updates)


def _supersedes(new, old):
    """Whether state report ``new`` replaces what ``old`` says."""
    if new.get("state") == GONE and new["host"] != old["host"]:
        return False  # the instance lives on another host now
    return new["at"] >= old["at"]


def prune(conn, before):
    """Forget recovered faults and actions older than ``before``, and the
    instances gone since then (with their faults still open).

    :returns: rows deleted.
    """
    gone = sa.select(instance_states.c.instance).where(
        instance_states.c.state == GONE,
        instance_states.c.updated < before)
    deleted = conn.execute(faults.delete().where(
        faults.c.detected_at < before, sa.or_(
            faults.c.recovered_at < before,
            faults.c.instance.in_(gone)))).rowcount
    deleted += conn.execute(actions.delete().where(
        actions.c.at < before)).rowcount
    deleted += conn.execute(instance_states.delete().where(
        instance_states.c.state == GONE,
        instance_states.c.updated < before)).rowcount
    return deleted
