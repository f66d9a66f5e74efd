# SPDX-License-Identifier: Apache-2.0
"""guestha/testing/guest_vms.py's libvirt connection handling: a connection
that libvirtd has dropped is replaced on the first call that fails on it, and
only then.
"""

import libvirt
import pytest

from guestha.testing import guest_vms as vmlib


def _error(code, message):
    exc = libvirt.libvirtError(message)
    # what libvirt-python fills in from virGetLastError()
    exc.err = (code, libvirt.VIR_FROM_RPC, message, libvirt.VIR_ERR_ERROR,
               None, None, None, -1, -1)
    return exc


class FakeDomain(object):
    def __init__(self, active):
        self.active = active

    def isActive(self):
        return self.active


class FakeConn(object):
    """Answers lookups with ``answers`` in turn (an exception is raised);
    isAlive() says yes, as it does for a connection libvirtd dropped
    before the client noticed."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.lookups = 0
        self.closed = False

    def isAlive(self):
        return not self.closed

    def lookupByUUIDString(self, uuid):
        self.lookups += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        self.closed = True


@pytest.fixture
def guest(tmp_path, monkeypatch):
    conns = []

    def connect(uri):
        return conns.pop(0)

    monkeypatch.setattr(vmlib, "connect", connect)
    guest = vmlib.GuestVM(name="unit", workdir=str(tmp_path),
                          kernel="/nonexistent/vmlinuz",
                          initrd="/nonexistent/initrd")
    return guest, conns


def test_dropped_connection_is_replaced_and_the_call_repeated(guest):
    vm, conns = guest
    dead = FakeConn(_error(libvirt.VIR_ERR_SYSTEM_ERROR,
                           "Cannot write data: Broken pipe"))
    fresh = FakeConn(FakeDomain(active=True), FakeDomain(active=True))
    conns.extend([dead, fresh])
    assert vm.is_active() is True
    assert (dead.lookups, dead.closed, fresh.lookups) == (1, True, 1)
    # the new connection is kept for the next call
    assert vm.is_active() is True
    assert fresh.lookups == 2 and conns == []


def test_missing_domain_is_not_a_dead_connection(guest):
    vm, conns = guest
    conn = FakeConn(_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found"))
    conns.append(conn)
    assert vm.is_active() is False
    assert (conn.lookups, conn.closed) == (1, False)


def test_a_libvirtd_that_cannot_be_reached_is_an_error_not_an_answer(guest):
    vm, conns = guest
    broken = _error(libvirt.VIR_ERR_SYSTEM_ERROR, "Broken pipe")
    conns.extend([FakeConn(broken), FakeConn(broken)])
    with pytest.raises(libvirt.libvirtError) as raised:
        vm.is_active()
    assert raised.value is broken


# -- any checkout location (issue 8) ------------------------------------------
#
# The guest mounts tmpfs on its /tmp, /var/tmp and /run, and the kernel
# command line splits on spaces: a checkout the guest looked up at its host
# path under /tmp (or with a space in it) was hidden, and the VM never
# booted ("did not boot within 120 s").

import os  # noqa: E402
import re  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402

CHECKOUTS = ["/tmp/x/guestha", "/var/tmp/guestha", "/srv/my work/guestha",
             "/home/u/" + "long-directory-name/" * 12 + "guestha"]


def _init_script():
    """The guest's /init, as tools/build-vm-assets.sh writes it."""
    with open(vmlib.BUILD_SCRIPT) as f:
        text = f.read()
    return text.split("cat > \"$r/init\" <<'INIT'\n", 1)[1].split(
        "\nINIT\n", 1)[0]


def _mounts(script):
    """``[(fstype, source, guest path)]`` of the chroot's mounts in
    order, ``$N`` (the new root) dropped and ``$SRC`` expanded."""
    src = re.search(r'^SRC=(\S+)$', script, re.M)
    src = src.group(1) if src else "$SRC"
    joined = script.replace("\\\n", " ")
    found = []
    for match in re.finditer(
            r'mount\s+-t\s+(\S+)(?:\s+-o\s+\S+)?\s+(\S+)\s+"\$N([^"]*)"',
            joined):
        path = match.group(3).replace("$SRC", src) or "/"
        found.append((match.group(1), match.group(2), path))
    return found


def _hidden_by_a_later_mount(mounts, index):
    """Whether a mount after ``mounts[index]`` covers its path."""
    path = mounts[index][2]
    return any(path == later or path.startswith(later.rstrip("/") + "/")
               for _, _, later in mounts[index + 1:])


@pytest.mark.parametrize("checkout", CHECKOUTS)
def test_the_checkout_is_shared_by_itself_not_looked_up_at_its_host_path(
        tmp_path, checkout):
    vm = vmlib.GuestVM(name="unit", workdir=str(tmp_path), repo=checkout,
                       kernel="/nonexistent/vmlinuz",
                       initrd="/nonexistent/initrd")
    domain = ET.fromstring(vm.domain_xml())
    shares = {fs.find("target").get("dir"): fs
              for fs in domain.iter("filesystem")}
    src = shares.get("guestha_src")
    assert src is not None, sorted(shares)
    assert src.find("source").get("dir") == os.path.realpath(checkout)
    assert src.find("readonly") is not None
    # nothing of the host's path goes on the kernel command line
    cmdline = domain.find("os/cmdline").text
    assert "guestha.repo" not in cmdline and checkout not in cmdline


def test_the_guest_runs_the_checkout_from_its_share_at_a_fixed_path():
    script = _init_script()
    mounts = _mounts(script)
    shared = [i for i, m in enumerate(mounts) if m[1] == "guestha_src"]
    assert len(shared) == 1, mounts
    index = shared[0]
    assert mounts[index][0] == "9p"
    assert mounts[index][2] == vmlib.GUEST_REPO
    # mounted after the tmpfs on /run, and hidden by nothing after it
    assert not _hidden_by_a_later_mount(mounts, index), mounts
    # ... and what the launcher runs
    launcher = script.split("cat > /bin/ghvm-launch <<EOF", 1)[1].split(
        "\nEOF", 1)[0]
    assert "PYTHONPATH=$REPO" in launcher
    assert "$REPO/tools/vm_guest_control.py" in launcher
    assert re.search(r"^\s+REPO=\$SRC$", script, re.M)


@pytest.mark.parametrize("guest_path", ["/tmp/x/guestha", "/var/tmp/g",
                                        "/srv/guestha"])
def test_the_init_model_sees_tmpfs_hide_the_guest_tmp(guest_path):
    """The check above can fail: a path under one of the guest's tmpfs
    mounts (the host path the guest used to look up) is hidden."""
    mounts = [m for m in _mounts(_init_script()) if m[0] == "tmpfs"]
    mounts.insert(0, ("9p", "hostroot", "/"))
    mounts.insert(1, ("9p", "probe", guest_path))
    hidden = _hidden_by_a_later_mount(mounts, 1)
    assert hidden is guest_path.startswith(("/tmp/", "/var/tmp/"))


def test_the_initramfs_is_named_by_the_build_script_version(tmp_path,
                                                            monkeypatch):
    """A checkout at another version sharing the cache keeps its own
    initramfs: vm.py boots the one its build script made."""
    monkeypatch.setenv("GUESTHA_VM_CACHE", str(tmp_path))
    kdir = tmp_path / "6.1.0-test"
    kdir.mkdir()
    (tmp_path / "current").symlink_to("6.1.0-test")
    (kdir / "vmlinuz").write_bytes(b"k")
    (kdir / "initramfs.img").write_bytes(b"another version's")
    assert vmlib.assets() is None
    name = vmlib.initramfs_name()
    assert re.match(r"^initramfs-[0-9a-f]{16}\.img$", name)
    (kdir / name).write_bytes(b"ours")
    assert vmlib.assets() == (str(kdir / "vmlinuz"), str(kdir / name))
