# SPDX-License-Identifier: Apache-2.0
"""The ``log`` sink: every event as one JSON object per line in a file.

The default sink: it needs no other service, so a single node runs
guestha with nothing but RabbitMQ.  Each line is the event record as the
controller has it (``id``, ``type``, ``instance``, ``host``, ``reason``
and the fields of its type, see :mod:`guestha.records`) with
``logged_at``, the UTC time it was written, in front::

    {"logged_at": "2026-01-01T12:00:00.123456+00:00", "version": "1.0",
     "id": "...", "type": "fault", "instance": "...", "kind": "missed", ...}

Durability: the dispatcher hands this sink up to :attr:`LogSink.max_batch`
events at a time; they are written with one ``write`` on a descriptor
opened with ``O_APPEND`` and then fsync'd, once per BATCH.  An fsync costs
about a millisecond on a disk (far more on a busy one); once per event it
would cap the sink at a few hundred events a second, while a burst of
faults arrives in batches anyway.  What ``send``/``send_batch`` returned
for is on disk either way; a crash can lose only a batch not yet
acknowledged, which the dispatcher still holds.

Rotation: before each batch the sink compares the inode of the path with
that of its open file; when logrotate has moved the file away (or it was
deleted) it reopens the path, so nothing is written to a rotated file
after the rotation.  ``copytruncate`` works too (appends follow the
truncation).

Exactly once: the file is this sink's own record of what it has taken.
The controller marks a batch in flight in its ledger before the sink gets
it and done right after; a controller killed in between leaves the batch
in doubt, and whoever dispatches it again (the controller restarted, or
the one that takes over its work) flags each event :data:`REDELIVERED`
and names, in :data:`REDELIVERED_FROM`, the controller that had it in
flight.  For a flagged event the sink first looks for a whole line with
its id in the last :data:`SCAN_BYTES` bytes of that controller's file and
skips the event if the line is there; what is not there is written, still
flagged.  Which file is that controller's: ``path`` itself, unless it
holds ``{server_id}`` (see :class:`LogSink`), so a controller finds the
in-doubt lines of another one when both write one file (every controller
of one host, by default), or each its own file in one directory that all
can read.  A line is found only while it is in the file at the path:
after a rotation in between it is written again (flagged).
"""

import datetime
import json
import logging
import os
import re
import time

from guestha.sinks import base

LOG = logging.getLogger(__name__)

FILE_MODE = 0o640

#: The key, true, of an event dispatched again after its delivery was in
#: doubt, and the key naming the controller that had it in flight (set
#: by :mod:`guestha.server.ledger`, which keeps the same names).
REDELIVERED = "redelivered"
REDELIVERED_FROM = "redelivered_from"
#: The placeholder of ``path`` for a controller's ``server_id``.
SERVER_ID = "{server_id}"
#: Most bytes at the end of a file searched for a redelivered event's
#: line: one batch of this sink is at most 500 lines of a few hundred
#: bytes, and this leaves room for what other controllers of a shared
#: file appended since (about 100,000 lines).
SCAN_BYTES = 64 * 1024 * 1024
#: Bytes read at a time by that search.
SCAN_CHUNK = 1024 * 1024
# a top-level "id" is confirmed by parsing the line; this finds candidates
_ID = re.compile(rb'"id":"([^"\\]{1,128})"')


def _utc_iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="microseconds")


def written_ids(path, wanted, limit=SCAN_BYTES, chunk=SCAN_CHUNK):
    """Which of the ids ``wanted`` a whole line of ``path`` (a record
    whose top-level ``id`` it is) holds, looking at the last ``limit``
    bytes, newest first, until all are found.

    A line counts only with its newline: a controller killed in the
    middle of its ``write`` leaves a torn line, which is not there.

    :raises OSError: the file exists but cannot be read.
    """
    wanted = set(wanted)
    found = set()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return found
    try:
        pos = os.fstat(fd).st_size
        stop = max(0, pos - limit)
        tail = b""   # the lines after pos, their start not yet read
        while pos > stop and found != wanted:
            start = max(stop, pos - chunk)
            # and the byte before: whether a line begins at ``start``
            before = 1 if start > 0 else 0
            data = os.pread(fd, pos - start + before, start - before) + tail
            pos = start
            first = 0
            if before:
                cut = data.find(b"\n")
                if cut < 0:
                    tail = data[1:]
                    continue
                tail, first = data[1:cut + 1], cut + 1
            end = data.rfind(b"\n") + 1
            for match in _ID.finditer(data, first, end):
                event_id = match.group(1).decode("utf-8", "replace")
                if event_id not in wanted or event_id in found:
                    continue
                begin = data.rfind(b"\n", first, match.start()) + 1
                line = data[max(begin, first):data.find(b"\n", match.end())]
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("id") == event_id:
                    found.add(event_id)
    finally:
        os.close(fd)
    return found


class LogSink(base.FaultSink):
    """Appends events to ``path`` as JSON lines.

    :param path: the file; ``{server_id}`` in it stands for a
        controller's ``server_id``: this controller's (``server_id``) for
        the file it writes, another's for the file it looks in for a
        redelivered event of that controller (see the module docstring).
    :param fsync: fsync after every batch (see the module docstring).
    :param wallclock: ``time.time``-like, for ``logged_at``.
    :param server_id: this controller's ``[server] server_id``.
    :ivar skipped_redelivered: redelivered events found in a file already,
        and not written again.
    """

    name = "log"
    event_types = base.ALL_EVENT_TYPES
    max_batch = 500

    def __init__(self, path, fsync=True, wallclock=time.time,
                 server_id=None):
        if SERVER_ID in path and not server_id:
            raise ValueError("%s in the log sink's path needs the "
                             "controller's server_id" % SERVER_ID)
        self.path_template = path
        self.server_id = server_id
        self.path = self.path_of(server_id)
        self.fsync = fsync
        self._wallclock = wallclock
        self._fd = None
        self._ino = None
        # the file ended in a torn line when it was opened: the next
        # write starts with a newline, so no record is glued to it
        self._torn = False
        self.reopened = 0
        self.skipped_redelivered = 0

    @classmethod
    def from_conf(cls, conf):
        if not conf.sinks.log_path:
            raise ValueError("[sinks] log_path is empty")
        server_id = None
        if SERVER_ID in conf.sinks.log_path:
            server_id = conf.server.server_id
        return cls(conf.sinks.log_path, fsync=conf.sinks.log_fsync,
                   server_id=server_id)

    def path_of(self, server_id):
        """The file of the controller ``server_id`` (this one's, unless
        ``path`` names each controller's)."""
        if SERVER_ID not in self.path_template:
            return self.path_template
        return self.path_template.replace(SERVER_ID, server_id or "")

    def _already_written(self, events):
        """Ids of the redelivered ``events`` whose line is in the file of
        the controller that had them in flight."""
        by_path = {}
        for event in events:
            origin = event.get(REDELIVERED_FROM) or self.server_id
            by_path.setdefault(self.path_of(origin), set()).add(event["id"])
        found = set()
        for path, ids in by_path.items():
            try:
                found |= written_ids(path, ids)
            except OSError as exc:
                # not knowing is not an outage of this sink: written
                # again, flagged (at least once)
                LOG.warning("log sink: cannot look for %d redelivered "
                            "event(s) in %s, writing them: %s", len(ids),
                            path, exc)
        return found

    def accepts(self, event):
        return isinstance(event, dict) and "type" in event

    def send(self, event):
        self.send_batch([event])

    def send_batch(self, events):
        flagged = [e for e in events
                   if e.get(REDELIVERED) and isinstance(e.get("id"), str)]
        if flagged:
            there = self._already_written(flagged)
            if there:
                LOG.info("log sink: %d redelivered event(s) already "
                         "written, not written again: %s", len(there),
                         ", ".join(sorted(there)))
                self.skipped_redelivered += len(there)
                events = [e for e in events if not (
                    e.get(REDELIVERED) and e.get("id") in there)]
                if not events:
                    return
        logged_at = _utc_iso(self._wallclock())
        lines = []
        for event in events:
            record = {"logged_at": logged_at}
            record.update(event)
            try:
                lines.append(json.dumps(record, sort_keys=False,
                                        separators=(",", ":"),
                                        ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise base.SinkRejected(sink=self.name,
                                        reason="not JSON: %s" % exc)
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        try:
            fd = self._file()
            if self._torn:
                data = b"\n" + data
            # one write of whole lines: O_APPEND puts it at the end in one
            # piece, between the writes of other processes on the file
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                self._torn = False
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            # Disk full, permissions, a vanished directory: the batch is
            # written again whole on the retry (at least once).
            self._close_fd()
            raise base.SinkUnavailable(sink=self.name, reason="%s: %s" % (
                self.path, exc))

    def _file(self):
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                rotated = (st.st_dev, st.st_ino) != self._ino
            except FileNotFoundError:
                rotated = True
            if rotated:
                LOG.info("log sink: %s was rotated or removed, reopening",
                         self.path)
                self._close_fd()
                self.reopened += 1
        if self._fd is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._fd = os.open(self.path,
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC, FILE_MODE)
            st = os.fstat(self._fd)
            self._ino = (st.st_dev, st.st_ino)
            self._torn = st.st_size > 0 and self._ends_torn(st.st_size)
        return self._fd

    def _ends_torn(self, size):
        try:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                return f.read(1) not in (b"\n", b"")
        except OSError:
            return False

    def _close_fd(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self):
        self._close_fd()
