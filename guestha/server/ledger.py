# SPDX-License-Identifier: Apache-2.0
"""The ledger: what the controllers of one host have accepted, and what
they still owe.

Theory of operation
-------------------
An agent deletes a fault from its outbox once a controller has answered
``report_events`` with the fault's id in ``accepted``
(:mod:`guestha.rpc.api`).  From that moment the controller alone answers
for it, so the controller writes every event here, in one transaction per
call, and answers only after the commit:

* ``events`` holds each event once, keyed by its id (the agent's
  idempotency key), with the controller (``server``) that accepted it
  first.  An agent whose answer was lost sends the same events again;
  they are accepted again (the agent must stop resending them) but are
  not new, so nothing dispatches them a second time.
* ``deliveries`` holds one row per event and delivery target: each fault
  sink, and :data:`ACTIONS` for the corrective-action worker.  A row is
  ``pending`` until the target reports ``done`` (or ``dropped``, after its
  retries).  What is pending when a controller dies is delivered by the
  next controller to look: a restarted one re-dispatches its own pending
  rows, and any controller takes over the pending rows of a controller
  whose lease ran out.
* ``servers`` holds each controller's lease: its host name, pid and last
  heartbeat.  A controller is dead when its heartbeat is older than the
  lease, or, at once, when it ran on this host and its pid is gone (so the
  controllers sharing a file must share a PID namespace too, or have
  distinct host names).  The lease also keeps two processes from using
  one ``server_id``.
* ``action_slots`` counts the corrective actions per instance, for the
  cap of ``[actions] max_actions`` per window; being in the ledger, the
  count holds across controllers and restarts.

Delivery to the sinks is at least once: a controller killed after a sink
took an event but before the ledger heard of it delivers that event again
after the restart.  Sinks get the event id and can deduplicate.

One SQLite file (WAL journal, ``busy_timeout``) serves every
``guestha-server`` process of one host; SQLite locks the file for each
write transaction, and the processes take turns.  Controllers on several
NODES cannot share a SQLite file (network file systems break its
locking): they need a shared database.  The class is kept small so that
a SQL database backend can replace it with the same methods.
"""

import json
import logging
import os
import socket
import sqlite3
import threading
import time

from guestha.rpc import api

LOG = logging.getLogger(__name__)

#: The delivery target of the corrective-action worker (not a sink name:
#: sink names are Python identifiers from the stevedore namespace).
ACTIONS = "@actions"

PENDING, DONE, DROPPED = "pending", "done", "dropped"

SCHEMA_VERSION = 1

_SCHEMA = """
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

# SQLite's default limit of host parameters in one statement is 999 on
# old builds; stay below it.
_CHUNK = 500


class LedgerError(Exception):
    """The ledger cannot be used as configured."""


class ServerIdInUse(LedgerError):
    """Another live controller uses this ``server_id``."""


class Accepted(object):
    """What :meth:`Ledger.accept` did with a batch.

    :ivar new: the events stored by this call, in batch order (dispatch
        these).
    :ivar duplicates: ids of events stored earlier (accepted again, not
        dispatched again).
    :ivar rejected: ``{id: reason}`` of events that failed validation.
    """

    __slots__ = ("new", "duplicates", "rejected")

    def __init__(self, new, duplicates, rejected):
        self.new = new
        self.duplicates = duplicates
        self.rejected = rejected

    @property
    def accepted_ids(self):
        ids = set(self.duplicates)
        ids.update(e["id"] for e in self.new)
        return ids


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _rejected_key(index, event):
    if isinstance(event, dict) and isinstance(event.get("id"), str):
        return event["id"]
    return "#%d" % index


class Ledger(object):
    """The ledger of one controller process (see the module docstring).

    :param path: the SQLite file, shared by the controllers of this host.
    :param server_id: this controller's name (``[server] server_id``).
    :param sinks: names of the delivery targets every new event gets a
        row for (the configured sinks); faults also get :data:`ACTIONS`.
    :param lease: seconds after its last heartbeat at which a controller
        counts as dead.
    :param clock: wall-clock seconds (shared between processes, so not
        ``time.monotonic``).
    """

    def __init__(self, path, server_id, sinks=(), lease=30.0,
                 clock=time.time, hostname=None, pid=None):
        self.path = path
        self.server_id = server_id
        self.sinks = tuple(sinks)
        if ACTIONS in self.sinks:
            raise LedgerError("%r is reserved for corrective actions"
                              % ACTIONS)
        self.lease = lease
        self._clock = clock
        self.hostname = hostname or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self._lock = threading.Lock()
        self._marks = []
        self._marks_lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE
        # takes the write lock at once, so two processes never deadlock
        # upgrading a read to a write).
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise LedgerError("%s: SQLite refused the WAL journal (%s); "
                              "is it on a network file system?"
                              % (path, mode))
        # FULL: in WAL mode, each commit is on disk before accept()
        # returns, so an answer to an agent survives a power cut too.
        self._db.execute("PRAGMA synchronous = FULL")
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError("%s has schema version %d; this "
                                  "guestha-server knows up to %d"
                                  % (path, version, SCHEMA_VERSION))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)

    def close(self):
        with self._lock:
            self._db.close()

    # -- transactions ----------------------------------------------------

    class _Transaction(object):
        def __init__(self, ledger):
            self.ledger = ledger

        def __enter__(self):
            self.ledger._lock.acquire()
            try:
                self.ledger._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.ledger._lock.release()
                raise
            return self.ledger._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.ledger._db.execute(
                    "COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.ledger._lock.release()

    def _transaction(self):
        return self._Transaction(self)

    # -- events ----------------------------------------------------------

    def accept(self, events, now=None):
        """Validate ``events`` and store the valid ones in one transaction.

        When this returns, every event in ``new`` and ``duplicates`` is on
        disk: the caller may answer the agent.

        :returns: :class:`Accepted`.
        """
        now = self._clock() if now is None else now
        rejected = {}
        valid = []
        seen = set()
        duplicates = []
        for index, event in enumerate(events):
            try:
                api.validate_event(event)
                body = json.dumps(event, separators=(",", ":"))
            except (ValueError, TypeError) as exc:
                rejected[_rejected_key(index, event)] = str(exc)
                continue
            if event["id"] in seen:  # twice in one batch
                duplicates.append(event["id"])
                continue
            seen.add(event["id"])
            valid.append((event, body))
        new = []
        if valid:
            with self._transaction() as db:
                stored = self._existing(db, [e["id"] for e, _ in valid])
                rows = []
                deliveries = []
                for event, body in valid:
                    if event["id"] in stored:
                        duplicates.append(event["id"])
                        continue
                    new.append(event)
                    rows.append((event["id"], event["type"],
                                 event["instance"], event["host"], body,
                                 now, self.server_id))
                    deliveries.extend(self._delivery_rows(event, now))
                db.executemany(
                    "INSERT INTO events (id, type, instance, host, body, "
                    "received, server) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany(
                    "INSERT INTO deliveries (event_id, sink, state, "
                    "attempts, updated) VALUES (?, ?, 'pending', 1, ?)",
                    deliveries)
        return Accepted(new, duplicates, rejected)

    def record(self, event, now=None):
        """Store an event this controller made itself (an action record)
        for delivery to the sinks; it need not pass
        :func:`~guestha.rpc.api.validate_event`.

        :returns: True if stored, False if an event with its id exists.
        """
        now = self._clock() if now is None else now
        body = json.dumps(event, separators=(",", ":"))
        with self._transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (id, type, instance, host, "
                "body, received, server) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event["id"], event["type"], event["instance"],
                 event.get("host") or "", body, now, self.server_id))
            if cur.rowcount != 1:
                return False
            db.executemany(
                "INSERT INTO deliveries (event_id, sink, state, attempts, "
                "updated) VALUES (?, ?, 'pending', 1, ?)",
                [(event["id"], sink, now) for sink in self.sinks])
        return True

    def _delivery_rows(self, event, now):
        rows = [(event["id"], sink, now) for sink in self.sinks]
        if event["type"] == "fault":
            rows.append((event["id"], ACTIONS, now))
        return rows

    def _existing(self, db, ids):
        found = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            found.update(row[0] for row in db.execute(
                "SELECT id FROM events WHERE id IN (%s)"
                % ",".join("?" * len(chunk)), chunk))
        return found

    def owner(self, event_id):
        """The controller that owns an event (accepted it, or took it
        over), or None if the ledger does not hold it."""
        with self._lock:
            row = self._db.execute("SELECT server FROM events WHERE id = ?",
                                   (event_id,)).fetchone()
        return row[0] if row else None

    def recovered_since(self, instance, since):
        """Whether a recovery of ``instance`` arrived at or after
        ``since`` (ledger clock), through any controller."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM events WHERE instance = ? AND type = "
                "'recovery' AND received >= ? LIMIT 1",
                (instance, since)).fetchone()
        return row is not None

    def fault_recovered(self, fault):
        """Whether a recovery of ``fault`` (a fault event) is in the
        ledger."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM events WHERE instance = ? AND type = "
                "'recovery' AND received >= (SELECT received FROM events "
                "WHERE id = ?)", (fault["instance"], fault["id"])).fetchall()
        return any(json.loads(body).get("fault_id") == fault["id"]
                   for body, in rows)

    # -- deliveries ------------------------------------------------------

    def mark(self, results, now=None):
        """Record delivery outcomes: ``[(event_id, sink, state)]`` with
        state :data:`DONE` or :data:`DROPPED`."""
        if not results:
            return
        now = self._clock() if now is None else now
        with self._transaction() as db:
            db.executemany(
                "UPDATE deliveries SET state = ?, updated = ? "
                "WHERE event_id = ? AND sink = ?",
                [(state, now, event_id, sink)
                 for event_id, sink, state in results])

    def mark_later(self, event_id, sink, state):
        """Queue an outcome for the next :meth:`flush` (any thread).

        Sinks finish thousands of deliveries a second; one transaction per
        outcome would be the bottleneck.  An outcome lost in a crash only
        means the event is delivered again (at least once).
        """
        with self._marks_lock:
            self._marks.append((event_id, sink, state))

    def flush(self, now=None):
        """Write the outcomes queued by :meth:`mark_later`."""
        with self._marks_lock:
            marks, self._marks = self._marks, []
        self.mark(marks, now=now)
        return len(marks)

    def pending(self):
        """This controller's undelivered work: ``[(event, [targets])]``,
        oldest first, each dispatch counted as an attempt."""
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT e.id, e.body, d.sink FROM deliveries d "
                "JOIN events e ON e.id = d.event_id "
                "WHERE d.state = 'pending' AND e.server = ? "
                "ORDER BY e.received, e.rowid", (self.server_id,)).fetchall()
            db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, updated = ? "
                "WHERE event_id = ? AND sink = ?",
                [(now, event_id, sink) for event_id, _, sink in rows])
        result = []
        by_id = {}
        for event_id, body, sink in rows:
            if event_id not in by_id:
                by_id[event_id] = (json.loads(body), [])
                result.append(by_id[event_id])
            by_id[event_id][1].append(sink)
        return result

    def counts(self):
        """``{state: rows}`` of the delivery rows (for status and tests).
        """
        with self._lock:
            return dict(self._db.execute(
                "SELECT state, count(*) FROM deliveries GROUP BY state"))

    # -- leases ------------------------------------------------------------

    def _dead(self, row, now):
        _, hostname, pid, _, heartbeat = row
        if heartbeat < now - self.lease:
            return True
        return hostname == self.hostname and not _pid_alive(pid)

    def register(self):
        """Take this controller's lease; at start, before anything else.

        :raises ServerIdInUse: a live process holds ``server_id``.
        """
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT id, hostname, pid, started, heartbeat "
                             "FROM servers WHERE id = ?",
                             (self.server_id,)).fetchone()
            if row is not None and not self._dead(row, now) and not (
                    row[1] == self.hostname and row[2] == self.pid):
                raise ServerIdInUse(
                    "server_id %r is in use by pid %d on %s (heartbeat "
                    "%.0f s ago): give each guestha-server its own "
                    "[server] server_id" % (self.server_id, row[2], row[1],
                                            now - row[4]))
            db.execute("INSERT OR REPLACE INTO servers (id, hostname, pid, "
                       "started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                       (self.server_id, self.hostname, self.pid, now, now))

    def renew(self):
        """Renew the lease (every third of it)."""
        now = self._clock()
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO servers (id, hostname, pid, "
                       "started, heartbeat) VALUES (?, ?, ?, "
                       "COALESCE((SELECT started FROM servers WHERE id = ?),"
                       " ?), ?)",
                       (self.server_id, self.hostname, self.pid,
                        self.server_id, now, now))

    def unregister(self):
        """Give up the lease at a clean stop: another controller takes
        over at once whatever this one leaves pending."""
        with self._transaction() as db:
            db.execute("DELETE FROM servers WHERE id = ? AND pid = ?",
                       (self.server_id, self.pid))

    def live_servers(self):
        """Ids of the controllers holding a lease, sorted."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute("SELECT id, hostname, pid, started, "
                                    "heartbeat FROM servers").fetchall()
        return sorted(row[0] for row in rows if not self._dead(row, now))

    def claim_orphans(self):
        """Take over the pending work of dead controllers.

        :returns: the taken-over work, as :meth:`pending` lists it (only
            the events taken over now).
        """
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute("SELECT id, hostname, pid, started, heartbeat "
                              "FROM servers").fetchall()
            live = [row[0] for row in rows if not self._dead(row, now)]
            if self.server_id not in live:
                live.append(self.server_id)
            dead = [row[0] for row in rows if row[0] not in live]
            owners = [row[0] for row in db.execute(
                "SELECT DISTINCT e.server FROM deliveries d JOIN events e "
                "ON e.id = d.event_id WHERE d.state = 'pending'")]
            orphaned = [o for o in owners if o not in live]
            if dead:
                db.execute("DELETE FROM servers WHERE id IN (%s)"
                           % ",".join("?" * len(dead)), dead)
            if not orphaned:
                return []
            marks = ",".join("?" * len(orphaned))
            taken = db.execute(
                "SELECT e.id, e.body, d.sink FROM deliveries d JOIN events e"
                " ON e.id = d.event_id WHERE d.state = 'pending' AND "
                "e.server IN (%s) ORDER BY e.received, e.rowid" % marks,
                orphaned).fetchall()
            db.execute(
                "UPDATE events SET server = ? WHERE server IN (%s) AND id IN"
                " (SELECT event_id FROM deliveries WHERE state = 'pending')"
                % marks, [self.server_id] + orphaned)
            db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, updated = ? "
                "WHERE event_id = ? AND sink = ?",
                [(now, event_id, sink) for event_id, _, sink in taken])
        LOG.warning("took over %d undelivered event(s) of controller(s) "
                    "%s, which stopped without delivering them",
                    len({row[0] for row in taken}), ", ".join(orphaned))
        result = []
        by_id = {}
        for event_id, body, sink in taken:
            if event_id not in by_id:
                by_id[event_id] = (json.loads(body), [])
                result.append(by_id[event_id])
            by_id[event_id][1].append(sink)
        return result

    # -- corrective-action cap -------------------------------------------

    def take_action_slot(self, instance, fault_id, window, limit, now=None):
        """Count an action on ``instance`` if fewer than ``limit`` were
        counted in the last ``window`` seconds (by any controller).

        :returns: ``(granted, count)``, ``count`` being the actions in the
            window before this one; ``granted`` is None when an action
            was counted for ``fault_id`` already (at most one per fault).
        """
        now = self._clock() if now is None else now
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM action_slots WHERE instance = ? "
                          "AND fault_id = ?",
                          (instance, fault_id)).fetchone() is not None:
                return None, 0
            count = db.execute(
                "SELECT count(*) FROM action_slots WHERE instance = ? AND "
                "at > ?", (instance, now - window)).fetchone()[0]
            if count >= limit:
                return False, count
            db.execute("INSERT INTO action_slots (instance, at, fault_id) "
                       "VALUES (?, ?, ?)", (instance, now, fault_id))
        return True, count

    # -- housekeeping ------------------------------------------------------

    def prune(self, before):
        """Forget events received before ``before`` whose deliveries are
        all finished, and action counts older than that.

        :returns: the number of events forgotten.
        """
        with self._transaction() as db:
            db.execute(
                "DELETE FROM deliveries WHERE event_id IN (SELECT id FROM "
                "events WHERE received < ?) AND event_id NOT IN (SELECT "
                "event_id FROM deliveries WHERE state = 'pending')",
                (before,))
            pruned = db.execute(
                "DELETE FROM events WHERE received < ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                (before,)).rowcount
            db.execute("DELETE FROM action_slots WHERE at < ?", (before,))
        return pruned
