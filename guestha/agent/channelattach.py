# SPDX-License-Identifier: Apache-2.0
"""Hot-plugging the guestha channel into a running domain, in the libvirt
watcher's thread, answered by a posted
:class:`~guestha.agent.events.HotplugResult`.

Whether to hot-plug is decided elsewhere (:mod:`guestha.agent.hotplug`);
this reads the live domain, checks that it runs, lacks the channel and has
a virtio-serial controller (QEMU cannot hot-plug one), creates the socket's
directory, and attaches the channel with ``attachDeviceFlags`` on the live
domain.
"""

import logging
import os
import time

import libvirt

from guestha.agent import domain
from guestha.agent import domainreader
from guestha.agent import events as ev

# The watcher's logger: these are the watcher's messages, as before the
# hot-plug had a class of its own.
LOG = logging.getLogger("guestha.agent.virt")

#: What to tell the operator when a domain has no virtio-serial controller.
NO_CONTROLLER_MESSAGE = (
    "the domain has no virtio-serial controller, so the guestha channel "
    "cannot be hot-plugged (QEMU cannot hot-plug a controller). Fix: set "
    "the image property hw_qemu_guest_agent=yes (Nova then defines the "
    "domain with a virtio-serial controller for the guest agent's channel), "
    "or use a flavor or image that gives it any virtio channel, and rebuild "
    "or re-create the instance")


class ChannelAttacher(object):
    """Attaches the guestha channel to the domains of ``link``'s
    connection.

    :param link: the :class:`~guestha.agent.libvirtconn.LibvirtConnection`.
    :param reader: the :class:`~guestha.agent.domainreader.DomainReader`
        that posts the domain as it is after the attach.
    :param post: hands a record to the agent's loop.
    :param clock: the monotonic clock for the records' ``at``.
    """

    def __init__(self, link, reader, post, clock=time.monotonic):
        self._link = link
        self._reader = reader
        self._post = post
        self._clock = clock

    def attach(self, uuid, path):
        """Add the channel, its socket at ``path``, to domain ``uuid``.

        :returns: True if the connection was lost on the way: ask again
            after the reconnect (nothing was posted).
        """
        at = self._clock()

        def result(outcome, message, channel_path=None):
            self._post(ev.HotplugResult(uuid, outcome, message, channel_path,
                                        self._clock()))

        try:
            dom = self._link.conn.lookupByUUIDString(uuid)
            state, reason = dom.state()
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                result("error", "the domain no longer exists")
            elif self._link.failed(exc, "reading the domain", uuid):
                return True
            else:
                result("error", "cannot read the domain: %s" % exc)
            return False
        if state == domain.SHUTOFF:
            result("error", "the domain is not running")
            return False
        info = domainreader.parse(uuid, xml, state, reason)
        if info is None:
            result("error", "cannot parse the domain XML")
            return False
        if info.channel_path:
            result("attached", "the domain already has the channel",
                   info.channel_path)
            self._post(ev.DomainUpdate(info, "hotplug", at))
            return False
        if not info.has_serial_controller:
            LOG.warning("instance %s: cannot hot-plug the guestha channel: "
                        "%s", uuid, NO_CONTROLLER_MESSAGE)
            result("no_controller", NO_CONTROLLER_MESSAGE)
            return False
        try:
            # QEMU creates the socket; its directory must exist
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            result("error", "cannot create the socket directory: %s" % exc)
            return False
        started = time.monotonic()
        try:
            dom.attachDeviceFlags(domain.channel_xml(path),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if "virtio-serial controller" in str(exc):
                # the controller went away, or this libvirt counts it
                # differently than the XML said
                result("no_controller", NO_CONTROLLER_MESSAGE)
            elif self._link.failed(exc, "attaching the channel", uuid):
                return True
            else:
                result("error", "libvirt could not attach the channel: %s"
                       % exc)
            return False
        elapsed = time.monotonic() - started
        LOG.info("instance %s: guestha channel hot-plugged at %s in %.0f ms",
                 uuid, path, elapsed * 1000)
        result("attached", "attached in %.0f ms" % (elapsed * 1000), path)
        # libvirt also sends DEVICE_ADDED; posting now does not depend on it
        self._reader.refresh(dom, uuid, "hotplug", None, self._clock())
        return False
