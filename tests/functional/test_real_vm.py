# SPDX-License-Identifier: Apache-2.0
"""guestha on a real VM: guest daemon in a QEMU guest -> guestha-agent ->
RabbitMQ -> guestha-server -> log sink.

What runs where
---------------
* **The VM**: one tiny Linux guest (guestha/testing/guest_vms.py, assets from
  tools/build-vm-assets.sh) on ``qemu:///system`` under TCG, booted once
  for the module.  It runs the host's python3 and this checkout's guest
  daemon (over a read-only 9p share of the host's root), with a guestha
  channel ``org.openstack.guestha.0`` and a test control channel, through
  which the tests stop and continue the daemon, flip its health hook and
  reboot the guest.
* **The agent**: a real ``guestha-agent`` with ``[libvirt] connection_uri
  = qemu:///system`` and no hot-plug (the domain has its channel).  It
  sees every domain of libvirtd, also other people's; it monitors only
  those with a guestha channel.
* **The controller**: one ``guestha-server``
  (guestha/testing/server_harness.py) with the log sink, on a RabbitMQ vhost of
  its own, and no Nova (guestha/testing/novaless_servers.py): none of these
  tests is about Nova. The same guest daemon in a server that Nova booted, with
  Nova's reboots, server groups and notifications, is
  tests/cloud/test_scenarios.py.

Assertions are on what reached the log sink (faults, recoveries) and on
the agent's status.  Each test leaves the rig as it found it: the VM
running and monitored, the daemon running and healthy, the agent running.

Needs root, libvirtd with QEMU (``tools/libvirt-setup.sh``) and the VM
assets (``tools/setup.sh`` builds them as root); skipped without them,
except in CI (``CI`` set), where that is a failure.
"""

import os
import shutil
import subprocess
import time

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import guest_vms as vmlib
from guestha.testing import novaless_servers
from guestha.testing import processes as procs
from guestha.testing.wait import wait_until

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

URI = vmlib.URI
#: The guest's heartbeat interval.  TCG on a loaded 2-core machine: one
#: second leaves the guest room to answer while detection stays quick.
INTERVAL_MS = 1000
INTERVAL = INTERVAL_MS / 1000.0
#: On top of the 2 intervals a hang needs to be detected: libvirt's
#: confirmation, the agent's outbox, RabbitMQ, the controller, the sink.
DELIVERY_MARGIN = 3.0
#: How long "nothing happened" is watched after an operation.
QUIET = 3 * INTERVAL
#: Polls end as soon as what they wait for is there.
ARRIVAL = 30.0
BOOT_TIMEOUT = 120.0


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _skip_or_fail(message):
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_qemu():
    """libvirtd on qemu:///system, as root (a restarting libvirtd gets up
    to 30 s)."""
    if os.geteuid() != 0:
        _skip_or_fail("the real-VM tests need root (libvirtd's QEMU runs "
                      "as root)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        _skip_or_fail("libvirt-python is not installed")
    last = []

    def answers():
        try:
            vmlib.connect(URI).close()
            return True
        except Exception as exc:  # noqa: BLE001 - libvirtError
            last[:] = [exc]
            return False

    try:
        wait_until(answers, 30, "libvirtd on %s" % URI, interval=1)
    except AssertionError:
        _skip_or_fail("libvirtd does not answer on %s (%s): run "
                      "tools/libvirt-setup.sh as root" % (URI, last[0]))


# -- the rig ------------------------------------------------------------------

class Rig(object):
    """The VM, the agent, the controller, the broker vhost, Nova."""

    def __init__(self, rabbitmq, instance_uuid=None, **server_groups):
        """``server_groups``: configuration of the controller on top of
        server_harness's (e.g. ``sinks={"enabled": "log,vitrage"}``)."""
        self.rabbitmq = rabbitmq
        self.instance_uuid = instance_uuid
        self.server_groups = server_groups
        self.procs = child_processes.Processes()
        self.workdir = child_processes.short_tempdir("ghrv-")
        self.vhost = None
        self.server = None
        self.agent = None
        self.vm = None
        self.figures = {}

    def start(self):
        self.vhost = "guestha-vm-%s" % os.urandom(6).hex()
        self.rabbitmq.run("add_vhost", self.vhost)
        self.rabbitmq.run("set_permissions", "-p", self.vhost, "guest",
                          ".*", ".*", ".*")
        self.url = "rabbit://guest:guest@127.0.0.1:5672/%s" % self.vhost

        self.vm = vmlib.GuestVM("rv", interval_ms=INTERVAL_MS,
                                instance_uuid=self.instance_uuid)
        self.uuid = self.vm.uuid
        started = time.monotonic()
        self.vm.start()
        self.server = novaless_servers.ServerProcess(
            self.workdir, self.url, "ghrv-ctl", **self.server_groups)
        self.server.start()
        self.agent = agent_harness.AgentProcess(
            self.procs, self.workdir, self.workdir, self.url,
            host="ghrv-host", uri=URI, debug=None)
        self.agent.start()
        booted = self.vm.wait_booted(BOOT_TIMEOUT)
        self.figures["boot to control answer s"] = booted["waited"]
        self.wait_monitored(timeout=BOOT_TIMEOUT)
        self.figures["start to MONITORED s"] = time.monotonic() - started
        return self

    # -- what the sink has ----------------------------------------------------

    def sink(self, type_=None, since=0.0):
        """Sink records of the VM's instance, of ``type_``, whose event
        was detected at or after the wall time ``since``."""
        return [r for r in self.server.sink_records()
                if r.get("instance") == self.uuid
                and (type_ is None or r.get("type") == type_)
                and r.get("detected_at_ts", 0) >= since]

    def faults(self, since=0.0):
        return self.sink("fault", since)

    def recoveries(self, fault_id):
        return [r for r in self.sink("recovery")
                if r.get("fault_id") == fault_id]

    # -- the agent's view -----------------------------------------------------

    def state(self):
        inst = self.agent.instance(self.uuid)
        return inst["state"] if inst else None

    def wait_monitored(self, timeout=ARRIVAL, more_answers=1):
        """Wait until the instance is MONITORED and has answered
        ``more_answers`` more challenges than when this was called (with
        the last answer healthy); returns its status entry."""
        first = self.agent.instance(self.uuid)
        base = first["counters"]["answers"] if first else 0

        def monitored():
            inst = self.agent.instance(self.uuid)
            if (inst is None or inst["state"] != "MONITORED"
                    or inst["counters"]["answers"] < base + more_answers
                    or not (inst["last_answer"] or {}).get("healthy")):
                return None
            return inst

        return wait_for(monitored, "the VM to be MONITORED, answering "
                        "healthy", timeout=timeout, rig=self)

    def diagnostics(self):
        parts = []
        others = other_agents(exclude=[
            self.agent.proc.pid] if self.agent and self.agent.proc else [])
        if others:
            # QEMU serves one client per channel: another agent on
            # qemu:///system may hold this VM's channel
            parts.append("--- other guestha agents running: %s ---"
                         % others)
        if self.agent is not None and self.agent.proc is not None:
            try:
                parts.append("--- agent status ---\n%s" % (
                    self.agent.instance(self.uuid),))
            except (AssertionError, OSError) as exc:
                parts.append(str(exc))
            parts.append("--- agent log ---\n%s" % self.agent.log_tail(2500))
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(1500))
        if self.vm is not None:
            parts.append(self.vm.diagnostics(2000))
        return "\n".join(parts)

    def close(self):
        """Every step, even after one failed (guestha/testing/processes.py
        teardown): no process, domain or vhost of this rig is left."""
        procs.teardown(
            self.vm and self.vm.close,
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


def other_agents(exclude=()):
    """Pids of other guestha-agent processes on this machine."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"guestha.cmd.agent" in argv and b"--status" not in argv:
            found.append(int(name))
    return found


def wait_for(predicate, what, timeout=ARRIVAL, rig=None):
    """wait_until with this file's default timeout and the rig's
    diagnostics on failure."""
    return wait_until(predicate, timeout, what, interval=0.05,
                      details=rig and rig.diagnostics)


@pytest.fixture(scope="module")
def rig(rabbitmq):
    require_qemu()
    try:
        vmlib.build_assets()
    except vmlib.VMError as exc:
        _skip_or_fail(str(exc))
    vmlib.cleanup_leftovers(URI)
    rig = Rig(rabbitmq)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()
        print("\nreal-VM figures: %s" % ", ".join(
            "%s %.2f" % kv for kv in rig.figures.items()))


@pytest.fixture
def ready(rig):
    """The rig as every test expects it: VM running, daemon running and
    healthy, agent running, the instance MONITORED."""
    if rig.agent.proc is None or rig.agent.proc.poll() is not None:
        rig.agent.start()
    if not rig.vm.is_active():
        rig.vm.start()
    rig.vm.wait_booted(BOOT_TIMEOUT)
    rig.vm.control("healthy")
    if rig.vm.control("daemon_pid")["pid"]:
        rig.vm.control("signal", sig="CONT")
    else:
        rig.vm.control("daemon_start")
    rig.wait_monitored(timeout=BOOT_TIMEOUT)
    return rig


def assert_no_fault_since(rig, since, what):
    time.sleep(QUIET)
    faults = rig.faults(since)
    assert faults == [], "%s raised faults: %s\n%s" % (
        what, faults, rig.diagnostics())
    inst = rig.agent.instance(rig.uuid)
    assert inst["fault"] is None, inst


# -- (a) the daemon in the VM registers; heartbeats are healthy --------------

def test_guest_daemon_in_vm_is_monitored(ready):
    rig = ready
    since = time.time()
    first = rig.agent.instance(rig.uuid)
    assert first["state"] == "MONITORED"
    assert first["interval_ms"] == INTERVAL_MS
    assert first["name"] == rig.vm.name
    time.sleep(3 * INTERVAL)
    later = rig.agent.instance(rig.uuid)
    assert later["state"] == "MONITORED"
    assert later["counters"]["answers"] >= first["counters"]["answers"] + 2
    assert later["counters"]["missed"] == first["counters"]["missed"]
    assert later["last_answer"]["healthy"] is True
    assert later["fault"] is None
    assert rig.faults(since) == []
    # the guest's side agrees
    assert "registered" in rig.vm.guest_log_tail(20000)


# -- (b) a hung daemon in the VM: missed, then a recovery ---------------------

def test_sigstop_in_vm_is_missed_and_sigcont_recovers(ready):
    rig = ready
    pid = rig.vm.control("daemon_pid")["pid"]
    assert pid
    since = time.time()
    stopped_at = time.monotonic()
    rig.vm.control("signal", sig="STOP")
    try:
        fault = wait_for(lambda: rig.faults(since),
                         "a missed fault in the log sink", rig=rig)[0]
        detected = time.monotonic() - stopped_at
    finally:
        continued_at = time.monotonic()
        rig.vm.control("signal", sig="CONT")
    assert fault["kind"] == "missed", fault
    assert fault["host"] == rig.agent.host
    assert fault["interval_ms"] == INTERVAL_MS
    rig.figures["SIGSTOP -> missed fault in sink s"] = detected
    assert detected <= 2 * INTERVAL + DELIVERY_MARGIN, (
        "the fault took %.2f s to reach the sink" % detected)

    recovery = wait_for(lambda: rig.recoveries(fault["id"]),
                        "the recovery in the log sink", rig=rig)
    rig.figures["SIGCONT -> recovery in sink s"] = (
        time.monotonic() - continued_at)
    assert len(recovery) == 1
    assert rig.vm.control("daemon_pid")["pid"] == pid  # the same process
    rig.wait_monitored()
    assert len(rig.faults(since)) == 1


# -- (c) the health hook fails: unhealthy, passes again: recovery -------------

def test_failing_health_hook_is_unhealthy_then_recovers(ready):
    rig = ready
    since = time.time()
    failed_at = time.monotonic()
    rig.vm.control("unhealthy", reason="disk-on-fire")
    try:
        fault = wait_for(lambda: rig.faults(since),
                         "an unhealthy fault in the log sink", rig=rig)[0]
        rig.figures["hook fails -> unhealthy fault in sink s"] = (
            time.monotonic() - failed_at)
    finally:
        healed_at = time.monotonic()
        rig.vm.control("healthy")
    assert fault["kind"] == "unhealthy", fault
    assert "disk-on-fire" in fault["reason"], fault
    wait_for(lambda: rig.recoveries(fault["id"]),
             "the recovery in the log sink", rig=rig)
    rig.figures["hook passes -> recovery in sink s"] = (
        time.monotonic() - healed_at)
    rig.wait_monitored()
    assert len(rig.faults(since)) == 1


# -- (d) what is not a fault: suspend, reboot, destroy + start ---------------

def test_suspend_and_resume_is_no_fault(ready):
    rig = ready
    since = time.time()
    rig.vm.suspend()
    try:
        wait_for(lambda: rig.state() == "SUSPENDED",
                 "the agent to see the VM suspended", rig=rig)
        time.sleep(3 * INTERVAL)  # longer than a miss would take
    finally:
        rig.vm.resume()
    rig.wait_monitored(more_answers=2)
    assert_no_fault_since(rig, since, "suspend/resume")


@pytest.mark.parametrize("force", [False, True], ids=["clean", "forced"])
def test_reboot_inside_guest_is_no_fault(ready, force):
    """A clean reboot, as systemd does one: the daemon is stopped with
    SIGTERM and says exit first.  A forced one (sysrq): the daemon
    vanishes mid-heartbeat, and libvirt's reboot event tells the agent
    the guest reset itself, so it waits for a fresh registration instead
    of counting missed answers."""
    rig = ready
    since = time.time()
    boot_id = rig.vm.control("ping")["boot_id"]
    registrations = rig.agent.registrations(rig.uuid)
    rebooted_at = time.monotonic()
    if force:
        rig.vm.control("reboot", force=True)
    else:
        rig.vm.control("reboot")  # clean: the daemon says exit first
    rig.vm.wait_booted(BOOT_TIMEOUT, boot_id=boot_id)
    wait_for(lambda: rig.agent.registrations(rig.uuid) > registrations,
             "the guest to register again", timeout=BOOT_TIMEOUT, rig=rig)
    rig.wait_monitored()
    rig.figures["%s reboot -> MONITORED again s"
                % ("forced" if force else "clean")] = (
        time.monotonic() - rebooted_at)
    assert_no_fault_since(rig, since, "a reboot inside the guest")


def test_destroy_and_start_is_no_fault(ready):
    rig = ready
    since = time.time()
    registrations = rig.agent.registrations(rig.uuid)
    rig.vm.destroy()
    wait_for(lambda: rig.state() in (None, "STOPPED"),
             "the agent to see the VM stopped", rig=rig)
    started_at = time.monotonic()
    rig.vm.start()
    rig.vm.wait_booted(BOOT_TIMEOUT)
    wait_for(lambda: rig.agent.registrations(rig.uuid) > registrations,
             "the guest to register again", timeout=BOOT_TIMEOUT, rig=rig)
    rig.wait_monitored()
    rig.figures["start after destroy -> MONITORED s"] = (
        time.monotonic() - started_at)
    assert_no_fault_since(rig, since, "destroy + start")


# -- (e) the agent killed and restarted while the guest runs -----------------

def test_agent_killed_and_restarted_resumes_without_fault(ready):
    rig = ready
    since = time.time()
    rig.agent.kill()
    time.sleep(INTERVAL)  # the guest notices nothing but silence
    ready_at = rig.agent.start().ready_at
    rig.wait_monitored(timeout=ARRIVAL)
    resumed = time.monotonic() - ready_at
    rig.figures["agent ready -> MONITORED again s"] = resumed
    assert resumed <= 2 * INTERVAL + 1.0, (
        "monitoring resumed %.2f s after the agent was back" % resumed)
    assert_no_fault_since(rig, since, "an agent restart")


# -- (f) the guest bundle, installed by the image element, runs in the VM -----

def test_bundle_installed_by_the_image_element_runs_in_the_vm(ready):
    """The diskimage-builder element (etc/guest-image) installs the bundle,
    its ini and its unit into a root; the VM runs that installed bundle in
    place of the checkout's daemon, and the agent monitors it."""
    rig = ready
    element = os.path.join(ROOT, "etc", "guest-image", "elements",
                           "guestha-guest")
    staging = os.path.join(rig.workdir, "hooks")
    root = os.path.join(rig.vm.vm_dir, "root")  # /run/vm/root in the guest
    env = dict(os.environ, TMP_HOOKS_PATH=staging, DIB_GUESTHA_REPO=ROOT)
    for script, extra in (("extra-data.d/50-guestha-guest", {}),
                          ("install.d/60-guestha-guest",
                           {"DESTDIR": root, "GUESTHA_GUEST_STAGING":
                            os.path.join(staging, "guestha-guest")})):
        result = subprocess.run(["bash", os.path.join(element, script)],
                                env=dict(env, **extra),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=120)
        assert result.returncode == 0, result.stdout
    assert os.path.exists(os.path.join(root, "usr/local/bin/guestha-guest"))

    since = time.time()
    registrations = rig.agent.registrations(rig.uuid)
    rig.vm.control("daemon_stop")  # the checkout's daemon says exit
    started = rig.vm.control("sh", args=(
        "cd / && nohup /usr/bin/python3 /run/vm/root/usr/local/bin/"
        "guestha-guest --config /run/vm/root/etc/guestha/guestha-guest.ini"
        " </dev/null >/run/vm/bundle.log 2>&1 & echo $!"))
    pid = int(started["out"].strip())
    try:
        wait_for(lambda: rig.agent.registrations(rig.uuid) > registrations,
                 "the installed bundle to register", timeout=60, rig=rig)
        rig.wait_monitored(more_answers=2)
        with open(os.path.join(rig.vm.vm_dir, "bundle.log")) as f:
            log = f.read()
        assert "registered as %s" % rig.uuid in log, log
    finally:
        # SIGTERM: the bundle says exit, then the usual daemon comes back
        rig.vm.control("sh", args="kill -TERM %d; sleep 1" % pid)
        rig.vm.control("daemon_start")
    rig.wait_monitored()
    assert rig.faults(since) == []
