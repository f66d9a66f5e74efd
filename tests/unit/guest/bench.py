# SPDX-License-Identifier: Apache-2.0
"""A bench that runs a guest daemon and a simulated host
(:class:`guestha_guest.testing.simhost.SimHost`) against each other on a
fake clock.

:class:`Bench` runs a :class:`~guestha_guest.daemon.GuestDaemon` and a
SimHost in the test's thread, both on one
:class:`~tests.support.clock.ManualClock`: it moves the bytes each side
wrote to the other until nothing is in flight, then jumps the clock to the
next timer of either side.  Time therefore passes only when both sides
are idle, so a loaded machine cannot make a heartbeat late and nothing
waits for real time, except for the kernel to deliver bytes already
written (bounded by a generous safety deadline, never asserted on).
"""

import threading
import time

from guestha_guest.testing.simhost import SAFETY
from tests.support.clock import ManualClock


class Bench(object):
    """A daemon and (at most) one host on one fake clock, in one thread.

    Create the daemon with ``clock=bench.clock``, then :meth:`start` it;
    attach a host with :meth:`attach`.  :meth:`settle` exchanges bytes
    without moving the clock; :meth:`advance` and :meth:`run_until` move
    it from timer to timer.
    """

    def __init__(self):
        self.clock = ManualClock(1000.0)
        self.daemon = None
        self.host = None
        # bytes counted on the way to the daemon and back; each side's
        # count is compared with what the other side has read
        self.to_daemon = 0       # by earlier hosts and write()
        self.daemon_read = 0
        self.daemon_written = 0
        self.host_read = 0       # by earlier hosts

    def start(self, daemon):
        self.daemon = daemon
        port = daemon.port
        on_data, write_some = port.on_data, port._write_some

        def counted_data(data, now):
            self.daemon_read += len(data)
            on_data(data, now)

        def counted_write(data):
            n = write_some(data)
            self.daemon_written += n
            return n
        port.on_data = counted_data
        port._write_some = counted_write
        daemon.start()
        self.settle()
        return daemon

    def attach(self, host, new_stream=False):
        """A new host.  ``new_stream``: it has a stream of its own (a new
        UNIX connection; :meth:`detach` the earlier one first), so what
        the earlier host left unread is lost; on a pty a new host reads
        what the earlier one left."""
        if new_stream:
            assert self.host is None, "detach() the earlier host first"
            self.to_daemon = self.daemon_read
            self.host_read = self.daemon_written
        elif self.host is not None:
            self.to_daemon += self.host.written
            self.host_read += self.host.read
        self.host = host
        self.settle()
        return host

    def detach(self):
        """The host has gone (closed): let the daemon notice."""
        self.host = None
        self.settle()

    def write(self, data):
        """Raw bytes from the host's end toward the daemon."""
        self.to_daemon += len(data)
        self.host.write(data)
        self.host.written -= len(data)

    def _in_flight(self):
        host = self.host
        if host is None or host.closed:
            return False
        return (self.to_daemon + host.written > self.daemon_read
                or self.daemon_written > self.host_read + host.read)

    def _step(self, wait):
        moved = False
        for key, mask in self.daemon.sel.select(wait):
            key.data(mask)
            moved = True
        if self.daemon.running:
            self.daemon.tick(self.clock())
        if self.host is not None:
            if self.host.pump(0):
                moved = True
            self.host.tick()
        return moved

    def settle(self):
        """Exchange bytes until none is in flight and nobody has more to
        say at the current time."""
        end = time.monotonic() + SAFETY
        while True:
            moved = self._step(0)
            if moved:
                continue
            if not self._in_flight():
                # one more look: a reply just written may be readable now
                if not self._step(0):
                    return
                continue
            assert time.monotonic() < end, "bytes written never arrived"
            self._step(0.01)

    def next_timer(self):
        times = [self.daemon.next_timer() if self.daemon.running else None]
        if self.host is not None:
            times.append(self.host.next_timer())
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def advance(self, seconds):
        """Let ``seconds`` of fake time pass, firing timers on the way."""
        self.run_until(lambda: False, seconds, check=False)

    def run_until(self, until, seconds, check=True):
        """Run until ``until()`` is true or ``seconds`` of fake time have
        passed; with ``check``, assert that it became true."""
        target = self.clock.now + seconds
        self.settle()
        for _ in range(1000000):
            if until() or self.clock.now >= target:
                break
            t = self.next_timer()
            step = target if t is None else min(max(t, self.clock.now),
                                                target)
            if step <= self.clock.now:
                step = self.clock.now + 0.001  # a timer due: let it fire
            self.clock.now = step
            self.settle()
        if check:
            assert until(), "condition not reached in %s s of fake time" % (
                seconds,)

    def call(self, fn, *args):
        """Run ``fn(*args)`` (a blocking client call) in a thread while the
        bench keeps the daemon going, without moving the clock."""
        result = []

        def target():
            try:
                result.append((True, fn(*args)))
            except Exception as exc:  # handed to the test's thread
                result.append((False, exc))
        t = threading.Thread(target=target, daemon=True)
        t.start()
        end = time.monotonic() + SAFETY
        while t.is_alive():
            assert time.monotonic() < end, "client call did not return"
            self._step(0.005)
            self.settle()
        ok, value = result[0]
        if not ok:
            raise value
        return value
