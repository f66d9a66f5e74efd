# SPDX-License-Identifier: Apache-2.0
"""The libvirt watcher against a real libvirtd and real QEMU domains.

Needs root and ``bash tools/libvirt-setup.sh`` (which ``tools/setup.sh``
runs as root): libvirtd on ``qemu:///system`` with QEMU running as root
(else each start takes ~52 s here).  Without it these tests are skipped,
except in CI (``CI`` set), where that is a failure.

The domains are tiny and diskless, under TCG (KVM does not work on this
kind of machine): 64 MiB, no kernel, QEMU idles in the firmware.  Nobody
answers on the channel, which these tests do not need.  Their names start
with ``guestha-test-``; they are removed afterwards, and leftovers of an
interrupted run are removed first.
"""

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid as uuidlib

import libvirt
import pytest

from guestha.agent import events as ev
from guestha.agent import virt
from guestha.testing.libvirt_domains import remove_domain
from tests.fakes.loop import RecordingLoop

pytestmark = pytest.mark.libvirt

URI = "qemu:///system"
PREFIX = "guestha-test-"
EVENT_TIMEOUT = 2.0  # what the agent needs: events within 2 s

DOMAIN_XML = """<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>%(devices)s</devices>
</domain>"""


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _open():
    return libvirt.open(URI)


def _cleanup_leftovers(conn):
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX):
            remove_domain(dom)


@pytest.fixture(scope="module")
def qemu():
    """A connection to libvirtd's QEMU driver, for the tests' own calls."""
    virt.register_event_impl()
    try:
        conn = _open()
        conn.getVersion()
    except libvirt.libvirtError as exc:
        message = ("libvirtd with QEMU is not available on %s (%s): run "
                   "tools/libvirt-setup.sh as root" % (URI, exc))
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    _cleanup_leftovers(conn)
    yield conn
    try:
        _cleanup_leftovers(_open())
    except libvirt.libvirtError:
        pass


@pytest.fixture
def define(qemu):
    """Defines test domains; destroys and undefines them afterwards."""
    names = []

    def define(controller=True, start=True):
        name = "%s%s" % (PREFIX, uuidlib.uuid4().hex[:8])
        devices = "<controller type='virtio-serial'/>" if controller else ""
        dom = _open().defineXML(DOMAIN_XML % {
            "name": name, "uuid": uuidlib.uuid4(), "devices": devices})
        names.append(name)
        if start:
            dom.create()
        return dom

    yield define
    for name in names:
        try:
            remove_domain(_open().lookupByName(name))
        except libvirt.libvirtError:
            pass  # already gone


@pytest.fixture
def socket_dir():
    # short, unlike pytest's tmp_path: a UNIX socket path has 107 bytes
    path = tempfile.mkdtemp(prefix="guestha-sock-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def watching(qemu):
    loop = RecordingLoop()
    watcher = virt.LibvirtWatcher(URI, loop.post, keepalive_interval=1,
                                  keepalive_count=3, reconnect_interval=0.5,
                                  reconcile_interval=3600)
    watcher.start()
    try:
        loop.wait_for(lambda r: isinstance(r, ev.Reconciled), timeout=10)
        yield watcher, loop
    finally:
        watcher.stop()
        assert not watcher._thread.is_alive()


def update_of(uuid, state=None):
    return lambda r: (isinstance(r, ev.DomainUpdate)
                      and r.info.uuid == uuid
                      and (state is None or r.info.state == state))


def timed(loop, action, predicate):
    """Run ``action``; wait for a matching record within EVENT_TIMEOUT.

    :returns: ``(record, ms from the call to the record, ms of the call)``.
    """
    mark = loop.mark()
    started = time.monotonic()
    action()
    returned = time.monotonic()
    arrived, record = loop.wait_for(predicate, timeout=EVENT_TIMEOUT,
                                    since=mark)
    return (record, (arrived - started) * 1000,
            (returned - started) * 1000)


def test_lifecycle_events_arrive_normalised(define, watching,
                                            record_property):
    watcher, loop = watching
    dom = define(start=False)
    uuid = dom.UUIDString()

    started, started_ms, _ = timed(loop, dom.create,
                                   update_of(uuid, ev.RUNNING))
    assert started.event.startswith("lifecycle:")
    assert started.info.has_serial_controller is True
    assert started.info.channel_path is None

    paused, paused_ms, _ = timed(loop, dom.suspend,
                                 update_of(uuid, ev.PAUSED))
    assert paused.event == "lifecycle:suspended:paused"
    watcher.request_state(uuid, "while-paused")
    _, state = loop.wait_for(lambda r: isinstance(r, ev.DomainState))
    assert (state.state, state.token) == (ev.PAUSED, "while-paused")

    resumed, resumed_ms, _ = timed(loop, dom.resume,
                                   update_of(uuid, ev.RUNNING))
    assert resumed.event == "lifecycle:resumed:unpaused"

    # a guest reboot (QEMU's reset) keeps the domain running
    rebooted, _, _ = timed(loop, dom.reset, lambda r: update_of(uuid)(r)
                           and r.event == "reboot")
    assert rebooted.info.state == ev.RUNNING

    gone, gone_ms, destroy_ms = timed(
        loop, dom.destroy,
        lambda r: isinstance(r, ev.DomainGone) and r.uuid == uuid)
    assert gone.event.startswith("lifecycle:")

    for name, value in (("start", started_ms), ("suspend", paused_ms),
                        ("resume", resumed_ms), ("destroy", gone_ms),
                        ("destroy_call", destroy_ms)):
        record_property("event_%s_ms" % name, round(value, 1))


def test_hotplug_of_the_channel_into_a_running_domain(
        define, watching, socket_dir, record_property):
    watcher, loop = watching
    dom = define()
    uuid = dom.UUIDString()
    path = os.path.join(socket_dir, "%s.sock" % uuid)

    result, hotplug_ms, _ = timed(
        loop, lambda: watcher.request_hotplug(uuid, path),
        lambda r: isinstance(r, ev.HotplugResult))

    assert (result.uuid, result.outcome, result.channel_path) == (
        uuid, "attached", path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)  # QEMU listens; nobody in the guest answers
    # libvirt's own DEVICE_ADDED event also re-reads the domain
    _, added = loop.wait_for(lambda r: update_of(uuid)(r)
                             and r.event.startswith("device_added:"))
    assert added.info.channel_path == path
    # a second request finds the channel there
    watcher.request_hotplug(uuid, path)
    _, again = loop.wait_for(lambda r: isinstance(r, ev.HotplugResult)
                             and r is not result)
    assert (again.outcome, again.message) == (
        "attached", "the domain already has the channel")

    # the live device goes with the domain, socket file included
    timed(loop, dom.destroy,
          lambda r: isinstance(r, ev.DomainGone) and r.uuid == uuid)
    assert not os.path.exists(path)
    record_property("hotplug_ms", round(hotplug_ms, 1))


def test_hotplug_without_a_controller_says_what_fixes_it(
        define, watching, socket_dir):
    watcher, loop = watching
    dom = define(controller=False)
    uuid = dom.UUIDString()
    path = os.path.join(socket_dir, "%s.sock" % uuid)

    watcher.request_hotplug(uuid, path)
    _, result = loop.wait_for(lambda r: isinstance(r, ev.HotplugResult))

    assert result.outcome == "no_controller"
    assert "hw_qemu_guest_agent=yes" in result.message
    assert not os.path.exists(path)
    # and that is indeed what libvirt would have said
    with pytest.raises(libvirt.libvirtError,
                       match="virtio-serial controller"):
        dom.attachDeviceFlags(
            "<channel type='unix'><source mode='bind' path='%s'/>"
            "<target type='virtio' name='org.openstack.guestha.0'/>"
            "</channel>" % path, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def _libvirtd_pid():
    out = subprocess.run(["pgrep", "-x", "libvirtd"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.split()
    return int(out[0]) if out else None


def _start_libvirtd(timeout=60):
    if _libvirtd_pid() is None:
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _open().getVersion()
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_libvirtd_restart(define, watching, record_property):
    watcher, loop = watching
    uuids = {define().UUIDString() for _ in range(3)}
    pid = _libvirtd_pid()
    assert pid is not None
    mark = loop.mark()
    try:
        killed = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        down_at, down = loop.wait_for(
            lambda r: isinstance(r, ev.LibvirtStatus), since=mark,
            timeout=EVENT_TIMEOUT)
        assert (down.connected, down.uri) == (False, URI)
        for _ in range(100):  # gone for good before it is started again
            if _libvirtd_pid() != pid:
                break
            time.sleep(0.05)
        subprocess.run(["libvirtd", "-d"], check=True)
        up_at, up = loop.wait_for(
            lambda r: isinstance(r, ev.LibvirtStatus) and r.connected,
            since=mark, timeout=60)
        _, reconciled = loop.wait_for(
            lambda r: isinstance(r, ev.Reconciled), since=mark, timeout=10)
    finally:
        _start_libvirtd()

    # the domains ran on while libvirtd was away, and the reconcile says so
    assert uuids <= reconciled.uuids
    statuses = [r.connected for r in loop.since(mark, ev.LibvirtStatus)]
    assert statuses == [False, True]
    assert all(update_of(u, ev.RUNNING)(r) for u in uuids
               for r in loop.since(mark, ev.DomainUpdate)
               if r.info.uuid == u)
    record_property("libvirtd_down_noticed_ms",
                    round((down_at - killed) * 1000, 1))
    record_property("libvirtd_back_ms", round((up_at - killed) * 1000))
    record_property("reconcile_ms_%d_domains" % watcher.last_reconcile[0],
                    round(watcher.last_reconcile[1] * 1000, 2))
