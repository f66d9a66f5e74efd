# SPDX-License-Identifier: Apache-2.0
"""guestha on real VMs in a small cloud: hot-plug, server-group messaging
between guests, and a corrective reboot carried out on libvirt.

What runs where
---------------
* **Four VMs** (tools/vm.py: tiny Linux guests under QEMU TCG on
  ``qemu:///system``, the checkout's guest daemon, a test control
  channel), booted in parallel once for the module:

  ``hp``
      defined WITHOUT the guestha channel; its flavor has
      ``guestha:heartbeat=true``, so the agent hot-plugs the channel.
  ``ga``, ``gb``
      with the channel, in one Nova server group, flavor with
      ``guestha:server_group_messaging=true``; their guest daemons' app
      API is on (``/run/guestha/app.sock``), where the control program's
      ``app`` command plays an application (tools/vm_guest_control.py).
  ``ca``
      with the channel; its guest daemon recommends ``reboot``.

  The VMs boot BEFORE the agent starts, so the hot-plug reaches a guest
  daemon that is already up and waiting for its port.
* **The agent**: one real ``guestha-agent`` for the four (one compute
  host), ``[agent] hotplug = true``, ``[nova]`` pointing at the Nova
  stand-in (keystoneauth ``none`` + ``endpoint_override``).
* **The controller**: one ``guestha-server`` with the log sink,
  ``[actions] allowed_max = reboot``, ``max_actions = 1`` in a long
  window, a short ``soft_reboot_timeout``.
* **Nova**: tests/fakes/nova.py knows the four servers (host = the
  agent's host) and the group; its ``on_action`` carries out accepted
  reboots on libvirt as nova-compute would (:class:`Compute`).  Nova's
  notifications of state changes are published with
  :class:`tests.functional.serverctl.NovaNotifier`, as nova-compute does.

The assertions are on the log sink (faults, recoveries, action records),
the agent's status, Nova's recorded actions and what the guests'
applications received inside the VMs.  Needs what tests/functional/
test_real_vm.py needs (root, libvirtd with QEMU, the VM assets).
"""

import base64
import os
import re
import shutil
import threading
import time
import uuid as uuidlib

from oslo_config import cfg
import oslo_messaging.opts
import pytest

from tests.fakes.nova import FakeNova
from tests.functional import agentctl
from tests.functional import serverctl
from tests.functional import test_real_vm as real
from tools import proc as procs
from tools import vm as vmlib

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm]

URI = vmlib.URI
HOST = "ghrc-host"
INTERVAL_MS = 1000
INTERVAL = INTERVAL_MS / 1000.0
#: Polls end as soon as what they wait for is there.
ARRIVAL = 30.0
#: A deadline, not a target: four VMs boot at once under TCG on two cores,
#: and on a loaded machine one took 139 s to reach its init (CI, 2026-12-04;
#: 5-10 s is usual).  Polls end as soon as the VM answers.
BOOT_TIMEOUT = 300.0
#: How long "nothing more happened" is watched.
QUIET = 3 * INTERVAL
#: [actions] soft_reboot_timeout: the soft reboot does nothing in this
#: guest (it has no ACPI), so the hard one follows after this long.
SOFT_REBOOT_TIMEOUT = 3.0
HEARTBEAT = {"guestha:heartbeat": "true"}
MESSAGING = {"guestha:heartbeat": "true",
             "guestha:server_group_messaging": "true"}
REBOOTABLE = {"guestha:heartbeat": "true",
              "guestha:corrective_action": "reboot"}
GROUP = str(uuidlib.uuid4())

NOVA_SECTION = """
[nova]
auth_type = none
endpoint_override = {endpoint}
timeout = 5
flavor_cache_ttl = 300
"""


class CloudAgent(real.Agent):
    """test_real_vm's agent, with hot-plug on and Nova to ask."""

    def __init__(self, procs, workdir, url, host, nova_endpoint):
        super().__init__(procs, workdir, url, host)
        with open(self.config) as f:
            text = f.read()
        assert "hotplug = false\n" in text
        text = text.replace("hotplug = false\n", "hotplug = true\n")
        text += NOVA_SECTION.format(endpoint=nova_endpoint)
        with open(self.config, "w") as f:
            f.write(text)
        self.socket_dir = os.path.join(workdir, "agent-channels")

    def log_count(self, pattern):
        regex = re.compile(pattern)
        try:
            with open(self.log, errors="replace") as f:
                return sum(1 for line in f if regex.search(line))
        except OSError:
            return 0

    def hotplugs(self, uuid):
        return self.log_count(r"instance %s: guestha channel hot-plugged "
                              r"at \S+ in \d+ ms" % re.escape(uuid))

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

    def lines_of(self, uuid):
        """The agent's log lines about an instance."""
        try:
            with open(self.log, errors="replace") as f:
                return "".join(line for line in f if uuid in line)
        except OSError as exc:
            return "(%s)" % exc


def _seconds(stamp):
    day, clock = stamp.split(" ")
    hours, minutes, seconds = clock.split(":")
    return (time.mktime(time.strptime(day, "%Y-%m-%d"))
            + int(hours) * 3600 + int(minutes) * 60 + float(seconds))


class Compute(object):
    """What nova-compute does for the actions FakeNova accepts, on the
    real domains (FakeNova.on_action): a SOFT reboot asks the guest
    (``virDomainReboot``: an ACPI request, which this guest without ACPI
    ignores, as a hung guest would); a HARD reboot destroys the domain and
    starts it again.  Asynchronous, as nova-compute is: the API answers
    first."""

    def __init__(self):
        self.done = []
        self.errors = []
        self._lock = threading.Lock()
        self._threads = []

    def __call__(self, uuid, action, args):
        thread = threading.Thread(target=self._carry_out,
                                  args=(uuid, action, args),
                                  name="fake-nova-compute", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _carry_out(self, uuid, action, args):
        import libvirt

        kind = (args or {}).get("type")
        conn = vmlib.connect(URI)
        try:
            dom = conn.lookupByUUIDString(uuid)
            if action == "reboot" and kind == "SOFT":
                dom.reboot(0)
            elif action == "reboot" and kind == "HARD":
                if dom.isActive():
                    dom.destroy()
                dom.create()
            elif action == "os-stop":
                dom.destroy()
            elif action == "os-start":
                dom.create()
            with self._lock:
                self.done.append((uuid, action, kind, time.monotonic()))
        except libvirt.libvirtError as exc:
            with self._lock:
                self.errors.append((uuid, action, kind, str(exc)))
        finally:
            conn.close()

    def join(self, timeout=30.0):
        for thread in self._threads:
            thread.join(timeout)


class Cloud(object):
    """The VMs, the agent, the controller, the broker vhost, Nova."""

    def __init__(self, rabbitmq):
        self.rabbitmq = rabbitmq
        self.procs = agentctl.Processes()
        self.workdir = agentctl.short_tempdir("ghrc-")
        self.vhost = None
        self.nova = None
        self.compute = Compute()
        self.server = None
        self.agent = None
        self.notifier = None
        self.vms = {}
        self.boot_ids = {}
        self.figures = {}

    def start(self):
        started = time.monotonic()
        self.vms = {
            "hp": vmlib.GuestVM("hp", interval_ms=INTERVAL_MS,
                                with_channel=False),
            "ga": vmlib.GuestVM("ga", interval_ms=INTERVAL_MS),
            "gb": vmlib.GuestVM("gb", interval_ms=INTERVAL_MS),
            "ca": vmlib.GuestVM("ca", interval_ms=INTERVAL_MS,
                                corrective_action="reboot"),
        }
        for guest in self.vms.values():
            guest.start()

        self.vhost = "guestha-vmc-%s" % os.urandom(6).hex()
        self.rabbitmq.run("add_vhost", self.vhost)
        self.rabbitmq.run("set_permissions", "-p", self.vhost, "guest",
                          ".*", ".*", ".*")
        self.url = "rabbit://guest:guest@127.0.0.1:5672/%s" % self.vhost

        self.nova = FakeNova().start()
        self.nova.on_action = self.compute
        specs = {"hp": HEARTBEAT, "ga": MESSAGING, "gb": MESSAGING,
                 "ca": REBOOTABLE}
        for label, guest in self.vms.items():
            self.nova.add_server(guest.uuid, name=label, host=HOST,
                                 flavor_extra_specs=specs[label])
        self.nova.add_server_group(GROUP, "ghrc-group", members=[
            self.vms["ga"].uuid, self.vms["gb"].uuid])
        self.server = serverctl.ServerProcess(
            self.workdir, self.url, "ghrc-ctl", self.nova.endpoint,
            actions={"allowed_max": "reboot",
                     "soft_reboot_timeout": SOFT_REBOOT_TIMEOUT,
                     "max_actions": 1, "window": 3600})
        self.server.start()
        # NovaNotifier overrides control_exchange, which oslo.messaging
        # registers only when it makes its first transport
        for group, options in oslo_messaging.opts.list_opts():
            if group is None:
                cfg.CONF.register_opts(options)
        self.notifier = serverctl.NovaNotifier(self.url, host=HOST)

        for label, guest in self.vms.items():
            self.boot_ids[label] = guest.wait_booted(BOOT_TIMEOUT)["boot_id"]
        self.figures["4 VMs start -> all answer control s"] = (
            time.monotonic() - started)
        # the hot-plug must find the daemon up, waiting for its port
        hp = self.vms["hp"]
        wait_for(lambda: "waiting for port" in hp.guest_log_tail(20000),
                 "the guest daemon of hp to wait for its port",
                 timeout=BOOT_TIMEOUT, cloud=self)

        self.agent = CloudAgent(self.procs, self.workdir, self.url, HOST,
                                self.nova.endpoint)
        self.agent_ready_at = self.agent.start()
        for label in self.vms:
            self.wait_monitored(label, timeout=BOOT_TIMEOUT)
        self.figures["agent ready -> all 4 MONITORED s"] = (
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

    def action_records(self, label, fault_id=None):
        return [r for r in self.sink(label, "action")
                if fault_id is None or r["fault_id"] == fault_id]

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

    # -- the guests' applications -------------------------------------------

    def app(self, label, op, timeout=25.0, **args):
        return self.vms[label].control("app", timeout=timeout, op=op,
                                       **args)

    def app_events(self, label, op=None):
        answer = self.app(label, "events")
        assert answer["listening"], "the app listener of %s ended: %s" % (
            label, answer["error"])
        return [e for e in answer["events"]
                if op is None or e.get("op") == op]

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
                except AssertionError as exc:
                    parts.append(str(exc))
            parts.append("--- agent log ---\n%s" % self.agent.tail(3000))
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(2000))
        parts.append("--- nova actions %s, compute %s errors %s ---" % (
            self.nova.actions if self.nova else None, self.compute.done,
            self.compute.errors))
        for label in labels:
            if label in self.vms:
                parts.append(self.vms[label].diagnostics(1500))
        return "\n".join(parts)

    def close(self):
        """Every step, even after one failed (tools/proc.py teardown): no
        process, domain or vhost of this cloud is left."""
        procs.teardown(
            *[guest.close for guest in self.vms.values()],
            self.agent and self.agent.proc and (
                lambda: agentctl.terminate_all([self.agent.proc], 15)),
            self.server and self.server.stop,
            self.procs.kill_all,
            self.notifier and self.notifier.close,
            self.server and self.server.kill,
            self.nova and self.nova.stop,
            self.vhost and self._delete_vhost,
            lambda: shutil.rmtree(self.workdir, ignore_errors=True))

    def _delete_vhost(self):
        if not self.rabbitmq.app_running():
            self.rabbitmq.start_app()
        self.rabbitmq.run("delete_vhost", self.vhost, check=False)


def wait_for(predicate, what, timeout=ARRIVAL, cloud=None, labels=None):
    try:
        return serverctl.wait_for(predicate, timeout, what, interval=0.1)
    except AssertionError as exc:
        if cloud is None:
            raise
        raise AssertionError("%s\n%s" % (
            exc, cloud.diagnostics(labels))) from None


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
    # Nova was asked for hp's flavor, nothing else was done to it
    assert [a for a in cloud.nova.actions if a[0] == hp.uuid] == []


# -- (6) two VMs in one server group: broadcast, status, notification --------

def test_server_group_messaging_between_vms(cloud):
    ga, gb = cloud.vms["ga"], cloud.vms["gb"]
    since = time.time()
    cloud.wait_monitored("ga")
    cloud.wait_monitored("gb")
    for label in ("ga", "gb"):
        cloud.app(label, "subscribe", events=["broadcast", "notification"])

    # a broadcast from ga's application reaches gb's, inside the VMs.
    # Best effort (a cast): as an application would, send again, a new
    # payload each time, until one arrives.
    sent = []
    got = []
    broadcast_at = None
    for attempt in range(3):
        payload = "hello %d from ga %s" % (attempt, uuidlib.uuid4())
        sent.append(base64.b64encode(payload.encode()).decode())
        broadcast_at = time.monotonic()
        reply = cloud.app("ga", "broadcast", payload=payload)["reply"]
        assert reply["op"] == "ok", reply
        try:
            got = wait_for(lambda: [e for e in cloud.app_events(
                "gb", "broadcast") if e["payload"] in sent],
                "the broadcast at gb's application", timeout=ARRIVAL / 3)
            break
        except AssertionError:
            continue
    assert got, "no broadcast reached gb\n%s" % cloud.diagnostics(
        ["ga", "gb"])
    cloud.figures["broadcast ga -> gb's app s"] = (
        time.monotonic() - broadcast_at)
    assert got[0] == {"op": "broadcast", "from": ga.uuid,
                      "payload": got[0]["payload"]}
    assert base64.b64decode(got[0]["payload"]).decode().startswith(
        "hello ")

    # status: both members with their Nova state, from either side
    def by_instance(members):
        return {m["instance"]: m["state"] for m in members}

    both_active = {ga.uuid: "active", gb.uuid: "active"}
    status_at = time.monotonic()
    members = cloud.app("ga", "status")["members"]
    cloud.figures["status query ga -> answer s"] = (
        time.monotonic() - status_at)
    assert len(members) == 2
    assert by_instance(members) == both_active
    assert by_instance(cloud.app("gb", "status")["members"]) == both_active

    # gb is paused (on libvirt, and in Nova, which says so): ga's
    # application is told; pausing is no fault
    paused_at = time.monotonic()
    gb.suspend()
    try:
        wait_for(lambda: (cloud.instance("gb") or {}).get("state")
                 == "SUSPENDED", "the agent to see gb paused",
                 cloud=cloud, labels=["gb"])
        cloud.nova.servers[gb.uuid]["status"] = "PAUSED"
        cloud.notifier.instance_event("instance.pause.end", gb.uuid,
                                      "paused", HOST, old_state="active")
        told = wait_for(lambda: [e for e in cloud.app_events(
            "ga", "notification") if e["instance"] == gb.uuid],
            "the pause notification at ga's application", cloud=cloud,
            labels=["ga", "gb"])
        cloud.figures["pause of gb -> ga's app told s"] = (
            time.monotonic() - paused_at)
        assert told == [{"op": "notification", "instance": gb.uuid,
                         "state": "paused", "event": "instance.pause.end"}]
        assert by_instance(cloud.app("ga", "status")["members"]) == {
            ga.uuid: "active", gb.uuid: "paused"}
    finally:
        gb.resume()
        cloud.nova.servers[gb.uuid]["status"] = "ACTIVE"
        cloud.notifier.instance_event("instance.unpause.end", gb.uuid,
                                      "active", HOST, old_state="paused")
    wait_for(lambda: [e for e in cloud.app_events("ga", "notification")
                      if e["event"] == "instance.unpause.end"],
             "the unpause notification at ga's application", cloud=cloud,
             labels=["ga", "gb"])
    cloud.wait_monitored("gb", more_answers=2)
    assert by_instance(cloud.app("ga", "status")["members"]) == both_active
    time.sleep(QUIET)

    # exactly that, and nothing else: ga was told of gb twice, gb (its
    # listener survived the pause) of nothing, nobody heard an echo
    assert cloud.app_events("ga", "notification") == [
        {"op": "notification", "instance": gb.uuid, "state": "paused",
         "event": "instance.pause.end"},
        {"op": "notification", "instance": gb.uuid, "state": "active",
         "event": "instance.unpause.end"}]
    assert cloud.app_events("ga", "broadcast") == []
    assert cloud.app_events("gb", "notification") == []
    payloads = [e["payload"] for e in cloud.app_events("gb", "broadcast")]
    assert len(payloads) == len(set(payloads)) and set(payloads) <= set(
        sent)
    for label in ("ga", "gb"):
        cloud.app(label, "unsubscribe")
        assert cloud.faults(label, since) == []
        assert cloud.action_records(label) == []
    assert [a for a in cloud.nova.actions
            if a[0] in (ga.uuid, gb.uuid)] == []


# -- (7) a corrective reboot through Nova, then the cap ----------------------

def test_unhealthy_guest_is_rebooted_once_then_capped(cloud):
    ca = cloud.vms["ca"]
    cloud.wait_monitored("ca")
    assert cloud.instance("ca")["fault"] is None
    boot_id = ca.control("ping")["boot_id"]
    registrations = cloud.agent.registrations(ca.uuid)
    since = time.time()

    failed_at = time.monotonic()
    ca.control("unhealthy", reason="app-wedged")
    fault = wait_for(lambda: cloud.faults("ca", since),
                     "an unhealthy fault of ca in the log sink",
                     cloud=cloud, labels=["ca"])[0]
    cloud.figures["ca: hook fails -> fault in sink s"] = (
        time.monotonic() - failed_at)
    assert fault["kind"] == "unhealthy", fault
    assert fault["action"] == "reboot", fault
    assert "app-wedged" in fault["reason"], fault
    assert fault["host"] == HOST

    # soft (ignored by the guest), then hard after soft_reboot_timeout
    soft, hard = wait_for(
        lambda: (lambda r: r if len(r) >= 2 else None)(
            cloud.action_records("ca", fault["id"])),
        "the soft and the hard reboot in the log sink",
        timeout=ARRIVAL + SOFT_REBOOT_TIMEOUT, cloud=cloud, labels=["ca"])
    cloud.figures["ca: hook fails -> hard reboot record s"] = (
        time.monotonic() - failed_at)
    for record, step in ((soft, "soft"), (hard, "hard")):
        assert (record["action"], record["step"], record["outcome"],
                record["recommended"], record["allowed"],
                record["server"], record["kind"]) == (
            "reboot", step, "applied", "reboot", "reboot", "ghrc-ctl",
            "unhealthy"), record
    assert hard["at_ts"] - soft["at_ts"] >= SOFT_REBOOT_TIMEOUT - 0.5
    assert "no recovery within" in hard["reason"], hard

    # nova-compute's hard reboot: the domain was destroyed (the open fault
    # recovers: the instance stopped) and started again; the guest
    # registers afresh, healthy (its tmpfs health switch is gone)
    recovery = wait_for(lambda: cloud.recoveries("ca", fault["id"]),
                        "the recovery of ca's fault", cloud=cloud,
                        labels=["ca"])
    assert len(recovery) == 1
    booted = ca.wait_booted(BOOT_TIMEOUT, boot_id=boot_id)
    cloud.figures["ca: hook fails -> rebooted guest answers s"] = (
        time.monotonic() - failed_at)
    wait_for(lambda: cloud.agent.registrations(ca.uuid) > registrations,
             "ca to register again", timeout=BOOT_TIMEOUT, cloud=cloud,
             labels=["ca"])
    cloud.wait_monitored("ca", timeout=BOOT_TIMEOUT, more_answers=2)
    cloud.figures["hook fails -> rebooted, MONITORED again s"] = (
        time.monotonic() - failed_at)
    cloud.compute.join()
    assert cloud.compute.errors == []
    assert [(u, a, k) for u, a, k, _ in cloud.compute.done] == [
        (ca.uuid, "reboot", "SOFT"), (ca.uuid, "reboot", "HARD")]
    ours = [a for a in cloud.nova.actions if a[0] == ca.uuid]
    assert ours == [(ca.uuid, "reboot", {"type": "SOFT"}),
                    (ca.uuid, "reboot", {"type": "HARD"})]
    assert booted["boot_id"] != boot_id

    # a second fault within the window: capped, Nova is not asked again
    since2 = time.time()
    ca.control("unhealthy", reason="app-wedged-again")
    second = wait_for(lambda: cloud.faults("ca", since2),
                      "the second fault of ca in the log sink",
                      cloud=cloud, labels=["ca"])[0]
    assert second["id"] != fault["id"]
    assert second["kind"] == "unhealthy" and second["action"] == "reboot"
    refused = wait_for(lambda: cloud.action_records("ca", second["id"]),
                       "the capped action record", cloud=cloud,
                       labels=["ca"])
    assert len(refused) == 1
    assert (refused[0]["action"], refused[0]["outcome"],
            refused[0]["step"]) == ("reboot", "refused: cap", None)
    assert "at most 1 allowed" in refused[0]["reason"], refused[0]
    ca.control("healthy")
    wait_for(lambda: cloud.recoveries("ca", second["id"]),
             "the recovery of the second fault", cloud=cloud,
             labels=["ca"])
    cloud.wait_monitored("ca")
    # longer than a soft reboot's follow-up would take
    time.sleep(SOFT_REBOOT_TIMEOUT + QUIET)

    # exactly: two faults, two recoveries, three action records, one
    # reboot (soft + its hard follow-up) at Nova, the guest still on the
    # boot the hard reboot gave it
    assert [f["id"] for f in cloud.faults("ca", since)] == [
        fault["id"], second["id"]]
    assert sorted(r["fault_id"] for r in cloud.sink("ca", "recovery")
                  if r["recovered_at_ts"] >= since) == sorted(
        [fault["id"], second["id"]])
    assert [(r["fault_id"], r["step"], r["outcome"])
            for r in cloud.action_records("ca")] == [
        (fault["id"], "soft", "applied"), (fault["id"], "hard", "applied"),
        (second["id"], None, "refused: cap")]
    assert [a for a in cloud.nova.actions if a[0] == ca.uuid] == ours
    assert ca.control("ping")["boot_id"] == booted["boot_id"]
