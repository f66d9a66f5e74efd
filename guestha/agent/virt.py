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

The thread's parts, each of which only this thread calls:

* :class:`~guestha.agent.libvirtconn.LibvirtConnection` keeps the
  connection: it opens it, notices it lost, and posts
  ``LibvirtStatus`` once per change;
* :class:`~guestha.agent.domainreader.DomainReader` reads the domains and
  posts what they are: after their events (noted by its callbacks, read
  after each turn of the event loop), at every reconcile, and for the
  loop's state queries;
* :class:`~guestha.agent.channelattach.ChannelAttacher` hot-plugs the
  guestha channel.

This module is the thread itself: the event loop, its wake-ups, the timer
for the next reconnect or reconcile, and the queue of the loop's requests.

Events can be missed (while disconnected, or by a libvirt bug), so the
watcher reconciles: at once after every (re)connect and then every
``reconcile_interval`` (+/-10% jitter).  When libvirtd goes away the
watcher retries every ``reconnect_interval`` and reconciles on success.
The loop keeps its per-instance state meanwhile; state queries are dropped
while disconnected (the loop's confirmation times out), hot-plug requests
wait for the reconnect.
"""

import collections
import logging
import os
import threading
import time

import libvirt

from guestha.agent import channelattach
from guestha.agent import domainreader
from guestha.agent import libvirtconn

LOG = logging.getLogger(__name__)

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


class _StateQuery(object):
    """The loop asks a domain's state."""

    def __init__(self, reader, uuid, token):
        self._reader = reader
        self.uuid = uuid
        self.token = token

    def run(self, conn):
        self._reader.state(self.uuid, self.token)
        return False

    def unconnected(self):
        LOG.debug("instance %s: state query dropped: libvirt not connected",
                  self.uuid)
        return False

    def stopped(self):
        pass


class _Hotplug(object):
    """The loop asks for the guestha channel in a domain."""

    def __init__(self, attacher, uuid, path):
        self._attacher = attacher
        self.uuid = uuid
        self.path = path

    def run(self, conn):
        return self._attacher.attach(self.uuid, self.path)

    def unconnected(self):
        return True  # wait for the reconnect; order kept

    def stopped(self):
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
        self._clock = clock
        self._link = libvirtconn.LibvirtConnection(
            uri, post, keepalive_interval=keepalive_interval,
            keepalive_count=keepalive_count,
            reconnect_interval=reconnect_interval, clock=clock)
        self._reader = domainreader.DomainReader(
            self._link, post, reconcile_interval=reconcile_interval,
            clock=clock)
        self._attacher = channelattach.ChannelAttacher(
            self._link, self._reader, post, clock=clock)

        # shared with other threads: appends and a flag, no locks needed
        self._requests = collections.deque()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

        # the watcher thread's own
        self._thread = None
        self._handle_id = None
        self._timer_id = None

    @classmethod
    def from_conf(cls, conf, post):
        """A watcher configured by the ``[libvirt]`` group."""
        group = conf.libvirt
        return cls(group.connection_uri, post,
                   keepalive_interval=group.keepalive_interval,
                   keepalive_count=group.keepalive_count,
                   reconnect_interval=group.reconnect_interval,
                   reconcile_interval=group.reconcile_interval)

    @property
    def last_reconcile(self):
        """``(domains, seconds)`` of the last complete reconcile."""
        return self._reader.last_reconcile

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
        self._ask(_Hotplug(self._attacher, uuid, channel_path))

    def request_state(self, uuid, token):
        """Read a domain's state now; answered by a posted
        :class:`~guestha.agent.events.DomainState` carrying ``token``
        (not at all while libvirt is disconnected)."""
        self._ask(_StateQuery(self._reader, uuid, token))

    def _ask(self, request):
        """Queue ``request`` for the thread and wake it.

        A request has ``run(conn)`` (True: the connection was lost under
        it, run it again after the reconnect), ``unconnected()`` (called
        instead while libvirt is disconnected; True: keep it for the
        reconnect) and ``stopped()`` (the watcher ended before it ran).
        """
        self._requests.append(request)
        self._wake()

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
            self._requests.popleft().stopped()

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
        deadline = (self._link.next_connect if self._link.conn is None
                    else self._reader.next_reconcile)
        delay_ms = -1
        if deadline is not None:
            delay_ms = max(1, int((deadline - now) * 1000))
        libvirt.virEventUpdateTimeout(self._timer_id, delay_ms)

    def _step(self):
        now = self._clock()
        link = self._link
        if link.lost is not None:
            self._drop_connection(link.lost)
        if link.conn is None and now >= link.next_connect:
            if link.connect(now, self._reader.callbacks()):
                self._reader.reconcile(after_connect=True)
        if link.conn is not None:
            self._reader.handle_pending()
        self._handle_requests()
        if link.conn is not None and self._reader.reconcile_due(
                self._clock()):
            self._reader.reconcile(after_connect=False)
        if link.lost is not None:
            self._drop_connection(link.lost)

    def _drop_connection(self, reason, report=True):
        self._reader.forget_pending()
        self._link.drop(reason, report=report)

    def _handle_requests(self):
        for _ in range(len(self._requests)):
            if self._stopping:
                return
            try:
                request = self._requests.popleft()
            except IndexError:
                return
            if not self._link.usable:
                if request.unconnected():
                    self._requests.append(request)
                continue
            if request.run(self._link.conn):
                # the connection failed under it: first after the reconnect
                self._requests.appendleft(request)
