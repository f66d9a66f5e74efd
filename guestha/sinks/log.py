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
"""

import datetime
import json
import logging
import os
import time

from guestha.sinks import base

LOG = logging.getLogger(__name__)

FILE_MODE = 0o640


def _utc_iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="microseconds")


class LogSink(base.FaultSink):
    """Appends events to ``path`` as JSON lines.

    :param fsync: fsync after every batch (see the module docstring).
    :param wallclock: ``time.time``-like, for ``logged_at``.
    """

    name = "log"
    event_types = base.ALL_EVENT_TYPES
    max_batch = 500

    def __init__(self, path, fsync=True, wallclock=time.time):
        self.path = path
        self.fsync = fsync
        self._wallclock = wallclock
        self._fd = None
        self._ino = None
        self.reopened = 0

    @classmethod
    def from_conf(cls, conf):
        if not conf.sinks.log_path:
            raise ValueError("[sinks] log_path is empty")
        return cls(conf.sinks.log_path, fsync=conf.sinks.log_fsync)

    def accepts(self, event):
        return isinstance(event, dict) and "type" in event

    def send(self, event):
        self.send_batch([event])

    def send_batch(self, events):
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
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
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
        return self._fd

    def _close_fd(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self):
        self._close_fd()
