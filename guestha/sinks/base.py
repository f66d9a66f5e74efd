# SPDX-License-Identifier: Apache-2.0
"""Fault sinks: the plugin interface, and the dispatcher that feeds them.

Theory of operation
-------------------
The controller hands every event it has accepted (fault, recovery, and the
action and refusal records of its corrective-action policy; see
:mod:`guestha.records` for the fields) to :meth:`SinkDispatcher.submit`.
``submit`` never blocks and never touches the network: it appends the
event to one bounded in-memory queue per sink and wakes that sink's
worker thread.  Each sink has its own thread and queue, so a sink that is
down, or slow (Vitrage's API takes ~140 ms a request), holds up nobody
but itself.

A worker takes the oldest events from its queue (up to the sink's
:attr:`FaultSink.max_batch`) and hands them to the sink.  The sink says
how it went by what it raises:

* nothing: delivered; the next batch goes at once;
* :class:`SinkUnavailable`: try again later.  The same batch is sent
  again, before anything newer (order per sink is kept), after an
  exponential back-off with +-20% jitter (``retry_min`` doubling up to
  ``retry_max``).  The back-off belongs to the sink (its consecutive
  failures); the bounds belong to each event: one that has failed
  ``max_attempts`` times, or waited ``give_up_after`` seconds since it
  was submitted, is dropped and logged at ERROR with its id, its
  instance and the sink's name;
* :class:`SinkRejected`: this sink will never take it; dropped at once,
  logged.  A rejected batch of several events is not dropped whole: its
  events are sent again one by one, so only the culprit is lost.

A queue that is full drops its OLDEST event, logged at ERROR: the newest
state of an instance is worth more than an old one.  Events a sink does
not take (:meth:`FaultSink.accepts`; Vitrage has no use for action
records) are never queued for it.

``before_send(sink_name, events)``, if given, is called right before a
batch goes to its sink, and may leave events out or hold the batch back
(the controller notes there that the deliveries are in flight, see
:class:`SinkDispatcher`); ``on_results(sink_name, events, state)``, if
given, hears each delivered batch at once, right after the sink took it.
``on_result(event, sink_name, state)``, if given, hears the fate of every
event per sink: :data:`DONE` (delivered, or not for this sink) or
:data:`DROPPED`, from the worker threads; the controller's ledger uses it
to know what it still owes.  Events still queued when :meth:`stop` gives
up are reported to nobody: they are still owed, and a restarted
controller sends them again.

Time is an argument: the dispatcher reads ``clock`` (monotonic seconds)
and tests drive :meth:`SinkDispatcher.step` with a fake one, no threads.
"""

import abc
import collections
import logging
import random
import threading
import time

from keystoneauth1 import loading as ks_loading
from keystoneauth1.loading import adapter as ks_adapter
from stevedore import named

from guestha import backoff

LOG = logging.getLogger(__name__)

#: The stevedore namespace of fault sinks (setup.cfg ``[entry_points]``).
NAMESPACE = "guestha.fault_sinks"

#: Outcomes passed to ``on_result``.
DONE = "done"
DROPPED = "dropped"

#: Seconds an HTTP request of a sink may take when its group's ``timeout``
#: is not set: a hung service must not hold the sink's thread for ever.
DEFAULT_TIMEOUT = 30.0

#: Every record type the controller may hand to the sinks.
ALL_EVENT_TYPES = frozenset(("fault", "recovery", "state", "action",
                             "refusal"))


class SinkError(Exception):
    """Base of the sink errors; ``msg_fmt`` formatted with the keyword
    arguments, or the message given."""

    msg_fmt = "fault sink error"

    def __init__(self, message=None, **kwargs):
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                message = self.msg_fmt
        super(SinkError, self).__init__(message)
        self.kwargs = kwargs


class SinkUnavailable(SinkError):
    """The sink cannot take the event now: send it again later."""

    msg_fmt = "sink %(sink)s is unavailable: %(reason)s"


class SinkRejected(SinkError):
    """The sink will never take this event: do not send it again."""

    msg_fmt = "sink %(sink)s rejected the event: %(reason)s"


class SinkConfigError(SinkError, ValueError):
    """The sinks cannot be built as configured."""

    msg_fmt = "fault sinks misconfigured: %(reason)s"


class FaultSink(abc.ABC):
    """A place fault records go.  Subclasses are stevedore plugins in
    :data:`NAMESPACE`, built by :meth:`from_conf`.

    ``send`` and ``send_batch`` are called from one worker thread only
    (the sink's own), never concurrently; ``close`` from the thread that
    stops the dispatcher, after the worker has ended.
    """

    #: The plugin's name (the entry point's); set by :func:`load_sinks`.
    name = None
    #: The record types (``event["type"]``) this sink takes.
    event_types = ALL_EVENT_TYPES
    #: Most events :meth:`send_batch` takes at once; 1 means one by one.
    max_batch = 1
    #: Whether a delivery makes another service recover the instance
    #: (Masakari does): such a sink must count each delivery against the
    #: per-instance cap of ``[actions]`` (:attr:`recovery_cap`).
    leads_to_recovery = False
    #: The :class:`~guestha.server.actions.ActionCap` the controller binds
    #: (:func:`bind_recovery_cap`), or None (no controller: no cap).
    recovery_cap = None

    @classmethod
    def from_conf(cls, conf):
        """Build the sink from ``conf`` (with :mod:`guestha.conf.sinks`
        registered)."""
        raise NotImplementedError("%s has no from_conf" % cls.__name__)

    def accepts(self, event):
        """Whether this sink takes ``event`` at all."""
        return event.get("type") in self.event_types

    @abc.abstractmethod
    def send(self, event):
        """Deliver one event.

        :raises SinkUnavailable: not now; the dispatcher retries.
        :raises SinkRejected: never; the dispatcher drops it.
        """

    def send_batch(self, events):
        """Deliver several events, all or none (see :meth:`send`).

        The default sends them one by one: a failure part-way means the
        first ones are sent again on the retry (delivery is at least
        once; events carry their id for deduplication).
        """
        for event in events:
            self.send(event)

    def close(self):  # noqa: B027 - optional, nothing to release by default
        """Release files, sessions, connections."""

    def __repr__(self):
        return "<%s %s>" % (type(self).__name__, self.name)


def bind_recovery_cap(sinks, cap):
    """Give every sink that leads to a recovery the controller's
    per-instance cap, so that no path to a recovery escapes it."""
    for sink in sinks:
        if sink.leads_to_recovery:
            sink.recovery_cap = cap


def load_sinks(conf, names=None):
    """Build the sinks named in ``[sinks] enabled`` (or ``names``), in
    that order, through stevedore.

    :raises SinkConfigError: for an unknown or repeated name, or a sink
        whose ``from_conf`` refuses the configuration.
    """
    names = list(conf.sinks.enabled if names is None else names)
    if len(set(names)) != len(names):
        raise SinkConfigError(reason="a sink is listed twice in [sinks] "
                                     "enabled: %s" % ", ".join(names))
    missing = []
    manager = named.NamedExtensionManager(
        NAMESPACE, names, invoke_on_load=False, name_order=True,
        on_missing_entrypoints_callback=missing.extend)
    if missing:
        raise SinkConfigError(
            reason="no fault sink named %s (known: %s)" % (
                ", ".join(sorted(missing)),
                ", ".join(sorted(named.ExtensionManager(
                    NAMESPACE).names())) or "none"))
    sinks = []
    for extension in manager:
        try:
            sink = extension.plugin.from_conf(conf)
        except (ValueError, KeyError) as exc:
            raise SinkConfigError(reason="sink %s: %s" % (extension.name,
                                                          exc))
        sink.name = extension.name
        sinks.append(sink)
    return sinks


def load_session(conf, group):
    """A keystoneauth session and the keystoneauth ``Adapter`` arguments
    from the options of ``[group]`` (for sinks that speak HTTP).

    :raises ValueError: no auth plugin configured, or adapter options
        that contradict each other.
    """
    auth = ks_loading.load_auth_from_conf_options(conf, group)
    if auth is None:
        raise ValueError("[%s] auth_type is not set (use 'password' with "
                         "credentials, or 'none' with endpoint_override "
                         "for a service without authentication)" % group)
    timeout = conf[group].timeout or DEFAULT_TIMEOUT
    session = ks_loading.load_session_from_conf_options(
        conf, group, auth=auth, timeout=timeout)
    adapter_kwargs = {}
    try:
        ks_adapter.process_conf_options(conf[group], adapter_kwargs)
    except TypeError as exc:
        raise ValueError("[%s] %s" % (group, exc))
    return session, adapter_kwargs


class _Entry(object):
    __slots__ = ("event", "queued_at", "attempts")

    def __init__(self, event, queued_at):
        self.event = event
        self.queued_at = queued_at
        self.attempts = 0


def _describe(event):
    return "%s event %s of instance %s" % (
        event.get("type"), event.get("id"), event.get("instance"))


class _SinkWorker(object):
    """One sink's queue, retry state, counters and thread."""

    def __init__(self, sink, dispatcher):
        self.sink = sink
        self.name = sink.name
        self._d = dispatcher
        self.queue = collections.deque()
        self.cond = threading.Condition()
        self.current = []      # the batch being attempted
        self.solo = 0          # events to send one by one (after a reject)
        self.failures = 0      # consecutive failed attempts
        self.deferrals = 0     # consecutive failures of before_send
        self.next_at = None    # no attempt before this clock value
        self.last_error = None
        self.thread = None
        self.stopping = False
        self.deadline = None
        self.counters = collections.Counter()

    # -- the submitter's side -------------------------------------------------

    def put(self, event, now):
        dropped = None
        with self.cond:
            if len(self.queue) >= self._d.queue_size:
                dropped = self.queue.popleft()
                self.counters["dropped_overflow"] += 1
            self.queue.append(_Entry(event, now))
            self.counters["queued"] += 1
            self.cond.notify()
        if dropped is not None:
            LOG.error("sink %s: queue full (%d events), dropped the oldest, "
                      "%s", self.name, self._d.queue_size,
                      _describe(dropped.event))
            self._d.report(dropped.event, self.name, DROPPED)

    # -- delivery -------------------------------------------------------------

    def step(self, now):
        """One delivery attempt; the seconds until the next is due (0:
        at once), or None when there is nothing to send."""
        with self.cond:
            if not self.current:
                if not self.queue:
                    return None
                size = 1 if self.solo else max(1, self.sink.max_batch)
                while self.queue and len(self.current) < size:
                    self.current.append(self.queue.popleft())
                self.solo = max(0, self.solo - len(self.current))
            if self.next_at is not None and now < self.next_at:
                return self.next_at - now
            batch = list(self.current)
        events = [entry.event for entry in batch]
        if self._d.before_send is not None:
            try:
                keep = self._d.before_send(self.name, events)
            except Exception as exc:  # noqa: BLE001 - the hook's failure
                return self._deferred(batch, exc, now)
            if len(keep) < len(events):
                batch, events = self._keep(batch, keep)
                if not batch:
                    with self.cond:
                        return 0.0 if self.queue else None
        try:
            if len(events) == 1:
                self.sink.send(events[0])
            else:
                self.sink.send_batch(events)
        except SinkRejected as exc:
            return self._rejected(batch, exc)
        except SinkUnavailable as exc:
            return self._failed(batch, exc, now)
        except Exception as exc:  # noqa: BLE001 - a sink's bug, not ours
            # The worker thread is the sink's top level: a bug in one
            # sink is retried (and bounded) like an outage, not fatal.
            LOG.exception("sink %s: unexpected error sending %d event(s)",
                          self.name, len(events))
            return self._failed(batch, exc, now)
        return self._delivered(batch)

    def _keep(self, batch, keep):
        """Leave out of the batch what ``before_send`` did not return."""
        kept = {id(event) for event in keep}
        left = [e for e in batch if id(e.event) not in kept]
        batch = [e for e in batch if id(e.event) in kept]
        with self.cond:
            self.current = list(batch)
            self.counters["withdrawn"] += len(left)
        LOG.info("sink %s: %d event(s) not sent: no longer this "
                 "controller's to send (%s)", self.name, len(left),
                 ", ".join(str(e.event.get("id")) for e in left))
        return batch, [entry.event for entry in batch]

    def _deferred(self, batch, exc, now):
        """``before_send`` failed (the controller's ledger is away): the
        batch waits, as after a failed attempt, but no event's attempts
        or age count it against the sink."""
        with self.cond:
            self.deferrals += 1
            self.counters["deferred"] += 1
            delay = self._d.backoff_delay(self.deferrals)
            self.next_at = now + delay
        if self.deferrals == 1:
            LOG.warning("sink %s: not sending %d event(s) yet, retrying in "
                        "%.1f s: %s: %s", self.name, len(batch), delay,
                        type(exc).__name__, exc)
        return delay

    def _delivered(self, batch):
        if self.failures:
            LOG.info("sink %s: delivering again after %d failed "
                     "attempt(s)", self.name, self.failures)
        with self.cond:
            self.current = []
            self.failures = 0
            self.next_at = None
            self.last_error = None
            self.counters["sent"] += len(batch)
            self.deferrals = 0
            more = bool(self.queue)
        self._d.report_batch([entry.event for entry in batch], self.name,
                             DONE)
        return 0.0 if more else None

    def _rejected(self, batch, exc):
        if len(batch) > 1:
            LOG.warning("sink %s: rejected a batch of %d events, sending "
                        "them one by one: %s", self.name, len(batch), exc)
            with self.cond:
                self.queue.extendleft(reversed(batch))
                self.current = []
                self.solo = len(batch)
            return 0.0
        with self.cond:
            self.current = []
            self.counters["dropped_rejected"] += 1
            more = bool(self.queue)
        LOG.error("sink %s: rejected %s for good, dropped: %s",
                  self.name, _describe(batch[0].event), exc)
        self._d.report(batch[0].event, self.name, DROPPED)
        return 0.0 if more else None

    def _failed(self, batch, exc, now):
        error = "%s: %s" % (type(exc).__name__, exc)
        given_up = []
        with self.cond:
            self.failures += 1
            self.counters["failed_attempts"] += 1
            self.last_error = error
            for entry in batch:
                entry.attempts += 1
            given_up = [e for e in batch
                        if e.attempts >= self._d.max_attempts
                        or now - e.queued_at >= self._d.give_up_after]
            self.current = [e for e in batch if e not in given_up]
            self.counters["dropped_gave_up"] += len(given_up)
            delay = self._d.backoff_delay(self.failures)
            self.next_at = now + delay
        if self.failures == 1:
            LOG.warning("sink %s: cannot deliver (%d waiting), retrying in "
                        "%.1f s: %s", self.name, len(self.queue) + len(batch),
                        delay, error)
        else:
            LOG.debug("sink %s: attempt %d failed, retrying in %.1f s: %s",
                      self.name, self.failures, delay, error)
        for entry in given_up:
            LOG.error("sink %s: gave up on %s after %d attempt(s) in %.0f s, "
                      "dropped: %s", self.name, _describe(entry.event),
                      entry.attempts, now - entry.queued_at, error)
            self._d.report(entry.event, self.name, DROPPED)
        return delay

    # -- the thread -----------------------------------------------------------

    def run(self):
        clock = self._d.clock
        while True:
            try:
                delay = self.step(clock())
            except Exception:  # noqa: BLE001 - top of the thread
                LOG.exception("sink %s: unexpected error in the worker",
                              self.name)
                delay = self._d.retry_min
            with self.cond:
                if delay is None and (self.queue or self.current):
                    # Submitted after step looked: no wake-up is lost.
                    delay = 0.0
                if self.stopping:
                    remaining = self.deadline - clock()
                    if delay is None or remaining <= 0:
                        return
                    if delay > 0:
                        self.cond.wait(min(delay, remaining))
                elif delay is None:
                    self.cond.wait()
                elif delay > 0:
                    self.cond.wait(delay)

    def stats(self, now):
        with self.cond:
            stats = dict(self.counters)
            stats.update({
                "waiting": len(self.queue) + len(self.current),
                "consecutive_failures": self.failures,
                "last_error": self.last_error,
                "next_attempt_in": (None if self.next_at is None
                                    else round(max(0.0, self.next_at - now),
                                               3)),
            })
        for key in ("queued", "sent", "failed_attempts", "dropped_overflow",
                    "dropped_gave_up", "dropped_rejected", "skipped",
                    "deferred", "withdrawn"):
            stats.setdefault(key, 0)
        return stats


class SinkDispatcher(object):
    """Feeds each of ``sinks`` from its own bounded queue and thread.

    :param sinks: :class:`FaultSink` objects with distinct names.
    :param clock: monotonic seconds (tests pass a fake).
    :param rng: ``random.random``-like, for the jitter.
    :param queue_size: events each sink's queue holds.
    :param retry_min: seconds before the first retry of a failed attempt.
    :param retry_max: longest wait between two attempts.
    :param max_attempts: failed attempts after which an event is dropped.
    :param give_up_after: seconds after its submission after which an
        event is dropped at its next failed attempt.
    :param on_result: ``f(event, sink_name, state)``, state :data:`DONE`
        or :data:`DROPPED`, called from the worker threads.
    :param on_results: ``f(sink_name, events, state)``: the same for a
        whole batch at once: a delivered batch is reported so, and, if
        there is no ``on_result``, everything else.
    :param before_send: ``f(sink_name, events)``, called by a sink's
        worker right before it hands ``events`` to the sink: returns
        those to send (the others are left out, unreported: they are no
        longer this dispatcher's to send), or raises to hold the batch
        back for a while (back-off as after a failure, without counting
        an attempt against the events).  The controller notes there
        that the deliveries are in flight (see
        :meth:`guestha.server.ledger.Ledger.begin_sending`).
    """

    def __init__(self, sinks, clock=time.monotonic, rng=random.random,
                 queue_size=10000, retry_min=1.0, retry_max=60.0,
                 max_attempts=20, give_up_after=3600.0, on_result=None,
                 on_results=None, before_send=None):
        if not 0 < retry_min <= retry_max:
            raise ValueError("need 0 < retry_min <= retry_max, not %r, %r"
                             % (retry_min, retry_max))
        if queue_size < 1 or max_attempts < 1 or give_up_after <= 0:
            raise ValueError("queue_size and max_attempts must be >= 1 and "
                             "give_up_after > 0")
        self.clock = clock
        self._backoff = backoff.Backoff(retry_min, retry_max, rng, clock)
        self.queue_size = queue_size
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.give_up_after = give_up_after
        self._on_result = on_result
        self._on_results = on_results
        self.before_send = before_send
        self._workers = collections.OrderedDict()
        for sink in sinks:
            if not sink.name or sink.name in self._workers:
                raise ValueError("sinks need distinct names, not %r"
                                 % (sink.name,))
            self._workers[sink.name] = _SinkWorker(sink, self)

    @classmethod
    def from_conf(cls, conf, sinks=None, on_result=None, **kwargs):
        """A dispatcher for the configured sinks (``[sinks]``); keyword
        arguments override the configuration."""
        group = conf.sinks
        if sinks is None:
            sinks = load_sinks(conf)
        settings = {"queue_size": group.queue_size,
                    "retry_min": group.retry_min,
                    "retry_max": group.retry_max,
                    "max_attempts": group.max_attempts,
                    "give_up_after": group.give_up_after}
        settings.update(kwargs)
        return cls(sinks, on_result=on_result, **settings)

    @property
    def sink_names(self):
        return list(self._workers)

    def sink(self, name):
        return self._workers[name].sink

    def submit(self, event, sinks=None):
        """Queue ``event`` for every sink (or the sinks named in
        ``sinks``) that takes it; returns at once."""
        now = self.clock()
        names = self._workers if sinks is None else sinks
        for name in names:
            worker = self._workers.get(name)
            if worker is None:
                LOG.error("no fault sink %s is configured: %s not sent to "
                          "it", name, _describe(event))
                self.report(event, name, DROPPED)
            elif worker.sink.accepts(event):
                worker.put(event, now)
            else:
                with worker.cond:
                    worker.counters["skipped"] += 1
                self.report(event, name, DONE)

    def report(self, event, sink_name, state):
        """One event's fate (a drop, a skip): ``on_result``, or else
        ``on_results``."""
        if self._on_result is not None:
            self._on_result(event, sink_name, state)
        elif self._on_results is not None:
            self._on_results(sink_name, [event], state)

    def report_batch(self, events, sink_name, state):
        """A delivered batch: ``on_results``, or else ``on_result`` for
        each event."""
        if self._on_results is not None:
            self._on_results(sink_name, events, state)
        elif self._on_result is not None:
            for event in events:
                self._on_result(event, sink_name, state)

    def backoff_delay(self, failures):
        """The wait after ``failures`` consecutive failures:
        ``retry_min * 2**(failures-1)``, at most ``retry_max``, +-20%."""
        return self._backoff.delay(failures)

    def step(self, name, now=None):
        """One delivery attempt of sink ``name`` (its thread's step; tests
        call it): the seconds until the next attempt is due, 0 if at once,
        None if its queue is empty."""
        return self._workers[name].step(self.clock() if now is None
                                        else now)

    def stats(self):
        """``{sink name: counters}``: queued, sent, failed_attempts,
        dropped_overflow, dropped_gave_up, dropped_rejected, skipped (not
        for this sink), waiting, consecutive_failures, last_error,
        next_attempt_in."""
        now = self.clock()
        return {name: worker.stats(now)
                for name, worker in self._workers.items()}

    def start(self):
        """Start one worker thread per sink (daemon threads: a sink call
        that hangs must not hold up the process's exit)."""
        for worker in self._workers.values():
            worker.stopping = False
            worker.thread = threading.Thread(
                target=worker.run, name="guestha-sink-%s" % worker.name,
                daemon=True)
            worker.thread.start()

    def stop(self, timeout=10.0):
        """Deliver what can be delivered within ``timeout`` seconds, then
        stop the workers and close the sinks.

        :returns: True if every worker ended and nothing was left behind.
        """
        deadline = self.clock() + timeout
        for worker in self._workers.values():
            with worker.cond:
                worker.stopping = True
                worker.deadline = deadline
                worker.cond.notify()
        clean = True
        for worker in self._workers.values():
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - self.clock()) + 1.0)
                if worker.thread.is_alive():
                    LOG.warning("sink %s: still busy sending at stop; left "
                                "behind", worker.name)
                    clean = False
                    continue
                worker.thread = None
            with worker.cond:
                left = [e.event for e in worker.current] + [
                    e.event for e in worker.queue]
            if left:
                clean = False
                LOG.warning("sink %s: %d event(s) not delivered at stop "
                            "(still owed): %s", worker.name, len(left),
                            ", ".join(str(e.get("id")) for e in left))
            try:
                worker.sink.close()
            except Exception:  # noqa: BLE001 - closing must not stop others
                LOG.exception("sink %s: error while closing", worker.name)
        return clean
