# SPDX-License-Identifier: Apache-2.0
"""The ledger: what the controllers have accepted, and what they still
owe.

Theory of operation
-------------------
An agent deletes a fault from its outbox once a controller has answered
``report_events`` with the fault's id in ``accepted``
(:mod:`guestha.rpc.api`).  From that moment the controllers alone answer
for it, so the controller writes every event here, in a committed
transaction, before it answers:

* ``events`` holds each event once, keyed by its id (the agent's
  idempotency key), with the controller (``server``) that owns it: the
  one that accepted it first, or took it over.  An agent whose answer was
  lost sends the same events again, to any controller; they are accepted
  again (the agent must stop resending them) but are not new, so nothing
  dispatches them a second time.
* ``deliveries`` holds one row per event and delivery target: each fault
  sink, and :data:`ACTIONS` for the corrective-action worker.  A row is
  ``pending`` until the target reports ``done`` (or ``dropped``, after its
  retries); a sink's row is ``inflight`` while the sink has the event and
  the controller has not yet noted that it is done
  (:meth:`Ledger.begin_sending`).  What is owed when a controller dies is
  delivered by the next controller to look: a restarted one re-dispatches
  its own rows, and any controller takes over the rows of a controller
  whose lease ran out.
* ``servers`` holds each controller's lease: its host name, pid and last
  heartbeat.  A controller is dead when its heartbeat is older than the
  lease, or, at once, when it ran on this host and its pid is gone.  The
  lease also keeps two processes from using one ``server_id``.
* ``action_slots`` counts the corrective actions per instance, for the
  cap of ``[actions] max_actions`` per window, and ``action_caps`` has a
  row per capped instance that a controller locks while it counts: being
  in the shared database, the count holds across every controller host
  and restarts.

Where it is kept (:mod:`guestha.db`): the SQLite file ``[server]
ledger_path`` by default, for the controllers of one host; a database
all controller hosts share (``[database] connection``, MySQL/MariaDB or
Galera) for several.  The tables are versioned by alembic migrations.

A database that fails (restarts, loses the connection, deadlocks) makes
:meth:`Ledger.accept` raise one of :data:`~guestha.db.api.DB_ERRORS`: the
controller then answers the agent with an error, accepts nothing and
rejects nothing, and the agent sends the batch again.  Nothing is
"accepted" that is not committed.

Several calls' events are committed in one transaction when they arrive
together (group commit, :meth:`Ledger.accept`): each caller waits for the
commit that holds its events, and a commit's cost (an fsync on SQLite, a
round trip and a log flush on MySQL) is shared.

Delivery to the sinks is exactly once but for the deliveries in doubt:
a sink's worker marks a batch ``inflight`` before the sink gets it and
``done`` right after, and only a controller killed between the two leaves
deliveries ``inflight``; whoever dispatches them again sends them with
:data:`REDELIVERED` set (the sink may have them already; every record
carries its id), and sends what was only ``pending`` as it is.  So at
most one batch per sink per killed controller may reach its sink twice,
flagged.  See doc/source/server.rst, "Delivery to the sinks".

Order per instance across controllers: an agent's consecutive calls may
reach different controllers, whose sinks write at their own pace.  So
an instance's undelivered events follow the controller that owes the
earliest of them: :meth:`Ledger.accept` looks, in the same transaction,
for owed sink deliveries of earlier events of the new events'
instances, and hands the new events of such an instance over to the
owner of the earliest one (owner changed, deliveries :data:`HANDED`),
unless that is this controller and it has queued them all already.
The owner's keeper takes what it was handed (:meth:`Ledger.take_handed`)
within a look and queues it after the earlier ones; a dead owner's
events, in flight, pending and handed, are taken over together, in
ledger order.  See doc/source/server.rst, "Order".

A commit can fail for this process although the database made it (the
connection broke before the answer): :meth:`Ledger.settle_uncertain`.
"""

import collections
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from oslo_db import exception as db_exc
import sqlalchemy as sa

from guestha.db import api as db_api
from guestha.db import migration
from guestha.db.models import action_caps
from guestha.db.models import action_slots
from guestha.db.models import deliveries
from guestha.db.models import events as events_t
from guestha.db.models import servers
from guestha.db.models import state_changes
from guestha.db import views
from guestha import pids
from guestha import records

LOG = logging.getLogger(__name__)

#: The delivery target of the corrective-action worker (not a sink name:
#: sink names are Python identifiers from the stevedore namespace).
ACTIONS = "@actions"

PENDING, DONE, DROPPED = "pending", "done", "dropped"
#: Handed to the sink, not yet known to be done (see :meth:`Ledger.
#: begin_sending`): after its controller died, in doubt.
INFLIGHT = "inflight"
#: Accepted by another controller (or settled late by this one) and
#: handed to this delivery's owner, which has not yet taken it for
#: dispatch (see :meth:`Ledger.take_handed`): it goes after the earlier
#: deliveries of its instance.
HANDED = "handed"
#: The states of a delivery still owed.
OWED = (PENDING, INFLIGHT, HANDED)
#: The states of an owed delivery its owner has taken for dispatch (in
#: its sinks' queues, or in flight).
TAKEN = (PENDING, INFLIGHT)
#: The key a re-sent in-doubt event carries, true, to its sink.
REDELIVERED = "redelivered"
#: The key naming, in a re-sent in-doubt event, the controller that had
#: it in flight (whose sink may have it: the log sink looks in that
#: controller's file, :mod:`guestha.sinks.log`).
REDELIVERED_FROM = "redelivered_from"

#: What a failing database raises (see :mod:`guestha.db.api`).
DB_ERRORS = db_api.DB_ERRORS

# Bound parameters per IN (...) list: SQLite's old limit is 999.
_CHUNK = 500
# Ids of events whose commit failed, remembered to tell a resend apart.
_MAX_UNCERTAIN = 100000
# A transaction that lost a race (a deadlock, a duplicate key another
# controller inserted a moment earlier) is run again this many times.
_RACE_RETRIES = 5


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


class _Request(object):
    """One caller's share of a group commit."""

    __slots__ = ("valid", "now", "new", "duplicates", "reclaimed", "handed",
                 "error", "done")

    def __init__(self, valid, now):
        self.valid = valid
        self.now = now
        self.new = []
        self.duplicates = []
        self.reclaimed = []
        self.handed = {}   # id -> the controller it was handed to
        self.error = None
        self.done = False


def _rejected_key(index, event):
    if isinstance(event, dict) and isinstance(event.get("id"), str):
        return event["id"]
    return "#%d" % index


def _owed(states):
    """Whether the event has a delivery to a sink (not the action
    worker's) in one of ``states``."""
    return sa.exists().where(
        deliveries.c.event_id == events_t.c.id,
        deliveries.c.state.in_(states),
        deliveries.c.sink != ACTIONS)


#: The look of :meth:`Ledger._follow`, made once: made per call, it cost
#: about 200 us of Python (SQLAlchemy's clause objects) where SQLite runs
#: it in a few.  Driven by the instances (``events_by_instance``), each
#: event's deliveries found by their key: not by every owed delivery.
_FOLLOW = (
    sa.select(events_t.c.instance, events_t.c.id, events_t.c.server,
              _owed([HANDED]).label("handed"),
              events_t.c.received, events_t.c.seq)
    .where(events_t.c.instance.in_(sa.bindparam("instances",
                                                expanding=True)),
           _owed(OWED)))


def _chunks(values):
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def _group_work(rows, origins):
    """``[(id, body, sink, state)]`` -> ``[(event, [sinks])]``, in row
    order.  The targets an event was in flight to are in an entry of
    their own, with a copy of the event that says :data:`REDELIVERED`,
    and :data:`REDELIVERED_FROM` its owner then (``origins(id)``)."""
    result = []
    by_key = {}
    for event_id, body, sink, state in rows:
        key = (event_id, state == INFLIGHT)
        if key not in by_key:
            event = json.loads(body)
            if state == INFLIGHT:
                event[REDELIVERED] = True
                event[REDELIVERED_FROM] = origins(event_id)
            by_key[key] = (event, [])
            result.append(by_key[key])
        by_key[key][1].append(sink)
    return result


class Ledger(object):
    """The ledger of one controller process (see the module docstring).

    :param connection: a database URL (``[database] connection``) or the
        path of a SQLite file.
    :param server_id: this controller's name (``[server] server_id``).
    :param sinks: names of the delivery targets every new event gets a
        row for (the configured sinks); faults also get :data:`ACTIONS`.
    :param lease: seconds after its last heartbeat at which a controller
        counts as dead.
    :param clock: wall-clock seconds (shared between processes and hosts,
        so not ``time.monotonic``).
    :param migrate: bring the database to the newest revision at start
        (None: only a SQLite file, which belongs to this host; a shared
        database is migrated by ``guestha-manage db sync``).
    :param conf: the configuration, for ``[database]``'s engine options.
    """

    def __init__(self, connection, server_id, sinks=(), lease=30.0,
                 clock=time.time, hostname=None, pid=None, migrate=None,
                 conf=None):
        self.server_id = server_id
        self.sinks = tuple(sinks)
        if ACTIONS in self.sinks:
            raise LedgerError("%r is reserved for corrective actions"
                              % ACTIONS)
        self.lease = lease
        self._clock = clock
        self.hostname = hostname or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self._marks = []
        self._marks_lock = threading.Lock()
        #: operations the database failed, in any thread (the keeper
        #: watches it: see LedgerKeeper.database_failed)
        self.failures = 0
        self._gc_cond = threading.Condition()
        self._gc_queue = []
        self._gc_leader = False
        # events of a failed commit: the database may have committed them
        # all the same (the connection broke before the answer); then the
        # agent's resend finds them stored, owned by this controller and
        # never dispatched, and they must count as new
        # (ids, under _uncertain_lock; see settle_uncertain)
        self._uncertain = collections.OrderedDict()
        self._uncertain_lock = threading.Lock()
        # orders the events one controller received at the same instant;
        # starts above the last run's (nanoseconds since the epoch)
        self._seq = time.time_ns()
        self._seq_lock = threading.Lock()
        # held while a commit decides which new events this controller
        # dispatches itself, and while this controller takes owed rows
        # and hands them to its sinks (see order_lock)
        self._order_lock = threading.Lock()
        # new events handed to another controller (or to this one's next
        # take_handed), not to be dispatched by the caller of accept
        self._handed = set()
        self._taking = set()   # see take_handed (the keeper's thread)
        #: new events handed over so far (for status and tests)
        self.handed_count = 0
        try:
            self._engine = db_api.create_engine(connection, conf=conf)
        except DB_ERRORS as exc:
            raise LedgerError("cannot open the ledger database: %s"
                              % exc) from None
        self.url = self._engine.url.render_as_string(hide_password=True)
        self.sqlite = self._engine.dialect.name == "sqlite"
        try:
            if migrate or (migrate is None and self.sqlite):
                migration.upgrade(self._engine)
            else:
                migration.check(self._engine)
        except migration.MigrationError as exc:
            self._engine.dispose()
            raise LedgerError("%s: %s" % (self.url, exc)) from None
        except Exception as exc:  # alembic: any failure to migrate
            self._engine.dispose()
            raise LedgerError("%s: cannot migrate the ledger: %s"
                              % (self.url, exc)) from exc

    def close(self):
        self._engine.dispose()

    @property
    def order_lock(self):
        """Hold it while taking owed deliveries (:meth:`take_handed`,
        :meth:`claim_orphans`) and handing them to the sinks' queues: a
        commit of :meth:`accept` meanwhile waits, so it never finds a
        delivery this controller took but has not queued yet, and
        dispatches an instance's next event before it."""
        return self._order_lock

    # -- transactions ----------------------------------------------------

    def _run(self, work):
        """``work(conn)`` in a transaction, run again when it lost a race
        with another controller; DB_ERRORS otherwise."""
        try:
            for attempt in range(_RACE_RETRIES):
                try:
                    with self._engine.begin() as conn:
                        return work(conn)
                except (db_exc.DBDeadlock, db_exc.DBDuplicateEntry,
                        sa.exc.IntegrityError) as exc:
                    if attempt + 1 == _RACE_RETRIES:
                        raise
                    LOG.debug("ledger: transaction lost a race, again: %s",
                              exc)
        except DB_ERRORS:
            self.failures += 1
            raise

    def _read(self, work):
        """``work(conn)`` outside a transaction (a read)."""
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except DB_ERRORS:
            self.failures += 1
            raise

    def _next_seq(self):
        with self._seq_lock:
            self._seq += 1
            return self._seq

    # -- commits whose outcome we do not know -----------------------------

    def _remember_uncertain(self, ids):
        with self._uncertain_lock:
            for event_id in ids:
                self._uncertain[event_id] = None
                self._uncertain.move_to_end(event_id)
            while len(self._uncertain) > _MAX_UNCERTAIN:
                self._uncertain.popitem(last=False)

    def _is_uncertain(self, event_id):
        with self._uncertain_lock:
            return event_id in self._uncertain

    def _take_uncertain(self, event_id):
        """Forget ``event_id`` as uncertain; whether it was."""
        with self._uncertain_lock:
            return self._uncertain.pop(event_id, False) is None

    @contextlib.contextmanager
    def _leading(self):
        """Be the group commit's leader (see :meth:`_commit_grouped`): no
        commit of this process that may settle an uncertain event runs
        meanwhile."""
        with self._gc_cond:
            while self._gc_leader:
                self._gc_cond.wait()
            self._gc_leader = True
        try:
            yield
        finally:
            with self._gc_cond:
                self._gc_leader = False
                self._gc_cond.notify_all()

    @property
    def uncertain(self):
        """How many events of failed commits are still unsettled."""
        return len(self._uncertain)

    def settle_uncertain(self):
        """The events of commits that failed for this controller but
        that the database holds all the same, owned by this controller.

        A commit can fail for the client after the database committed it
        (the connection broke before the answer).  The agent then sends
        the events again, to any controller: another one finds them stored
        and answers "accepted" without handing them on, and so would this
        one, but for :meth:`_store`'s check.  Nobody else ever dispatches
        them either (their owner lives), so the keeper calls this as soon
        as the database answers again (:class:`~guestha.server.keeper.
        LedgerKeeper`): what the database holds is handed to this
        controller's next :meth:`take_handed` (which queues it in ledger
        order with whatever else it was handed), what it does not hold is
        forgotten (the agent sends it again).  It runs as the group
        commit's leader, so that no commit of this process settles the
        same events meanwhile.

        :returns: the ids handed to :meth:`take_handed`.
        """
        if not self._uncertain:
            return []
        with self._leading():
            with self._uncertain_lock:
                ids = list(self._uncertain)

            def work(conn):
                owners = self._owners(conn, ids)
                mine = [i for i in ids if owners.get(i) == self.server_id]
                for chunk in _chunks(mine):
                    # never queued here (take_handed forgets the ones it
                    # queued): pending -> handed; handed stays
                    conn.execute(deliveries.update().where(
                        deliveries.c.event_id.in_(chunk),
                        deliveries.c.state == PENDING).values(
                            state=HANDED))
                return mine

            mine = self._run(work)
            with self._uncertain_lock:
                for event_id in ids:
                    self._uncertain.pop(event_id, None)
        if mine:
            LOG.warning("dispatching %d event(s) whose commit failed for "
                        "this controller but happened (their resend was "
                        "answered without them)", len(mine))
        return mine

    # -- events ----------------------------------------------------------

    def accept(self, events, now=None):
        """Validate ``events`` and store the valid ones.

        When this returns, every event in ``new`` and ``duplicates`` is
        committed: the caller may answer the agent.  Callers that come
        together share one transaction (group commit): the first one in
        commits for everyone queued, the others wait for that commit.

        :returns: :class:`Accepted`.
        :raises: one of :data:`DB_ERRORS`: nothing of the batch is
            accepted (nor rejected for good).
        """
        now = self._clock() if now is None else now
        rejected = {}
        valid = []
        seen = set()
        duplicates = []
        for index, event in enumerate(events):
            try:
                records.validate_event(event)
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
            request = _Request(valid, now)
            self._commit_grouped(request)
            new = request.new
            duplicates.extend(request.duplicates)
        return Accepted(new, duplicates, rejected)

    def _commit_grouped(self, request):
        with self._gc_cond:
            self._gc_queue.append(request)
            while not request.done and self._gc_leader:
                self._gc_cond.wait()
            if not request.done:
                # the leader now: commit whatever is queued, own included
                self._gc_leader = True
                batch, self._gc_queue = self._gc_queue, []
            else:
                batch = None
        if batch is not None:
            try:
                with self._order_lock:
                    self._run(lambda conn: self._store(conn, batch))
                self._settle_reclaimed(batch)
                self._note_handed(batch)
            except BaseException as exc:
                for req in batch:
                    req.error = exc
                    req.new, req.duplicates = [], []
                self._remember_uncertain(
                    event["id"] for req in batch for event, _ in req.valid)
            finally:
                with self._gc_cond:
                    for req in batch:
                        req.done = True
                    self._gc_leader = False
                    self._gc_cond.notify_all()
        if request.error is not None:
            raise request.error

    def _settle_reclaimed(self, batch):
        """After the commit: the events of a failed commit of ours that
        :meth:`_store` found stored, or stored itself, are new to the
        caller that takes them from the uncertain ones first (this one, or
        the keeper's :meth:`settle_uncertain`), a duplicate to the
        other."""
        for req in batch:
            lost = {event_id for event_id in req.reclaimed
                    if not self._take_uncertain(event_id)}
            if lost:
                req.new = [e for e in req.new if e["id"] not in lost]
                req.duplicates.extend(lost)

    def _note_handed(self, batch):
        """After the commit: the new events handed over, which the
        caller of :meth:`accept` must not dispatch (:meth:`handed_over`).
        """
        to = collections.Counter()
        for req in batch:
            to.update(req.handed.values())
        if not to:
            return
        with self._uncertain_lock:
            self._handed.update(i for req in batch for i in req.handed)
            self.handed_count += sum(to.values())
        for owner, count in sorted(to.items()):
            LOG.info("handed %d new event(s) to %s, which owes earlier "
                     "events of their instance(s)", count,
                     "itself (its next look)" if owner == self.server_id
                     else owner)

    def handed_over(self, event_id):
        """Whether :meth:`accept` handed the new event ``event_id`` over
        (to the controller that owes earlier events of its instance, or
        to this one's :meth:`take_handed`), so that its caller must not
        dispatch it; answers True once."""
        with self._uncertain_lock:
            if event_id in self._handed:
                self._handed.discard(event_id)
                return True
            return False

    def _follow(self, conn, instances):
        """``{instance: (owner, latest)}`` for the instances whose new
        events must follow earlier ones still owed to a sink: ``owner``
        owns the earliest of those (in ledger order) and ``latest`` is the
        newest ``received`` of them.  An instance is not there when
        nothing is owed, or only deliveries this controller already took
        for dispatch (its sinks' queues keep the order)."""
        found = []
        for chunk in _chunks(sorted(instances)):
            found.extend(conn.execute(_FOLLOW, {"instances": chunk}).all())
        earliest = {}
        latest = {}
        waiting = set()
        for instance, event_id, server, handed, received, seq in found:
            if (instance not in earliest
                    or (received, seq) < earliest[instance][:2]):
                earliest[instance] = (received, seq, server)
            latest[instance] = max(received, latest.get(instance, received))
            if server == self.server_id and (
                    handed or self._is_uncertain(event_id)):
                # owed here but not in this controller's queues yet
                waiting.add(instance)
        return {instance: (server, latest[instance])
                for instance, (_, _, server) in earliest.items()
                if server != self.server_id or instance in waiting}

    def _store(self, conn, batch):
        ids = [e["id"] for req in batch for e, _ in req.valid]
        stored = self._owners(conn, ids)
        rows = []
        targets = []
        fresh = []  # (event, received) for the API's tables
        for req in batch:
            req.new, req.duplicates, req.reclaimed = [], [], []
            req.handed = {}
            for event, body in req.valid:
                owner = stored.get(event["id"])
                if owner is not None:
                    if (owner == self.server_id
                            and self._is_uncertain(event["id"])):
                        # committed by a commit that failed for us: this
                        # process never dispatched it (unless the keeper
                        # does meanwhile: _settle_reclaimed)
                        req.new.append(event)
                        req.reclaimed.append(event["id"])
                        stored[event["id"]] = owner
                    else:
                        req.duplicates.append(event["id"])
                    continue
                stored[event["id"]] = self.server_id
                req.new.append(event)
                if self._is_uncertain(event["id"]):
                    # a failed commit of ours that did not happen: this
                    # one stores it, and settles it (_settle_reclaimed)
                    req.reclaimed.append(event["id"])
                rows.append({"id": event["id"], "type": event["type"],
                             "instance": event["instance"],
                             "host": event["host"], "body": body,
                             "received": req.now, "server": self.server_id,
                             "seq": self._next_seq()})
                targets.extend(self._delivery_rows(event, req.now))
                fresh.append((event, req.now))
        follow = {}
        if rows and self.sinks:
            follow = self._follow(conn, {row["instance"] for row in rows})
        if follow:
            self._hand_over(batch, rows, targets, follow)
        if rows:
            conn.execute(events_t.insert(), rows)
            conn.execute(deliveries.insert(), targets)
            views.record(conn, fresh, self.server_id)

    def _hand_over(self, batch, rows, targets, follow):
        """The new events of the instances in ``follow`` (see
        :meth:`_follow`) go to the owner of their instance's earliest
        owed delivery, after it: owned by it, their deliveries
        :data:`HANDED` (that owner takes them at its next
        :meth:`take_handed`), and ``received`` after the owed ones' (the
        ledger order, whatever the clocks of the hosts)."""
        handed = {}
        for row in rows:
            if row["instance"] in follow:
                owner, latest = follow[row["instance"]]
                row["server"] = owner
                row["received"] = max(row["received"], latest + 1e-6)
                handed[row["id"]] = owner
        for target in targets:
            if target["event_id"] in handed:
                target["state"] = HANDED
        for req in batch:
            for event in req.new:
                if event["id"] in handed:
                    req.handed[event["id"]] = handed[event["id"]]

    def record(self, event, now=None):
        """Store an event this controller made itself (an action record)
        for delivery to the sinks; it need not pass
        :func:`~guestha.records.validate_event`.

        :returns: True if stored, False if an event with its id exists.
        """
        now = self._clock() if now is None else now
        body = json.dumps(event, separators=(",", ":"))

        def work(conn):
            owner = self._owners(conn, [event["id"]]).get(event["id"])
            if owner is not None:
                # stored by a commit that failed for us (see accept):
                # this process never handed it on
                mine = (owner == self.server_id
                        and self._is_uncertain(event["id"]))
                return "reclaim" if mine else False
            if self._is_uncertain(event["id"]):
                # a failed commit of ours that did not happen: stored now
                reclaim = "reclaim"
            else:
                reclaim = True
            conn.execute(events_t.insert(), [{
                "id": event["id"], "type": event["type"],
                "instance": event["instance"],
                "host": event.get("host") or "", "body": body,
                "received": now, "server": self.server_id,
                "seq": self._next_seq()}])
            views.record(conn, [(event, now)], self.server_id)
            if self.sinks:
                conn.execute(deliveries.insert(), [
                    {"event_id": event["id"], "sink": sink,
                     "state": PENDING, "attempts": 1, "updated": now}
                    for sink in self.sinks])
            return reclaim

        try:
            with self._leading():   # see settle_uncertain
                stored = self._run(work)
                if stored == "reclaim":
                    stored = self._take_uncertain(event["id"])
        except DB_ERRORS:
            self._remember_uncertain([event["id"]])
            raise
        return stored

    def _delivery_rows(self, event, now):
        rows = [{"event_id": event["id"], "sink": sink, "state": PENDING,
                 "attempts": 1, "updated": now} for sink in self.sinks]
        if event["type"] == "fault":
            rows.append({"event_id": event["id"], "sink": ACTIONS,
                         "state": PENDING, "attempts": 1, "updated": now})
        return rows

    def _existing(self, conn, ids):
        return set(self._owners(conn, ids))

    def _owners(self, conn, ids):
        found = {}
        for chunk in _chunks(ids):
            found.update(conn.execute(
                sa.select(events_t.c.id, events_t.c.server).where(
                    events_t.c.id.in_(chunk))).all())
        return found

    def owner(self, event_id):
        """The controller that owns an event (accepted it, or took it
        over), or None if the ledger does not hold it."""
        return self._read(lambda conn: conn.execute(
            sa.select(events_t.c.server).where(
                events_t.c.id == event_id)).scalar())

    def recovered_since(self, instance, since):
        """Whether a recovery of ``instance`` arrived at or after
        ``since`` (ledger clock), through any controller."""
        return self._read(lambda conn: conn.execute(
            sa.select(events_t.c.id).where(
                events_t.c.instance == instance,
                events_t.c.type == "recovery",
                events_t.c.received >= since).limit(1)).first() is not None)

    def fault_recovered(self, fault):
        """Whether a recovery of ``fault`` (a fault event) is in the
        ledger."""
        received = sa.select(events_t.c.received).where(
            events_t.c.id == fault["id"]).scalar_subquery()
        bodies = self._read(lambda conn: conn.execute(
            sa.select(events_t.c.body).where(
                events_t.c.instance == fault["instance"],
                events_t.c.type == "recovery",
                events_t.c.received >= received)).scalars().all())
        return any(json.loads(body).get("fault_id") == fault["id"]
                   for body in bodies)

    # -- deliveries ------------------------------------------------------

    def mark(self, results, now=None):
        """Record delivery outcomes: ``[(event_id, sink, state)]`` with
        state :data:`DONE` or :data:`DROPPED`."""
        if not results:
            return
        now = self._clock() if now is None else now
        statement = deliveries.update().where(
            deliveries.c.event_id == sa.bindparam("b_id"),
            deliveries.c.sink == sa.bindparam("b_sink")).values(
                state=sa.bindparam("b_state"), updated=now)
        self._run(lambda conn: conn.execute(statement, [
            {"b_id": event_id, "b_sink": sink, "b_state": state}
            for event_id, sink, state in results]))

    def begin_sending(self, sink, event_ids, now=None):
        """Note that ``event_ids`` are handed to ``sink`` now: the sink's
        worker calls this right before the sink, and :meth:`mark` right
        after.  In between, each delivery is :data:`INFLIGHT`; a
        controller that dies then leaves it so, and whoever dispatches it
        again (:meth:`pending` after a restart, :meth:`claim_orphans`)
        knows that the sink may have it already and says so
        (:data:`REDELIVERED`).

        Only the deliveries of events this controller still owns, and
        still owes, are sent: another controller may have taken an event
        over meanwhile (it thought this one dead while the database was
        away), and the event's row is locked for the check, so that a
        take-over either waits for this transaction (and finds the
        delivery in flight) or comes first (and this controller leaves
        the event alone).

        :returns: the set of ids to send now.
        :raises: one of :data:`DB_ERRORS`; then send nothing yet.
        """
        now = self._clock() if now is None else now
        ids = list(dict.fromkeys(event_ids))

        def work(conn):
            mine = []
            for chunk in _chunks(ids):
                owed = conn.execute(
                    sa.select(deliveries.c.event_id)
                    .select_from(deliveries.join(
                        events_t, events_t.c.id == deliveries.c.event_id))
                    .where(deliveries.c.event_id.in_(chunk),
                           deliveries.c.sink == sink,
                           deliveries.c.state.in_(TAKEN),
                           events_t.c.server == self.server_id)
                    .with_for_update()).scalars().all()
                if owed:
                    conn.execute(deliveries.update().where(
                        deliveries.c.event_id.in_(owed),
                        deliveries.c.sink == sink).values(
                            state=INFLIGHT, updated=now))
                    mine.extend(owed)
            return set(mine)

        return self._run(work)

    def mark_later(self, event_id, sink, state):
        """Queue an outcome for the next :meth:`flush` (any thread).

        Sinks finish thousands of deliveries a second; one transaction per
        outcome would be the bottleneck.  An outcome lost in a crash only
        means the event is delivered again (at least once).
        """
        with self._marks_lock:
            self._marks.append((event_id, sink, state))

    def flush(self, now=None):
        """Write the outcomes queued by :meth:`mark_later`; if the
        database fails, they stay queued for the next flush."""
        with self._marks_lock:
            marks, self._marks = self._marks, []
        try:
            self.mark(marks, now=now)
        except BaseException:
            # whatever failed, the outcomes are not written: keep them
            with self._marks_lock:
                self._marks[:0] = marks
            raise
        return len(marks)

    def _pending_rows(self, conn, where):
        return conn.execute(
            sa.select(events_t.c.id, events_t.c.body, deliveries.c.sink,
                      deliveries.c.state)
            .select_from(deliveries.join(
                events_t, events_t.c.id == deliveries.c.event_id))
            .where(deliveries.c.state.in_(OWED), where)
            .order_by(events_t.c.received, events_t.c.seq,
                      deliveries.c.sink)).all()

    def _count_attempts(self, conn, rows, now):
        if rows:
            conn.execute(deliveries.update().where(
                deliveries.c.event_id == sa.bindparam("b_id"),
                deliveries.c.sink == sa.bindparam("b_sink")).values(
                    attempts=deliveries.c.attempts + 1, updated=now,
                    # taken for dispatch now: no longer only handed
                    state=sa.case((deliveries.c.state == HANDED, PENDING),
                                  else_=deliveries.c.state)),
                [{"b_id": event_id, "b_sink": sink}
                 for event_id, _, sink, _ in rows])

    def pending(self, targets=None):
        """This controller's undelivered work: ``[(event, [targets])]``,
        oldest first, each dispatch counted as an attempt.  The targets
        a delivery was in flight to (the last run died before it was
        done) come in an entry of their own, the event flagged
        :data:`REDELIVERED`.

        :param targets: only these delivery targets (default: all).
        """
        now = self._clock()
        where = events_t.c.server == self.server_id
        if targets is not None:
            where = sa.and_(where, deliveries.c.sink.in_(list(targets)))

        def work(conn):
            rows = self._pending_rows(conn, where)
            self._count_attempts(conn, rows, now)
            return rows

        return _group_work(self._run(work), lambda _: self.server_id)

    def take_handed(self):
        """The events handed to this controller (by another one's
        :meth:`accept`, or by its own when earlier events of the instance
        were not in its queues yet), to dispatch now, in ledger order:
        after the earlier events of their instances, which this
        controller has taken already.  The keeper calls it at each look
        (every :data:`~guestha.server.keeper.FLUSH_INTERVAL`), holding
        :attr:`order_lock` until the work is queued.

        :returns: the work, as :meth:`pending` lists it.
        """
        handed = sa.and_(events_t.c.server == self.server_id,
                         deliveries.c.state == HANDED)
        joined = deliveries.join(events_t,
                                 events_t.c.id == deliveries.c.event_id)
        # a read, not a write, when nothing was handed (the usual case)
        found = self._read(lambda conn: conn.execute(
            sa.select(deliveries.c.event_id).distinct().select_from(joined)
            .where(handed)).scalars().all())
        # the events of a look whose commit failed for this controller:
        # taken (pending) if the database made it, never queued
        retry = sorted(self._taking)
        if not found and not retry:
            return []
        mine = handed
        if retry:
            mine = sa.or_(handed, sa.and_(
                events_t.c.server == self.server_id,
                deliveries.c.state == PENDING,
                events_t.c.id.in_(retry)))
        now = self._clock()

        taking = set(found)

        def work(conn):
            rows = self._pending_rows(conn, mine)
            taking.update(row[0] for row in rows)
            self._count_attempts(conn, rows, now)
            return rows

        try:
            rows = self._run(work)
        except DB_ERRORS:
            self._taking.update(taking)
            raise
        self._taking.clear()
        with self._uncertain_lock:
            # queued now: not settle_uncertain's to hand on again
            for event_id in taking:
                self._uncertain.pop(event_id, None)
        return _group_work(rows, lambda _: self.server_id)

    def counts(self):
        """``{state: rows}`` of the delivery rows (for status and tests).
        """
        with self._engine.connect() as conn:
            return dict(conn.execute(
                sa.select(deliveries.c.state, sa.func.count())
                .group_by(deliveries.c.state)).all())

    # -- leases ------------------------------------------------------------

    def _dead(self, row, now):
        if row.heartbeat < now - self.lease:
            return True
        return row.hostname == self.hostname and not pids.alive(row.pid)

    def _lease_row(self, now, started):
        return {"hostname": self.hostname, "pid": self.pid,
                "started": started, "heartbeat": now}

    def register(self):
        """Take this controller's lease; at start, before anything else.

        :raises ServerIdInUse: a live process holds ``server_id``.
        """
        now = self._clock()

        def work(conn):
            row = conn.execute(sa.select(servers).where(
                servers.c.id == self.server_id).with_for_update()).first()
            if row is None:
                conn.execute(servers.insert().values(
                    id=self.server_id, **self._lease_row(now, now)))
                return
            if not self._dead(row, now) and not (
                    row.hostname == self.hostname and row.pid == self.pid):
                raise ServerIdInUse(
                    "server_id %r is in use by pid %d on %s (heartbeat "
                    "%.0f s ago): give each guestha-server its own "
                    "[server] server_id" % (self.server_id, row.pid,
                                            row.hostname,
                                            now - row.heartbeat))
            conn.execute(servers.update().where(
                servers.c.id == self.server_id).values(
                    **self._lease_row(now, now)))

        self._run(work)

    def renew(self):
        """Renew the lease (every third of it)."""
        now = self._clock()

        def work(conn):
            updated = conn.execute(servers.update().where(
                servers.c.id == self.server_id).values(
                    hostname=self.hostname, pid=self.pid,
                    heartbeat=now)).rowcount
            if not updated:
                # another controller thought this one dead (its lease ran
                # out while the database was away) and took its work over
                LOG.warning("%s: lease found expired; taken again",
                            self.server_id)
                conn.execute(servers.insert().values(
                    id=self.server_id, **self._lease_row(now, now)))

        self._run(work)

    def unregister(self):
        """Give up the lease at a clean stop: another controller takes
        over at once whatever this one leaves pending."""
        self._run(lambda conn: conn.execute(servers.delete().where(
            servers.c.id == self.server_id, servers.c.pid == self.pid)))

    def live_servers(self):
        """Ids of the controllers holding a lease, sorted."""
        now = self._clock()
        rows = self._read(lambda conn: conn.execute(
            sa.select(servers)).all())
        return sorted(row.id for row in rows if not self._dead(row, now))

    def claim_orphans(self):
        """Take over the pending work of dead controllers.

        Safe when several controllers look at once: the events change
        owner in one UPDATE (rows locked, the condition checked again on
        the committed row), to a token of this call, and only the rows
        that carry the token are dispatched, so an orphan goes to one
        controller.

        :returns: the taken-over work, as :meth:`pending` lists it (only
            the events taken over now).
        """
        now = self._clock()
        token = "%s#%s" % (self.server_id[:200], uuid.uuid4().hex)

        def work(conn):
            rows = conn.execute(sa.select(servers)).all()
            live = {row.id for row in rows if not self._dead(row, now)}
            live.add(self.server_id)
            dead = [row for row in rows if row.id not in live]
            owners = conn.execute(
                sa.select(events_t.c.server).distinct()
                .select_from(deliveries.join(
                    events_t, events_t.c.id == deliveries.c.event_id))
                .where(deliveries.c.state.in_(OWED))).scalars().all()
            orphaned = sorted(o for o in owners if o not in live)
            for row in dead:  # unless it came back meanwhile
                conn.execute(servers.delete().where(
                    servers.c.id == row.id,
                    servers.c.heartbeat == row.heartbeat))
            if not orphaned:
                return orphaned, [], {}
            # whose they were: an in-doubt delivery may be in the sink
            # of that controller (the log sink's file)
            inflight_ids = sa.select(deliveries.c.event_id).where(
                deliveries.c.state == INFLIGHT)
            owned = dict(conn.execute(
                sa.select(events_t.c.id, events_t.c.server).where(
                    events_t.c.server.in_(orphaned),
                    events_t.c.id.in_(inflight_ids))).all())
            pending_ids = sa.select(deliveries.c.event_id).where(
                deliveries.c.state.in_(OWED))
            conn.execute(events_t.update().where(
                events_t.c.server.in_(orphaned),
                events_t.c.id.in_(pending_ids)).values(server=token))
            taken = self._pending_rows(conn, events_t.c.server == token)
            conn.execute(events_t.update().where(
                events_t.c.server == token).values(server=self.server_id))
            self._count_attempts(conn, taken, now)
            return orphaned, taken, owned

        orphaned, taken, owned = self._run(work)
        if taken:
            LOG.warning("took over %d undelivered event(s) of "
                        "controller(s) %s, which stopped without "
                        "delivering them", len({row[0] for row in taken}),
                        ", ".join(orphaned))
        return _group_work(taken, owned.get)

    # -- Nova's state changes, for the one relay --------------------------

    def record_state_change(self, change_id, instance, state, event,
                            host=None, at=None, now=None):
        """Record a state change heard from Nova, once per ``change_id``
        (the notification's message id: every controller hears the same
        message in its pool, and each records it).

        :returns: whether this call recorded it (False: recorded before).
        """
        now = self._clock() if now is None else now
        row = {"id": change_id, "instance": instance, "state": state,
               "event": event, "host": host,
               "at": now if at is None else at, "received": now,
               "recorded_by": self.server_id}

        def work(conn):
            if conn.execute(sa.select(state_changes.c.id).where(
                    state_changes.c.id == change_id)).first():
                return False
            # a duplicate key (another controller inserted it a moment
            # earlier) runs this again, which then finds it
            conn.execute(state_changes.insert().values(**row))
            return True

        return self._run(work)

    def claim_state_changes(self, since, now=None):
        """Take the state changes recorded since ``since`` that no relay
        has told yet, to tell them: each goes to one caller, even when two
        controllers think they relay (the rows change hands in one
        UPDATE, to a token of this call).

        :returns: ``[(change, told_before)]`` in Nova's order, ``change``
            a dict of the row, ``told_before`` the state last told of its
            instance before it (None if none).
        """
        now = self._clock() if now is None else now
        token = "%s#%s" % (self.server_id[:200], uuid.uuid4().hex)
        untold = sa.and_(state_changes.c.told_by.is_(None),
                         state_changes.c.received >= since)
        # the relay looks every second: a read, not a write, when there
        # is nothing to tell
        if self._read(lambda conn: conn.execute(
                sa.select(state_changes.c.id).where(untold).limit(1)
        ).first()) is None:
            return []

        def work(conn):
            if not conn.execute(state_changes.update().where(untold).values(
                    told_by=token, told=now)).rowcount:
                return []
            rows = [dict(row._mapping) for row in conn.execute(
                sa.select(state_changes).where(
                    state_changes.c.told_by == token).order_by(
                        state_changes.c.at, state_changes.c.received))]
            claimed = []
            for row in rows:
                before = conn.execute(
                    sa.select(state_changes.c.state).where(
                        state_changes.c.instance == row["instance"],
                        state_changes.c.told_by.is_not(None),
                        state_changes.c.told_by != token,
                        state_changes.c.at < row["at"])
                    .order_by(state_changes.c.at.desc()).limit(1)
                ).scalar()
                row["told_by"] = self.server_id
                claimed.append((row, before))
            conn.execute(state_changes.update().where(
                state_changes.c.told_by == token).values(
                    told_by=self.server_id))
            return claimed

        return self._run(work)

    # -- corrective-action cap -------------------------------------------

    def take_action_slot(self, instance, fault_id, window, limit, now=None):
        """Count an action on ``instance`` if fewer than ``limit`` were
        counted in the last ``window`` seconds (by any controller).

        Atomic across controllers: the instance's ``action_caps`` row is
        locked for the count and the insert.

        :returns: ``(granted, count)``, ``count`` being the actions in the
            window before this one; ``granted`` is None when an action
            was counted for ``fault_id`` already (at most one per fault).
        """
        now = self._clock() if now is None else now

        def work(conn):
            locked = conn.execute(sa.select(action_caps.c.instance).where(
                action_caps.c.instance == instance).with_for_update()).first()
            if locked is None:
                # a duplicate key here (another controller inserted it
                # first) runs the transaction again, which then locks it
                conn.execute(action_caps.insert().values(
                    instance=instance, updated=now))
            if conn.execute(sa.select(action_slots.c.at).where(
                    action_slots.c.instance == instance,
                    action_slots.c.fault_id == fault_id)).first():
                return None, 0
            count = conn.execute(sa.select(sa.func.count()).where(
                action_slots.c.instance == instance,
                action_slots.c.at > now - window)).scalar()
            if count >= limit:
                return False, count
            conn.execute(action_slots.insert().values(
                instance=instance, at=now, fault_id=fault_id))
            conn.execute(action_caps.update().where(
                action_caps.c.instance == instance).values(updated=now))
            return True, count

        return self._run(work)

    # -- housekeeping ------------------------------------------------------

    def prune(self, before):
        """Forget events received before ``before`` whose deliveries are
        all finished, and action counts older than that.

        :returns: the number of events forgotten.
        """
        def work(conn):
            old = sa.select(events_t.c.id).where(events_t.c.received < before)
            still = sa.select(deliveries.c.event_id).where(
                deliveries.c.state.in_(OWED))
            done = conn.execute(old.where(
                events_t.c.id.not_in(still))).scalars().all()
            pruned = 0
            for chunk in _chunks(done):
                conn.execute(deliveries.delete().where(
                    deliveries.c.event_id.in_(chunk)))
                pruned += conn.execute(events_t.delete().where(
                    events_t.c.id.in_(chunk))).rowcount
            conn.execute(action_slots.delete().where(
                action_slots.c.at < before))
            conn.execute(action_caps.delete().where(
                action_caps.c.updated < before))
            conn.execute(state_changes.delete().where(
                state_changes.c.received < before))
            views.prune(conn, before)
            return pruned

        return self._run(work)
