# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics of guestha-agent and guestha-server (``[metrics]``).

Each service serves ``/metrics`` over HTTP from a thread of its own
(prometheus_client's exporter), on ``[metrics] host`` (loopback by
default) and ``port``.  Nothing is counted twice for it: a collector reads,
at scrape time, the figures the services keep anyway.

* **The agent**: its I/O loop owns every instance and must not be slowed
  down or read from another thread; the collector posts a request to the
  loop and waits (at most :data:`SNAPSHOT_TIMEOUT` seconds) for the
  snapshot the loop builds between two wake-ups
  (:meth:`guestha.agent.loop.AgentLoop.metrics_snapshot`).  A loop that
  does not answer fails the scrape (Prometheus' ``up`` is 0): a stuck
  loop is an agent down.  Round trips go into the histogram in batches,
  from the loop's ring of the latest round trips.
* **The server**: the sink dispatcher's and the action worker's counters,
  which they keep under their own locks, and the events the controller
  dispatched, by type and kind (:class:`Tally`).

Cardinality: per-instance series carry ``instance_id`` and
``project_id`` labels (not ``instance``, Prometheus' own target label).
``[metrics] per_instance_labels = false`` leaves only per-host aggregates;
see doc/source/operator-guide.rst.
"""

import bisect
import collections
import logging
import threading

from prometheus_client import core
from prometheus_client import exposition
from prometheus_client import registry as registry_mod

LOG = logging.getLogger(__name__)

#: Seconds a scrape waits for the agent loop's snapshot.
SNAPSHOT_TIMEOUT = 5.0
#: Upper bounds (seconds) of the round-trip histogram's buckets: a
#: healthy channel answers within milliseconds, a loaded host within tens.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0, 2.5)
#: The per-instance heartbeat counters exported, as
#: ``guestha_agent_heartbeat_<name>_total``.
HEARTBEAT_COUNTERS = ("challenges", "answers", "missed", "unhealthy",
                      "faults")


class RttHistogram(object):
    """Cumulative round-trip buckets, filled from the loop's thread."""

    def __init__(self, bounds=RTT_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: +Inf
        self.total = 0.0
        self.count = 0

    def add(self, values):
        bounds, counts = self.bounds, self.counts
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            self.total += value
        self.count += len(values)

    def buckets(self):
        """``[(le, cumulative count), ...]`` as prometheus_client wants."""
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound),
                        running))
        return out


class Tally(object):
    """Thread-safe counts of ``(key, ...)`` tuples."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = collections.Counter()

    def add(self, *key):
        with self._lock:
            self._counts[key] += 1

    def items(self):
        with self._lock:
            return list(self._counts.items())


class AgentCollector(object):
    """The agent's metrics, from a snapshot of its loop at each scrape.

    :param snapshot: ``f(timeout)`` returning the loop's snapshot
        (:meth:`guestha.agent.loop.AgentLoop.request_metrics`); raises
        TimeoutError when the loop does not answer.
    """

    def __init__(self, host, snapshot, per_instance=True,
                 timeout=SNAPSHOT_TIMEOUT):
        self.host = host
        self._snapshot = snapshot
        self.per_instance = per_instance
        self.timeout = timeout

    def describe(self):
        return []  # no collect() at registration (the loop may not run)

    def collect(self):
        snap = self._snapshot(self.timeout)
        host = self.host
        g = core.GaugeMetricFamily(
            "guestha_agent_instances",
            "Instances this agent knows, by state (MONITORED, "
            "NOT_ENABLED, SUSPENDED, FAULT...).", labels=["host", "state"])
        by_state = collections.Counter(i[2] for i in snap["instances"])
        for state, n in sorted(by_state.items()):
            g.add_metric([host, state], n)
        yield g
        g = core.GaugeMetricFamily(
            "guestha_agent_faults_open",
            "Instances with an open fault, by kind.",
            labels=["host", "kind"])
        open_kinds = collections.Counter(i[3] for i in snap["instances"]
                                         if i[3] is not None)
        for kind, n in sorted(open_kinds.items()):
            g.add_metric([host, kind], n)
        yield g
        c = core.CounterMetricFamily(
            "guestha_agent_faults",
            "Faults this agent reported since it started, by kind.",
            labels=["host", "kind"])
        for kind, n in sorted(snap["fault_kinds"].items()):
            c.add_metric([host, kind or ""], n)
        yield c
        # host totals: the live instances' counters plus those of the
        # instances gone since the start (so the totals never go down)
        totals = collections.Counter(snap["retired"])
        for entry in snap["instances"]:
            for name, n in zip(HEARTBEAT_COUNTERS, entry[4]):
                totals[name] += n
        for name in HEARTBEAT_COUNTERS:
            c = core.CounterMetricFamily(
                "guestha_agent_heartbeat_%s" % name,
                "Heartbeat %s of all instances on this host since the "
                "agent started." % name, labels=["host"])
            c.add_metric([host], totals[name])
            yield c
        if self.per_instance:
            yield from self._per_instance(snap)
        hist = snap["rtt"]
        h = core.HistogramMetricFamily(
            "guestha_agent_heartbeat_rtt_seconds",
            "Challenge round trips of the channels in good standing.",
            labels=["host"])
        h.add_metric([host], hist["buckets"], hist["sum"])
        yield h
        rep = snap["reporter"]
        g = core.GaugeMetricFamily(
            "guestha_agent_outbox_events",
            "Events waiting for delivery to the controller: 'disk' in the "
            "outbox, 'memory' held while the disk fails.",
            labels=["host", "where"])
        g.add_metric([host, "disk"], rep.get("on_disk") or 0)
        g.add_metric([host, "memory"], rep.get("in_memory") or 0)
        yield g
        for key, what in (("delivered", "accepted by a controller"),
                          ("rejected", "refused by a controller"),
                          ("retries", "retried after a failed attempt"),
                          ("dropped", "dropped (outbox full)"),
                          ("relay_sent", "relay casts sent"),
                          ("relay_failed", "relay casts failed"),
                          ("relay_dropped", "relay casts dropped")):
            c = core.CounterMetricFamily(
                "guestha_agent_reports_%s" % key,
                "Reported events %s since the agent started." % what,
                labels=["host"])
            c.add_metric([host], rep.get(key) or 0)
            yield c
        g = core.GaugeMetricFamily(
            "guestha_agent_outbox_disk_error",
            "1 while the outbox cannot be written.", labels=["host"])
        g.add_metric([host], 1 if rep.get("disk_error") else 0)
        yield g
        g = core.GaugeMetricFamily(
            "guestha_agent_libvirt_connected",
            "1 when the agent is connected to libvirt.", labels=["host"])
        g.add_metric([host], 1 if snap["libvirt_connected"] else 0)
        yield g
        g = core.GaugeMetricFamily(
            "guestha_agent_uptime_seconds",
            "Seconds since the agent's loop started.", labels=["host"])
        g.add_metric([host], snap["uptime_s"])
        yield g

    def _per_instance(self, snap):
        host = self.host
        names = ["host", "instance_id", "project_id"]
        state = core.GaugeMetricFamily(
            "guestha_agent_instance_state",
            "1 for the state an instance is in.",
            labels=names + ["state"])
        fault = core.GaugeMetricFamily(
            "guestha_agent_instance_fault_open",
            "1 while an instance has an open fault, by kind.",
            labels=names + ["kind"])
        counters = {name: core.CounterMetricFamily(
            "guestha_agent_instance_heartbeat_%s" % name,
            "Heartbeat %s of one instance since the agent started." % name,
            labels=names) for name in HEARTBEAT_COUNTERS}
        for uuid, project, st, kind, values in snap["instances"]:
            ids = [host, uuid, project or ""]
            state.add_metric(ids + [st], 1)
            if kind is not None:
                fault.add_metric(ids + [kind], 1)
            for name, n in zip(HEARTBEAT_COUNTERS, values):
                counters[name].add_metric(ids, n)
        yield state
        yield fault
        yield from counters.values()


class ServerCollector(object):
    """The controller's metrics: events dispatched, sink queues and
    outcomes, corrective-action outcomes."""

    def __init__(self, server_id, dispatcher, events, actions=None):
        self.server_id = server_id
        self.dispatcher = dispatcher
        self.events = events      # Tally of (type, kind)
        self.actions = actions    # Tally of (action, outcome), or None

    def describe(self):
        return []

    def collect(self):
        sid = self.server_id
        c = core.CounterMetricFamily(
            "guestha_server_events",
            "Events this controller received and dispatched, by type "
            "(fault, recovery, refusal...) and fault kind.",
            labels=["server", "type", "kind"])
        for (type_, kind), n in sorted(self.events.items(),
                                       key=lambda kv: str(kv[0])):
            c.add_metric([sid, type_ or "", kind or ""], n)
        yield c
        stats = self.dispatcher.stats()
        g = core.GaugeMetricFamily(
            "guestha_server_sink_backlog",
            "Events waiting in a sink's queue (or being sent).",
            labels=["server", "sink"])
        f = core.GaugeMetricFamily(
            "guestha_server_sink_consecutive_failures",
            "Failed attempts of a sink since its last delivery.",
            labels=["server", "sink"])
        c = core.CounterMetricFamily(
            "guestha_server_sink_events",
            "Sink outcomes since the controller started: queued, sent, "
            "failed_attempts, dropped_overflow, dropped_gave_up, "
            "dropped_rejected, skipped.",
            labels=["server", "sink", "outcome"])
        for name, s in sorted(stats.items()):
            g.add_metric([sid, name], s.get("waiting", 0))
            f.add_metric([sid, name], s.get("consecutive_failures", 0))
            for outcome in ("queued", "sent", "failed_attempts",
                            "dropped_overflow", "dropped_gave_up",
                            "dropped_rejected", "skipped"):
                c.add_metric([sid, name, outcome], s.get(outcome, 0))
        yield g
        yield f
        yield c
        c = core.CounterMetricFamily(
            "guestha_server_actions",
            "Corrective-action records of this controller, by action and "
            "outcome.", labels=["server", "action", "outcome"])
        for (action, outcome), n in sorted(
                self.actions.items() if self.actions is not None else [],
                key=lambda kv: str(kv[0])):
            c.add_metric([sid, action or "", outcome or ""], n)
        yield c


class Exporter(object):
    """prometheus_client's HTTP exporter for one collector, in its own
    registry (none of the library's default process metrics would be
    wrong, but this keeps the output to what is documented)."""

    def __init__(self, collector, host, port):
        self.registry = registry_mod.CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host = host
        self.port = port
        self._httpd = None

    def start(self):
        self._httpd, _thread = exposition.start_http_server(
            self.port, addr=self.host, registry=self.registry)
        self.port = self._httpd.server_port
        LOG.info("Prometheus metrics on http://%s:%d/metrics", self.host,
                 self.port)
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def exporter_from_conf(conf, collector, default_port):
    """The exporter ``[metrics]`` asks for, started; None if disabled, or
    if it cannot listen: the service monitors without it (logged at
    ERROR; Prometheus' ``up`` says the rest)."""
    group = conf.metrics
    if not group.enabled:
        return None
    port = group.port if group.port is not None else default_port
    try:
        return Exporter(collector, group.host, port).start()
    except OSError as exc:
        LOG.error("cannot serve Prometheus metrics on %s:%d ([metrics] host "
                  "and port): %s; running without them", group.host, port,
                  exc)
        return None
