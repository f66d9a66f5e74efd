# SPDX-License-Identifier: Apache-2.0
"""The libvirt watcher: domains, their states and their channels, as
records posted to the agent's loop.

Theory of operation
-------------------
One dedicated thread owns the libvirt connection and runs libvirt's default
event loop (``virEventRunDefaultImpl``), which is where libvirt delivers
domain events, keepalive and the connection's close notice.  Every libvirt
call the agent makes happens in this thread, so the agent's I/O loop never
blocks on libvirt: the loop asks (:meth:`LibvirtWatcher.request_hotplug`,
:meth:`LibvirtWatcher.request_state`, which queue and wake this thread) and
the watcher answers by posting records (:mod:`guestha.agent.events`)
through the ``post`` callable the loop gave it.

Event callbacks only note what happened, with the time; after each turn of
the event loop the watcher re-reads each noted domain's live state and XML
(so a :class:`~guestha.agent.events.DomainUpdate` always carries a full
:class:`~guestha.agent.events.DomainInfo`, whatever the event) and posts
it.  A stop is posted as :class:`~guestha.agent.events.DomainGone` even if
the domain runs again by the time it is read, so the loop sees the restart
(a restarted domain has lost its hot-plugged channel); the start's own event
brings the update.

Events can be missed (while disconnected, or by a libvirt bug), so the
watcher reconciles: at once after every (re)connect and then every
``reconcile_interval`` (+/-10% jitter, so that the agents of a cloud do
not all hit their libvirtd at the same second) it lists the active
domains, posts an update for each and then the full list
(:class:`~guestha.agent.events.Reconciled`), from which the loop drops what
it missed the end of.

When libvirtd goes away (the close callback, or a call failing on a dead
connection) the watcher posts ``LibvirtStatus(connected=False)`` once,
retries every ``reconnect_interval``, and on success posts
``LibvirtStatus(connected=True)`` and reconciles.  The loop keeps its
per-instance state meanwhile; state queries are dropped while disconnected
(the loop's confirmation times out), hot-plug requests wait for the
reconnect.
"""

import collections
import concurrent.futures
import logging
import os
import random
import threading
import time

import libvirt

from guestha.agent import domain
from guestha.agent import events as ev

LOG = logging.getLogger(__name__)

#: What to tell the operator when a domain has no virtio-serial controller.
NO_CONTROLLER_MESSAGE = (
    "the domain has no virtio-serial controller, so the guestha channel "
    "cannot be hot-plugged (QEMU cannot hot-plug a controller). Fix: set "
    "the image property hw_qemu_guest_agent=yes (Nova then defines the "
    "domain with a virtio-serial controller for the guest agent's channel), "
    "or use a flavor or image that gives it any virtio channel, and rebuild "
    "or re-create the instance")

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

_AGENT_STATES = {1: "connected", 2: "disconnected"}
_AGENT_REASONS = {0: "unknown", 1: "domain_started", 2: "channel"}

_event_impl_lock = threading.Lock()
_event_impl_registered = False


def register_event_impl():
    """Register libvirt's default event loop implementation, once per
    process.  Must happen before the connection that wants events is
    opened: libvirt hooks each connection into the loop when it opens it.

    From then on every connection the process opens promises libvirtd to
    answer keepalive probes, which only a thread running the loop does:
    libvirtd drops a connection whose probes go unanswered (5 x 5 s by
    default).  So register it only where the loop runs (the watcher).
    """
    global _event_impl_registered
    with _event_impl_lock:
        if _event_impl_registered:
            return
        libvirt.virEventRegisterDefaultImpl()
        silence_libvirt_errors()
        _event_impl_registered = True


def silence_libvirt_errors():
    """Stop libvirt printing every error to stderr (its default); the
    watcher logs the ones that matter, with their instance."""
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)


def _ignore_libvirt_error(ctx, error):
    pass


class LibvirtWatcher(object):
    """Watches the domains of one libvirt connection for the agent's loop.

    :param uri: the libvirt URI (``[libvirt] connection_uri``).
    :param post: thread-safe callable that hands a record to the loop; the
        only thing of the loop the watcher uses.
    :param keepalive_interval: seconds between keepalive probes (0: none).
    :param keepalive_count: unanswered probes before the connection counts
        as lost.
    :param reconnect_interval: seconds between reconnection attempts.
    :param reconcile_interval: mean seconds between reconciles.
    :param clock: the monotonic clock for the records' ``at`` and for
        scheduling.
    """

    def __init__(self, uri, post, keepalive_interval=5, keepalive_count=3,
                 reconnect_interval=5.0, reconcile_interval=60.0,
                 clock=time.monotonic):
        self.uri = uri
        self._post = post
        self.keepalive_interval = keepalive_interval
        self.keepalive_count = keepalive_count
        self.reconnect_interval = reconnect_interval
        self.reconcile_interval = reconcile_interval
        self._clock = clock
        self._random = random.Random()

        # shared with other threads: appends and a flag, no locks needed
        self._requests = collections.deque()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

        # the watcher thread's own
        self._thread = None
        self._conn = None
        self._callback_ids = []
        self._pending = []
        self._lost = None
        self._down_reported = False
        self._next_connect = 0.0
        self._next_reconcile = None
        self._handle_id = None
        self._timer_id = None

        #: ``(domains, seconds)`` of the last complete reconcile.
        self.last_reconcile = None

    @classmethod
    def from_conf(cls, conf, post):
        """A watcher configured by the ``[libvirt]`` group."""
        group = conf.libvirt
        return cls(group.connection_uri, post,
                   keepalive_interval=group.keepalive_interval,
                   keepalive_count=group.keepalive_count,
                   reconnect_interval=group.reconnect_interval,
                   reconcile_interval=group.reconcile_interval)

    # -- any thread -----------------------------------------------------------

    def start(self):
        register_event_impl()
        self._thread = threading.Thread(target=self._run,
                                        name="guestha-libvirt", daemon=True)
        self._thread.start()

    def stop(self, timeout=2.0):
        """End the thread: callbacks deregistered, connection closed."""
        self._stopping = True
        if self._thread is None:  # never started
            self._close_pipe()
            return
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOG.warning("libvirt watcher did not stop within %.1f s "
                        "(libvirtd not answering?)", timeout)

    def request_hotplug(self, uuid, channel_path):
        """Add the guestha channel, its socket at ``channel_path``, to a
        running domain; answered by a posted
        :class:`~guestha.agent.events.HotplugResult`."""
        self._requests.append(("hotplug", uuid, channel_path))
        self._wake()

    def request_state(self, uuid, token):
        """Read a domain's state now; answered by a posted
        :class:`~guestha.agent.events.DomainState` carrying ``token``
        (not at all while libvirt is disconnected)."""
        self._requests.append(("state", uuid, token))
        self._wake()

    def run_with_connection(self, func):
        """Run ``func(conn)`` in the watcher thread with its connection.

        For tests and tools: some drivers (``test:///<file>``) keep their
        domains per connection, so only this connection can change them.
        :returns: a :class:`concurrent.futures.Future` of the result.
        """
        future = concurrent.futures.Future()
        if self._stopping:
            future.set_exception(RuntimeError("watcher stopped"))
            return future
        self._requests.append(("call", func, future))
        self._wake()
        return future

    def _wake(self):
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the thread is being woken anyway
        except OSError:
            pass  # closed: the thread has ended

    # -- the watcher thread ---------------------------------------------------

    def _run(self):
        self._handle_id = libvirt.virEventAddHandle(
            self._wake_r, libvirt.VIR_EVENT_HANDLE_READABLE, self._on_wake,
            None)
        # disabled (-1) until _arm_timer sets the next deadline
        self._timer_id = libvirt.virEventAddTimeout(-1, self._on_timer, None)
        LOG.info("libvirt watcher started for %s", self.uri)
        try:
            while not self._stopping:
                try:
                    self._step()
                    if self._stopping:
                        break
                    self._arm_timer()
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # noqa: BLE001 - the thread's top level
                    LOG.exception("libvirt watcher: unexpected error; "
                                  "carrying on")
                    time.sleep(0.5)
        finally:
            self._teardown()
            LOG.info("libvirt watcher stopped")

    def _teardown(self):
        self._drop_connection(None, report=False)
        for remove, ident in ((libvirt.virEventRemoveHandle,
                               self._handle_id),
                              (libvirt.virEventRemoveTimeout,
                               self._timer_id)):
            if ident is not None:
                try:
                    remove(ident)
                except libvirt.libvirtError:
                    pass
        self._handle_id = self._timer_id = None
        self._close_pipe()
        while self._requests:
            request = self._requests.popleft()
            if request[0] == "call":
                request[2].set_exception(RuntimeError("watcher stopped"))

    def _close_pipe(self):
        fds, (self._wake_r, self._wake_w) = (self._wake_r, self._wake_w), (
            -1, -1)
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def _on_wake(self, watch, fd, events, opaque):
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _on_timer(self, timer, opaque):
        pass  # waking the loop is all it is for

    def _arm_timer(self):
        now = self._clock()
        deadline = (self._next_connect if self._conn is None
                    else self._next_reconcile)
        delay_ms = -1
        if deadline is not None:
            delay_ms = max(1, int((deadline - now) * 1000))
        libvirt.virEventUpdateTimeout(self._timer_id, delay_ms)

    def _step(self):
        now = self._clock()
        if self._lost is not None:
            self._drop_connection(self._lost)
        if self._conn is None and now >= self._next_connect:
            self._connect(now)
        if self._conn is not None:
            self._handle_pending()
        self._handle_requests()
        if (self._conn is not None and self._next_reconcile is not None
                and self._clock() >= self._next_reconcile):
            self._reconcile(after_connect=False)
        if self._lost is not None:
            self._drop_connection(self._lost)

    # -- connection -----------------------------------------------------------

    def _connect(self, now):
        conn = None
        try:
            conn = libvirt.open(self.uri)
            self._setup_connection(conn)
        except libvirt.libvirtError as exc:
            if conn is not None:
                self._close_quietly(conn)
            self._next_connect = now + self.reconnect_interval
            if not self._down_reported:
                self._down_reported = True
                LOG.warning("cannot connect to libvirt at %s: %s; retrying "
                            "every %g s", self.uri, exc,
                            self.reconnect_interval)
                self._post(ev.LibvirtStatus(False, self.uri, now, str(exc)))
            else:
                LOG.debug("libvirt at %s still unavailable: %s", self.uri,
                          exc)
            return
        self._conn = conn
        self._lost = None
        self._down_reported = False
        LOG.info("connected to libvirt at %s", self.uri)
        self._post(ev.LibvirtStatus(True, self.uri, self._clock(), None))
        self._reconcile(after_connect=True)

    def _setup_connection(self, conn):
        if self.keepalive_interval > 0:
            try:
                conn.setKeepAlive(self.keepalive_interval,
                                  self.keepalive_count)
            except libvirt.libvirtError as exc:
                # local drivers (test:///, qemu:///embed) have no keepalive
                LOG.debug("no keepalive on %s: %s", self.uri, exc)
        conn.registerCloseCallback(self._on_close, None)
        self._callback_ids = []
        for event_id, callback in (
                (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                 self._on_device_added),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                 self._on_device_removed)):
            self._callback_ids.append(conn.domainEventRegisterAny(
                None, event_id, callback, None))
        agent_event = getattr(libvirt, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE",
                              None)
        if agent_event is not None:
            try:
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, agent_event, self._on_agent_lifecycle, None))
            except libvirt.libvirtError as exc:
                LOG.debug("no agent lifecycle events from %s: %s", self.uri,
                          exc)

    def _drop_connection(self, reason, report=True):
        conn, self._conn = self._conn, None
        self._lost = None
        self._pending = []  # a reconcile after the reconnect covers them
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
            self._next_connect = now + self.reconnect_interval
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

    def _on_close(self, conn, reason, opaque):
        self._lost = _CLOSE_REASONS.get(reason, "closed (reason %s)"
                                        % reason)

    def _failed(self, exc, what, uuid=None):
        """A libvirt call failed: note a dead connection, log the rest.

        :returns: True if the connection is lost.
        """
        if self._conn is None:
            return True
        lost = exc.get_error_code() in _CONNECTION_ERRORS
        if not lost:
            try:
                lost = not self._conn.isAlive()
            except libvirt.libvirtError:
                lost = True
        if lost:
            self._lost = "%s failed: %s" % (what, exc)
        elif uuid is not None:
            LOG.warning("instance %s: %s failed: %s", uuid, what, exc)
        else:
            LOG.warning("%s failed: %s", what, exc)
        return lost

    # -- domain events --------------------------------------------------------

    def _note(self, dom, event, event_state):
        self._pending.append((dom, dom.UUIDString(), event, event_state,
                              self._clock()))

    def _on_lifecycle(self, conn, dom, event, detail, opaque):
        text, state = domain.lifecycle_event(event, detail)
        self._note(dom, text, state)

    def _on_reboot(self, conn, dom, opaque):
        self._note(dom, "reboot", None)

    def _on_device_added(self, conn, dom, alias, opaque):
        self._note(dom, "device_added:%s" % alias, None)

    def _on_device_removed(self, conn, dom, alias, opaque):
        self._note(dom, "device_removed:%s" % alias, None)

    def _on_agent_lifecycle(self, conn, dom, state, reason, opaque):
        self._note(dom, "agent_lifecycle:%s:%s" % (
            _AGENT_STATES.get(state, state),
            _AGENT_REASONS.get(reason, reason)), None)

    def _handle_pending(self):
        pending, self._pending = self._pending, []
        for dom, uuid, event, event_state, at in pending:
            if self._conn is None or self._lost is not None:
                return
            self._refresh(dom, uuid, event, event_state, at)

    def _refresh(self, dom, uuid, event, event_state, at):
        """Post what a domain is now, after ``event`` (seen at ``at``)."""
        if event_state == ev.SHUTOFF:
            # Gone, whatever the domain is by now: a quick restart then
            # still reads as a stop and a start (its STARTED event follows)
            self._post(ev.DomainGone(uuid, event, at))
            return
        try:
            state, reason = dom.state()
            if state == domain.SHUTOFF:
                if event_state is not None:
                    # started, resumed...: but stopped again since
                    self._post(ev.DomainGone(uuid, event, at))
                # else: a stopped domain was (un)defined; nothing runs
                return
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                self._failed(exc, "reading the domain after %s" % event, uuid)
            elif event_state is not None:
                self._post(ev.DomainGone(uuid, event, at))
            # else: gone after an event that says nothing of running (an
            # undefine, a device): its stop, if it ran, was posted already
            return
        info = self._parse(uuid, xml, state, reason)
        if info is not None:
            LOG.debug("instance %s: %s: %s", uuid, event, info.state)
            self._post(ev.DomainUpdate(info, event, at))

    @staticmethod
    def _parse(uuid, xml, state, reason):
        try:
            return domain.parse_domain(
                xml, domain.normalise_state(state, reason))
        except ValueError as exc:
            LOG.warning("instance %s: cannot use its domain XML: %s", uuid,
                        exc)
            return None

    # -- reconcile ------------------------------------------------------------

    def _reconcile(self, after_connect):
        started = time.monotonic()
        self._next_reconcile = self._clock() + self.reconcile_interval * (
            self._random.uniform(0.9, 1.1))
        try:
            doms = self._conn.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            self._failed(exc, "listing the domains")
            return
        uuids = set()
        for dom in doms:
            uuid = dom.UUIDString()
            at = self._clock()
            try:
                state, reason = dom.state()
                xml = dom.XMLDesc(0) if state != domain.SHUTOFF else None
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # gone since the listing: its event follows
                if self._failed(exc, "reading the domain", uuid):
                    # no Reconciled: a partial list would drop instances
                    return
                uuids.add(uuid)  # active, though unreadable: keep it
                continue
            if xml is None:
                continue  # stopped since the listing
            uuids.add(uuid)
            info = self._parse(uuid, xml, state, reason)
            if info is not None:
                self._post(ev.DomainUpdate(info, "reconcile", at))
        self._post(ev.Reconciled(frozenset(uuids), self._clock()))
        elapsed = time.monotonic() - started
        self.last_reconcile = (len(uuids), elapsed)
        log = LOG.info if after_connect or elapsed > 1.0 else LOG.debug
        log("reconciled %d active domain(s) with libvirt in %.1f ms",
            len(uuids), elapsed * 1000)

    # -- requests from the loop -----------------------------------------------

    def _handle_requests(self):
        for _ in range(len(self._requests)):
            if self._stopping:
                return
            try:
                request = self._requests.popleft()
            except IndexError:
                return
            kind = request[0]
            if self._conn is None or self._lost is not None:
                if kind == "hotplug":
                    # wait for the reconnect; order kept
                    self._requests.append(request)
                elif kind == "call":
                    request[2].set_exception(
                        RuntimeError("libvirt not connected"))
                else:
                    LOG.debug("instance %s: state query dropped: libvirt "
                              "not connected", request[1])
                continue
            if kind == "hotplug":
                self._hotplug(request[1], request[2])
            elif kind == "state":
                self._state(request[1], request[2])
            else:
                self._call(request[1], request[2])

    def _state(self, uuid, token):
        at = self._clock()
        try:
            state, reason = self._conn.lookupByUUIDString(uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                self._post(ev.DomainState(uuid, None, token, at))
            else:
                # unanswered: the loop's confirmation times out and it
                # reports the fault as unconfirmed
                self._failed(exc, "reading the domain state", uuid)
            return
        self._post(ev.DomainState(uuid, domain.normalise_state(state, reason),
                                  token, at))

    def _hotplug(self, uuid, path):
        at = self._clock()

        def result(outcome, message, channel_path=None):
            self._post(ev.HotplugResult(uuid, outcome, message, channel_path,
                                        self._clock()))

        try:
            dom = self._conn.lookupByUUIDString(uuid)
            state, reason = dom.state()
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                result("error", "the domain no longer exists")
            elif self._failed(exc, "reading the domain", uuid):
                self._requests.appendleft(("hotplug", uuid, path))
            else:
                result("error", "cannot read the domain: %s" % exc)
            return
        if state == domain.SHUTOFF:
            result("error", "the domain is not running")
            return
        info = self._parse(uuid, xml, state, reason)
        if info is None:
            result("error", "cannot parse the domain XML")
            return
        if info.channel_path:
            result("attached", "the domain already has the channel",
                   info.channel_path)
            self._post(ev.DomainUpdate(info, "hotplug", at))
            return
        if not info.has_serial_controller:
            LOG.warning("instance %s: cannot hot-plug the guestha channel: "
                        "%s", uuid, NO_CONTROLLER_MESSAGE)
            result("no_controller", NO_CONTROLLER_MESSAGE)
            return
        try:
            # QEMU creates the socket; its directory must exist
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            result("error", "cannot create the socket directory: %s" % exc)
            return
        started = time.monotonic()
        try:
            dom.attachDeviceFlags(domain.channel_xml(path),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if "virtio-serial controller" in str(exc):
                # the controller went away, or this libvirt counts it
                # differently than the XML said
                result("no_controller", NO_CONTROLLER_MESSAGE)
            elif self._failed(exc, "attaching the channel", uuid):
                self._requests.appendleft(("hotplug", uuid, path))
            else:
                result("error", "libvirt could not attach the channel: %s"
                       % exc)
            return
        elapsed = time.monotonic() - started
        LOG.info("instance %s: guestha channel hot-plugged at %s in %.0f ms",
                 uuid, path, elapsed * 1000)
        result("attached", "attached in %.0f ms" % (elapsed * 1000), path)
        # libvirt also sends DEVICE_ADDED; posting now does not depend on it
        self._refresh(dom, uuid, "hotplug", None, self._clock())

    def _call(self, func, future):
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(func(self._conn))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)
