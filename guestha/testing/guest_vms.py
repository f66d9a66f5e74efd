# SPDX-License-Identifier: Apache-2.0
"""Real test VMs for guestha: a tiny Linux guest under QEMU, via libvirt.

A :class:`GuestVM` is a libvirt domain on ``qemu:///system`` (TCG, no KVM
needed) that boots in about ten seconds with no disk image at all:

* the kernel and initramfs built by ``tools/build-vm-assets.sh`` (cached
  outside the repository; :func:`build_assets` runs the script);
* the host's ``/`` shared read-only over 9p (tag ``hostroot``): the guest
  chroots into it and runs the host's own ``python3``;
* the checkout under test shared read-only over 9p (tag ``guestha_src``),
  at :data:`GUEST_REPO` in the guest, on ``PYTHONPATH``: the guest runs
  the guest daemon of this checkout, wherever the checkout lives on the
  host (``/tmp`` and ``/var/tmp`` are tmpfs in the guest; a path with a
  space could not go on the kernel command line);
* a per-VM host directory shared read-write over 9p (tag ``vmdir``,
  ``/run/vm`` in the guest): the guest daemon's configuration
  (``guestha-guest.ini``), its health hooks (``hooks/``) and the guest's
  logs (``guest.log``, ``control.log``), readable from the host while the
  VM runs;
* a virtio-serial controller, always (so the guestha channel can also be
  hot-plugged later, as the agent does under Nova);
* optionally the guestha channel, ``org.openstack.guestha.0``, a UNIX
  socket QEMU listens on (:attr:`GuestVM.channel_path`), where
  ``guestha-agent`` connects;
* optionally the test control channel, ``org.guestha.test.control.0``,
  served in the guest by ``tools/vm_guest_control.py``:
  :meth:`GuestVM.control` runs commands in the guest (the guest daemon's
  pid, signals, health on/off, reboot, any shell command);
* optionally the qemu guest agent channel, ``org.qemu.guest_agent.0``
  (``with_qemu_ga``): the guest then runs the host's ``qemu-ga`` from the
  9p root, and libvirt reports its AGENT_LIFECYCLE events
  (``qemu_ga_first`` puts it before the other channels: Masakari's
  introspective instance monitor looks at the first ``<channel>`` only);
* the serial console in ``console.log``;
* the Nova instance uuid as the domain uuid and Nova's ``<metadata>``
  (name, flavor, owner), as Nova writes them, so that the agent treats the
  domain as an instance.

Domain names start with :data:`PREFIX` and carry the pid of the process
that made them.  What removes them (issue 8): :meth:`GuestVM.close` (a
fixture's teardown, ``with``); at exit, every GuestVM not closed yet; when
the process is killed, its watchdog (``guestha/testing/processes.py``); and
:func:`cleanup_leftovers` (at the start of a session) the domains and work
directories of processes that are gone.

Typical use::

    from guestha.testing import guest_vms as vm

    vm.build_assets()
    with vm.GuestVM("demo", interval_ms=1000) as guest:
        guest.start()
        guest.wait_booted()
        print(guest.control("daemon_pid"))

Needs root (libvirtd's QEMU runs as root, see tools/libvirt-setup.sh) and
libvirt-python.
"""

import atexit
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
import weakref
from xml.sax.saxutils import escape
from xml.sax.saxutils import quoteattr

from guestha import pids
from guestha.testing.libvirt_domains import remove_domain
from guestha.testing import processes as proc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
URI = "qemu:///system"
#: Every domain and work directory made here starts with this.
PREFIX = "ghtest-"
GUESTHA_PORT = "org.openstack.guestha.0"
CONTROL_PORT = "org.guestha.test.control.0"
QEMU_GA_PORT = "org.qemu.guest_agent.0"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
#: The Nova owner written in the metadata.
TEST_USER = "00000000-0000-4000-8000-000000000001"
TEST_PROJECT = "00000000-0000-4000-8000-000000000002"
BUILD_SCRIPT = os.path.join(ROOT, "tools", "build-vm-assets.sh")
#: The guest's /dev/virtio-ports links; hashed with the build script.
PORTS_SCRIPT = os.path.join(ROOT, "tools", "guest", "virtio-ports.sh")
#: Where the guest sees the checkout (the ``guestha_src`` share): a fixed
#: path, never the host's, which the guest's tmpfs could hide.
GUEST_REPO = "/run/guestha-src"
#: The interpreter the guest runs (from the host's root over 9p): the
#: system's, not a virtualenv's or a pyenv shim.
GUEST_PYTHON = "/usr/bin/python3"


class VMError(Exception):
    """The VM or its control channel did not do what was asked."""


# -- assets -------------------------------------------------------------------

def cache_dir():
    """The asset cache of tools/build-vm-assets.sh."""
    return os.environ.get("GUESTHA_VM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "guestha", "vm")


def initramfs_name():
    """The cache's name of the initramfs this checkout's build script
    makes: ``initramfs-<hash>.img``, the hash of the script and of the
    ports script it installs (other checkouts, at other versions, keep
    theirs)."""
    h = hashlib.sha256()
    for path in (BUILD_SCRIPT, PORTS_SCRIPT):
        with open(path, "rb") as f:
            h.update(f.read())
    digest = h.hexdigest()
    return "initramfs-%s.img" % digest[:16]


def assets():
    """``(kernel, initramfs)`` paths in the cache, or None if not built."""
    current = os.path.join(cache_dir(), "current")
    kernel = os.path.join(current, "vmlinuz")
    initrd = os.path.join(current, initramfs_name())
    if os.path.exists(kernel) and os.path.exists(initrd):
        return os.path.realpath(kernel), os.path.realpath(initrd)
    return None


def build_assets(quiet=True):
    """Run tools/build-vm-assets.sh (quick when cached); returns
    :func:`assets`.

    :raises VMError: the script failed (its output is in the message).
    """
    result = subprocess.run(
        ["bash", BUILD_SCRIPT] + (["--quiet"] if quiet else []),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True)
    if result.returncode != 0:
        raise VMError("tools/build-vm-assets.sh failed (%d):\n%s"
                      % (result.returncode, result.stdout[-4000:]))
    found = assets()
    if found is None:
        raise VMError("tools/build-vm-assets.sh left no assets in %s"
                      % cache_dir())
    return found


# -- libvirt ------------------------------------------------------------------

def _libvirt():
    import libvirt

    # libvirt prints every error to stderr unless a handler is set
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt


def _is_connection_error(exc):
    """Whether a libvirtError says the connection, not the request, failed."""
    libvirt = _libvirt()
    return exc.get_error_code() in tuple(
        getattr(libvirt, name) for name in (
            "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_NO_CONNECT",
            "VIR_ERR_INVALID_CONN") if hasattr(libvirt, name))


def connect(uri=URI):
    """A libvirt connection (read-write)."""
    return _libvirt().open(uri)


def _owner_pid(name):
    """The pid in ``ghtest-<pid>-...``, or None."""
    if not name.startswith(PREFIX):
        return None
    head = name[len(PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def cleanup_leftovers(uri=URI, everything=False, tmpdir="/tmp"):
    """Remove test domains and work directories of processes that are gone
    (or all of them, with ``everything``).  Returns the names removed."""
    libvirt = _libvirt()
    removed = []
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            name = dom.name()
            pid = _owner_pid(name)
            if not name.startswith(PREFIX) or (
                    not everything and pid is not None and pids.alive(pid)):
                continue
            remove_domain(dom)
            removed.append(name)
    finally:
        conn.close()
    for entry in os.listdir(tmpdir):
        pid = _owner_pid(entry)
        if pid is None or (not everything and pids.alive(pid)):
            continue
        shutil.rmtree(os.path.join(tmpdir, entry), ignore_errors=True)
        removed.append(os.path.join(tmpdir, entry))
    return removed


# -- the VM -------------------------------------------------------------------

GUEST_INI = """\
# written by guestha/testing/guest_vms.py
[guestha]
name = {name}
interval_ms = {interval_ms}
corrective_action = {corrective_action}
log_level = {log_level}

[health]
hook_dir = /run/vm/hooks

[app_api]
enabled = true
socket = /run/guestha/app.sock
"""

#: The test health hook: fails while /run/ghtest/unhealthy exists (see
#: ``unhealthy`` in tools/vm_guest_control.py), its first line the reason.
HEALTH_HOOK = """\
#!/bin/sh
# written by guestha/testing/guest_vms.py: the switch of vm_guest_control.py's
# unhealthy
if [ -e /run/ghtest/unhealthy ]; then
    head -n 1 /run/ghtest/unhealthy
    exit 1
fi
exit 0
"""


#: GuestVMs not closed yet, closed at exit.
_open_vms = weakref.WeakSet()


@atexit.register
def _close_open_vms():
    for guest in list(_open_vms):
        try:
            guest.close()
        except Exception:  # noqa: BLE001 - at exit, best effort
            pass


class GuestVM(object):
    """One test VM (see the module docstring).

    :param name: a short label; the domain is ``ghtest-<pid>-<name>``.
    :param workdir: the host directory for sockets, console and the
        ``vm/`` share; default a new ``/tmp/ghtest-<pid>-<name>-XXXX``
        (short: UNIX socket paths are limited to 107 bytes).  Removed by
        :meth:`close` only if made here.
    :param with_channel: give the domain the guestha channel.
    :param with_control: give it the test control channel.
    :param with_qemu_ga: give it the qemu guest agent channel.
    :param qemu_ga_first: make that channel the domain's first one.
    :param memory_mib: at least 96 (the kernel and python need it).
    :param instance_uuid: the Nova instance uuid (default: a new one).
    :param interval_ms: the heartbeat interval the guest daemon asks for.
    :param extra_cmdline: appended to the kernel command line.
    :param repo: the checkout the guest runs, anywhere on the host: it is
        shared read-only as ``guestha_src`` and seen at :data:`GUEST_REPO`.
    """

    def __init__(self, name="vm", workdir=None, with_channel=True,
                 with_control=True, with_qemu_ga=False, memory_mib=128,
                 vcpus=1, qemu_ga_first=False,
                 instance_uuid=None, interval_ms=1000,
                 corrective_action="none", log_level="INFO",
                 flavor="m1.guestha", uri=URI, repo=ROOT,
                 python=GUEST_PYTHON, kernel=None, initrd=None,
                 extra_cmdline=""):
        if memory_mib < 96:
            raise ValueError("the test guest needs at least 96 MiB")
        self.label = name
        self.name = "%s%d-%s" % (PREFIX, os.getpid(), name)
        self.uuid = instance_uuid or str(uuidlib.uuid4())
        self.uri = uri
        self.repo = repo
        self.python = python
        self.memory_mib = memory_mib
        self.vcpus = vcpus
        self.with_channel = with_channel
        self.with_control = with_control
        self.with_qemu_ga = with_qemu_ga
        self.qemu_ga_first = qemu_ga_first
        self.flavor = flavor
        self.interval_ms = interval_ms
        self.extra_cmdline = extra_cmdline
        if kernel is None or initrd is None:
            found = assets()
            if found is None:
                raise VMError("no VM assets in %s: run tools/build-vm-"
                              "assets.sh (or vm.build_assets())"
                              % cache_dir())
            kernel, initrd = kernel or found[0], initrd or found[1]
        self.kernel = kernel
        self.initrd = initrd
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(
            prefix="%s-" % self.name, dir="/tmp")
        self.vm_dir = os.path.join(self.workdir, "vm")
        self.hook_dir = os.path.join(self.vm_dir, "hooks")
        self.channel_path = os.path.join(self.workdir, "guestha.sock")
        self.control_path = os.path.join(self.workdir, "control.sock")
        self.qemu_ga_path = os.path.join(self.workdir, "qemu-ga.sock")
        self.console_log = os.path.join(self.workdir, "console.log")
        os.makedirs(self.hook_dir, exist_ok=True)
        self.write_guest_config(interval_ms=interval_ms,
                                corrective_action=corrective_action,
                                log_level=log_level)
        hook = os.path.join(self.hook_dir, "50-test-switch")
        with open(hook, "w") as f:
            f.write(HEALTH_HOOK)
        os.chmod(hook, 0o755)
        self._conn = None
        self._sock = None
        self._rbuf = b""
        self._ids = itertools.count(1)
        self._nonce = uuidlib.uuid4().hex[:8]

    # -- files ---------------------------------------------------------------

    def write_guest_config(self, interval_ms=1000, corrective_action="none",
                           log_level="INFO", name=None):
        """(Re)write the guest daemon's configuration; it is read when the
        daemon starts."""
        self.interval_ms = interval_ms
        with open(os.path.join(self.vm_dir, "guestha-guest.ini"), "w") as f:
            f.write(GUEST_INI.format(
                name=name or self.label, interval_ms=interval_ms,
                corrective_action=corrective_action, log_level=log_level))

    def domain_xml(self):
        """The libvirt domain XML of this VM."""
        # no host path here: the checkout is the guestha_src share
        cmdline = ("console=ttyS0 loglevel=4 guestha.python=%s "
                   "guestha.hostname=%s %s" % (
                       self.python, self.label, self.extra_cmdline)).strip()
        channels = ""
        if self.with_qemu_ga and self.qemu_ga_first:
            channels += _channel(self.qemu_ga_path, QEMU_GA_PORT)
        if self.with_channel:
            channels += _channel(self.channel_path, GUESTHA_PORT)
        if self.with_control:
            channels += _channel(self.control_path, CONTROL_PORT)
        if self.with_qemu_ga and not self.qemu_ga_first:
            channels += _channel(self.qemu_ga_path, QEMU_GA_PORT)
        return DOMAIN_XML.format(
            name=escape(self.name), uuid=self.uuid,
            memory=self.memory_mib, vcpus=self.vcpus,
            nova=NOVA_METADATA.format(
                ns=NOVA_NS, name=escape(self.label),
                created=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                flavor=quoteattr(self.flavor), memory=self.memory_mib,
                vcpus=self.vcpus, user=TEST_USER, project=TEST_PROJECT),
            kernel=escape(self.kernel), initrd=escape(self.initrd),
            cmdline=escape(cmdline), vm_dir=quoteattr(self.vm_dir),
            repo=quoteattr(os.path.realpath(self.repo)),
            channels=channels, console=quoteattr(self.console_log))

    # -- libvirt --------------------------------------------------------------

    @property
    def conn(self):
        """This VM's libvirt connection, reopened if libvirtd restarted."""
        if self._conn is not None:
            try:
                alive = self._conn.isAlive()
            except _libvirt().libvirtError:
                alive = False
            if not alive:
                self._drop_conn()
        if self._conn is None:
            self._conn = connect(self.uri)
        return self._conn

    def _drop_conn(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except _libvirt().libvirtError:
                pass
            self._conn = None

    def _on_conn(self, call):
        """``call(conn)``, once more on a new connection if the first one
        turns out to be dead.

        isAlive() cannot tell a connection that libvirtd has already
        dropped: the first call on it fails ("Cannot write data: Broken
        pipe").  libvirtd drops an idle client that promised keepalive
        and does not answer its pings, which is what every connection of
        a process that registered libvirt's event loop without running
        it does (a test process that ran an in-process watcher earlier),
        and of course every connection when libvirtd restarts.
        """
        libvirt = _libvirt()
        try:
            return call(self.conn)
        except libvirt.libvirtError as exc:
            if not _is_connection_error(exc):
                raise
        self._drop_conn()
        return call(self.conn)

    def domain(self):
        """The libvirt domain object (looked up afresh)."""
        return self._on_conn(lambda conn: conn.lookupByUUIDString(self.uuid))

    def define(self):
        # from now on the domain goes with us: closed at exit, and by our
        # watchdog should we be killed
        proc.guard_domains("%s%d-" % (PREFIX, os.getpid()))
        _open_vms.add(self)
        self._on_conn(lambda conn: conn.defineXML(self.domain_xml()))
        return self

    def start(self):
        """Define the domain if needed and start it."""
        libvirt = _libvirt()
        try:
            dom = self.domain()
        except libvirt.libvirtError:
            self.define()
            dom = self.domain()
        self.disconnect_control()
        dom.create()
        return self

    def is_active(self):
        """Whether the domain runs; False if it does not exist.  A
        libvirt that cannot be asked raises (it is not an answer)."""
        libvirt = _libvirt()
        try:
            return bool(self.domain().isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    def suspend(self):
        self.domain().suspend()

    def resume(self):
        self.domain().resume()

    def destroy(self):
        """Pull the plug (no-op if not running)."""
        libvirt = _libvirt()
        self.disconnect_control()
        try:
            dom = self.domain()
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass

    def undefine(self):
        libvirt = _libvirt()
        try:
            self.domain().undefine()
        except libvirt.libvirtError:
            pass

    def close(self):
        """Destroy and undefine the domain, remove the work directory if it
        was made here.  Safe to call twice."""
        _open_vms.discard(self)
        try:
            self.destroy()
            self.undefine()
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - best effort
                    pass
                self._conn = None
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- the control channel --------------------------------------------------

    def disconnect_control(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._rbuf = b""

    def _connect_control(self):
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.control_path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self._rbuf = b""
        return self._sock

    def control(self, cmd, timeout=10.0, **args):
        """Run ``cmd`` in the guest (tools/vm_guest_control.py): returns the
        answer (a dict, ``"ok"`` true).

        :raises VMError: the guest refused the command (its ``error``), or
            did not answer within ``timeout`` seconds.
        """
        if not self.with_control:
            raise VMError("%s has no control channel" % self.name)
        req_id = "%s-%d" % (self._nonce, next(self._ids))
        request = dict(args, id=req_id, cmd=cmd,
                       expires=time.time() + timeout)
        line = json.dumps(request).encode() + b"\n"
        deadline = time.monotonic() + timeout
        try:
            sock = self._connect_control()
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.sendall(line)
            while True:
                while b"\n" in self._rbuf:
                    raw, self._rbuf = self._rbuf.split(b"\n", 1)
                    try:
                        reply = json.loads(raw.decode("utf-8"))
                    except ValueError:
                        continue
                    if isinstance(reply, dict) and reply.get("id") == req_id:
                        if not reply.get("ok"):
                            raise VMError("%s in %s failed: %s" % (
                                cmd, self.name, reply.get("error")))
                        return reply
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("control socket closed")
                self._rbuf += data
        except (socket.timeout, TimeoutError):
            raise VMError("%s: no answer to %r within %.1f s" % (
                self.name, cmd, timeout))
        except OSError as exc:
            self.disconnect_control()
            raise VMError("%s: control channel: %s" % (self.name, exc))

    def wait_booted(self, timeout=120.0, boot_id=None):
        """Wait until the control program answers (with a boot id other
        than ``boot_id``, to wait for a reboot): returns the ping answer,
        plus ``"waited"`` (seconds).

        :raises VMError: not within ``timeout``, or the domain stopped.
        """
        start = time.monotonic()
        deadline = start + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                answer = self.control("ping", timeout=min(
                    2.0, max(0.1, deadline - time.monotonic())))
                if boot_id is None or answer["boot_id"] != boot_id:
                    answer["waited"] = time.monotonic() - start
                    return answer
            except VMError as exc:
                last = exc
                if not self.is_active():
                    raise VMError("%s is not running:\n%s" % (
                        self.name, self.console_tail()))
                # a refused connect returns at once: do not spin
                time.sleep(0.2)
        raise VMError("%s did not boot within %.0f s (%s)\n--- console "
                      "---\n%s" % (self.name, timeout, last,
                                   self.console_tail()))

    # -- logs -----------------------------------------------------------------

    def _tail(self, path, chars):
        try:
            with open(path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError as exc:
            return "(%s)" % exc

    def console_tail(self, chars=3000):
        return self._tail(self.console_log, chars)

    def guest_log_tail(self, chars=3000):
        """The guest daemon's log (``/run/vm/guest.log`` in the guest)."""
        return self._tail(os.path.join(self.vm_dir, "guest.log"), chars)

    def control_log_tail(self, chars=2000):
        return self._tail(os.path.join(self.vm_dir, "control.log"), chars)

    def diagnostics(self, chars=2500):
        return "\n".join([
            "--- %s console ---" % self.name, self.console_tail(chars),
            "--- guest daemon log ---", self.guest_log_tail(chars),
            "--- control log ---", self.control_log_tail(chars)])


def _channel(path, port):
    return ("\n    <channel type='unix'>\n"
            "      <source mode='bind' path=%s/>\n"
            "      <target type='virtio' name='%s'/>\n"
            "    </channel>" % (quoteattr(path), port))


NOVA_METADATA = """\
    <nova:instance xmlns:nova="{ns}">
      <nova:package version="guestha-test"/>
      <nova:name>{name}</nova:name>
      <nova:creationTime>{created}</nova:creationTime>
      <nova:flavor name={flavor}>
        <nova:memory>{memory}</nova:memory>
        <nova:disk>0</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>{vcpus}</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{user}">test</nova:user>
        <nova:project uuid="{project}">test</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="00000000-0000-4000-8000-000000000003"/>
    </nova:instance>"""

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
{nova}
  </metadata>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <source dir={repo}/>
      <target dir='guestha_src'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir={vm_dir}/>
      <target dir='vmdir'/>
    </filesystem>
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'/>{channels}
    <serial type='file'>
      <source path={console} append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={console} append='on'/>
      <target type='serial' port='0'/>
    </console>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""
