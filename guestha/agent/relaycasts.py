# SPDX-License-Identifier: Apache-2.0
"""Server-group casts to the controller, best effort, from a thread of
their own.

The I/O loop hands a cast (broadcast, status query, agent_alive) to
:meth:`RelayCaster.cast`, which queues it in memory and returns at once;
the relay thread casts it.  A failure is counted and logged (at most once
per ``log_interval``), never raised; when the queue is full the oldest
cast is dropped.  Unlike the reports (:mod:`guestha.agent.reporter`),
nothing here is kept on disk or sent again.
"""

import collections
import logging
import threading
import time

from guestha import rpc

# The reporter's logger: these are the reporter's messages, as before the
# relays had a class of their own.
LOG = logging.getLogger("guestha.agent.reporter")

#: The casts :meth:`RelayCaster.cast` may make (ControllerAPI methods).
RELAY_METHODS = ("relay_broadcast", "query_status", "agent_alive")


class RelayCaster(object):
    """Casts queued server-group messages through ``api`` (a
    :class:`~guestha.rpc.api.ControllerAPI`).

    :param queue: casts held while the thread is busy or the broker slow.
    :param log_interval: seconds between two logs of failed casts.
    :param clock: monotonic seconds, for the log rate limit.
    :param on_sent: called (in the relay thread) after each cast that
        went through: the broker is reachable.
    """

    def __init__(self, api, queue=1000, log_interval=60.0,
                 clock=time.monotonic, on_sent=None):
        self.api = api
        self._max = queue
        self._log_interval = log_interval
        self._clock = clock
        self._on_sent = on_sent
        self._queue = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        #: the relay thread, once started
        self.thread = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._logged_at = None
        self._unlogged = 0

    def cast(self, method, **kwargs):
        """Queue a cast of ``method`` (one of :data:`RELAY_METHODS`);
        returns at once.

        :raises ValueError: for an unknown method (a programming error).
        """
        if method not in RELAY_METHODS:
            raise ValueError("not a relay method: %r (one of %s)"
                             % (method, ", ".join(RELAY_METHODS)))
        with self._lock:
            if len(self._queue) >= self._max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((method, kwargs))
        self._wake.set()

    def start(self):
        """Start the relay thread (a daemon: a cast may block on the
        broker, which must not block exit)."""
        self._stopping.clear()
        self.thread = threading.Thread(
            target=self._run, name="guestha-relay", daemon=True)
        self.thread.start()

    def signal_stop(self):
        """Tell the thread to end; queued casts are discarded.  The
        caller joins :attr:`thread`."""
        self._stopping.set()
        self._wake.set()

    def cast_pending(self):
        """Cast every queued message (the thread's step; tests call it).
        Failures are counted and logged, never raised."""
        while not self._stopping.is_set():
            with self._lock:
                if not self._queue:
                    return
                method, kwargs = self._queue.popleft()
            try:
                getattr(self.api, method)(**kwargs)
            except rpc.TRANSIENT_ERRORS as exc:
                self.failed += 1
                self._log_failure(method, kwargs, exc)
            else:
                self.sent += 1
                if self._on_sent is not None:
                    self._on_sent()

    def _log_failure(self, method, kwargs, exc):
        now = self._clock()
        if (self._logged_at is not None
                and now - self._logged_at < self._log_interval):
            self._unlogged += 1
            return
        LOG.warning("instance %s: server-group %s not sent (%d more failed "
                    "since the last such message): %s: %s",
                    kwargs.get("instance", "-"), method,
                    self._unlogged, type(exc).__name__, exc)
        self._logged_at = now
        self._unlogged = 0

    def _run(self):
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.cast_pending()
            except Exception:  # noqa: BLE001 - top of the thread
                LOG.exception("reporter: unexpected error in the relay "
                              "thread")
            if not self._queue:
                self._wake.wait()
