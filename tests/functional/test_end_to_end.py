# SPDX-License-Identifier: Apache-2.0
"""The whole chain with real processes: guest daemon -> guestha-agent ->
RabbitMQ -> guestha-server -> log sink, and back to the guests.

What runs where
---------------
* **Two compute hosts**: two ``guestha-agent`` processes (``[agent] host``
  ``ghcb-host-a`` and ``ghcb-host-b``), each with a libvirt of its own.  A
  real compute host's libvirtd holds only that host's domains; here each
  agent connects to libvirtd's test driver with a node file of its own
  (``test+unix:///<dir>/ghcb-host-a.xml``).  libvirt gives every
  connection that opens a node file a private copy of its domains, so
  agent A sees only host A's domains and agent B only host B's, and no
  other agent on this machine (other test runs, benchmarks on the shared
  ``test+unix:///default``) sees either: nobody else connects to these
  tests' channels.  The agents need nothing beyond their configuration.
* **Guests**: real guest daemons (``python -m guestha_guest --port
  unix-listen:PATH``, playing QEMU's side of each channel) with their
  application API on: A on host A; B and C on host B.  The
  "applications" are :class:`guestha_guest.client.GuestHAClient`
  connections to the daemons' app sockets from this process.
* **The controller**: one ``guestha-server`` (tests/functional/serverctl.py)
  with the log sink, reading Nova from the Nova stand-in
  (tests/fakes/nova.py), which knows A, B and C with a flavor that enables
  server-group messaging, and one server group: A and B.  C is in none.
* **Nova's notifications**: published as nova-compute does (oslo.messaging
  Notifier, driver messagingv2, topic versioned_notifications, exchange
  nova), built from the real samples in tests/unit/server/samples/.

The processes are started once for the module (about 10 s) on a vhost of
its own; each test leaves them as it found them (a hung guest is
continued, a stopped instance is started again).
"""

import base64
import os
import shutil
import signal
import threading
import time
import uuid as uuidlib

from oslo_config import cfg
import oslo_messaging.opts
import pytest

from guestha.agent import status as agent_status
from guestha_guest.client import GuestHAClient
from guestha_guest.client import GuestHAConnectionClosed
from guestha_guest.client import GuestHAError
from tests.fakes.nova import FakeNova
from tests.functional import agentctl
from tests.functional import serverctl

pytestmark = [pytest.mark.functional, pytest.mark.libvirt]

HOST_A = "ghcb-host-a"
HOST_B = "ghcb-host-b"
GROUP = "5c0e7f3a-6b1d-4e2a-9f47-3d8c2b1a0e91"
MESSAGING = {"guestha:heartbeat": "true",
             "guestha:server_group_messaging": "true"}
#: The guests' heartbeat interval: short enough for a quick detection,
#: long enough that a guest daemon starved of CPU on a busy machine does
#: not miss a challenge by accident.
INTERVAL_MS = 500
#: Generous bounds for a loaded 2-core machine; the polls end as soon as
#: what they wait for is there.
ARRIVAL = 20.0
#: How long a guest that must NOT receive something is watched after the
#: one that must has received it.
QUIET = 2.0


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# -- libvirt: one private node file per host ----------------------------------

def require_libvirtd():
    import libvirt

    from guestha.agent import virt
    # not register_event_impl(): nothing runs the loop in this process
    virt.silence_libvirt_errors()
    try:
        libvirt.open(agentctl.URI).close()
    except libvirt.libvirtError as exc:
        message = ("libvirtd does not serve its test driver (%s): run "
                   "tools/libvirt-setup.sh as root" % exc)
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)


# -- agents -------------------------------------------------------------------

class Agent(object):
    """``guestha-agent`` of one host, in a child process."""

    def __init__(self, procs, workdir, sockdir, url, host, uri):
        self.procs = procs
        self.host = host
        self.config = os.path.join(workdir, "%s.conf" % host)
        self.log = os.path.join(workdir, "%s.log" % host)
        self.status_socket = os.path.join(sockdir, "%s.sock" % host)
        with open(self.config, "w") as f:
            f.write(agentctl.agent_conf(
                url, host, os.path.join(workdir, "state-%s" % host),
                os.path.join(workdir, "hotplug-%s" % host),
                self.status_socket, uri=uri, log_file=self.log))
        self.proc = None

    def start(self):
        self.proc = self.procs.spawn(
            [agentctl.PYTHON, "-W", "ignore", "-m", "guestha.cmd.agent",
             "--config-file", self.config], self.log + ".stderr")
        return self

    def status(self):
        if self.proc.poll() is not None:
            raise AssertionError("the agent of %s exited (%s):\n%s" % (
                self.host, self.proc.returncode, self.tail()))
        try:
            return agent_status.fetch(self.status_socket, timeout=10.0)
        except (OSError, ValueError):
            return None

    def states(self):
        status = self.status()
        if status is None:
            return {}
        return {i["instance"]: i["state"] for i in status["instances"]}

    def tail(self, chars=4000):
        return "".join(agentctl._tail(path, chars) for path in (
            self.log, self.log + ".stderr"))


# -- guests and their applications -------------------------------------------

GUEST_INI = """\
[guestha]
name = {name}
interval_ms = {interval_ms}
corrective_action = none
log_level = INFO

[health]
hook_dir = {hook_dir}

[app_api]
enabled = true
socket = {app_socket}
mode = 0600
"""


class Guest(object):
    """A real guest daemon behind one channel socket, with its app API."""

    def __init__(self, procs, workdir, sockdir, name, host):
        self.procs = procs
        self.name = name
        self.host = host
        self.uuid = str(uuidlib.uuid4())
        self.channel = os.path.join(sockdir, "%s.sock" % name)
        self.app_socket = os.path.join(sockdir, "%s-app.sock" % name)
        self.config = os.path.join(workdir, "%s.ini" % name)
        self.log = os.path.join(workdir, "%s.log" % name)
        hook_dir = os.path.join(workdir, "%s-hooks" % name)
        os.makedirs(hook_dir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(GUEST_INI.format(name=name, interval_ms=INTERVAL_MS,
                                     hook_dir=hook_dir,
                                     app_socket=self.app_socket))
        self.proc = None
        self.app = None

    @property
    def domain(self):
        return ("ghcb-%s" % self.name, self.uuid, self.channel)

    def start(self):
        self.proc = self.procs.spawn(
            [agentctl.PYTHON, "-m", "guestha_guest", "--config", self.config,
             "--port", "unix-listen:%s" % self.channel], self.log)
        return self

    def listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("guest daemon %s exited:\n%s"
                                 % (self.name, agentctl._tail(self.log)))
        return os.path.exists(self.channel) and os.path.exists(
            self.app_socket)

    def hang(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def unhang(self):
        os.kill(self.proc.pid, signal.SIGCONT)


class App(object):
    """An application in a guest: one app API connection, subscribed to
    broadcasts and notifications, read by a thread that keeps every event
    with its arrival time; and a second connection for requests
    (broadcast, status) from the test's thread (a client is not
    thread-safe)."""

    def __init__(self, guest):
        self.guest = guest
        self.events = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listener = GuestHAClient(guest.app_socket, timeout=10.0)
        self.listener.connect()
        self.listener.subscribe("broadcast", "notification")
        self.requests = GuestHAClient(guest.app_socket, timeout=10.0)
        self.requests.connect()
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name="app-%s" % guest.name)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                event = self.listener.next_event(timeout=0.2)
            except (GuestHAConnectionClosed, GuestHAError, OSError):
                return
            if event is not None:
                with self._lock:
                    self.events.append((time.monotonic(), event))

    def received(self, op=None, since=0.0):
        with self._lock:
            return [e for t, e in self.events
                    if t >= since and (op is None or e.get("op") == op)]

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self.requests.close()


# -- the world ----------------------------------------------------------------

class World(object):
    """Everything the tests run against (see the module docstring)."""

    def __init__(self, rabbitmq):
        self.rabbitmq = rabbitmq
        self.procs = agentctl.Processes()
        self.workdir = agentctl.short_tempdir("ghcb-e2e-")
        self.sockdir = self.workdir  # short enough for socket addresses
        self.vhost = None
        self.nova = None
        self.server = None
        self.agents = {}
        self.guests = {}
        self.notifier = None

    def start(self):
        self.vhost = "guestha-e2e-%s" % uuidlib.uuid4().hex[:12]
        self.rabbitmq.run("add_vhost", self.vhost)
        self.rabbitmq.run("set_permissions", "-p", self.vhost, "guest",
                          ".*", ".*", ".*")
        self.url = "rabbit://guest:guest@127.0.0.1:5672/%s" % self.vhost

        self.guests = {
            "a": Guest(self.procs, self.workdir, self.sockdir, "a", HOST_A),
            "b": Guest(self.procs, self.workdir, self.sockdir, "b", HOST_B),
            "c": Guest(self.procs, self.workdir, self.sockdir, "c", HOST_B),
        }
        a, b, c = (self.guests[k] for k in "abc")

        self.nova = FakeNova().start()
        for guest in (a, b, c):
            self.nova.add_server(guest.uuid, flavor_extra_specs=MESSAGING,
                                 host=guest.host, name="vnf-%s" % guest.name)
        self.nova.add_server_group(GROUP, "vnf", members=[a.uuid, b.uuid])

        self.server = serverctl.ServerProcess(
            self.workdir, self.url, "ghcb-ctl", self.nova.endpoint)
        self.server.start()
        for guest in self.guests.values():
            guest.start()
        for host in (HOST_A, HOST_B):
            node = os.path.join(self.workdir, "%s.xml" % host)
            uri = agentctl.write_node(
                node, [g.domain for g in self.guests.values()
                       if g.host == host])
            self.agents[host] = Agent(self.procs, self.workdir, self.sockdir,
                                      self.url, host, uri).start()
        serverctl.wait_for(
            lambda: all(g.listening() for g in self.guests.values()), 30,
            "the guest daemons to listen")
        self.wait_monitored(timeout=60)
        for guest in self.guests.values():
            guest.app = App(guest)
        # NovaNotifier overrides control_exchange, which oslo.messaging
        # registers only when it makes its first transport
        for group, options in oslo_messaging.opts.list_opts():
            if group is None:
                cfg.CONF.register_opts(options)
        self.notifier = serverctl.NovaNotifier(self.url, host=HOST_B)
        return self

    def wait_monitored(self, timeout=ARRIVAL):
        def monitored():
            for host, agent in self.agents.items():
                states = agent.states()
                for guest in self.guests.values():
                    if guest.host == host and states.get(
                            guest.uuid) != "MONITORED":
                        return False
            return True
        try:
            serverctl.wait_for(monitored, timeout,
                               "every guest to be MONITORED", interval=0.1)
        except AssertionError as exc:
            raise AssertionError("%s; now: %s" % (exc, {
                h: a.states() for h, a in self.agents.items()}))

    def sink(self, instance=None, type_=None):
        return [r for r in self.server.sink_records()
                if (instance is None or r.get("instance") == instance)
                and (type_ is None or r.get("type") == type_)]

    def diagnostics(self):
        parts = ["--- %s ---\n%s" % (h, a.tail(2500))
                 for h, a in self.agents.items()]
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(2500))
        return "\n".join(parts)

    def close(self):
        try:
            for guest in self.guests.values():
                if guest.app is not None:
                    guest.app.close()
            if self.notifier is not None:
                self.notifier.close()
            running = [g.proc for g in self.guests.values()
                       if g.proc is not None]
            running += [a.proc for a in self.agents.values()
                        if a.proc is not None]
            agentctl.terminate_all(running, timeout=15)
            if self.server is not None:
                self.server.stop()
        finally:
            self.procs.kill_all()
            if self.server is not None:
                self.server.kill()
            if self.nova is not None:
                self.nova.stop()
            if self.vhost is not None:
                if not self.rabbitmq.app_running():
                    self.rabbitmq.start_app()
                self.rabbitmq.run("delete_vhost", self.vhost, check=False)
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def world(rabbitmq):
    require_libvirtd()
    world = World(rabbitmq)
    try:
        world.start()
        yield world
    finally:
        world.close()


@pytest.fixture
def ready(world):
    """The world, with every guest monitored."""
    world.wait_monitored()
    return world


def wait_for(predicate, what, timeout=ARRIVAL, world=None):
    try:
        return serverctl.wait_for(predicate, timeout, what, interval=0.05)
    except AssertionError as exc:
        if world is None:
            raise
        raise AssertionError("%s\n%s" % (exc, world.diagnostics())) from None


# -- (a) a hung guest: a fault, then a recovery with the same id --------------

def test_guest_hang_is_a_fault_and_continuing_a_recovery(ready):
    world = ready
    a = world.guests["a"]

    def faults_since(wall):
        return [r for r in world.sink(a.uuid, "fault")
                if r["detected_at_ts"] >= wall]

    hung_at = time.monotonic()
    hung_wall = time.time()
    a.hang()
    try:
        fault = wait_for(lambda: faults_since(hung_wall),
                         "a fault of the hung guest in the log sink",
                         world=world)[0]
        detected = time.monotonic() - hung_at
    finally:
        a.unhang()
    assert fault["kind"] == "missed"
    assert fault["host"] == HOST_A
    assert fault["interval_ms"] == INTERVAL_MS

    recovery = wait_for(
        lambda: [r for r in world.sink(a.uuid, "recovery")
                 if r["fault_id"] == fault["id"]],
        "the recovery of the continued guest in the log sink", world=world)
    assert len(recovery) == 1
    assert recovery[0]["host"] == HOST_A
    assert len(faults_since(hung_wall)) == 1
    print("hang -> fault line in the log sink: %.2f s" % detected)


# -- (b) a broadcast reaches the other member, on the other host, only --------

def test_broadcast_reaches_the_other_member_only(ready):
    world = ready
    a, b, c = (world.guests[k] for k in "abc")
    since = time.monotonic()

    # Broadcasts are best effort (the broker is shared: another suite may
    # restart it), so, as an application would, A sends again, a new
    # payload each time, until one arrives.
    sent = []
    got = []
    for attempt in range(3):
        payload = ("hello %d from a %s" % (attempt, uuidlib.uuid4())).encode()
        sent.append(base64.b64encode(payload).decode())
        assert a.app.requests.broadcast(payload)["op"] == "ok"
        try:
            got = wait_for(
                lambda: [e for e in b.app.received("broadcast", since)
                         if e["payload"] in sent], "the broadcast at B's "
                "application", timeout=ARRIVAL / 3)
            break
        except AssertionError:
            continue
    assert got, "no broadcast reached B\n%s" % world.diagnostics()
    assert got[0] == {"op": "broadcast", "from": a.uuid,
                      "payload": got[0]["payload"]}
    time.sleep(QUIET)
    assert c.app.received("broadcast", since) == []
    assert a.app.received("broadcast", since) == []  # no echo
    payloads = [e["payload"] for e in b.app.received("broadcast", since)]
    assert len(payloads) == len(set(payloads))  # each at most once
    assert set(payloads) <= set(sent)

    # C's channel works all the same: its own request reaches the
    # controller, which says it is in no group
    with pytest.raises(GuestHAError) as refused:
        c.app.requests.status(timeout=ARRIVAL)
    assert refused.value.code == "not_member"


# -- (c) status: every member with its Nova state -----------------------------

def test_status_lists_every_member_with_its_nova_state(ready):
    world = ready
    a, b = world.guests["a"], world.guests["b"]
    members = a.app.requests.status(timeout=ARRIVAL)
    assert sorted(members, key=lambda m: m["instance"]) == sorted(
        [{"instance": a.uuid, "state": "active"},
         {"instance": b.uuid, "state": "active"}],
        key=lambda m: m["instance"])


# -- (d) Nova's notification of a member's state change -----------------------

def test_nova_notification_reaches_the_other_member(ready):
    world = ready
    a, b, c = (world.guests[k] for k in "abc")
    since = time.monotonic()
    world.nova.servers[b.uuid]["status"] = "SHUTOFF"
    world.notifier.instance_event("instance.power_off.end", b.uuid,
                                  "stopped", HOST_B, old_state="active")
    try:
        got = wait_for(
            lambda: [e for e in a.app.received("notification", since)
                     if e["instance"] == b.uuid],
            "the power_off notification at A's application", world=world)
        assert got == [{"op": "notification", "instance": b.uuid,
                        "state": "stopped",
                        "event": "instance.power_off.end"}]
        members = {m["instance"]: m["state"]
                   for m in a.app.requests.status(timeout=ARRIVAL)}
        assert members == {a.uuid: "active", b.uuid: "stopped"}
    finally:
        # back as it was, which A hears of too
        world.nova.servers[b.uuid]["status"] = "ACTIVE"
        world.notifier.instance_event(
            "instance.power_on.end", b.uuid, "active", HOST_B,
            old_state="stopped")
    wait_for(lambda: [e for e in a.app.received("notification", since)
                      if e["instance"] == b.uuid
                      and e["event"] == "instance.power_on.end"],
             "the power_on notification at A's application", world=world)
    time.sleep(QUIET)
    assert c.app.received("notification", since) == []
    assert [e for e in b.app.received("notification", since)
            if e["instance"] == b.uuid] == []  # not told of itself
