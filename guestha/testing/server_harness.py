# SPDX-License-Identifier: Apache-2.0
"""Drive real guestha-server processes for ``tests/functional/
test_server.py``.

What runs where
---------------
* **Controllers**: ``python -m guestha.cmd.server --config-file X`` in
  child processes (:class:`ServerProcess`), one configuration file each:
  the test's broker vhost, a ledger file the test's controllers share,
  the ``log`` fault sink writing to a file of its own per controller, and
  ``[nova]`` pointing at the Nova stand-in through keystoneauth's ``none``
  plugin.  Ready when its log says it runs.
* **Nova**: :class:`guestha.testing.fake_nova.FakeNova`, an HTTP server in a
  thread of the test process; the controllers talk to it over real HTTP.
  Notifications Nova would send are published by :class:`NovaNotifier` with
  oslo.messaging's Notifier (driver messagingv2, topic versioned_notifications,
  exchange nova) from the samples.
* **Agents**: :class:`FakeAgents`, RPC servers in the test process built on
  :class:`guestha.rpc.api.AgentEndpoint` (the agent's own endpoint), one
  per compute host name, recording what the controllers deliver; and
  ``ControllerAPI`` clients for what agents send.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

from oslo_config import cfg
import oslo_messaging

from guestha import rpc
from guestha.rpc import api
from guestha.testing import processes as procs
from guestha.testing.wait import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "tests", "unit", "server", "samples")


class ServerProcess(object):
    """One guestha-server in a child process."""

    def __init__(self, workdir, url, server_id, nova_endpoint,
                 ledger_path=None, sink_log=None, name=None, **groups):
        self.workdir = workdir
        self.server_id = server_id
        #: names its files; the server_id unless two share one
        self.name = name = name or server_id
        self.conf_path = os.path.join(workdir, "%s.conf" % name)
        self.log_path = os.path.join(workdir, "%s.log" % name)
        self.sink_log = sink_log or os.path.join(
            workdir, "events-%s.jsonl" % name)
        self.ledger_path = ledger_path or os.path.join(workdir,
                                                       "ledger.sqlite")
        self.proc = None
        sections = {
            "DEFAULT": {"transport_url": url, "log_file": self.log_path,
                        # GUESTHA_TEST_DEBUG=true: debug logs of the servers
                        "debug": os.environ.get("GUESTHA_TEST_DEBUG",
                                                "false"),
                        "use_stderr": "false"},
            "server": {"server_id": server_id,
                       "ledger_path": self.ledger_path,
                       "lease_seconds": "3", "drain_timeout": "5",
                       "group_refresh_interval": "30",
                       "status_queries_per_second": "50",
                       "broadcasts_per_second": "200"},
            "sinks": {"enabled": "log", "log_path": self.sink_log,
                      "retry_min": "0.1", "retry_max": "0.5",
                      "max_attempts": "1000"},
            "nova": {"auth_type": "none", "endpoint_override": nova_endpoint,
                     "timeout": "5"},
            "actions": {},
        }
        for name, values in groups.items():
            sections.setdefault(name, {}).update(
                {k: str(v) for k, v in values.items()})
        with open(self.conf_path, "w") as f:
            for name, values in sections.items():
                f.write("[%s]\n" % name)
                for key, value in values.items():
                    f.write("%s = %s\n" % (key, value))
                f.write("\n")

    def argv(self):
        """Its command line."""
        return [sys.executable, "-W", "ignore", "-m", "guestha.cmd.server",
                "--config-file", self.conf_path]

    def start(self, timeout=60.0):
        """Start it and wait until its log says it runs."""
        marker = "guestha-server %s running" % self.server_id
        offset = (os.path.getsize(self.log_path)
                  if os.path.exists(self.log_path) else 0)
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        with open(os.path.join(self.workdir, "%s.stderr" % self.name),
                  "ab") as err:
            # its own process group, killed with the test process
            self.proc = procs.spawn(self.argv(), stdout=err, stderr=err,
                                    cwd=ROOT, env=env)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("guestha-server %s exited (%s):\n%s"
                                     % (self.server_id, self.proc.returncode,
                                        self.tail()))
            return marker in self.log_text(offset)

        wait_until(ready, timeout, "guestha-server %s to run" % self.server_id,
                   interval=0.05)
        return self

    def log_text(self, offset=0):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def tail(self, chars=4000):
        text = self.log_text()[-chars:]
        err = os.path.join(self.workdir, "%s.stderr" % self.name)
        if os.path.exists(err):
            with open(err, errors="replace") as f:
                text += "\n--- stderr ---\n" + f.read()[-chars:]
        return text

    def stop(self, timeout=60.0):
        """SIGTERM: the clean stop; returns the exit code.  The server's
        own bounded waits add up to about 25 s (an RPC consumer's poll, 5
        s; the action worker, 10 s; the sinks' drain_timeout, 10 s), more
        on a loaded machine: ``timeout`` leaves room for them."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        procs.signal_group(self.proc, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.kill(self.proc)
            raise AssertionError(
                "guestha-server %s did not stop on SIGTERM within %.0f s; "
                "its log ends with:\n%s"
                % (self.server_id, timeout, self.tail()))

    def kill(self):
        """SIGKILL (to its group): no goodbye."""
        if self.proc is not None:
            procs.kill(self.proc)

    def sink_records(self):
        return read_jsonl(self.sink_log)


def manage(url, workdir, *args):
    """Run ``guestha-manage`` on the database at ``url``, as an operator
    does (``db sync`` before the controllers start, ``db import-ledger
    PATH``); its config file is written in ``workdir``.  The command must
    succeed; returns what it printed."""
    conf = os.path.join(workdir, "manage.conf")
    with open(conf, "w") as f:
        f.write("[database]\nconnection = %s\n" % url)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "guestha.cmd.manage",
         "--config-file", conf] + list(args), cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


class Servers(object):
    """Every controller of a test, ended at teardown even after a failure.
    """

    def __init__(self, workdir, url, nova_endpoint):
        self.workdir = workdir
        self.url = url
        self.nova_endpoint = nova_endpoint
        self.all = []

    def make(self, server_id, **kwargs):
        server = ServerProcess(self.workdir, self.url, server_id,
                               self.nova_endpoint, **kwargs)
        self.all.append(server)
        return server

    def start(self, server_id, **kwargs):
        return self.make(server_id, **kwargs).start()

    def stop_all(self, timeout=30.0):
        """SIGTERM to every running controller at once, then wait: the
        names of those that did not stop cleanly (they are killed)."""
        running = [s for s in self.all
                   if s.proc is not None and s.proc.poll() is None]
        for server in running:
            procs.signal_group(server.proc, signal.SIGTERM)
        unclean = []
        deadline = time.monotonic() + timeout
        for server in running:
            try:
                code = server.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.kill()
                code = "killed"
            if code != 0:
                unclean.append("%s (%s):\n%s" % (server.server_id, code,
                                                 server.tail(1500)))
        return unclean

    def kill_all(self):
        for server in self.all:
            server.kill()


# -- agents ------------------------------------------------------------------

class Recorder(api.AgentHandler):
    """What the controllers delivered to one agent."""

    def __init__(self, host, sink):
        self.host = host
        self._sink = sink

    def _add(self, method, **kwargs):
        self._sink.add(self.host, method, kwargs)

    def on_deliver_broadcast(self, instances, sender, payload_b64):
        self._add("deliver_broadcast", instances=instances, sender=sender,
                  payload_b64=payload_b64)

    def on_deliver_notification(self, instances, instance, state, event):
        self._add("deliver_notification", instances=instances,
                  instance=instance, state=state, event=event)

    def on_deliver_status(self, instance, seq, members, group):
        self._add("deliver_status", instance=instance, seq=seq,
                  members=members, group=group)

    def on_deliver_error(self, instance, seq, code, message):
        self._add("deliver_error", instance=instance, seq=seq, code=code,
                  message=message)


class FakeAgents(object):
    """Agent RPC servers for ``hosts``, in this process, and clients of
    the controllers for each host."""

    def __init__(self, url, hosts):
        self.transport = rpc.get_transport(cfg.CONF, url=url)
        self._lock = threading.Lock()
        self.received = []
        self.servers = [api.start_agent_server(self.transport, host,
                                               Recorder(host, self))
                        for host in hosts]
        self._clients = {}

    def add(self, host, method, kwargs):
        with self._lock:
            self.received.append((host, method, kwargs))

    def of(self, method=None, host=None):
        with self._lock:
            return [(h, k) for h, m, k in self.received
                    if (method is None or m == method)
                    and (host is None or h == host)]

    def clear(self):
        with self._lock:
            self.received = []

    def controller(self, host, timeout=10):
        if host not in self._clients:
            self._clients[host] = api.ControllerAPI(self.transport, host,
                                                    timeout=timeout)
        return self._clients[host]

    def close(self):
        # in parallel: an idle consumer notices a stop only when its poll
        # (up to 5 s) times out
        stoppers = [threading.Thread(target=server.stop)
                    for server in self.servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in self.servers:
            server.wait()
        self.transport.cleanup()


# -- Nova's notifications -----------------------------------------------------

def sample_payload(name="nova-instance.power_off.end.wire.json"):
    """The payload of a real notification, as it crossed the broker."""
    with open(os.path.join(SAMPLES, name)) as f:
        body = json.load(f)["wire_body"]
    return json.loads(body["oslo.message"])["payload"]


class NovaNotifier(object):
    """Publishes versioned notifications as nova-compute does: driver
    messagingv2, exchange nova, on the topics of a nova.conf set up as
    doc/source/install.rst says: ``[notifications]
    versioned_notifications_topics = versioned_notifications,
    guestha_notifications``."""

    TOPICS = ["versioned_notifications", "guestha_notifications"]

    def __init__(self, url, host="compute-1", topics=None):
        conf = cfg.CONF
        # Nova's exchange is its control_exchange; the driver takes it when
        # the transport is made, so the override is needed only then.
        conf.set_override("control_exchange", "nova")
        try:
            self.transport = oslo_messaging.get_notification_transport(
                conf, url=url)
        finally:
            conf.clear_override("control_exchange")
        self.notifier = oslo_messaging.Notifier(
            self.transport, publisher_id="nova-compute:%s" % host,
            driver="messagingv2", topics=list(topics or self.TOPICS))

    def instance_event(self, event_type, instance, state, host,
                       old_state=None, sample="nova-instance.power_off.end"
                                              ".wire.json"):
        payload = copy.deepcopy(sample_payload(sample))
        data = payload["nova_object.data"]
        data.update(uuid=instance, state=state, host=host, task_state=None)
        if old_state is not None and "state_update" in data:
            data["state_update"]["nova_object.data"].update(
                old_state=old_state, state=state)
        self.notifier.info({}, event_type, payload)

    def error(self, event_type, payload):
        """A notification of priority error (Nova's ``*.error``)."""
        self.notifier.error({}, event_type, payload)

    def close(self):
        self.transport.cleanup()
