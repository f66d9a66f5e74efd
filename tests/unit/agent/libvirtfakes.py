# SPDX-License-Identifier: Apache-2.0
"""A libvirt connection and domains in memory, for the unit tests of the
libvirt watcher's parts: they answer as libvirt-python does, errors
included, and fail where a test says.  The functional tests use real
libvirt (tests/functional/test_virt_*.py)."""

import libvirt

from guestha.agent import libvirtconn
from tests.unit.agent.test_domain import CONTROLLER
from tests.unit.agent.test_domain import domain_xml
from tests.unit.agent.test_domain import GUESTHA_CHANNEL


def error(code, message="failed"):
    """A libvirtError with ``code``, as libvirt-python raises it."""
    exc = libvirt.libvirtError(message)
    # what libvirt-python fills in from virGetLastError()
    exc.err = (code, libvirt.VIR_FROM_RPC, message, libvirt.VIR_ERR_ERROR,
               None, None, None, -1, -1)
    return exc


def gone():
    return error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")


def broken():
    return error(libvirt.VIR_ERR_SYSTEM_ERROR, "Broken pipe")


class FakeDomain(object):
    """A domain; ``fail`` maps a method name to the error it raises."""

    def __init__(self, uuid, devices=CONTROLLER + GUESTHA_CHANNEL,
                 state=libvirt.VIR_DOMAIN_RUNNING, reason=1):
        self.uuid = uuid
        self.devices = devices
        self.state_reason = (state, reason)
        self.fail = {}
        self.attached = []

    def _maybe_fail(self, name):
        if name in self.fail:
            raise self.fail[name]

    def UUIDString(self):
        return self.uuid

    def state(self):
        self._maybe_fail("state")
        return list(self.state_reason)

    def XMLDesc(self, flags):
        self._maybe_fail("XMLDesc")
        return domain_xml(self.devices, uuid=self.uuid)

    def attachDeviceFlags(self, xml, flags):
        self._maybe_fail("attachDeviceFlags")
        self.attached.append((xml, flags))
        self.devices += xml


class FakeConn(object):
    """A connection to ``domains``; ``fail`` maps a method name to the
    error it raises; ``alive`` is what isAlive() says."""

    def __init__(self, *domains):
        self.domains = {d.uuid: d for d in domains}
        self.fail = {}
        self.alive = True
        self.closed = False
        self.keepalive = None
        self.close_callback = None
        self.callbacks = {}   # id -> (event id, callback)

    def _maybe_fail(self, name):
        if name in self.fail:
            raise self.fail[name]

    def isAlive(self):
        self._maybe_fail("isAlive")
        return self.alive

    def setKeepAlive(self, interval, count):
        self._maybe_fail("setKeepAlive")
        self.keepalive = (interval, count)

    def registerCloseCallback(self, callback, opaque):
        self.close_callback = callback

    def unregisterCloseCallback(self):
        self.close_callback = None

    def domainEventRegisterAny(self, dom, event_id, callback, opaque):
        if event_id in self.fail:
            raise self.fail[event_id]
        ident = len(self.callbacks) + 1
        self.callbacks[ident] = (event_id, callback)
        return ident

    def domainEventDeregisterAny(self, ident):
        del self.callbacks[ident]

    def listAllDomains(self, flags):
        self._maybe_fail("listAllDomains")
        return [d for d in self.domains.values()
                if d.state_reason[0] != libvirt.VIR_DOMAIN_SHUTOFF]

    def lookupByUUIDString(self, uuid):
        self._maybe_fail("lookupByUUIDString")
        try:
            return self.domains[uuid]
        except KeyError:
            raise gone() from None

    def close(self):
        self.closed = True
        return 0


def link_to(conn, post=None):
    """A real LibvirtConnection, already connected to ``conn``."""
    link = libvirtconn.LibvirtConnection(
        "test:///unit", post if post is not None else (lambda record: None))
    link.conn = conn
    return link
