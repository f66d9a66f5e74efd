# SPDX-License-Identifier: Apache-2.0
"""Hot-plug on a real VM: a domain whose flavor asks for guestha, defined
without the channel, gets it live from the agent, and its guest daemon,
already waiting, registers without a reboot.

What runs where
---------------
* **One VM** ``hp`` (guestha/testing/guest_vms.py: a tiny Linux guest under
  QEMU TCG on ``qemu:///system``, the checkout's guest daemon, a test control
  channel), defined WITHOUT the guestha channel, with Nova's domain metadata
  carrying its flavor's ``guestha:heartbeat=true`` in ``<nova:extraSpecs>``, as
  Nova writes it.  It boots BEFORE the agent starts, so the hot-plug reaches a
  guest daemon that is up and waiting for its port.
* **The agent**: one real ``guestha-agent``, ``[agent] hotplug = true``,
  no ``[nova]``: it reads the extra spec from the domain XML, as on a
  compute host of a real cloud, where it needs no Nova credentials.
* **The controller**: one ``guestha-server`` with the log sink and no
  Nova (guestha/testing/novaless_servers.py).

What this module did with a Nova stand-in before issue 9 is tested
against the real Nova of the cloud harness (tests/cloud/test_scenarios.py):
the hot-plug into the domain Nova defines and the re-plug after each of
Nova's operations (scenarios 1 and 4), server-group messaging between
guests (scenario 5), a reboot through nova-compute under the cap
(scenarios 2 and 10).  Needs what tests/functional/test_real_vm.py needs
(root, libvirtd with QEMU, the VM assets).
"""

import os
import re
import shutil
import time

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import guest_vms as vmlib
from guestha.testing import novaless_servers
from guestha.testing import processes as procs
from guestha.testing.wait import wait_until
from tests.functional import test_real_vm as real

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm]

URI = vmlib.URI
HOST = "ghrc-host"
INTERVAL_MS = 1000
INTERVAL = INTERVAL_MS / 1000.0
#: Polls end as soon as what they wait for is there.
ARRIVAL = 30.0
#: A deadline, not a target: a VM under TCG on a loaded 2-core machine
#: (5-10 s is usual).  Polls end as soon as the VM answers.
BOOT_TIMEOUT = 300.0
#: How long "nothing more happened" is watched.
QUIET = 3 * INTERVAL
#: The flavor's extra specs, as Nova writes them into the domain's
#: metadata (nova/virt/libvirt/config.py, LibvirtConfigGuestMetaNovaFlavor).
EXTRA_SPECS = """
        <nova:extraSpecs>
          <nova:extraSpec name="guestha:heartbeat">true</nova:extraSpec>
        </nova:extraSpecs>
"""


class NovaFlavorVM(vmlib.GuestVM):
    """guestha/testing/guest_vms.py's guest, its Nova metadata with the
    flavor's extra specs, as Nova 34 writes them (namespace version 1.1)."""

    def domain_xml(self):
        xml = super().domain_xml()
        assert xml.count("</nova:flavor>") == 1, xml
        return xml.replace("</nova:flavor>",
                           EXTRA_SPECS.strip("\n") + "\n      </nova:flavor>")


class CloudAgent(agent_harness.AgentProcess):
    """test_real_vm's agent, with hot-plug on (and no Nova)."""

    def __init__(self, procs, workdir, url, host):
        super().__init__(procs, workdir, workdir, url, host=host, uri=URI,
                         debug=None, agent={"hotplug": "true"})

    def plug_to_register_s(self, uuid):
        """Seconds from the last hot-plug of the channel to the guest's
        registration after it, by the agent's log."""
        stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) .*"
        plugged = re.compile(stamp + r"instance %s: guestha channel hot-"
                             r"plugged at \S+ in" % re.escape(uuid))
        registered = re.compile(stamp + r"instance %s: guest .* registered"
                                % re.escape(uuid))
        at = None
        took = None
        with open(self.log, errors="replace") as f:
            for line in f:
                match = plugged.search(line)
                if match:
                    at, took = match.group(1), None
                    continue
                match = registered.search(line)
                if match and at is not None and took is None:
                    took = _seconds(match.group(1)) - _seconds(at)
        return took


def _seconds(stamp):
    day, clock = stamp.split(" ")
    hours, minutes, seconds = clock.split(":")
    return (time.mktime(time.strptime(day, "%Y-%m-%d"))
            + int(hours) * 3600 + int(minutes) * 60 + float(seconds))


class Cloud(object):
    """The VM, the agent, the controller, the broker vhost."""

    def __init__(self, rabbitmq):
        self.rabbitmq = rabbitmq
        self.procs = child_processes.Processes()
        self.workdir = child_processes.short_tempdir("ghrc-")
        self.vhost = None
        self.server = None
        self.agent = None
        self.vms = {}
        self.boot_ids = {}
        self.figures = {}

    def start(self):
        started = time.monotonic()
        self.vms = {"hp": NovaFlavorVM("hp", interval_ms=INTERVAL_MS,
                                       with_channel=False)}
        for guest in self.vms.values():
            guest.start()

        self.vhost = "guestha-vmc-%s" % os.urandom(6).hex()
        self.rabbitmq.run("add_vhost", self.vhost)
        self.rabbitmq.run("set_permissions", "-p", self.vhost, "guest",
                          ".*", ".*", ".*")
        self.url = "rabbit://guest:guest@127.0.0.1:5672/%s" % self.vhost

        self.server = novaless_servers.ServerProcess(self.workdir, self.url,
                                                     "ghrc-ctl")
        self.server.start()

        for label, guest in self.vms.items():
            self.boot_ids[label] = guest.wait_booted(BOOT_TIMEOUT)["boot_id"]
        self.figures["VM start -> answers control s"] = (
            time.monotonic() - started)
        # the hot-plug must find the daemon up, waiting for its port
        hp = self.vms["hp"]
        wait_for(lambda: "waiting for port" in hp.guest_log_tail(20000),
                 "the guest daemon of hp to wait for its port",
                 timeout=BOOT_TIMEOUT, cloud=self)

        self.agent = CloudAgent(self.procs, self.workdir, self.url, HOST)
        self.agent_ready_at = self.agent.start().ready_at
        for label in self.vms:
            self.wait_monitored(label, timeout=BOOT_TIMEOUT)
        self.figures["agent ready -> MONITORED s"] = (
            time.monotonic() - self.agent_ready_at)
        return self

    # -- the sink ---------------------------------------------------------

    def sink(self, label, type_=None):
        uuid = self.vms[label].uuid
        return [r for r in self.server.sink_records()
                if r.get("instance") == uuid
                and (type_ is None or r.get("type") == type_)]

    def faults(self, label, since=0.0):
        return [r for r in self.sink(label, "fault")
                if r["detected_at_ts"] >= since]

    def recoveries(self, label, fault_id):
        return [r for r in self.sink(label, "recovery")
                if r["fault_id"] == fault_id]

    # -- the agent's view ---------------------------------------------------

    def instance(self, label):
        return self.agent.instance(self.vms[label].uuid)

    def wait_monitored(self, label, timeout=ARRIVAL, more_answers=1):
        """MONITORED, with ``more_answers`` more answers than now, the last
        healthy; returns the agent's status entry."""
        first = self.instance(label)
        base = first["counters"]["answers"] if first else 0

        def monitored():
            inst = self.instance(label)
            if (inst is None or inst["state"] != "MONITORED"
                    or inst["counters"]["answers"] < base + more_answers
                    or not (inst["last_answer"] or {}).get("healthy")):
                return None
            return inst

        return wait_for(monitored, "%s to be MONITORED, answering healthy"
                        % label, timeout=timeout, cloud=self)

    # -- the rest -------------------------------------------------------------

    def diagnostics(self, labels=None):
        parts = []
        others = real.other_agents(exclude=[
            self.agent.proc.pid] if self.agent and self.agent.proc else [])
        if others:
            parts.append("--- other guestha agents running: %s ---"
                         % others)
        labels = labels or list(self.vms)
        if self.agent is not None and self.agent.proc is not None:
            for label in labels:
                try:
                    parts.append("--- agent status of %s ---\n%s" % (
                        label, self.instance(label)))
                except (AssertionError, OSError) as exc:
                    parts.append(str(exc))
            parts.append("--- agent log ---\n%s" % self.agent.log_tail(3000))
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(2000))
        for label in labels:
            if label in self.vms:
                parts.append(self.vms[label].diagnostics(1500))
        return "\n".join(parts)

    def close(self):
        """Every step, even after one failed (guestha/testing/processes.py
        teardown): no process, domain or vhost of this cloud is left."""
        procs.teardown(
            *[guest.close for guest in self.vms.values()],
            self.agent and self.agent.proc and (
                lambda: child_processes.terminate_all([self.agent.proc], 15)),
            self.server and self.server.stop,
            self.procs.kill_all,
            self.server and self.server.kill,
            self.vhost and self._delete_vhost,
            lambda: shutil.rmtree(self.workdir, ignore_errors=True))

    def _delete_vhost(self):
        if not self.rabbitmq.app_running():
            self.rabbitmq.start_app()
        self.rabbitmq.run("delete_vhost", self.vhost, check=False)


def wait_for(predicate, what, timeout=ARRIVAL, cloud=None, labels=None):
    """wait_until with this file's default timeout and the cloud's
    diagnostics on failure."""
    return wait_until(predicate, timeout, what, interval=0.1,
                      details=cloud and (lambda: cloud.diagnostics(labels)))


@pytest.fixture(scope="module")
def cloud(rabbitmq):
    real.require_qemu()
    try:
        vmlib.build_assets()
    except vmlib.VMError as exc:
        real._skip_or_fail(str(exc))
    vmlib.cleanup_leftovers(URI)
    cloud = Cloud(rabbitmq)
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.close()
        print("\nreal-VM cloud figures: %s" % ", ".join(
            "%s %.2f" % kv for kv in cloud.figures.items()))


def channel_of(xml):
    """The guestha channel's socket path in a domain XML, or None."""
    match = re.search(
        r"<channel type=.unix.>\s*<source mode=.bind. path=.([^'\"]+).\s*/>"
        r"\s*<target type=.virtio. name=.%s." % re.escape(
            vmlib.GUESTHA_PORT), xml)
    return match.group(1) if match else None


# -- (2) hot-plug: the channel is added live, the waiting daemon registers ----

def test_hotplugged_channel_registers_without_reboot(cloud):
    import libvirt

    hp = cloud.vms["hp"]
    since = time.time()
    inst = cloud.wait_monitored("hp")
    assert inst["interval_ms"] == INTERVAL_MS
    assert inst["fault"] is None
    # the guest did not reboot: the same boot as before the agent started
    assert hp.control("ping")["boot_id"] == cloud.boot_ids["hp"]
    expected = os.path.join(cloud.agent.socket_dir, hp.uuid + ".sock")
    dom = hp.domain()
    assert channel_of(dom.XMLDesc(0)) == expected  # live: plugged
    assert channel_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) is None
    assert (cloud.agent.hotplugs(hp.uuid),
            cloud.agent.registrations(hp.uuid)) == (1, 1), (
        cloud.agent.lines_of(hp.uuid))
    cloud.figures["hot-plug -> registered (agent log) s"] = (
        cloud.agent.plug_to_register_s(hp.uuid))
    guest_log = hp.guest_log_tail(50000)
    assert guest_log.index("waiting for port") < guest_log.index(
        "registered")
    first = cloud.instance("hp")
    time.sleep(3 * INTERVAL)
    later = cloud.wait_monitored("hp")
    assert later["counters"]["answers"] >= first["counters"]["answers"] + 2
    assert later["counters"]["missed"] == first["counters"]["missed"]
    assert cloud.faults("hp") == []

    # a live device does not survive a restart: the agent plugs it again
    hp.destroy()
    wait_for(lambda: (cloud.instance("hp") or {}).get("state") in (
        None, "STOPPED", "NO_CHANNEL"), "the agent to see hp stopped",
        cloud=cloud, labels=["hp"])
    restarted_at = time.monotonic()
    hp.start()
    booted = hp.wait_booted(BOOT_TIMEOUT)
    assert booted["boot_id"] != cloud.boot_ids["hp"]
    cloud.boot_ids["hp"] = booted["boot_id"]
    wait_for(lambda: cloud.agent.hotplugs(hp.uuid) == 2,
             "the channel to be plugged again", timeout=BOOT_TIMEOUT,
             cloud=cloud, labels=["hp"])
    wait_for(lambda: cloud.agent.registrations(hp.uuid) == 2,
             "hp to register again", timeout=BOOT_TIMEOUT, cloud=cloud,
             labels=["hp"])
    cloud.wait_monitored("hp", more_answers=2)
    cloud.figures["hp start -> hot-plugged and MONITORED s"] = (
        time.monotonic() - restarted_at)
    assert channel_of(hp.domain().XMLDesc(0)) == expected
    cloud.figures["re-plug at start -> registered after boot s"] = (
        cloud.agent.plug_to_register_s(hp.uuid))
    time.sleep(QUIET)
    assert cloud.faults("hp", since) == []
    assert cloud.agent.hotplugs(hp.uuid) == 2
    # the extra spec came from the domain: the agent has no Nova to ask
    assert "[nova]" not in open(cloud.agent.config).read()
