# SPDX-License-Identifier: Apache-2.0
"""The instances' environment: what the agent's instances ask of the loop,
and the records other threads post to it.

Theory of operation
-------------------
One thread owns all instance state: the thread that runs
:class:`AgentLoop`.  Its wait is an :class:`~guestha.agent.ioloop.IOLoop`
(epoll on the channel sockets, the timers, the posted records, with its
wake-ups batched).  Other threads (the libvirt watcher, the
oslo.messaging server delivering server-group messages, the hot-plug
workers, the metrics exporter) never touch an instance: they
:meth:`~AgentLoop.post` a record, which wakes the loop.  So a slow libvirt
call, a Nova request or a broker outage can delay nothing but itself, and
one guest's flood costs it only its own rate budget.

:class:`AgentLoop` is the :class:`~guestha.agent.instance.Env` of every
instance (timers, channel sockets, confirmations, reports) and routes each
posted record to the instance it is for.  The rest is in modules of
their own, each with one job:

* :mod:`guestha.agent.ioloop`: the wait (sockets, timers, posted records);
* :mod:`guestha.agent.openfaults`: the open faults, from the outbox and
  following the reports;
* :mod:`guestha.agent.hotplugworkers`: the hot-plug decisions, off the
  loop's thread;
* :mod:`guestha.agent.deliveries`: the controller's server-group messages
  as records for the loop;
* :mod:`guestha.agent.statusserver`: the status socket;
* :mod:`guestha.agent.roundtrips`: the challenges' round trips, for the
  status and the metrics.
"""

import collections
import logging
import socket
import threading
import time

from guestha.agent import deliveries as deliveries_mod
from guestha.agent import events as ev
from guestha.agent import hotplugworkers
from guestha.agent import instance as inst_mod
from guestha.agent import ioloop
from guestha.agent import monitored as monitored_mod
from guestha.agent import openfaults
from guestha.agent import roundtrips
from guestha.agent import statereport
from guestha.agent import statusserver

LOG = logging.getLogger(__name__)

#: The largest share of a guest's interval the loop's batching may delay
#: its challenges, and the reading of its answers, by (``[agent]
#: batch_delay_ms`` is lowered while a guest with a shorter interval is
#: monitored): 40 ms at 1 s, 4 ms at 100 ms.  Deadlines are not delayed
#: (urgent timers, :mod:`guestha.agent.ioloop`), so a miss is noticed at
#: most this share of the interval late.
BATCH_SHARE = 0.04

#: The counters of an instance the metrics export
#: (guestha.metrics.HEARTBEAT_COUNTERS, without importing it here).
_HEARTBEAT_COUNTERS = ("challenges", "answers", "missed", "unhealthy",
                       "faults")


class MetricsRequest(object):
    """A scrape's request for :meth:`AgentLoop.metrics_snapshot` (posted
    by the metrics exporter's thread, answered by the loop)."""

    __slots__ = ("done", "result")

    def __init__(self):
        self.done = threading.Event()
        self.result = None


class AgentLoop(inst_mod.Env):
    """The instances' environment, in the loop's thread.

    :param reporter: delivers fault reports (``submit``) and server-group
        relays (``cast_relay``); see :mod:`guestha.agent.reporter`.
    :param watcher: the libvirt watcher (``request_state``,
        ``request_hotplug``), or None (tests).
    :param hotplug_policy: decides whether to add a channel
        (:mod:`guestha.agent.hotplug`), or None to never hot-plug.
    :param outbox: the :class:`~guestha.agent.outbox.Outbox` whose open
        faults this start begins with (an older agent's
        ``<state_dir>/faults.json`` is moved into it); None (tests) to
        start with none.
    :param state_reports: report each instance's monitoring state to the
        controllers (:mod:`guestha.agent.statereport`), for the REST API.
    :param batch_delay: seconds; see :mod:`guestha.agent.ioloop`.
    """

    def __init__(self, host, policy, reporter, state_dir, watcher=None,
                 hotplug_policy=None, status_socket=None,
                 clock=time.monotonic, wallclock=time.time,
                 alive_interval=30.0, outbox=None, state_reports=False,
                 batch_delay=0.0, sleep=time.sleep):
        self.host = host
        self.policy = policy
        self.reporter = reporter
        self.watcher = watcher
        self.hotplug_policy = hotplug_policy
        self.status_socket = status_socket
        self._clock = clock
        self._wallclock = wallclock
        self.alive_interval = alive_interval
        self.instances = {}
        self.io = ioloop.IOLoop(self._handle_safely, self._is_current,
                                clock=clock, batch_delay=batch_delay,
                                sleep=sleep)
        self.sel = self.io.poller
        # the batch delay asked for; the loop uses less while a guest
        # with a short interval is monitored (_fit_batch_delay)
        self._batch_delay_max = batch_delay
        self._batch_delay_stale = False
        self.deliveries = deliveries_mod.GroupDeliveries(self.io.post)
        self._workers = hotplugworkers.HotplugWorkers(
            hotplug_policy, self.io.post, clock)
        self._status = (statusserver.StatusServer(status_socket, self.status)
                        if status_socket else None)
        self._open_faults = openfaults.OpenFaults.load(outbox, state_dir)
        self._monitored = monitored_mod.MonitoredFile(state_dir)
        self._next_alive = None
        self.libvirt_connected = None
        self.started_at = None
        self.round_trips = roundtrips.RoundTrips()
        # Env's two calls of every round (schedule, record_rtt) are these
        # bound methods, not methods of this class: the instance calls the
        # IOLoop's and the ring's directly
        self.schedule = self.io.schedule
        self.record_rtt = self.round_trips.record
        # for the metrics: faults reported by kind, and the heartbeat
        # counters of instances gone since the start
        self.fault_kinds = collections.Counter()
        self._retired = collections.Counter()
        # each instance's state to the controllers, for the REST API
        self.state_reports = (statereport.StateReporter(
            host, reporter.submit, wallclock) if state_reports else None)

    # -- thread-safe entry points ---------------------------------------------

    def post(self, record):
        """Hand a record to the loop, from any thread."""
        self.io.post(record)

    def stop(self):
        self.io.stop()

    # -- running --------------------------------------------------------------

    @property
    def batch_delay(self):
        return self.io.batch_delay

    @batch_delay.setter
    def batch_delay(self, seconds):
        self._batch_delay_max = seconds
        self._fit_batch_delay()

    def _fit_batch_delay(self):
        """The batch delay in use: the one asked for, but at most
        BATCH_SHARE of the shortest interval granted to a guest monitored
        here, so that batching makes no guest's challenges, answers or
        misses later than that share of its interval."""
        self._batch_delay_stale = False
        delay = self._batch_delay_max
        shortest = min((i.monitored["interval_ms"]
                        for i in self.instances.values() if i.monitored),
                       default=None)
        if shortest is not None:
            delay = min(delay, shortest / 1000.0 * BATCH_SHARE)
        self.io.batch_delay = delay

    def start(self):
        self.io.start()
        if self._status is not None:
            self._status.open(self.io.poller)
        self.started_at = self._clock()
        self._next_alive = self.started_at + 1.0

    def run(self):
        if not self.io.running:
            self.start()
        try:
            while self.io.running:
                self.run_once()
        finally:
            self._shutdown()

    def run_once(self, max_wait=1.0):
        self._housekeeping(self.io.run_once(max_wait))

    def _is_current(self, instance):
        return self.instances.get(instance.uuid) is instance

    @property
    def answers(self):
        """Challenges answered since the start."""
        return self.round_trips.answers

    def _housekeeping(self, now):
        self.round_trips.fold_if_due()
        if self._batch_delay_stale:
            self._fit_batch_delay()
        if self._monitored.dirty:
            self._monitored.save(self.instances)
        if self.state_reports is not None:
            self.state_reports.tick(now, self.instances)
        if self._next_alive is not None and now >= self._next_alive:
            self._next_alive = now + self.alive_interval
            # what this host monitors, so controllers learn where each
            # instance lives; server_group_messaging is what the flavor
            # said when we looked it up for a hot-plug, None if we did not
            # look (the controller asks Nova itself)
            self.reporter.cast_relay("agent_alive", instances=[
                {"instance": i.uuid,
                 "heartbeat": i.state == inst_mod.MONITORED,
                 "server_group_messaging": i.features.get(
                     "server_group_messaging")}
                for i in self.instances.values()])

    def _shutdown(self):
        LOG.info("agent loop stopping")
        self._monitored.save(self.instances)
        for instance in list(self.instances.values()):
            instance._close()
        if self._status is not None:
            self._status.close()
        self._workers.shutdown(wait=False)
        self.io.close()

    # -- posted records -------------------------------------------------------

    def _handle_safely(self, record, now):
        try:
            self._handle(record, now)
        except Exception:  # noqa: BLE001 - one record, not the loop
            LOG.exception("failed to handle %r", record)

    def _handle(self, record, now):
        if isinstance(record, ev.DomainUpdate):
            info = record.info
            instance = self.instances.get(info.uuid)
            if instance is None:
                if info.state == ev.SHUTOFF:
                    # its next start boots a new guest: nothing from
                    # before this start of the agent applies
                    self._monitored.forget([info.uuid])
                    return
                instance = inst_mod.Instance(
                    info.uuid, self, self.policy, now,
                    open_fault=self._open_faults.get(info.uuid),
                    was_monitored=self._monitored.claim(
                        info.uuid, info.domain_id))
                self.instances[info.uuid] = instance
            instance.domain(info, now, record.event)
        elif isinstance(record, ev.DomainGone):
            self._gone(record.uuid, now)
        elif isinstance(record, ev.Reconciled):
            for uuid in [u for u in self.instances if u not in record.uuids]:
                self._gone(uuid, now)
            # domains deleted or migrated away while the agent was down
            self._monitored.forget(self._monitored.unclaimed()
                                   - set(record.uuids))
        elif isinstance(record, ev.LibvirtStatus):
            self.libvirt_connected = record.connected
            if record.connected:
                LOG.info("libvirt connected (%s)", record.uri)
            else:
                LOG.warning("libvirt connection lost (%s): %s; instance "
                            "state kept", record.uri, record.error)
        elif isinstance(record, ev.HotplugResult):
            instance = self.instances.get(record.uuid)
            if instance is not None:
                instance.hotplug_result(record, now)
        elif isinstance(record, ev.DomainState):
            instance = self.instances.get(record.uuid)
            if instance is not None:
                instance.confirmed(record.state, record.token, now)
        elif isinstance(record, hotplugworkers.Features):
            instance = self.instances.get(record.instance)
            if instance is not None:
                instance.features = record.features
        elif isinstance(record, MetricsRequest):
            try:
                record.result = self.metrics_snapshot(now)
            finally:
                record.done.set()
        elif isinstance(record, deliveries_mod.Deliver):
            instance = self.instances.get(record.instance)
            if instance is None or not instance.deliver(record.message):
                LOG.debug("instance %s: server-group message not "
                          "delivered (channel not ready)", record.instance)
        else:
            LOG.error("unknown record %r", record)

    def _gone(self, uuid, now):
        instance = self.instances.pop(uuid, None)
        if instance is not None:
            for name in _HEARTBEAT_COUNTERS:
                self._retired[name] += instance.counters[name]
            # a fault still open stays in _open_faults (report() follows
            # the events), for the instance's return
            instance.domain_gone(now)

    # -- Env: what instances ask of us ----------------------------------------

    def open_channel(self, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # connecting to a local UNIX socket completes at once or fails
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def watch(self, instance, sock):
        def ready(sock, mask, instance=instance):
            if mask & ioloop.WRITABLE:
                instance.writable(self._clock())
                if not mask & ~ioloop.WRITABLE:
                    return  # writable only
            instance.readable(self._clock())
        self.sel.register(sock, ready)

    def watch_writable(self, instance, sock, writable):
        try:
            self.sel.modify(sock, writable)
        except (KeyError, ValueError, OSError):
            pass  # unwatched or closed meanwhile

    def monitoring_changed(self):
        self._monitored.dirty = True
        self._batch_delay_stale = True  # (an interval may have changed)

    def unwatch(self, sock):
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def confirm_running(self, instance, token):
        if self.watcher is None:
            # no libvirt (tests): trust what the last update said
            state = instance.info.state if instance.info else None
            self.post(ev.DomainState(instance.uuid, state, token,
                                     self._clock()))
            return
        self.watcher.request_state(instance.uuid, token)

    def hotplug(self, instance):
        if self.hotplug_policy is None or self.watcher is None:
            instance.note = "no guestha channel (hot-plug disabled)"
            return
        self._workers.request(instance.info, self.watcher)

    def report(self, event):
        # the same bookkeeping as the outbox's, which does it in the
        # transaction that writes the event
        if event.get("type") == "fault":
            self.fault_kinds[event.get("kind")] += 1
        self._open_faults.follow(event)
        self.reporter.submit(event)

    def relay(self, method, **kwargs):
        self.reporter.cast_relay(method, **kwargs)

    def faults_changed(self):
        pass  # recorded with the event itself, by report()

    def wallclock(self):
        return self._wallclock()

    # -- status ---------------------------------------------------------------

    def status(self):
        now = self._clock()
        return {"host": self.host,
                "uptime_s": round(now - (self.started_at or now), 1),
                "libvirt_connected": self.libvirt_connected,
                "reporter": self.reporter.stats(),
                "answers": self.round_trips.answers,
                "rtt_ms": self.round_trips.summary(),
                "instances": [i.status(now) for i in sorted(
                    self.instances.values(), key=lambda i: i.uuid)]}

    # -- metrics (guestha.metrics) ------------------------------------------

    def request_metrics(self, timeout):
        """The loop's :meth:`metrics_snapshot`, from any thread.

        :raises TimeoutError: the loop did not answer within ``timeout``.
        """
        request = MetricsRequest()
        self.post(request)
        if not request.done.wait(timeout) or request.result is None:
            raise TimeoutError("the agent loop did not answer within %.1f s"
                               % timeout)
        return request.result

    def metrics_snapshot(self, now):
        """What :class:`guestha.metrics.AgentCollector` exports (the
        loop's thread): plain values, no reference to live state."""
        hist = self.round_trips.histogram()
        instances = []
        for i in self.instances.values():
            nova = (i.info.nova if i.info is not None else None) or {}
            c = i.counters
            instances.append((
                i.uuid, nova.get("project"), i.state,
                i.fault.get("kind") if i.fault else None,
                tuple(c[name] for name in _HEARTBEAT_COUNTERS)))
        return {"instances": instances,
                "retired": dict(self._retired),
                "fault_kinds": dict(self.fault_kinds),
                "rtt": {"buckets": hist.buckets(), "sum": hist.total},
                "reporter": self.reporter.stats(),
                "libvirt_connected": self.libvirt_connected,
                "uptime_s": now - (self.started_at or now)}
