# SPDX-License-Identifier: Apache-2.0
"""The outbox as the reporter uses it: on disk when the disk lets it, in
memory when not.

The disk and the bus fail apart (see :mod:`guestha.agent.reporter`); this
is the disk's half.  When the outbox cannot be written (a full disk),
:meth:`FallbackOutbox.put` holds the event in memory (at most ``limit``,
oldest dropped first), and so does every later one, behind it, until
:meth:`FallbackOutbox.retry` has written them all to the outbox.  Batches
for delivery come from the disk first, then from memory
(:meth:`FallbackOutbox.next_batch`).  A held event that was delivered is
not written as pending, only its effect on the open faults (see the
outbox); a delivered event the outbox cannot delete is remembered in
memory, not sent again, and deleted when the disk lets us.  While the
outbox cannot be read, the held events wait, since events in the file may
be older.  Each condition (cannot write, delete or read the outbox) is
logged once when it starts, saying how many events are kept where, and
once when it ends.

It keeps the disk's condition and when to try again (``retry_interval``
after a failure); the caller's thread does the trying.  The I/O loop's
``put`` and the sender thread share it under one lock.
"""

import collections
import itertools
import logging
import sqlite3
import threading
import time

# The reporter's logger: these are the reporter's messages, as before the
# disk's half had a class of its own.
LOG = logging.getLogger("guestha.agent.reporter")

# Held events written to the outbox in one transaction (the I/O loop's
# put waits for at most one such transaction).
_SAVE_CHUNK = 100


class Held(object):
    """An event the outbox could not take, held in memory."""

    __slots__ = ("event", "delivered")

    def __init__(self, event):
        self.event = event
        # delivered, but not yet written: only its open-fault record is
        # still to be written (see Outbox.put's pending)
        self.delivered = False


class FallbackOutbox(object):
    """An :class:`~guestha.agent.outbox.Outbox` with events held in memory
    while the disk fails.

    :param limit: events held in memory at most.
    :param retry_interval: seconds between two tries of an outbox that
        failed (a try costs one failed sqlite statement).
    :param clock: monotonic seconds, for the next try.
    """

    def __init__(self, outbox, limit, retry_interval=1.0,
                 clock=time.monotonic):
        self.outbox = outbox
        self.limit = limit
        self.retry_interval = retry_interval
        self._clock = clock
        # Events the outbox could not take (disk full), oldest first; all
        # are newer than every event on disk.  While there are any, new
        # ones queue behind them, so that order holds.
        self._held = collections.deque()
        self._held_waiting = 0        # held and not delivered
        self._held_dropped = 0        # since this start
        self._dropped_unlogged = 0    # since the disk started failing
        self.lock = threading.Lock()
        # rowids of delivered events the outbox could not delete: not
        # sent again, deleted when the disk lets us
        self._acks = set()
        # the disk's condition: the operations failing now ("write",
        # "delete", "read") and the latest error
        self._failing = set()
        #: the latest error while the disk fails, else None
        self.error = None
        #: when to try the disk again (clock seconds), or None
        self.due = None
        self._failed_ops = set()      # since the disk was last fine
        self._saved = 0               # held events written since failing
        self._deleted = 0

    # -- the I/O loop's side ------------------------------------------------

    def put(self, event):
        """Write ``event`` to the outbox, or hold it in memory if the
        outbox cannot take it or events are held already."""
        with self.lock:
            if not self._held:
                try:
                    self.outbox.put(event)
                except sqlite3.Error as exc:
                    self._hold(event)
                    self.failed("write", exc)
            else:
                self._hold(event)

    def _hold(self, event):
        if len(self._held) >= self.limit:
            old = self._held.popleft()
            if not old.delivered:
                self._held_waiting -= 1
                self._held_dropped += 1
                self._dropped_unlogged += 1
                if self._dropped_unlogged == 1:
                    LOG.error("reporter: %d events are held in memory, the "
                              "most it keeps, and the outbox %s still "
                              "cannot be written: dropping the oldest, "
                              "first %s event %s of instance %s (how many "
                              "is logged when the outbox is writable "
                              "again)", self.limit, self.outbox.path,
                              old.event.get("type"), old.event.get("id"),
                              old.event.get("instance"))
        self._held.append(Held(event))
        self._held_waiting += 1

    # -- what is kept where -------------------------------------------------

    def counts(self):
        """``(on disk, in memory)``: events waiting for delivery."""
        return (max(0, len(self.outbox) - len(self._acks)),
                self._held_waiting)

    @property
    def dropped(self):
        """Events dropped: by the outbox (full) and from memory."""
        return self.outbox.dropped + self._held_dropped

    def holding(self):
        """True if something is held in memory: events, or deletions."""
        return bool(self._held or self._acks)

    def trouble(self):
        """True if the disk needs a :meth:`retry`."""
        return bool(self._held or self._acks or self._failing)

    # -- delivery -----------------------------------------------------------

    def next_batch(self, size):
        """The oldest undelivered events: on disk, then (once none is
        left on disk) held in memory.

        :returns: ``(rows, held)``: ``(rowid, event)`` pairs from the
            outbox and :class:`Held` events, or None if there is nothing
            to deliver, or nothing that may go (the outbox cannot be read
            and may hold older events).
        """
        try:
            rows = self.outbox.peek(size, skip=self._acks)
        except sqlite3.Error as exc:
            self.failed("read", exc)
            rows = None
        else:
            if "read" in self._failing:
                self._failing.discard("read")
                if not self._failing:
                    self._recovered()
        with self.lock:
            on_disk = len(self.outbox) - len(self._acks)
            if rows is None:
                if on_disk > 0 or self.outbox.unknown:
                    # which events on disk wait is unknown: held ones
                    # would overtake them
                    return None
                rows = []
            held = []
            if on_disk <= len(rows):
                # every undelivered event on disk is in this batch: the
                # held ones come next
                held = list(itertools.islice(
                    (h for h in self._held if not h.delivered),
                    size - len(rows)))
        if not rows and not held:
            return None
        return rows, held

    def done(self, rowids, held):
        """These were delivered (or rejected for good): no longer wait."""
        if held:
            with self.lock:
                for h in held:
                    if not h.delivered:
                        h.delivered = True
                        self._held_waiting -= 1
        if rowids:
            try:
                self.outbox.ack(rowids)
            except sqlite3.Error as exc:
                # remembered here, so not sent again, and deleted when the
                # disk lets us (the controller would ignore them anyway)
                self._acks.update(rowids)
                self.failed("delete", exc)

    # -- the disk's condition -----------------------------------------------

    def retry(self):
        """Delete what was delivered, write what is held in memory."""
        # the next try, unless this one clears every condition
        self.due = self._clock() + self.retry_interval
        failed = False
        if "read" in self._failing:
            try:
                self.outbox.peek(1, skip=self._acks)
            except sqlite3.Error as exc:
                failed = True
                self.error = "%s: %s" % (type(exc).__name__, exc)
            else:
                self._failing.discard("read")
        if self._acks:
            rowids = sorted(self._acks)
            try:
                self.outbox.ack(rowids)
            except sqlite3.Error as exc:
                failed = True
                self.failed("delete", exc)
            else:
                self._acks.difference_update(rowids)
                self._deleted += len(rowids)
                self._failing.discard("delete")
        if self._held:
            try:
                self.save_held()
            except sqlite3.Error as exc:
                failed = True
                self.failed("write", exc)
            else:
                self._failing.discard("write")
        if not failed:
            self._recovered()

    def save_held(self):
        """Write the held events to the outbox, oldest first, a chunk per
        transaction; the I/O loop's put waits for one chunk at most.

        :raises sqlite3.Error: if the outbox cannot take them.
        """
        while True:
            with self.lock:
                chunk = list(itertools.islice(self._held, _SAVE_CHUNK))
                if not chunk:
                    return
                self.outbox.put_many([(h.event, not h.delivered)
                                      for h in chunk])
                for _ in chunk:
                    self._held.popleft()
                self._held_waiting -= sum(1 for h in chunk
                                          if not h.delivered)
                self._saved += len(chunk)
            # Let a waiting put in: a lock is not fair, and this thread
            # would take it back at once, chunk after chunk (measured:
            # submits waited up to 270 ms for 10,000 events).
            time.sleep(0.001)

    def failed(self, what, exc):
        """The outbox failed to ``what`` ("write", "delete" or "read")."""
        self.due = self._clock() + self.retry_interval
        self.error = "%s: %s" % (type(exc).__name__, exc)
        if what in self._failing:
            return
        self._failing.add(what)
        self._failed_ops.add(what)
        on_disk, in_memory = self.counts()
        if what == "write":
            LOG.error("reporter: cannot write the outbox %s: %s; %d event(s) "
                      "held in memory (at most %d), delivered from there "
                      "and written when the disk lets us (tried every "
                      "%.0f s)", self.outbox.path, self.error,
                      in_memory, self.limit, self.retry_interval)
        elif what == "delete":
            LOG.error("reporter: cannot delete delivered events from the "
                      "outbox %s: %s; %d delivered event(s) remembered in "
                      "memory, not sent again, deleted when the disk lets "
                      "us", self.outbox.path, self.error,
                      len(self._acks))
        else:
            LOG.error("reporter: cannot read the outbox %s: %s; %s event(s) "
                      "on disk wait, and %d held in memory wait behind "
                      "them (tried every %.0f s)", self.outbox.path,
                      self.error,
                      "an unknown number of" if self.outbox.unknown
                      else on_disk, in_memory, self.retry_interval)

    def _recovered(self):
        if self._failing or self.error is None:
            return
        saved, deleted, dropped = (self._saved, self._deleted,
                                   self._dropped_unlogged)
        self._saved = self._deleted = self._dropped_unlogged = 0
        self.error = None
        self.due = None
        ops, self._failed_ops = self._failed_ops, set()
        LOG.info("reporter: outbox %s %s again: saved %d event(s) held in "
                 "memory, deleted %d delivered event(s)%s", self.outbox.path,
                 "readable" if ops == {"read"} else "writable", saved,
                 deleted, "; %d event(s) were dropped meanwhile (more than "
                 "%d in memory)" % (dropped, self.limit) if dropped else "")

    # -- at stop ------------------------------------------------------------

    def log_losses(self):
        """Log what stopping now loses: events held and undelivered,
        delivered fault records not written, deletions not made."""
        with self.lock:
            held = list(self._held)
        lost = collections.Counter(h.event.get("type") for h in held
                                   if not h.delivered)
        unrecorded = sum(1 for h in held if h.delivered
                         and h.event.get("type") in ("fault", "recovery"))
        if lost:
            LOG.error("reporter: stopping with %d event(s) held in memory "
                      "that could be neither written to the outbox %s nor "
                      "delivered: they are lost (%s)",
                      sum(lost.values()), self.outbox.path,
                      ", ".join("%d %s" % (n, t)
                                for t, n in sorted(lost.items())))
        if self._dropped_unlogged:
            LOG.error("reporter: %d event(s) were dropped while the outbox "
                      "%s could not be written (more than %d held in "
                      "memory)", self._dropped_unlogged, self.outbox.path,
                      self.limit)
            self._dropped_unlogged = 0
        if unrecorded:
            LOG.error("reporter: stopping with %d delivered fault or "
                      "recovery record(s) not written to the outbox %s: "
                      "after the restart the agent may not know which "
                      "faults were open (the controller does)",
                      unrecorded, self.outbox.path)
        if self._acks:
            LOG.warning("reporter: stopping with %d delivered event(s) not "
                        "deleted from the outbox %s: they will be sent "
                        "again after the restart (the controller ignores "
                        "duplicates)", len(self._acks), self.outbox.path)
