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

The disk and the bus fail apart, and each is handled apart: the disk by
:class:`~guestha.agent.fallbackoutbox.FallbackOutbox`, the bus here, with
its back-off in :class:`~guestha.backoff.Backoff`.  When the
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
that a second thread casts from
(:class:`~guestha.agent.relaycasts.RelayCaster`).  A failure is counted
and logged (at most once a minute), never raised; when the queue is full
the oldest cast is dropped.

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

import logging
import random
import sqlite3
import threading
import time

import oslo_messaging

from guestha.agent import fallbackoutbox
from guestha.agent import relaycasts
from guestha import backoff as backoff_mod
from guestha import rpc
from guestha.rpc import api as rpc_api

LOG = logging.getLogger(__name__)

#: The casts :meth:`Reporter.cast_relay` may make (ControllerAPI methods).
RELAY_METHODS = relaycasts.RELAY_METHODS
#: What a failed report_events attempt may raise that is worth retrying.
DELIVERY_ERRORS = rpc.TRANSIENT_ERRORS + (rpc_api.InvalidAnswer,)
#: Events kept in memory while the outbox cannot be written (disk full).
MAX_UNSAVED = 10000


class Reporter(object):
    """Delivers events from ``outbox`` through ``api`` (a
    :class:`~guestha.rpc.api.ControllerAPI`), from the sender thread.

    Its parts: the outbox with its fallback in memory
    (:class:`~guestha.agent.fallbackoutbox.FallbackOutbox`), the retry
    schedule (:class:`~guestha.backoff.Backoff`) and the relay casts
    (:class:`~guestha.agent.relaycasts.RelayCaster`, its own thread).

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
        self._backoff = backoff_mod.Backoff(backoff[0], backoff[1], rng,
                                            clock)
        self.outbox = outbox
        self.api = api
        self.batch = batch
        self.timeout = timeout
        self.backoff = backoff
        self.disk_retry = disk_retry
        self._clock = clock
        self._box = fallbackoutbox.FallbackOutbox(
            outbox, MAX_UNSAVED, retry_interval=disk_retry, clock=clock)
        #: the server-group casts, with their own thread
        self.relays = relaycasts.RelayCaster(
            api, queue=relay_queue, log_interval=relay_log_interval,
            clock=clock, on_sent=self._relay_went_through)

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sender = None
        self._bus_due = None        # no delivery attempt before this
        self._bus_hint_used = False
        self._delivered = 0
        self._rejected = 0
        self._retries = 0
        self._last_error = None
        self._in_flight_since = None

    # -- the I/O loop's side ------------------------------------------------

    def submit(self, event):
        """Queue ``event`` for delivery; returns at once.

        Costs one sqlite insert.  If the outbox cannot be written, the
        event is held in memory (bounded) and written later.
        """
        self._box.put(event)
        self._wake.set()

    def cast_relay(self, method, **kwargs):
        """Cast ``method`` (one of :data:`RELAY_METHODS`) to the
        controller, best effort, from the relay thread; returns at once.

        :raises ValueError: for an unknown method (a programming error).
        """
        self.relays.cast(method, **kwargs)

    def stats(self):
        """Counters for the agent's status output."""
        in_flight = self._in_flight_since
        on_disk, in_memory = self._box.counts()
        return {
            "pending": on_disk + in_memory,
            "on_disk": on_disk,
            "in_memory": in_memory,
            "delivered": self._delivered,
            "rejected": self._rejected,
            "retries": self._retries,
            "last_error": self._last_error,
            "disk_error": self._box.error,
            "dropped": self._box.dropped,
            "in_flight_s": (None if in_flight is None
                            else round(self._clock() - in_flight, 3)),
            "relay_sent": self.relays.sent,
            "relay_failed": self.relays.failed,
            "relay_dropped": self.relays.dropped,
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
        self._sender.start()
        self.relays.start()

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
        self.relays.signal_stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = True
        for thread in (self._sender, self.relays.thread):
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
        if not self._box.holding():
            return
        if sender_idle:
            self._box.retry()
            undelivered = self._box.counts()[1] > 0
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
                self._box.save_held()
            except sqlite3.Error:
                pass
        self._box.log_losses()

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

    # -- delivery -------------------------------------------------------------
    #
    # Two conditions, apart: the disk (the outbox cannot be written, read
    # or deleted from: the FallbackOutbox's) and the bus (no controller
    # takes the events: this class's).  A disk failure never stops a
    # delivery nor grows the bus's back-off; a bus failure never delays
    # writing held events to the disk.

    def step(self):
        """The sender thread's step: retries the disk and delivers, each
        when it is due.  The thread calls it, then waits what it returns
        (or for a submit); so does a test, on a manual clock.

        :returns: seconds until something is due, or None if nothing is
            (wait for a submit).
        """
        now = self._clock()
        box = self._box
        if box.trouble() and (box.due is None or now >= box.due):
            box.retry()
        if self._bus_due is None or now >= self._bus_due:
            delay = self._bus_step()
            self._bus_due = None if delay is None else now + delay
        return self._next_due(self._clock())

    def _next_due(self, now):
        due = []
        if self._bus_due is not None:
            due.append(self._bus_due - now)
        if self._box.trouble():
            due.append(self.disk_retry if self._box.due is None
                       else self._box.due - now)
        return max(0.0, min(due)) if due else None

    def _bus_step(self, timeout=None):
        """Deliver one batch: the oldest undelivered events on disk, then
        (once none is left on disk) those held in memory.

        :returns: seconds to wait before the next attempt: 0 if more
            events are pending, None if nothing is (wait for a submit),
            the back-off after a failed delivery.
        """
        batch = self._box.next_batch(self.batch)
        if batch is None:
            return None
        rows, held = batch
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
        done_held = []
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
                done_held.append(h)
        self._box.done(done_rows, done_held)
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
            return self._backoff.jitter(self.backoff[0])
        self._bus_recovered()
        self._last_error = None
        on_disk, in_memory = self._box.counts()
        return 0.0 if on_disk or in_memory else None

    def _bus_recovered(self):
        ended = self._backoff.succeeded()
        if ended is not None:
            on_disk, in_memory = self._box.counts()
            LOG.info("reporter: delivering again after %d failed "
                     "attempt(s) in %.0f s; %d event(s) waiting (%d on "
                     "disk, %d in memory)", ended[0], ended[1],
                     on_disk + in_memory, on_disk, in_memory)

    def _bus_failed(self, error):
        """Count a failed attempt; the back-off before the next one."""
        self._retries += 1
        self._bus_hint_used = False
        why = _why(error)
        if isinstance(error, BaseException):
            error = "%s: %s" % (type(error).__name__, error)
        self._last_error = error
        delay = self._backoff.failed()
        if self._backoff.failures == 1:
            on_disk, in_memory = self._box.counts()
            LOG.warning("reporter: cannot deliver: %s, %d event(s) waiting "
                        "(%d on disk, %d in memory); retrying in %.1f s, "
                        "then less often, up to every %g s: %s", why,
                        on_disk + in_memory, on_disk, in_memory, delay,
                        self.backoff[1], error)
        else:
            LOG.debug("reporter: attempt %d failed, retrying in %.1f s: %s",
                      self._backoff.failures, delay, error)
        return delay

    def _relay_went_through(self):
        """A relay cast went through while deliveries fail because the
        broker was unreachable: try now rather than at the end of the
        back-off (once per failed attempt)."""
        if (self._backoff.failures and _unreachable(self._last_error)
                and not self._bus_hint_used):
            self._bus_hint_used = True
            self._bus_due = self._clock()
            self._wake.set()


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
