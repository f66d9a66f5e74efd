# SPDX-License-Identifier: Apache-2.0
"""guestha-agent assembled from its configuration.

Threads: the I/O loop (the main thread, owns every instance), the libvirt
watcher, the reporter's sender and relay threads, oslo.messaging's server
threads for deliveries from the controller, and hot-plug workers for Nova
look-ups.  Only the loop touches instance state; everything else posts to
it.
"""

import logging
import os
import signal

from guestha.agent import instance as inst_mod
from guestha.agent.loop import AgentLoop
from guestha.agent.outbox import Outbox


def _import_reporter():
    # oslo.messaging imports oslo.service, which imports eventlet, whose
    # green socket module imports its green DNS resolver: dnspython and
    # cryptography, about 15 MiB of RSS.  The agent never monkey-patches
    # (oslo.messaging runs it with threads), so the resolver is never used:
    # eventlet skips it if EVENTLET_NO_GREENDNS=yes when it is imported.
    # The variable is set for that import only, unless set already.
    unset = "EVENTLET_NO_GREENDNS" not in os.environ
    if unset:
        os.environ["EVENTLET_NO_GREENDNS"] = "yes"
    try:
        from guestha.agent import reporter
    finally:
        if unset:
            os.environ.pop("EVENTLET_NO_GREENDNS", None)
    return reporter.Reporter


Reporter = _import_reporter()

LOG = logging.getLogger(__name__)


class AgentService(object):
    def __init__(self, conf, loop, reporter, watcher, transport):
        self.conf = conf
        self.loop = loop
        self.reporter = reporter
        self.watcher = watcher
        self.transport = transport
        self.rpc_server = None
        self.exporter = None

    @classmethod
    def from_conf(cls, conf):
        from guestha.agent.virt import LibvirtWatcher
        from guestha import rpc
        from guestha.rpc import api

        agent, rep = conf.agent, conf.reporting
        os.makedirs(agent.state_dir, exist_ok=True)
        transport = rpc.get_transport(conf)
        outbox = Outbox(os.path.join(agent.state_dir, "outbox.sqlite"),
                        rep.outbox_max_events)
        reporter = Reporter(
            outbox, api.ControllerAPI(
                transport, agent.host, timeout=rep.report_timeout,
                version_cap=conf.upgrade_levels.guestha_controller),
            batch=rep.report_batch, timeout=rep.report_timeout,
            backoff=(rep.retry_backoff_min, rep.retry_backoff_max))
        hotplug = None
        if agent.hotplug:
            from guestha.agent.hotplug import HotplugPolicy
            from guestha.nova import NovaClient
            os.makedirs(agent.socket_dir, exist_ok=True)
            hotplug = HotplugPolicy(NovaClient.from_conf(conf, optional=True),
                                    agent.socket_dir)
        loop = AgentLoop(agent.host, inst_mod.Policy.from_conf(agent),
                         reporter, agent.state_dir,
                         hotplug_policy=hotplug,
                         status_socket=agent.status_socket or None,
                         alive_interval=rep.alive_interval,
                         outbox=outbox, state_reports=True,
                         batch_delay=agent.batch_delay_ms / 1000.0)
        watcher = LibvirtWatcher.from_conf(conf, loop.post)
        loop.watcher = watcher
        return cls(conf, loop, reporter, watcher, transport)

    def run(self):
        from guestha.rpc import api

        def _stop(signum, frame):
            LOG.info("signal %d: stopping", signum)
            self.loop.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.loop.start()
        self._start_metrics()
        self.reporter.start()
        self.watcher.start()
        self.rpc_server = api.start_agent_server(
            self.transport, self.conf.agent.host, self.loop.deliveries)
        LOG.info("guestha-agent running on host %s", self.conf.agent.host)
        try:
            self.loop.run()
        finally:
            self.shutdown()

    def _start_metrics(self):
        from guestha.conf import metrics as metrics_conf
        from guestha import metrics

        collector = metrics.AgentCollector(
            self.conf.agent.host, self.loop.request_metrics,
            per_instance=self.conf.metrics.per_instance_labels)
        self.exporter = metrics.exporter_from_conf(
            self.conf, collector, metrics_conf.AGENT_PORT)

    def shutdown(self):
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        if self.rpc_server is not None:
            self.rpc_server.stop()
            self.rpc_server.wait()
            self.rpc_server = None
        self.watcher.stop()
        self.reporter.stop(timeout=5.0)
        self.transport.cleanup()
        LOG.info("guestha-agent stopped")
