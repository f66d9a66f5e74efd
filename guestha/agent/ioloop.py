# SPDX-License-Identifier: Apache-2.0
"""The agent's wait: sockets, timers and posted records, in one thread.

Theory of operation
-------------------
:class:`IOLoop` waits in epoll (:class:`Poller`) on the sockets registered
with it and on a wake-up socket, for at most the time to the earliest
timer in a heap, and then calls back, in this order: each ready socket's
callback, the handler of each record other threads posted
(:meth:`~IOLoop.post` also writes a byte to the wake-up socket), and the
``tick`` of each timer owner that is due.  It knows nothing of
instances: a timer owner is anything with a ``wake_at`` and a
``tick(now)``.

The heap holds ``(when, n, owner)``; an owner keeps its own ``wake_at`` and
entries that no longer match it are stale and skipped, so rescheduling is
a push, never a search.

Wake-ups come in batches (``batch_delay``, ``[agent] batch_delay_ms``).
At 1,000 instances and a 1 s interval a challenge is due every
millisecond and its answer comes back a fraction of a millisecond later:
a loop that waits for the next thing wakes up many hundreds of times a
second, and each wake-up (the context switch, ``epoll``, the loop's own
Python) costs about as much as the work it finds.  So after a wake-up that
found work, the loop sleeps until ``batch_delay`` after that wake-up and
then takes everything at once: the answers that arrived, the challenges
that fell due, the posted records.  An answer is read, and a timer that is
not urgent fires, at most about ``batch_delay`` late (the agent keeps it
within 4% of the shortest interval it monitors,
:data:`guestha.agent.loop.BATCH_SHARE`).  A late timer does not stretch a
guest's period: its next challenge is due one interval after the previous
one was due, not after it went out (the protocol's cadence).  A wake-up
that found nothing to do (an idle agent) is followed by the ordinary wait,
until the earliest timer or the first ready socket.

Deadlines are not made late: a timer scheduled ``urgent`` (an instance's
answer deadline, a suspicion's confirmation: what decides a fault) ends
the batching sleep when it falls due, and the wake-up polls the sockets
before it fires, so an answer that arrived before its deadline is read
before the deadline's timer, as without the delay.  In the steady state
an answer comes long before its deadline, whose entry is then dropped
unfired (:meth:`IOLoop._next_urgent`), so the deadlines cost no wake-up.
While batching, the urgent timers have a heap of their own (the batching
looks at its first entry), the others are in the main heap, and the
wake-up fires from both in time order: an answered deadline costs one
push and one pop.
A miss is noticed at most ``batch_delay`` late (its challenge went out
late), not twice that.
"""

import heapq
import itertools
import math
import queue
import select
import socket
import time

_READ = select.EPOLLIN  # == selectors.EVENT_READ
WRITABLE = select.EPOLLOUT


class Poller(object):
    """What the loop used of ``selectors.EpollSelector``, at less cost per
    wake-up: the same ``epoll`` calls, without building a ``SelectorKey``
    list on every wake-up.  Read events only, unless :meth:`modify` asks
    for writability too; ``poll`` returns ``(callback, fileobj, mask)``,
    the callback being called as ``callback(fileobj, mask)``; EPOLLHUP and
    EPOLLERR count as readable, as the selector counted them.
    """

    def __init__(self):
        self._epoll = select.epoll()
        self._handlers = {}  # fd -> (callback, fileobj)
        self._fds = {}       # fileobj -> fd (it may be closed by unregister)

    def register(self, fileobj, callback):
        fd = fileobj.fileno()
        if fd in self._handlers:
            raise KeyError("%r (fd %d) is already registered" % (fileobj, fd))
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = (callback, fileobj)
        self._fds[fileobj] = fd

    def unregister(self, fileobj):
        """Raises KeyError if ``fileobj`` is not registered."""
        fd = self._fds.pop(fileobj)
        del self._handlers[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed meanwhile: the kernel dropped it already

    def poll(self, timeout):
        if timeout <= 0:
            timeout = 0
        else:
            # as selectors: round up to the millisecond, so that a timer
            # is never woken for a little before it is due
            timeout = math.ceil(timeout * 1e3) * 1e-3
        handlers = self._handlers
        ready = []
        for fd, event in self._epoll.poll(timeout, max(len(handlers), 1)):
            entry = handlers.get(fd)
            if entry is not None:
                ready.append((entry[0], entry[1],
                              event if event & select.EPOLLOUT else _READ))
        return ready

    def modify(self, fileobj, writable):
        """Also report ``fileobj`` writable (EPOLLOUT in the mask), or
        not; raises KeyError if it is not registered."""
        fd = self._fds[fileobj]
        self._epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT if writable
                           else select.EPOLLIN)

    def close(self):
        self._epoll.close()
        self._handlers.clear()
        self._fds.clear()


class IOLoop(object):
    """Sockets, timers and posted records, for the one thread that runs
    :meth:`run_once`.

    :param handle: ``handle(record, now)``, called in the loop's thread for
        each posted record (not for the ``None`` of :meth:`stop`).
    :param is_current: ``is_current(owner)``: False for a timer owner that
        is gone (its due timers are skipped), or None (all are current).
    :param clock: monotonic seconds.
    :param batch_delay: seconds a wake-up that found work is followed by
        before the next look (see the module's doc); 0 for none.
    :param sleep: how the loop sleeps (``time.sleep``; tests advance their
        clock).
    """

    def __init__(self, handle, is_current=None, clock=time.monotonic,
                 batch_delay=0.0, sleep=time.sleep):
        self._handle = handle
        self._is_current = is_current
        self._clock = clock
        self.batch_delay = batch_delay
        self._sleep = sleep
        self.poller = Poller()
        self._heap = []
        # the urgent timers, while batching: the batching sleeps no later
        # than the earliest of them, and each is in this heap only, so an
        # answered deadline costs one push and one pop
        self._urgent = []
        self._n = itertools.count()
        self._posted = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # the time of the latest wake-up that found work (batch_delay), or
        # None
        self._busy_since = None
        self.running = False

    # -- any thread -----------------------------------------------------------

    def post(self, record):
        """Hand a record to the loop's thread."""
        self._posted.put(record)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the loop is already being woken

    def stop(self):
        """End :meth:`run_once`'s caller's loop (``running`` False), after
        the records posted before."""
        self.post(None)

    # -- the loop's thread ----------------------------------------------------

    def start(self):
        self.poller.register(self._wake_r, self._woken)
        self.running = True

    def schedule(self, owner, when, urgent=False):
        """Call ``owner.tick`` at ``when`` if ``owner.wake_at`` is still
        ``when`` then.  ``urgent``: a deadline, which the batching does not
        make late (see the module's doc)."""
        # (without batching every timer is on time: one heap)
        heapq.heappush(
            self._urgent if urgent and self.batch_delay > 0 else self._heap,
            (when, next(self._n), owner))

    def run_once(self, max_wait=1.0):
        """Wait (at most ``max_wait``), then call back what is ready;
        returns the latest clock reading."""
        busy_since = self._busy_since
        if busy_since is not None:
            # the last wake-up found work: let more gather, then take it
            # all with one look (see the module's doc), but not past a
            # deadline
            wake = busy_since + self.batch_delay
            urgent = self._next_urgent()
            if urgent is not None and urgent < wake:
                wake = urgent
            rest = wake - self._clock()
            if rest > 0:
                self._sleep(rest)
            wait = 0.0
        else:
            wait = max_wait
            first = self._heap[0][0] if self._heap else None
            urgent = self._next_urgent()
            if urgent is not None and (first is None or urgent < first):
                first = urgent
            if first is not None:
                wait = max(0.0, min(wait, first - self._clock()))
        ready = self.poller.poll(wait)
        if self.batch_delay > 0:
            now = self._clock()
            heap = self._heap
            urgent = self._urgent
            self._busy_since = now if ready or (
                heap and heap[0][0] <= now) or (
                    urgent and urgent[0][0] <= now) else None
        for callback, fileobj, mask in ready:
            callback(fileobj, mask)
        self._process_posted()
        return self._fire_timers(self._clock())

    def close(self):
        self.poller.close()
        self._wake_r.close()
        self._wake_w.close()

    def _woken(self, sock, mask):
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _process_posted(self):
        if self._posted.empty():
            # the usual case: nothing posted (cheaper than get_nowait()
            # raising queue.Empty on every iteration of the loop)
            return
        while True:
            try:
                record = self._posted.get_nowait()
            except queue.Empty:
                return
            if record is None:
                self.running = False
                continue
            self._handle(record, self._clock())

    def _next_urgent(self):
        """The earliest urgent timer still to fire, or None.  Stale entries
        at the top are dropped on the way: their owner's ``wake_at`` moved
        (the usual case: the answer came, and the deadline is gone) or
        their owner is gone."""
        urgent = self._urgent
        is_current = self._is_current
        while urgent:
            when, _n, owner = urgent[0]
            if owner.wake_at == when and (
                    is_current is None or is_current(owner)):
                return when
            heapq.heappop(urgent)
        return None

    def _fire_timers(self, now):
        """Tick every owner whose timer is due at ``now``; returns the
        latest clock reading."""
        heap = self._heap
        urgent = self._urgent
        clock = self._clock
        is_current = self._is_current
        heappop = heapq.heappop
        last = now
        while True:
            # the earlier of the two heaps' first entries, if due
            if heap and heap[0][0] <= now:
                if urgent and urgent[0] < heap[0]:
                    entry = heappop(urgent)
                else:
                    entry = heappop(heap)
            elif urgent and urgent[0][0] <= now:
                entry = heappop(urgent)
            else:
                break
            when, _n, owner = entry
            if owner.wake_at != when or (
                    is_current is not None and not is_current(owner)):
                continue  # stale entry
            owner.wake_at = None
            # A fresh reading for each owner: an instance's challenge goes
            # out now, and its round trip is measured from then.  (When the
            # cadence still counted from the sending, one reading for the
            # whole batch gave every instance in it the same next time, so
            # instances fired together stayed together and the batches
            # grew: p50 20-160 ms at 5,000 instances.)
            last = clock()
            owner.tick(last)
        return last
