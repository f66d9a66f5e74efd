# SPDX-License-Identifier: Apache-2.0
"""The whole chain with real processes: guest daemon -> guestha-agent ->
RabbitMQ -> guestha-server -> log sink.

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
  unix-listen:PATH``, playing QEMU's side of each channel): A on host A;
  B and C on host B.
* **The controller**: one ``guestha-server``
  (guestha/testing/server_harness.py) with the log sink and no Nova
  (guestha/testing/novaless_servers.py): a fault and its recovery need none.

Server-group messaging between guests (broadcast, status with Nova's
states, Nova's notifications of a member's change) needs Nova's server
groups, flavors and notifications: it is tested against the real Nova of
the cloud harness, with real agents and guest applications inside Nova's
servers (tests/cloud/test_scenarios.py, scenario 5); its routing rules
across hosts are unit tests (tests/unit/server/test_groups.py).

The processes are started once for the module (about 10 s) on a vhost of
its own; each test leaves them as it found them (a hung guest is
continued).
"""

import os
import shutil
import signal
import time
import uuid as uuidlib

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import libvirt_domains
from guestha.testing import novaless_servers
from guestha.testing.wait import wait_until

pytestmark = [pytest.mark.functional, pytest.mark.libvirt]

HOST_A = "ghcb-host-a"
HOST_B = "ghcb-host-b"
#: The guests' heartbeat interval: short enough for a quick detection,
#: long enough that a guest daemon starved of CPU on a busy machine does
#: not miss a challenge by accident.
INTERVAL_MS = 500
#: Generous bounds for a loaded 2-core machine; the polls end as soon as
#: what they wait for is there.
ARRIVAL = 20.0


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# -- libvirt: one private node file per host ----------------------------------

def require_libvirtd():
    import libvirt

    from guestha.agent import virt
    # not register_event_impl(): nothing runs the loop in this process
    virt.silence_libvirt_errors()
    try:
        libvirt.open(libvirt_domains.URI).close()
    except libvirt.libvirtError as exc:
        message = ("libvirtd does not serve its test driver (%s): run "
                   "tools/libvirt-setup.sh as root" % exc)
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)


# -- guests -------------------------------------------------------------------

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
    """A real guest daemon behind one channel socket."""

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

    @property
    def domain(self):
        return ("ghcb-%s" % self.name, self.uuid, self.channel)

    def start(self):
        self.proc = self.procs.spawn(
            [child_processes.PYTHON, "-m", "guestha_guest", "--config",
             self.config, "--port", "unix-listen:%s" % self.channel],
            self.log)
        return self

    def listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("guest daemon %s exited:\n%s" % (
                self.name, child_processes.file_tail(self.log)))
        return os.path.exists(self.channel) and os.path.exists(
            self.app_socket)

    def hang(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def unhang(self):
        os.kill(self.proc.pid, signal.SIGCONT)


# -- the world ----------------------------------------------------------------

class World(object):
    """Everything the tests run against (see the module docstring)."""

    def __init__(self, rabbitmq):
        self.rabbitmq = rabbitmq
        self.procs = child_processes.Processes()
        self.workdir = child_processes.short_tempdir("ghcb-e2e-")
        self.sockdir = self.workdir  # short enough for socket addresses
        self.vhost = None
        self.server = None
        self.agents = {}
        self.guests = {}

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
        self.server = novaless_servers.ServerProcess(self.workdir, self.url,
                                                     "ghcb-ctl")
        self.server.start()
        for guest in self.guests.values():
            guest.start()
        for host in (HOST_A, HOST_B):
            node = os.path.join(self.workdir, "%s.xml" % host)
            uri = libvirt_domains.write_node(
                node, [g.domain for g in self.guests.values()
                       if g.host == host])
            self.agents[host] = agent_harness.AgentProcess(
                self.procs, self.workdir, self.sockdir, self.url, host=host,
                uri=uri, name=host, debug=None).start()
        wait_until(
            lambda: all(g.listening() for g in self.guests.values()), 30,
            "the guest daemons to listen")
        self.wait_monitored(timeout=60)
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
        wait_until(monitored, timeout, "every guest to be MONITORED",
                   interval=0.1, details=lambda: "now: %s" % {
                       h: a.states() for h, a in self.agents.items()})

    def sink(self, instance=None, type_=None):
        return [r for r in self.server.sink_records()
                if (instance is None or r.get("instance") == instance)
                and (type_ is None or r.get("type") == type_)]

    def diagnostics(self):
        parts = ["--- %s ---\n%s" % (h, a.log_tail(2500))
                 for h, a in self.agents.items()]
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(2500))
        return "\n".join(parts)

    def close(self):
        try:
            running = [g.proc for g in self.guests.values()
                       if g.proc is not None]
            running += [a.proc for a in self.agents.values()
                        if a.proc is not None]
            child_processes.terminate_all(running, timeout=15)
            if self.server is not None:
                self.server.stop()
        finally:
            self.procs.kill_all()
            if self.server is not None:
                self.server.kill()
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
    """wait_until with this file's default timeout and the world's
    diagnostics on failure."""
    return wait_until(predicate, timeout, what, interval=0.05,
                      details=world and world.diagnostics)


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
