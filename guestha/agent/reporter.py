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
after a broker restart); new submissions do not cut a back-off short.

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
import logging
import random
import sqlite3
import threading
import time

from guestha import rpc
from guestha.rpc import api as rpc_api

LOG = logging.getLogger(__name__)

#: The casts :meth:`Reporter.cast_relay` may make (ControllerAPI methods).
RELAY_METHODS = ("relay_broadcast", "query_status", "agent_alive")
#: What a failed report_events attempt may raise that is worth retrying.
DELIVERY_ERRORS = rpc.TRANSIENT_ERRORS + (rpc_api.InvalidAnswer,)
#: Events kept in memory while the outbox cannot be written (disk full).
MAX_UNSAVED = 10000


class Reporter(object):
    """Delivers events from ``outbox`` through ``api`` (a
    :class:`~guestha.rpc.api.ControllerAPI`).

    :param clock: monotonic seconds, for statistics and log rate limits.
    :param batch: events per ``report_events`` call.
    :param timeout: seconds a ``report_events`` call waits for an answer.
    :param backoff: ``(first, longest)`` wait in seconds after failures.
    :param rng: ``random.random``-like, for the jitter (tests pin it).
    :param relay_queue: casts :meth:`cast_relay` holds while the relay
        thread is busy or the broker is slow.
    :param relay_log_interval: seconds between two logs of relay failures.
    """

    def __init__(self, outbox, api, clock=time.monotonic, batch=100,
                 timeout=10, backoff=(0.5, 30.0), rng=random.random,
                 relay_queue=1000, relay_log_interval=60.0):
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
        self._clock = clock
        self._rng = rng
        self._relay_log_interval = relay_log_interval

        # Events that could not be written to the outbox; while there are
        # any, new ones queue behind them, so that order holds.
        self._unsaved = collections.deque()
        self._unsaved_dropped = 0
        self._submit_lock = threading.Lock()

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sender = None
        self._failures = 0          # consecutive failed attempts
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
        event is kept in memory (bounded) and written later.
        """
        with self._submit_lock:
            if not self._unsaved:
                try:
                    self.outbox.put(event)
                except sqlite3.Error as exc:
                    LOG.error("instance %s: cannot write %s event %s to the "
                              "outbox, keeping it in memory: %s",
                              event.get("instance"), event.get("type"),
                              event.get("id"), exc)
                    self._keep_unsaved(event)
            else:
                self._keep_unsaved(event)
        self._wake.set()

    def _keep_unsaved(self, event):
        if len(self._unsaved) >= MAX_UNSAVED:
            old = self._unsaved.popleft()
            self._unsaved_dropped += 1
            LOG.error("instance %s: dropped %s event %s: the outbox cannot "
                      "be written and %d events wait in memory",
                      old.get("instance"), old.get("type"), old.get("id"),
                      MAX_UNSAVED)
        self._unsaved.append(event)

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

    def stats(self):
        """Counters for the agent's status output."""
        in_flight = self._in_flight_since
        return {
            "pending": len(self.outbox) + len(self._unsaved),
            "delivered": self._delivered,
            "rejected": self._rejected,
            "retries": self._retries,
            "last_error": self._last_error,
            "dropped": self.outbox.dropped + self._unsaved_dropped,
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

        Undelivered events stay in the outbox for the next start; queued
        relay casts are discarded.

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
        return ended

    def _run_sender(self):
        while not self._stopping.is_set():
            # Cleared before looking at the outbox: a submit from now on
            # sets it again, so no wake-up is lost.
            self._wake.clear()
            try:
                delay = self.deliver_once()
            except Exception as exc:  # noqa: BLE001 - top of the thread
                LOG.exception("reporter: unexpected error, retrying later")
                delay = self._failed(exc)
            if delay is None:
                self._wake.wait()
            elif delay > 0:
                self._stopping.wait(delay)

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

    def deliver_once(self):
        """One delivery attempt (the sender thread's step; tests call it).

        :returns: seconds to wait before the next attempt: 0 if more
            events are pending, None if the outbox is empty (wait for a
            submit), the back-off after a failure.
        """
        try:
            self._save_unsaved()
            batch = self.outbox.peek(self.batch)
        except sqlite3.Error as exc:
            LOG.error("reporter: cannot read the outbox %s: %s",
                      self.outbox.path, exc)
            return self._failed(exc)
        if not batch:
            return None
        self._in_flight_since = self._clock()
        try:
            answer = self.api.report_events([e for _, e in batch],
                                            timeout=self.timeout)
        except DELIVERY_ERRORS as exc:
            return self._failed(exc)
        finally:
            self._in_flight_since = None

        rowid_of = {event["id"]: rowid for rowid, event in batch}
        accepted = set(rowid_of[i] for i in answer["accepted"]
                       if i in rowid_of)
        rejected = {}
        for rowid, event in batch:
            reason = answer["rejected"].get(event["id"])
            if rowid not in accepted and reason is not None:
                rejected[rowid] = reason
                LOG.error("instance %s: the controller rejected %s event "
                          "%s for good, dropping it: %s",
                          event.get("instance"), event.get("type"),
                          event["id"], reason)
        try:
            self.outbox.ack(sorted(accepted) + sorted(rejected))
        except sqlite3.Error as exc:
            # The controller has them: they will be sent again and
            # deduplicated there.
            LOG.error("reporter: cannot remove delivered events from the "
                      "outbox %s: %s", self.outbox.path, exc)
            return self._failed(exc)
        self._delivered += len(accepted)
        self._rejected += len(rejected)
        done = len(accepted) + len(rejected)
        if done < len(batch):
            shortfall = ("the controller accepted %d of %d events"
                         % (done, len(batch)))
            if done == 0:
                return self._failed(shortfall)
            # Progress, but the controller is shedding load: pause briefly
            # rather than hammer it, without growing the back-off.
            self._retries += 1
            self._last_error = shortfall
            self._failures = 0
            return self._jitter(self.backoff[0])
        if self._failures:
            LOG.info("reporter: delivering again after %d failed "
                     "attempt(s)", self._failures)
        self._failures = 0
        self._last_error = None
        return 0.0 if len(self.outbox) or self._unsaved else None

    def _save_unsaved(self):
        if not self._unsaved:
            return
        with self._submit_lock:
            while self._unsaved:
                self.outbox.put(self._unsaved[0])
                self._unsaved.popleft()
        LOG.info("reporter: the outbox %s can be written again",
                 self.outbox.path)

    def _failed(self, error):
        """Count a failed attempt; the back-off before the next one."""
        self._failures += 1
        self._retries += 1
        if isinstance(error, BaseException):
            error = "%s: %s" % (type(error).__name__, error)
        self._last_error = error
        delay = self.backoff_delay(self._failures)
        if self._failures == 1:
            LOG.warning("reporter: cannot deliver events to the "
                        "controller (%d waiting), retrying in %.1f s: %s",
                        len(self.outbox), delay, error)
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
