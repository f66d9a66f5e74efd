# SPDX-License-Identifier: Apache-2.0
"""The libvirt watcher's connection: opened, kept alive, noticed lost, and
opened again.

Used only from the watcher's thread (:mod:`guestha.agent.virt`), which
runs libvirt's event loop: that loop answers the keepalive probes and
delivers the close notice.  When libvirtd goes away (the close callback,
or a call failing on a dead connection: :meth:`LibvirtConnection.failed`)
the connection is marked lost; the watcher then drops it, which posts
``LibvirtStatus(connected=False)`` once, and tries again every
``reconnect_interval``; a success posts ``LibvirtStatus(connected=True)``.
"""

import logging
import time

import libvirt

from guestha.agent import events as ev

# The watcher's logger: these are the watcher's messages, as before the
# connection had a class of its own.
LOG = logging.getLogger("guestha.agent.virt")

# Errors that mean the connection, not the request, failed.  Others are
# checked with isAlive(): a dead remote connection reports a variety.
_CONNECTION_ERRORS = frozenset(
    getattr(libvirt, name) for name in (
        "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_NO_CONNECT",
        "VIR_ERR_INVALID_CONN", "VIR_ERR_AUTH_FAILED",
        "VIR_ERR_AUTH_CANCELLED") if hasattr(libvirt, name))

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error on the socket",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}


class LibvirtConnection(object):
    """One libvirt connection, kept open.

    :param uri: the libvirt URI.
    :param post: hands a record to the agent's loop.
    :param keepalive_interval: seconds between keepalive probes (0: none).
    :param keepalive_count: unanswered probes before the connection counts
        as lost.
    :param reconnect_interval: seconds between reconnection attempts.
    :param clock: the monotonic clock for the records' ``at`` and for the
        next attempt.
    :param open: opens a connection (``libvirt.open``; tests pass a fake).
    """

    def __init__(self, uri, post, keepalive_interval=5, keepalive_count=3,
                 reconnect_interval=5.0, clock=time.monotonic,
                 open=libvirt.open):
        self.uri = uri
        self._post = post
        self.keepalive_interval = keepalive_interval
        self.keepalive_count = keepalive_count
        self.reconnect_interval = reconnect_interval
        self._clock = clock
        self._open = open
        #: the open connection, or None
        self.conn = None
        #: why the connection was lost, until it is dropped; else None
        self.lost = None
        #: no connection attempt before this (clock seconds)
        self.next_connect = 0.0
        self._callback_ids = []
        self._down_reported = False

    @property
    def usable(self):
        """True if open and not known to be lost."""
        return self.conn is not None and self.lost is None

    def connect(self, now, callbacks):
        """Open the connection and register ``callbacks`` on it.

        :param callbacks: ``(event id, callback, optional)`` triples for
            ``domainEventRegisterAny``; ``optional`` is None, or what the
            events are called, for the log, if this libvirt may refuse
            them (then they are left out; an event id this libvirt does
            not know is None).
        :returns: True if connected.
        """
        conn = None
        try:
            conn = self._open(self.uri)
            self._set_up(conn, callbacks)
        except libvirt.libvirtError as exc:
            if conn is not None:
                self._close_quietly(conn)
            self.next_connect = now + self.reconnect_interval
            if not self._down_reported:
                self._down_reported = True
                LOG.warning("cannot connect to libvirt at %s: %s; retrying "
                            "every %g s", self.uri, exc,
                            self.reconnect_interval)
                self._post(ev.LibvirtStatus(False, self.uri, now, str(exc)))
            else:
                LOG.debug("libvirt at %s still unavailable: %s", self.uri,
                          exc)
            return False
        self.conn = conn
        self.lost = None
        self._down_reported = False
        LOG.info("connected to libvirt at %s", self.uri)
        self._post(ev.LibvirtStatus(True, self.uri, self._clock(), None))
        return True

    def _set_up(self, conn, callbacks):
        if self.keepalive_interval > 0:
            try:
                conn.setKeepAlive(self.keepalive_interval,
                                  self.keepalive_count)
            except libvirt.libvirtError as exc:
                # local drivers (test:///, qemu:///embed) have no keepalive
                LOG.debug("no keepalive on %s: %s", self.uri, exc)
        conn.registerCloseCallback(self.on_close, None)
        self._callback_ids = []
        for event_id, callback, optional in callbacks:
            if not optional:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, event_id, callback, None))
                continue
            if event_id is None:
                continue
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, event_id, callback, None))
            except libvirt.libvirtError as exc:
                LOG.debug("no %s events from %s: %s", optional, self.uri,
                          exc)

    def drop(self, reason, report=True):
        """Close the connection (if open); with ``report``, post and log
        that it was lost for ``reason`` and schedule the reconnect."""
        conn, self.conn = self.conn, None
        self.lost = None
        if conn is None:
            return
        for callback_id in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass  # a dead connection cannot deregister; closing will do
        self._callback_ids = []
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        self._close_quietly(conn)
        if report:
            now = self._clock()
            self.next_connect = now + self.reconnect_interval
            self._down_reported = True
            LOG.warning("libvirt connection to %s lost: %s; reconnecting "
                        "every %g s", self.uri, reason,
                        self.reconnect_interval)
            self._post(ev.LibvirtStatus(False, self.uri, now, reason))

    @staticmethod
    def _close_quietly(conn):
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def on_close(self, conn, reason, opaque):
        """libvirt's close callback: the connection is lost."""
        self.lost = _CLOSE_REASONS.get(reason, "closed (reason %s)"
                                       % reason)

    def failed(self, exc, what, uuid=None):
        """A libvirt call failed: note a dead connection, log the rest.

        :returns: True if the connection is lost.
        """
        if self.conn is None:
            return True
        lost = exc.get_error_code() in _CONNECTION_ERRORS
        if not lost:
            try:
                lost = not self.conn.isAlive()
            except libvirt.libvirtError:
                lost = True
        if lost:
            self.lost = "%s failed: %s" % (what, exc)
        elif uuid is not None:
            LOG.warning("instance %s: %s failed: %s", uuid, what, exc)
        else:
            LOG.warning("%s failed: %s", what, exc)
        return lost
