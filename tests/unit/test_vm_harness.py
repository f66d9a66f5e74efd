"""tools/vm.py's libvirt connection handling: a connection that libvirtd
has dropped is replaced on the first call that fails on it, and only then.
"""

import libvirt
import pytest

from tools import vm as vmlib


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
