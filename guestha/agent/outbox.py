# SPDX-License-Identifier: Apache-2.0
"""The agent's outbox: fault reports not yet taken by a controller.

A bounded, ordered, durable queue in one sqlite3 file under the agent's
state directory.  The reporter (:mod:`guestha.agent.reporter`) puts every
event here first and deletes it only when a controller has answered that
it took responsibility for it, so a broker outage, a controller outage or
an agent restart loses nothing.

Order is the ``seq`` column, an ``INTEGER PRIMARY KEY AUTOINCREMENT``:
AUTOINCREMENT never reuses a number, even after the table was emptied, so
an event put after a restart always sorts after the ones still pending.
The event ``id`` is UNIQUE, so putting the same event twice (a retry by
the caller) is a no-op.

The same file keeps the agent's open faults (table ``open_faults``, one
row per instance with a fault not yet recovered), derived from the events
themselves: putting a ``fault`` event records it, putting its ``recovery``
removes it, in the same transaction as the event.  So a fault and the
record that it is open are one durable step: an agent killed at any
moment restarts either with both or with neither, never with a fault
whose recovery it cannot send, nor with a recovered fault it would
recover a second time.  (Until version 1 of this file the open faults
were in ``faults.json`` beside it, written separately; see
:meth:`Outbox.adopt_faults_json`.)
"""

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse

LOG = logging.getLogger(__name__)

_SCHEMA = ("CREATE TABLE IF NOT EXISTS events ("
           "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
           "id TEXT NOT NULL UNIQUE, "
           "body TEXT NOT NULL)")
_COLUMNS = ["seq", "id", "body"]
_SCHEMA_FAULTS = ("CREATE TABLE IF NOT EXISTS open_faults ("
                  "instance TEXT PRIMARY KEY, "
                  "id TEXT NOT NULL, "
                  "kind TEXT) WITHOUT ROWID")
_SCHEMA_META = ("CREATE TABLE IF NOT EXISTS meta ("
                "key TEXT PRIMARY KEY, value TEXT)")
# sqlite's primary result codes for "this is not a (sane) database file"
_SQLITE_CORRUPT = 11
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
# Bound the number of host parameters in one statement (old sqlite
# versions allow 999).
_CHUNK = 500


class Outbox(object):
    """A bounded, ordered, durable queue of event records (dicts with an
    ``id``), in the sqlite3 file ``path``.

    Bounded: when ``max_events`` are pending, putting one more drops the
    OLDEST, each logged at ERROR with its id and kind and counted in
    :attr:`dropped`.  A disk that fills up would stop the whole host, and
    an outage long enough to queue ``max_events`` reports (100,000 by
    default) has made the oldest of them stale anyway: a bounded outbox
    that keeps the newest beats an unbounded one.

    Durable: the file is in WAL mode with ``synchronous=NORMAL`` by
    default.  In WAL mode NORMAL loses nothing when the agent crashes or
    is restarted (committed pages are in the operating system's cache);
    only a power loss or kernel crash can undo the last commits, and that
    kills the host's VMs too, which host monitoring reports, not us.
    ``FULL`` adds an fsync to every put, and puts run on the agent's I/O
    loop: an fsync on a busy disk can take tens of milliseconds, during
    which no guest is challenged.  Pass ``synchronous="FULL"`` to trade
    that for power-loss safety.

    Thread-safe: one connection, used under a lock (the I/O loop puts,
    the reporter's thread peeks and acks).

    A file that is not a readable sqlite database is moved aside to
    ``<path>.corrupt-<UTC time>`` (logged at ERROR) and a new, empty
    outbox is started: the agent must keep reporting new faults.

    Methods raise ``sqlite3.Error`` when the disk fails (full, I/O
    error); the caller decides (the reporter keeps such events in memory).
    """

    def __init__(self, path, max_events, synchronous="NORMAL",
                 wallclock=time.time):
        if max_events < 1:
            raise ValueError("max_events must be >= 1, not %r"
                             % (max_events,))
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL, not %r"
                             % (synchronous,))
        self.path = path
        self.max_events = max_events
        self.synchronous = synchronous
        self._wallclock = wallclock
        #: Events dropped because the outbox was full (or unreadable rows)
        #: since this object was created.
        self.dropped = 0
        self._lock = threading.Lock()
        self._conn = None
        self._closed = False
        self._count = 0
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with self._lock:
            try:
                self._open()
            except sqlite3.OperationalError as exc:
                if not _is_disk_trouble(exc):
                    raise
                # A full disk: sqlite cannot even set up its WAL.  The
                # agent must start and monitor all the same; every use
                # tries to open the file again (and raises meanwhile, so
                # the reporter holds events in memory).
                LOG.error("cannot open the outbox %s: %s; trying again at "
                          "each use", self.path, exc)

    @property
    def unknown(self):
        """True while the file could not be opened and may hold events
        (from before this start) that cannot be seen yet."""
        if self._conn is not None or self._closed:
            return False
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    # -- opening ------------------------------------------------------------

    def _open(self):
        """Open the file (the caller holds the lock)."""
        try:
            self._conn, self._count = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            self._move_aside(exc)
            self._conn, self._count = self._connect()
        if self._count:
            LOG.info("outbox %s: %d undelivered event(s) from before this "
                     "start", self.path, self._count)
        if self._count > self.max_events:
            # max_events was lowered since they were queued
            self._transaction(self._drop_oldest,
                              self._count - self.max_events)

    def _connect(self):
        # isolation_level=None: no implicit transactions, we BEGIN and
        # COMMIT ourselves so that an insert and the drops it causes are
        # one commit.
        # timeout: how long a write waits for another process's lock (an
        # operator's sqlite3 shell, say).  Puts run on the agent's I/O
        # loop, so not long: a put that fails is kept in memory by the
        # reporter.
        conn = sqlite3.connect(self.path, check_same_thread=False,
                               isolation_level=None, timeout=1.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=%s" % self.synchronous)
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise _Corrupt("quick_check: %s" % problem)
            conn.execute(_SCHEMA)
            conn.execute(_SCHEMA_FAULTS)
            conn.execute(_SCHEMA_META)
            columns = [row[1] for row in
                       conn.execute("PRAGMA table_info(events)")]
            if columns != _COLUMNS:
                raise _Corrupt("unexpected columns %s in table events"
                               % ", ".join(columns))
            count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        return conn, count

    def _move_aside(self, exc):
        stamp = time.strftime("%Y%m%dT%H%M%SZ",
                              time.gmtime(self._wallclock()))
        aside = "%s.corrupt-%s" % (self.path, stamp)
        os.replace(self.path, aside)
        # The WAL belongs to the broken file: keep it beside it for
        # forensics, and never let it be replayed into the new one.
        for suffix in ("-wal", "-shm"):
            try:
                os.replace(self.path + suffix, aside + suffix)
            except FileNotFoundError:
                pass
        LOG.error("outbox %s is unreadable (%s): moved it aside to %s and "
                  "started an empty one; the undelivered events in it are "
                  "lost", self.path, exc, aside)

    # -- the queue ----------------------------------------------------------

    def put(self, event, pending=True):
        """Append ``event``; a no-op if an event with its id is pending.

        A ``fault`` or ``recovery`` event also updates the open faults, in
        the same transaction.  ``pending=False`` records only that (the
        event was delivered before it could be written: the reporter held
        it in memory while the disk was full).

        :returns: True if added.
        """
        return self.put_many([(event, pending)]) == 1

    def put_many(self, entries):
        """Append ``[(event, pending), ...]`` (see :meth:`put`) in order,
        in one transaction: all or nothing.

        :returns: how many events were added.
        """
        rows = [(event, json.dumps(event, separators=(",", ":")), pending)
                for event, pending in entries]
        with self._lock:
            self._check_open()
            return self._transaction(self._put_rows, rows)

    def _put_rows(self, rows):
        added = 0
        for event, body, pending in rows:
            _record_fault(self._conn, event)
            if pending and self._put(event["id"], body):
                added += 1
        return added

    def _put(self, event_id, body):
        cursor = self._conn.execute(
            "INSERT OR IGNORE INTO events (id, body) VALUES (?, ?)",
            (event_id, body))
        if cursor.rowcount == 0:
            return False
        self._count += 1
        if self._count > self.max_events:
            self._drop_oldest(self._count - self.max_events)
        return True

    def _drop_oldest(self, n):
        rows = self._conn.execute(
            "SELECT seq, id, body FROM events ORDER BY seq LIMIT ?",
            (n,)).fetchall()
        for _seq, event_id, body in rows:
            event = _decode(body) or {}
            LOG.error("outbox full (%d events): dropped the oldest, %s %s "
                      "%s of instance %s", self.max_events,
                      event.get("type"), event.get("kind"), event_id,
                      event.get("instance"))
        if rows:
            self._conn.execute("DELETE FROM events WHERE seq <= ?",
                               (rows[-1][0],))
            self._count -= len(rows)
            self.dropped += len(rows)

    def peek(self, n, skip=()):
        """The ``n`` oldest pending events, oldest first, without removing
        them: ``[(rowid, event), ...]``.  Rows whose rowid is in ``skip``
        (delivered, waiting to be deleted) are passed over."""
        with self._lock:
            self._check_open()
            rows = []
            cursor = self._conn.execute(
                "SELECT seq, body FROM events ORDER BY seq")
            try:
                for seq, body in cursor:
                    if seq in skip:
                        continue
                    rows.append((seq, body))
                    if len(rows) >= n:
                        break
            finally:
                cursor.close()
            batch = []
            bad = []
            for seq, body in rows:
                event = _decode(body)
                if event is None:
                    bad.append(seq)
                else:
                    batch.append((seq, event))
            if bad:
                # Cannot happen unless the file was damaged in a way
                # quick_check missed; one bad row must not block the rest.
                LOG.error("outbox %s: dropped %d undecodable event(s)",
                          self.path, len(bad))
                self._transaction(self._delete, bad)
                self.dropped += len(bad)
            return batch

    def ack(self, rowids):
        """Remove the events with these rowids (from :meth:`peek`)."""
        rowids = list(rowids)
        if not rowids:
            return
        with self._lock:
            self._check_open()
            self._transaction(self._delete, rowids)

    def _check_open(self):
        if self._conn is None:
            if self._closed:
                # an sqlite3.Error, like every other failure to store
                raise sqlite3.ProgrammingError("outbox %s is closed"
                                               % self.path)
            self._open()
            LOG.info("outbox %s opened", self.path)

    def _delete(self, rowids):
        deleted = 0
        for i in range(0, len(rowids), _CHUNK):
            chunk = rowids[i:i + _CHUNK]
            cursor = self._conn.execute(
                "DELETE FROM events WHERE seq IN (%s)"
                % ",".join("?" * len(chunk)), chunk)
            deleted += cursor.rowcount
        self._count -= deleted

    def _transaction(self, func, *args):
        count, dropped = self._count, self.dropped
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = func(*args)
            self._conn.execute("COMMIT")
        except BaseException:
            self._count, self.dropped = count, dropped
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return result

    def __len__(self):
        return self._count

    # -- open faults ----------------------------------------------------------

    def open_faults(self):
        """The open faults: ``{instance: {"id": ..., "kind": ...}}``.

        If the file cannot be opened (a full disk), they are read from
        the file as it is, read-only: as of its last checkpoint, which a
        clean stop makes.
        """
        with self._lock:
            try:
                self._check_open()
            except sqlite3.OperationalError as exc:
                if not _is_disk_trouble(exc) or not self.unknown:
                    raise
                return self._read_only_faults(exc)
            return {instance: {"id": fault_id, "kind": kind}
                    for instance, fault_id, kind in self._conn.execute(
                        "SELECT instance, id, kind FROM open_faults")}

    def _read_only_faults(self, why):
        uri = "file:%s?immutable=1" % urllib.parse.quote(
            os.path.abspath(self.path))
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute(
                "SELECT instance, id, kind FROM open_faults").fetchall()
        except sqlite3.OperationalError:
            rows = []  # a file from before the table existed
        finally:
            conn.close()
        LOG.warning("outbox %s cannot be opened (%s): read %d open "
                    "fault(s) from it as last checkpointed", self.path, why,
                    len(rows))
        return {instance: {"id": fault_id, "kind": kind}
                for instance, fault_id, kind in rows}

    def adopt_faults_json(self, path):
        """Take the open faults of an older agent's ``faults.json`` into
        the outbox, once, and remove the file.

        The import and the note that it was done are one transaction, so
        a crash between it and the removal does not import the file
        again (which would reopen faults recovered since).

        :returns: the number of faults adopted (0 if there was no file).
        :raises sqlite3.Error: if the outbox cannot be written (the file
            is then kept, for the next start).
        """
        try:
            with open(path) as f:
                faults = json.load(f)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            LOG.error("cannot read %s (%s): open faults from before this "
                      "start are forgotten", path, exc)
            faults = {}
        if not isinstance(faults, dict):
            faults = {}
        with self._lock:
            self._check_open()
            adopted = self._transaction(self._adopt, faults)
        os.unlink(path)
        if adopted:
            LOG.info("outbox %s: adopted %d open fault(s) from %s",
                     self.path, adopted, path)
        return adopted

    def _adopt(self, faults):
        done = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'faults_json_adopted'"
        ).fetchone()
        if done is not None:
            return 0
        adopted = 0
        for instance, fault in faults.items():
            if not (isinstance(fault, dict) and fault.get("id")):
                continue
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO open_faults (instance, id, kind) "
                "VALUES (?, ?, ?)",
                (instance, str(fault["id"]), fault.get("kind")))
            adopted += cursor.rowcount
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('faults_json_adopted', ?)",
            (str(adopted),))
        return adopted

    def close(self):
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Corrupt(sqlite3.DatabaseError):
    """The file opened but is not a sane outbox."""


def _is_corruption(exc):
    if isinstance(exc, _Corrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xff in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    # Python < 3.11 has no error codes: an OperationalError is about
    # access (permissions, locks, a missing directory), which moving the
    # file aside would not fix; other DatabaseErrors are about content.
    return not isinstance(exc, sqlite3.OperationalError)


def _record_fault(conn, event):
    """Follow a fault or a recovery in the open_faults table."""
    kind = event.get("type")
    if kind == "fault":
        conn.execute(
            "INSERT OR REPLACE INTO open_faults (instance, id, kind) "
            "VALUES (?, ?, ?)",
            (event["instance"], event["id"], event.get("kind")))
    elif kind == "recovery":
        conn.execute("DELETE FROM open_faults WHERE instance = ? AND id = ?",
                     (event["instance"], event["fault_id"]))


def _is_disk_trouble(exc):
    """A full disk or an I/O error, not a wrong path or permission."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xff in (_SQLITE_IOERR, _SQLITE_FULL)
    message = str(exc)
    return "disk" in message or "I/O" in message


def _decode(body):
    try:
        event = json.loads(body)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
