# SPDX-License-Identifier: Apache-2.0
"""Delivers the agent's fault reports to the controller, in order, and
relays its server-group casts.

Theory of operation
-------------------
The I/O loop calls :meth:`Reporter.submit` for every fault, recovery and
state record.  ``submit`` appends the record to the on-disk outbox
(:class:`guestha.agent.outbox.Outbox`, a sqlite insert of some tens of
microseconds) and wakes the sender thread; it never touches the network,
so a broker outage cannot stall the loop.

The sender thread takes the oldest ``batch`` events from the outbox and
calls ``report_events`` (a CALL, see :mod:`guestha.rpc.api` for why).  It
deletes exactly the events the controller lists as accepted (or rejected
for good), and nothing else: a timeout, a broker outage or a partial answer
leaves the rest at the head of the outbox, and the next attempt sends them
again, before anything newer.  So delivery is in order and at least once,
across retries and agent restarts; the controller deduplicates by event id.
Failed attempts are retried after an exponential back-off with +-20%
jitter (so that the agents of a whole region do not reconnect in step
after a broker restart); new submissions do not cut a back-off short, but
a relay cast that goes through after the broker was unreachable does
(the broker is back).

The disk and the bus fail apart, and each is handled apart.  When the
outbox cannot be written (a full disk), ``submit`` holds the event in
memory (at most :data:`MAX_UNSAVED`, oldest dropped first), and so does
every later one, behind it, until the sender thread has written them all
to the outbox; it tries every ``disk_retry`` seconds (1 s), whatever the
bus does.  Meanwhile delivery goes on: the events on disk first, then
the held ones.  A held event that was delivered is not written as
pending, only its effect on the open faults (see the outbox); a
delivered event the outbox cannot delete is remembered in memory, not
sent again, and deleted when the disk lets us.  While the outbox cannot
be read (or not even opened: a full disk when the agent starts), the held
events wait, since events in the file may be older.  Only a failed
delivery grows the back-off; the disk's errors never do.  A stop writes what is
held if it can, else tries to deliver it within its timeout, and logs how
many events it loses if neither works.  Each condition (cannot write,
delete or read the outbox; cannot deliver) is logged once when it starts,
saying how many events are kept where, and once when it ends.

Server-group traffic (broadcast, status query, agent_alive) is best
effort: :meth:`Reporter.cast_relay` puts it on a bounded in-memory queue
that a second thread casts from.  A failure is counted and logged (at most
once a minute), never raised; when the queue is full the oldest cast is
dropped.

What oslo.messaging (18.3, rabbit driver) does when RabbitMQ is down
-------------------------------------------------------------------
Measured here (loopback, ``rabbitmqctl stop_app``), and why this module is
built as it is:

* Its default is to retry a publish forever (``retry=None``): a cast
  blocked for the whole of a 9 s outage and returned 3.9 s after the
  broker came back.  :class:`~guestha.rpc.api.ControllerAPI` uses
  ``retry=0``: with an established connection a cast or call then fails
  in about 1 ms with ``MessageDeliveryFailure`` (``retry=1`` takes 2 s,
  the driver's reconnect interval).
* A cast that needs a new pooled connection while the broker refuses
  connections raises ``kombu.exceptions.OperationalError`` (6 ms), which
  oslo.messaging does not wrap; :data:`guestha.rpc.TRANSIENT_ERRORS`
  includes it.
* The FIRST call of a process sets up its reply queue on a connection made
  with ``retry=None``, whatever the call asked for: with the broker down
  it blocks until the broker is back and only then starts its timeout (a
  call with ``timeout=2`` made during a 9 s outage returned after 11 s
  with ``MessagingTimeout``).  Only the sender thread makes calls, so this
  delays reports (they wait in the outbox) and nothing else;
  :meth:`Reporter.stats` shows it as ``in_flight_s``, and the thread is a
  daemon so it cannot hold up exit.
* After the broker comes back, the first call may time out while the
  reply queue's consumer reconnects (about 3 s here); the retry succeeds.
"""

import collections
import itertools
import logging
import random
import sqlite3
import threading
import time

import oslo_messaging

from guestha import rpc
from guestha.rpc import api as rpc_api

LOG = logging.getLogger(__name__)

#: The casts :meth:`Reporter.cast_relay` may make (ControllerAPI methods).
RELAY_METHODS = ("relay_broadcast", "query_status", "agent_alive")
#: What a failed report_events attempt may raise that is worth retrying.
DELIVERY_ERRORS = rpc.TRANSIENT_ERRORS + (rpc_api.InvalidAnswer,)
#: Events kept in memory while the outbox cannot be written (disk full).
MAX_UNSAVED = 10000
# Held events written to the outbox in one transaction (the I/O loop's
# submit waits for at most one such transaction).
_SAVE_CHUNK = 100


class _Held(object):
    """An event the outbox could not take, held in memory."""

    __slots__ = ("event", "delivered")

    def __init__(self, event):
        self.event = event
        # delivered, but not yet written: only its open-fault record is
        # still to be written (see Outbox.put's pending)
        self.delivered = False


class Reporter(object):
    """Delivers events from ``outbox`` through ``api`` (a
    :class:`~guestha.rpc.api.ControllerAPI`).

    :param clock: monotonic seconds, for the retry times, statistics and
        log rate limits.
    :param batch: events per ``report_events`` call.
    :param timeout: seconds a ``report_events`` call waits for an answer.
    :param backoff: ``(first, longest)`` wait in seconds after failures.
    :param rng: ``random.random``-like, for the jitter (tests pin it).
    :param relay_queue: casts :meth:`cast_relay` holds while the relay
        thread is busy or the broker is slow.
    :param relay_log_interval: seconds between two logs of relay failures.
    :param disk_retry: seconds between two tries of an outbox that could
        not be written (a try costs one failed sqlite statement).
    """

    def __init__(self, outbox, api, clock=time.monotonic, batch=100,
                 timeout=10, backoff=(0.5, 30.0), rng=random.random,
                 relay_queue=1000, relay_log_interval=60.0, disk_retry=1.0):
        if batch < 1:
            raise ValueError("batch must be >= 1, not %r" % (batch,))
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError("backoff must be (first, longest) with 0 < "
                             "first <= longest, not %r" % (backoff,))
        self.outbox = outbox
        self.api = api
        self.batch = batch
        self.timeout = timeout
        self.backoff = backoff
        self.disk_retry = disk_retry
        self._clock = clock
        self._rng = rng
        self._relay_log_interval = relay_log_interval

        # Events the outbox could not take (disk full), oldest first; all
        # are newer than every event on disk.  While there are any, new
        # ones queue behind them, so that order holds.
        self._held = collections.deque()
        self._held_waiting = 0        # held and not delivered
        self._held_dropped = 0        # since this start
        self._dropped_unlogged = 0    # since the disk started failing
        self._submit_lock = threading.Lock()
        # rowids of delivered events the outbox could not delete: not
        # sent again, deleted when the disk lets us
        self._acks = set()
        # the disk's condition: the operations failing now ("write",
        # "delete", "read") and the latest error
        self._disk_failing = set()
        self._disk_error = None
        self._disk_due = None
        self._disk_failed_ops = set()  # since the disk was last fine
        self._saved = 0               # held events written since failing
        self._deleted = 0

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sender = None
        self._failures = 0          # consecutive failed attempts
        self._failing_since = None
        self._bus_due = None        # no delivery attempt before this
        self._bus_hint_used = False
        self._delivered = 0
        self._rejected = 0
        self._retries = 0
        self._last_error = None
        self._in_flight_since = None

        self._relays = collections.deque()
        self._relay_max = relay_queue
        self._relay_lock = threading.Lock()
        self._relay_wake = threading.Event()
        self._relay_thread = None
        self._relay_sent = 0
        self._relay_failed = 0
        self._relay_dropped = 0
        self._relay_logged_at = None
        self._relay_unlogged = 0

    # -- the I/O loop's side ------------------------------------------------

    def submit(self, event):
        """Queue ``event`` for delivery; returns at once.

        Costs one sqlite insert.  If the outbox cannot be written, the
        event is held in memory (bounded) and written later.
        """
        with self._submit_lock:
            if not self._held:
                try:
                    self.outbox.put(event)
                except sqlite3.Error as exc:
                    self._hold(event)
                    self._disk_failed("write", exc)
            else:
                self._hold(event)
        self._wake.set()

    def _hold(self, event):
        if len(self._held) >= MAX_UNSAVED:
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
                              "again)", MAX_UNSAVED, self.outbox.path,
                              old.event.get("type"), old.event.get("id"),
                              old.event.get("instance"))
        self._held.append(_Held(event))
        self._held_waiting += 1

    def cast_relay(self, method, **kwargs):
        """Cast ``method`` (one of :data:`RELAY_METHODS`) to the
        controller, best effort, from the relay thread; returns at once.

        :raises ValueError: for an unknown method (a programming error).
        """
        if method not in RELAY_METHODS:
            raise ValueError("not a relay method: %r (one of %s)"
                             % (method, ", ".join(RELAY_METHODS)))
        with self._relay_lock:
            if len(self._relays) >= self._relay_max:
                self._relays.popleft()
                self._relay_dropped += 1
            self._relays.append((method, kwargs))
        self._relay_wake.set()

    def _counts(self):
        """``(on disk, in memory)``: events waiting for delivery."""
        return (max(0, len(self.outbox) - len(self._acks)),
                self._held_waiting)

    def stats(self):
        """Counters for the agent's status output."""
        in_flight = self._in_flight_since
        on_disk, in_memory = self._counts()
        return {
            "pending": on_disk + in_memory,
            "on_disk": on_disk,
            "in_memory": in_memory,
            "delivered": self._delivered,
            "rejected": self._rejected,
            "retries": self._retries,
            "last_error": self._last_error,
            "disk_error": self._disk_error,
            "dropped": self.outbox.dropped + self._held_dropped,
            "in_flight_s": (None if in_flight is None
                            else round(self._clock() - in_flight, 3)),
            "relay_sent": self._relay_sent,
            "relay_failed": self._relay_failed,
            "relay_dropped": self._relay_dropped,
        }

    # -- threads --------------------------------------------------------------

    def start(self):
        """Start the sender and relay threads.

        Daemon threads: oslo.messaging may block a call until the broker
        is back (see the module docstring), which must not block exit.
        """
        self._stopping.clear()
        self._sender = threading.Thread(
            target=self._run_sender, name="guestha-reporter", daemon=True)
        self._relay_thread = threading.Thread(
            target=self._run_relay, name="guestha-relay", daemon=True)
        self._sender.start()
        self._relay_thread.start()

    def stop(self, timeout=None):
        """Stop both threads; wait at most ``timeout`` seconds in all.

        Undelivered events in the outbox stay there for the next start.
        Events held in memory (the outbox could not be written) are
        written to it if it can be written now, else, within what is left
        of ``timeout``, delivered; those that are neither are counted in
        a log line.  Queued relay casts are discarded.

        :returns: True if both threads have ended.
        """
        self._stopping.set()
        self._wake.set()
        self._relay_wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = True
        for thread in (self._sender, self._relay_thread):
            if thread is None:
                continue
            thread.join(None if deadline is None
                        else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                LOG.warning("reporter: thread %s still busy after stop "
                            "(a report_events call in flight)", thread.name)
                ended = False
        self._flush(deadline, sender_idle=(
            self._sender is None or not self._sender.is_alive()))
        return ended

    def _flush(self, deadline, sender_idle):
        """What stop does for the events held in memory."""
        if not (self._held or self._acks):
            return
        if sender_idle:
            self._disk_step()
            undelivered = self._held_waiting > 0
            left = (self.timeout if deadline is None
                    else min(self.timeout, deadline - time.monotonic()))
            if undelivered and left >= 0.1:
                # in a thread of its own: a process's first call can block
                # until the broker is back, whatever its timeout (see the
                # module docstring), and a stop must not
                last = threading.Thread(
                    target=self._last_attempt, args=(left,),
                    name="guestha-reporter-stop", daemon=True)
                last.start()
                last.join(left)
                if last.is_alive():
                    LOG.warning("reporter: the delivery attempt at stop is "
                                "still in flight after %.1f s", left)
        else:
            # the sender is in a call and owns the rest; held events are
            # safe to write under the submit lock
            try:
                self._save_held()
            except sqlite3.Error:
                pass
        with self._submit_lock:
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
                      MAX_UNSAVED)
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

    def _last_attempt(self, timeout):
        try:
            self._bus_step(timeout=timeout)
        except Exception:  # noqa: BLE001 - top of the thread
            LOG.exception("reporter: unexpected error delivering at stop")

    def _run_sender(self):
        while not self._stopping.is_set():
            # Cleared before looking at the outbox: a submit from now on
            # sets it again, so no wake-up is lost.
            self._wake.clear()
            try:
                delay = self.step()
            except Exception as exc:  # noqa: BLE001 - top of the thread
                LOG.exception("reporter: unexpected error, retrying later")
                delay = self._bus_failed(exc)
                self._bus_due = self._clock() + delay
            if delay is None:
                self._wake.wait()
            elif delay > 0:
                # a submit wakes us early; step() then does only what is
                # due, so it does not cut a back-off short
                self._wake.wait(delay)

    def _run_relay(self):
        while not self._stopping.is_set():
            self._relay_wake.clear()
            try:
                self.relay_pending()
            except Exception:  # noqa: BLE001 - top of the thread
                LOG.exception("reporter: unexpected error in the relay "
                              "thread")
            if not self._relays:
                self._relay_wake.wait()

    # -- delivery -------------------------------------------------------------
    #
    # Two conditions, apart: the disk (the outbox cannot be written, read
    # or deleted from) and the bus (no controller takes the events).  A
    # disk failure never stops a delivery nor grows the bus's back-off; a
    # bus failure never delays writing held events to the disk.

    def step(self):
        """The sender thread's step: retries the disk and delivers, each
        when it is due.

        :returns: seconds until something is due, or None if nothing is
            (wait for a submit).
        """
        now = self._clock()
        if self._disk_trouble() and (self._disk_due is None
                                     or now >= self._disk_due):
            self._disk_step()
        if self._bus_due is None or now >= self._bus_due:
            delay = self._bus_step()
            self._bus_due = None if delay is None else now + delay
        return self._next_due(self._clock())

    def deliver_once(self):
        """One attempt at both, whatever is due (tests call it).

        :returns: seconds to wait before the next attempt: 0 if more
            events are pending, None if nothing is (wait for a submit),
            the back-off after a failed delivery, at most ``disk_retry``
            while the disk fails.
        """
        if self._disk_trouble():
            self._disk_step()
        delay = self._bus_step()
        self._bus_due = None
        if self._disk_trouble():
            delay = (self.disk_retry if delay is None
                     else min(delay, self.disk_retry))
        return delay

    def _disk_trouble(self):
        return bool(self._held or self._acks or self._disk_failing)

    def _next_due(self, now):
        due = []
        if self._bus_due is not None:
            due.append(self._bus_due - now)
        if self._disk_trouble():
            due.append(self.disk_retry if self._disk_due is None
                       else self._disk_due - now)
        return max(0.0, min(due)) if due else None

    def _disk_step(self):
        """Delete what was delivered, write what is held in memory."""
        # the next try, unless this one clears every condition
        self._disk_due = self._clock() + self.disk_retry
        failed = False
        if "read" in self._disk_failing:
            try:
                self.outbox.peek(1, skip=self._acks)
            except sqlite3.Error as exc:
                failed = True
                self._disk_error = "%s: %s" % (type(exc).__name__, exc)
            else:
                self._disk_failing.discard("read")
        if self._acks:
            rowids = sorted(self._acks)
            try:
                self.outbox.ack(rowids)
            except sqlite3.Error as exc:
                failed = True
                self._disk_failed("delete", exc)
            else:
                self._acks.difference_update(rowids)
                self._deleted += len(rowids)
                self._disk_failing.discard("delete")
        if self._held:
            try:
                self._save_held()
            except sqlite3.Error as exc:
                failed = True
                self._disk_failed("write", exc)
            else:
                self._disk_failing.discard("write")
        if not failed:
            self._disk_recovered()

    def _save_held(self):
        """Write the held events to the outbox, oldest first, a chunk per
        transaction; the I/O loop's submit waits for one chunk at most."""
        while True:
            with self._submit_lock:
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
            # Let a waiting submit in: a lock is not fair, and this
            # thread would take it back at once, chunk after chunk
            # (measured: submits waited up to 270 ms for 10,000 events).
            time.sleep(0.001)

    def _disk_failed(self, what, exc):
        self._disk_due = self._clock() + self.disk_retry
        self._disk_error = "%s: %s" % (type(exc).__name__, exc)
        if what in self._disk_failing:
            return
        self._disk_failing.add(what)
        self._disk_failed_ops.add(what)
        on_disk, in_memory = self._counts()
        if what == "write":
            LOG.error("reporter: cannot write the outbox %s: %s; %d event(s) "
                      "held in memory (at most %d), delivered from there "
                      "and written when the disk lets us (tried every "
                      "%.0f s)", self.outbox.path, self._disk_error,
                      in_memory, MAX_UNSAVED, self.disk_retry)
        elif what == "delete":
            LOG.error("reporter: cannot delete delivered events from the "
                      "outbox %s: %s; %d delivered event(s) remembered in "
                      "memory, not sent again, deleted when the disk lets "
                      "us", self.outbox.path, self._disk_error,
                      len(self._acks))
        else:
            LOG.error("reporter: cannot read the outbox %s: %s; %s event(s) "
                      "on disk wait, and %d held in memory wait behind "
                      "them (tried every %.0f s)", self.outbox.path,
                      self._disk_error,
                      "an unknown number of" if self.outbox.unknown
                      else on_disk, in_memory, self.disk_retry)

    def _disk_recovered(self):
        if self._disk_failing or self._disk_error is None:
            return
        saved, deleted, dropped = (self._saved, self._deleted,
                                   self._dropped_unlogged)
        self._saved = self._deleted = self._dropped_unlogged = 0
        self._disk_error = None
        self._disk_due = None
        ops, self._disk_failed_ops = self._disk_failed_ops, set()
        LOG.info("reporter: outbox %s %s again: saved %d event(s) held in "
                 "memory, deleted %d delivered event(s)%s", self.outbox.path,
                 "readable" if ops == {"read"} else "writable", saved,
                 deleted, "; %d event(s) were dropped meanwhile (more than "
                 "%d in memory)" % (dropped, MAX_UNSAVED) if dropped else "")

    def _bus_step(self, timeout=None):
        """Deliver one batch: the oldest undelivered events on disk, then
        (once none is left on disk) those held in memory.

        :returns: as :meth:`deliver_once`, for the bus alone.
        """
        try:
            rows = self.outbox.peek(self.batch, skip=self._acks)
        except sqlite3.Error as exc:
            self._disk_failed("read", exc)
            rows = None
        else:
            if "read" in self._disk_failing:
                self._disk_failing.discard("read")
                if not self._disk_failing:
                    self._disk_recovered()
        with self._submit_lock:
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
                    self.batch - len(rows)))
        if not rows and not held:
            return None
        events = [e for _, e in rows] + [h.event for h in held]
        self._in_flight_since = self._clock()
        try:
            answer = self.api.report_events(
                events, timeout=self.timeout if timeout is None else timeout)
        except DELIVERY_ERRORS as exc:
            return self._bus_failed(exc)
        finally:
            self._in_flight_since = None

        accepted = set(answer["accepted"])
        done_rows = []
        done = delivered = rejected = 0
        for rowid, h, event in ([(r, None, e) for r, e in rows]
                                + [(None, h, h.event) for h in held]):
            if event["id"] in accepted:
                delivered += 1
            else:
                reason = answer["rejected"].get(event["id"])
                if reason is None:
                    continue
                rejected += 1
                LOG.error("instance %s: the controller rejected %s event "
                          "%s for good, dropping it: %s",
                          event.get("instance"), event.get("type"),
                          event["id"], reason)
            done += 1
            if h is None:
                done_rows.append(rowid)
            else:
                with self._submit_lock:
                    if not h.delivered:
                        h.delivered = True
                        self._held_waiting -= 1
        if done_rows:
            try:
                self.outbox.ack(done_rows)
            except sqlite3.Error as exc:
                # remembered here, so not sent again, and deleted when the
                # disk lets us (the controller would ignore them anyway)
                self._acks.update(done_rows)
                self._disk_failed("delete", exc)
        # counted once no longer pending: whoever sees the count sees the
        # events gone from the waiting ones (stats() is read elsewhere)
        self._delivered += delivered
        self._rejected += rejected
        if done < len(events):
            shortfall = ("the controller accepted %d of %d events"
                         % (done, len(events)))
            if done == 0:
                return self._bus_failed(shortfall)
            # Progress, but the controller is shedding load: pause briefly
            # rather than hammer it, without growing the back-off.
            self._retries += 1
            self._last_error = shortfall
            self._bus_recovered()
            return self._jitter(self.backoff[0])
        self._bus_recovered()
        self._last_error = None
        on_disk, in_memory = self._counts()
        return 0.0 if on_disk or in_memory else None

    def _bus_recovered(self):
        if self._failures:
            on_disk, in_memory = self._counts()
            LOG.info("reporter: delivering again after %d failed "
                     "attempt(s) in %.0f s; %d event(s) waiting (%d on "
                     "disk, %d in memory)", self._failures,
                     self._clock() - self._failing_since,
                     on_disk + in_memory, on_disk, in_memory)
        self._failures = 0
        self._failing_since = None

    def _bus_failed(self, error):
        """Count a failed attempt; the back-off before the next one."""
        self._failures += 1
        self._retries += 1
        self._bus_hint_used = False
        why = _why(error)
        if isinstance(error, BaseException):
            error = "%s: %s" % (type(error).__name__, error)
        self._last_error = error
        delay = self.backoff_delay(self._failures)
        if self._failures == 1:
            self._failing_since = self._clock()
            on_disk, in_memory = self._counts()
            LOG.warning("reporter: cannot deliver: %s, %d event(s) waiting "
                        "(%d on disk, %d in memory); retrying in %.1f s, "
                        "then less often, up to every %g s: %s", why,
                        on_disk + in_memory, on_disk, in_memory, delay,
                        self.backoff[1], error)
        else:
            LOG.debug("reporter: attempt %d failed, retrying in %.1f s: %s",
                      self._failures, delay, error)
        return delay

    def backoff_delay(self, failures):
        """The wait after ``failures`` consecutive failed attempts:
        ``first * 2**(failures-1)``, at most ``longest``, +-20% jitter."""
        first, longest = self.backoff
        return self._jitter(min(longest, first * 2.0 ** min(failures - 1,
                                                            64)))

    def _jitter(self, delay):
        return delay * (0.8 + 0.4 * self._rng())

    def _bus_is_back(self):
        """A relay cast went through while deliveries fail because the
        broker was unreachable: try now rather than at the end of the
        back-off (once per failed attempt)."""
        if self._failures and not self._bus_hint_used:
            self._bus_hint_used = True
            self._bus_due = self._clock()
            self._wake.set()

    # -- relays ---------------------------------------------------------------

    def relay_pending(self):
        """Cast every queued relay (the relay thread's step; tests call
        it).  Failures are counted and logged, never raised."""
        while not self._stopping.is_set():
            with self._relay_lock:
                if not self._relays:
                    return
                method, kwargs = self._relays.popleft()
            try:
                getattr(self.api, method)(**kwargs)
            except rpc.TRANSIENT_ERRORS as exc:
                self._relay_failed += 1
                self._log_relay_failure(method, kwargs, exc)
            else:
                self._relay_sent += 1
                if self._failures and _unreachable(self._last_error):
                    self._bus_is_back()

    def _log_relay_failure(self, method, kwargs, exc):
        now = self._clock()
        if (self._relay_logged_at is not None
                and now - self._relay_logged_at < self._relay_log_interval):
            self._relay_unlogged += 1
            return
        LOG.warning("instance %s: server-group %s not sent (%d more failed "
                    "since the last such message): %s: %s",
                    kwargs.get("instance", "-"), method,
                    self._relay_unlogged, type(exc).__name__, exc)
        self._relay_logged_at = now
        self._relay_unlogged = 0


def _why(error):
    """What a failed delivery attempt means, for the log."""
    if isinstance(error, oslo_messaging.MessagingTimeout):
        return "no controller answered"
    if isinstance(error, rpc_api.InvalidAnswer):
        return "the controller's answer was invalid"
    if isinstance(error, BaseException):
        return "controller unreachable (message bus)"
    return str(error)


def _unreachable(last_error):
    # a broker failure, not a controller's timeout or its answer
    return bool(last_error) and not last_error.startswith(
        ("MessagingTimeout", "InvalidAnswer", "the controller"))
