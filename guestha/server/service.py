# SPDX-License-Identifier: Apache-2.0
"""guestha-server assembled from its configuration.

Threads: oslo.messaging's RPC server (the agents' calls and casts) and
notification listener (Nova's versioned notifications), one thread per
fault sink (:class:`~guestha.sinks.base.SinkDispatcher`; it notes each
batch in flight in the ledger before its sink gets it and done right
after, :class:`Deliveries`), the corrective-action worker, the
server-group refresher, and the ledger keeper (this module), which renews
the lease, writes the outcomes queued in batches, settles failed commits,
takes over the work of dead controllers and prunes old events.

Start: the lease first (a second process with the same ``server_id``
stops here), then the sinks and the action worker, then the work this
controller still owes from its last run and the orphans of dead
controllers, and only then the listeners.  Stop (SIGTERM): the RPC server
first, so no agent hears "accepted" from a controller that is going away,
then the notification listener, then the sinks get ``[server]
drain_timeout`` seconds to deliver what they hold; what they do not is
still pending in the ledger, and the lease is handed back so that another
controller takes it over at once.

Which controller relays Nova's state changes to the agents: the holder
of a tooz lock when ``[coordination] backend_url`` is set, else the one
with the smallest ``server_id`` among those holding a lease in the ledger
(every controller gets every notification, in its own pool, and keeps its
cache; one tells the peers): :mod:`guestha.server.coordination`.
"""

import logging
import signal
import threading
import time

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from guestha.conf import metrics as metrics_conf
from guestha.db import api as db_api
from guestha import metrics
from guestha import rpc
from guestha.server import actions as actions_mod
from guestha.server import coordination as coordination_mod
from guestha.server import endpoint as endpoint_mod
from guestha.server import groups as groups_mod
from guestha.server import ledger as ledger_mod
from guestha.server import notifications

LOG = logging.getLogger(__name__)

#: Seconds between two writes of the delivery outcomes.
FLUSH_INTERVAL = 0.2
#: Seconds between two prunes of the ledger.
PRUNE_INTERVAL = 600.0
#: Seconds between two tries to take (or keep) the relay: when the relay
#: dies, state changes go untold from then until its lock expired and
#: the next try of another controller (see doc/source/server.rst).
RELAY_INTERVAL = 1.0


class Deliveries(object):
    """Hands events to the sinks and the action worker, and tells the
    ledger how each delivery ended (the dispatcher's ``on_result``)."""

    def __init__(self, ledger, dispatcher, actions):
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.actions = actions
        self.received = metrics.Tally()  # (type, kind), for the metrics

    def on_result(self, event, sink_name, state):
        self.ledger.mark_later(event["id"], sink_name, state)

    def before_send(self, sink_name, events):
        """The sink's worker is about to hand ``events`` to the sink: in
        flight in the ledger first (:meth:`Ledger.begin_sending`), and
        only those this controller still owns."""
        mine = self.ledger.begin_sending(sink_name,
                                         [e["id"] for e in events])
        send = []
        for event in events:
            if event["id"] in mine:
                mine.discard(event["id"])   # once, even if queued twice
                send.append(event)
        return send

    def on_results(self, sink_name, events, state):
        """A delivered batch's outcome, written at once: the shorter a
        delivery stays in flight after the sink has it, the fewer
        deliveries a controller that dies leaves in doubt.  Queued for the
        keeper's next flush if the database fails (and the other outcomes,
        drops and skips, always: :meth:`on_result`)."""
        results = [(e["id"], sink_name, state) for e in events]
        try:
            self.ledger.mark(results)
        except Exception:  # noqa: BLE001 - never lose an outcome
            for result in results:
                self.ledger.mark_later(*result)

    def dispatch(self, event, targets=None):
        """Hand ``event`` to every sink, or to ``targets`` (the ledger's
        pending targets of an event dispatched again)."""
        if targets is None:
            self.received.add(event.get("type"), event.get("kind"))
            self.dispatcher.submit(event)
            return
        sinks = [t for t in targets if t != ledger_mod.ACTIONS]
        if sinks:
            self.dispatcher.submit(event, sinks=sinks)
        if ledger_mod.ACTIONS in targets:
            self.actions.submit(event)

    def redispatch(self, work):
        for event, targets in work:
            self.dispatch(event, targets)
        return len(work)

    def report_action(self, record):
        """An action record: into the ledger, then to the sinks."""
        if self.ledger.record(record):
            self.dispatcher.submit(record)


class LedgerKeeper(object):
    """The ledger's periodic work, in one thread."""

    def __init__(self, ledger, deliveries, retention, lease,
                 clock=time.monotonic, coordination=None):
        self.ledger = ledger
        self.deliveries = deliveries
        self.retention = retention
        self.lease = lease
        self._clock = clock
        self.coordination = (coordination if coordination is not None
                             else coordination_mod.LeaseRelay(ledger))
        self._stopping = threading.Event()
        self._thread = None
        self.relay = False
        # no take-over until then (see database_failed)
        self._quiet_until = None
        self._failures_seen = ledger.failures
        self._resubmit_actions = False
        self._next_renew = self._next_prune = self._next_relay = clock()

    def database_failed(self, now):
        """The database failed this controller (any of its threads).

        The other controllers' renewals may have failed too, so their
        leases look expired when it is back although they live: take over
        nothing for a lease, the time they need to renew.  And the
        corrective-action worker may have dropped a fault it was deciding
        on: when the database answers again, hand it this controller's
        pending faults again (:meth:`resubmit_actions`).
        """
        self._quiet_until = now + self.lease
        self._resubmit_actions = True

    def resubmit_actions(self):
        """This controller's faults whose action is still pending, to the
        worker again.  Deciding twice on one fault does no harm: the cap
        lets one action per fault, and an action record is stored once
        per id."""
        work = self.ledger.pending(targets=(ledger_mod.ACTIONS,))
        self._resubmit_actions = False
        return self.deliveries.redispatch(work)

    def watch_failures(self, now):
        """Whether the database failed any thread since the last look
        (then :meth:`database_failed`)."""
        if self.ledger.failures == self._failures_seen:
            return False
        self._failures_seen = self.ledger.failures
        self.database_failed(now)
        return True

    def update_relay(self):
        relay, who = self.coordination.elect()
        if relay != self.relay:
            LOG.info("%s relays Nova's state changes to the agents: %s",
                     self.ledger.server_id, "yes" if relay else
                     "no (%s does)" % (who or "nobody"))
        self.relay = relay

    def take_over(self, now=None):
        """Dispatch the work of dead controllers that this one takes."""
        now = self._clock() if now is None else now
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return 0
            self._quiet_until = None
        return self.deliveries.redispatch(
            self.coordination.takeover(self.ledger.claim_orphans))

    def is_relay(self):
        return self.relay

    def start(self):
        self._thread = threading.Thread(target=self._run,
                                        name="ledger-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def settle_uncertain(self):
        """Dispatch the events of commits that failed for this controller
        but happened (:meth:`Ledger.settle_uncertain`): nobody else
        would."""
        if not self.ledger.uncertain:
            return 0
        return self.deliveries.redispatch(self.ledger.settle_uncertain())

    def upkeep(self, now):
        """One round of the keeper's work (every :data:`FLUSH_INTERVAL`);
        raises what the database raises."""
        self.watch_failures(now)
        self.ledger.flush()
        self.settle_uncertain()
        if self._resubmit_actions:
            self.resubmit_actions()
        now = self._clock()
        if now >= self._next_relay:
            self._next_relay = now + RELAY_INTERVAL
            self.update_relay()
        if now >= self._next_renew:
            self._next_renew = now + self.lease / 3.0
            self.ledger.renew()
            self.take_over(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            pruned = self.ledger.prune(time.time() - self.retention)
            if pruned:
                LOG.info("ledger: forgot %d delivered event(s) older than "
                         "%d s", pruned, self.retention)

    def _run(self):
        self._next_renew = self._clock() + self.lease / 3.0
        self._next_relay = self._clock() + RELAY_INTERVAL
        self._next_prune = self._clock() + PRUNE_INTERVAL
        while not self._stopping.wait(FLUSH_INTERVAL):
            try:
                self.upkeep(self._clock())
            except db_api.DB_ERRORS as exc:
                # the database is away: the agents' calls fail and are
                # sent again; the upkeep resumes when it is back
                LOG.warning("ledger upkeep: the database failed: %s", exc)
            except Exception:  # a thread's top level: keep the lease
                LOG.exception("ledger upkeep failed")


class ServerService(object):
    def __init__(self, conf, ledger, deliveries, keeper, dispatcher,
                 actions, groups, transport, notification_transport):
        self.conf = conf
        self.ledger = ledger
        self.deliveries = deliveries
        self.keeper = keeper
        self.dispatcher = dispatcher
        self.actions = actions
        self.groups = groups
        self.transport = transport
        self.notification_transport = notification_transport
        self.rpc_server = None
        self.listener = None
        self.exporter = None
        self._stop = threading.Event()

    @classmethod
    def from_conf(cls, conf):
        from guestha.rpc import api
        from guestha.sinks import base as sinks_base

        server = conf.server
        sinks = sinks_base.load_sinks(conf)
        # the window of the cap must outlive pruning
        retention = max(server.ledger_retention, conf.actions.window)
        ledger = ledger_mod.Ledger(db_api.connection_url(conf),
                                   server.server_id,
                                   sinks=[sink.name for sink in sinks],
                                   lease=server.lease_seconds, conf=conf)
        nova = actions_mod.NovaActions.from_conf(conf)
        deliveries = Deliveries(ledger, None, None)
        dispatcher = sinks_base.SinkDispatcher.from_conf(
            conf, sinks=sinks, on_result=deliveries.on_result,
            on_results=deliveries.on_results,
            before_send=deliveries.before_send)
        deliveries.dispatcher = dispatcher
        keeper = LedgerKeeper(ledger, deliveries, retention,
                              server.lease_seconds,
                              coordination=coordination_mod.from_conf(
                                  conf, ledger))
        worker = actions_mod.ActionWorker.from_conf(
            conf, nova, ledger, deliveries.report_action)
        deliveries.actions = worker
        # a sink whose delivery recovers the instance (Masakari) counts
        # against the same per-instance cap as the worker's actions
        sinks_base.bind_recovery_cap(sinks, worker.cap)
        transport = rpc.get_transport(conf)
        notification_transport = oslo_messaging.get_notification_transport(
            conf)
        groups = groups_mod.ServerGroups.from_conf(
            conf, nova, api.AgentAPI(
                transport,
                version_cap=conf.upgrade_levels.guestha_agent or None),
            keeper.is_relay)
        return cls(conf, ledger, deliveries, keeper, dispatcher, worker,
                   groups, transport, notification_transport)

    def start(self):
        server = self.conf.server
        self.ledger.register()
        self.keeper.coordination.start()
        self.keeper.update_relay()
        self.dispatcher.start()
        self.actions.start()
        owed = self.deliveries.redispatch(self.ledger.pending())
        taken = self.keeper.take_over()
        if owed or taken:
            LOG.info("dispatching %d event(s) owed from the last run and %d "
                     "taken over from dead controllers", owed, taken)
        self.keeper.start()
        self.groups.start(server.group_refresh_interval)
        self.listener = notifications.get_listener(
            self.conf, self.notification_transport, self.groups,
            pool="guestha-server-%s" % server.server_id)
        self.listener.start()
        endpoint = endpoint_mod.ControllerEndpoint(
            self.ledger, self.deliveries.dispatch, self.actions,
            self.groups)
        self.rpc_server = oslo_messaging.get_rpc_server(
            self.transport, rpc.controller_server_target(server.server_id),
            [endpoint],
            access_policy=rpc_dispatcher.DefaultRPCAccessPolicy)
        self.rpc_server.start()
        self.exporter = metrics.exporter_from_conf(
            self.conf, metrics.ServerCollector(
                server.server_id, self.dispatcher, self.deliveries.received,
                getattr(self.actions, "outcomes", None)),
            metrics_conf.SERVER_PORT)
        LOG.info("guestha-server %s running (sinks: %s; ledger %s; "
                 "coordination %s)", server.server_id,
                 ", ".join(self.dispatcher.sink_names) or "none",
                 self.ledger.url,
                 self.keeper.coordination.backend or "by the ledger")

    def run(self):
        def _stop(signum, frame):
            LOG.info("signal %d: stopping", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self.start()
            self._stop.wait()
        finally:
            self.shutdown()

    def stop(self):
        self._stop.set()

    def shutdown(self):
        # the agents first: nothing is accepted from here on.  Both stop
        # at once: an idle oslo.messaging consumer notices a stop only
        # when its current poll (up to 5 s) times out.
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        servers = [s for s in (self.rpc_server, self.listener)
                   if s is not None]
        stoppers = [threading.Thread(target=s.stop, name="stop-%d" % n)
                    for n, s in enumerate(servers)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in servers:
            server.wait()
        self.rpc_server = self.listener = None
        LOG.debug("RPC server and notification listener stopped")
        self.groups.stop()
        self.actions.stop()
        clean = self.dispatcher.stop(timeout=self.conf.server.drain_timeout)
        LOG.debug("sinks stopped")
        self.keeper.stop()
        self.keeper.coordination.stop()
        try:
            self.ledger.flush()
            self.ledger.unregister()
        except Exception:  # stopping: log, and leave the rest to the lease
            LOG.exception("ledger: final write failed")
        self.ledger.close()
        self.transport.cleanup()
        self.notification_transport.cleanup()
        LOG.debug("transports closed")
        LOG.info("guestha-server %s stopped%s", self.conf.server.server_id,
                 "" if clean else " (undelivered events stay in the ledger)")
