# SPDX-License-Identifier: Apache-2.0
"""guestha-server assembled from its configuration.

Threads: oslo.messaging's RPC server (the agents' calls and casts) and
notification listener (Nova's versioned notifications), one thread per
fault sink (:class:`~guestha.sinks.base.SinkDispatcher`; it notes each
batch in flight in the ledger before its sink gets it and done right
after, :class:`~guestha.server.deliveries.Deliveries`), the
corrective-action worker, the server-group refresher, and the ledger
keeper (:mod:`guestha.server.keeper`), which renews the lease, writes the
outcomes queued in batches, settles failed commits, takes over the work of
dead controllers and prunes old events.

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

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from guestha.conf import metrics as metrics_conf
from guestha.db import api as db_api
from guestha import metrics
from guestha import rpc
from guestha.server import actions as actions_mod
from guestha.server import coordination as coordination_mod
from guestha.server import deliveries as deliveries_mod
from guestha.server import endpoint as endpoint_mod
from guestha.server import groups as groups_mod
from guestha.server import keeper as keeper_mod
from guestha.server import ledger as ledger_mod
from guestha.server import notifications

LOG = logging.getLogger(__name__)


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
        deliveries = deliveries_mod.Deliveries(ledger, None, None)
        dispatcher = sinks_base.SinkDispatcher.from_conf(
            conf, sinks=sinks, on_result=deliveries.on_result,
            on_results=deliveries.on_results,
            before_send=deliveries.before_send)
        deliveries.dispatcher = dispatcher
        keeper = keeper_mod.LedgerKeeper(
            ledger, deliveries, retention, server.lease_seconds,
            coordination=coordination_mod.from_conf(conf, ledger))
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
            keeper.is_relay, ledger=ledger)
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
            self.ledger, self.deliveries.dispatch, self.groups)
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
