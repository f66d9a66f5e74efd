# SPDX-License-Identifier: Apache-2.0
"""A simulated compute host, and a bench that runs it against a guest
daemon on a fake clock.

:class:`SimHost` speaks the real protocol (the HostSession the agent
uses) over a file descriptor: a pty master standing
in for the virtio-serial port, or a UNIX socket connected to a daemon in
``unix-listen:`` mode.

:class:`Bench` runs a :class:`~guestha_guest.daemon.GuestDaemon` and a
SimHost in the test's thread, both on one :class:`FakeClock`: it moves the
bytes each side wrote to the other until nothing is in flight, then jumps
the clock to the next timer of either side.  Time therefore passes only
when both sides are idle, so a loaded machine cannot make a heartbeat late
and nothing waits for real time, except for the kernel to deliver bytes
already written (bounded by a generous safety deadline, never asserted on).
"""

import os
import random
import selectors
import socket
import threading
import time

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol.session import BadLine
from guestha_guest.protocol.session import HostSession
from guestha_guest.protocol.session import Send

#: Real seconds the bench waits for written bytes to arrive before it
#: declares the test stuck: a safety net, not a timing assertion.
SAFETY = 10.0


class FakeClock(object):
    def __init__(self, start=1000.0):
        self.now = start

    def __call__(self):
        return self.now


class SimHost(object):
    def __init__(self, fd=None, sock=None, instance=None, min_ms=100,
                 max_ms=60000, seed=None, sync=True, clock=time.monotonic):
        self.fd = fd if fd is not None else sock.fileno()
        self.sock = sock
        self.clock = clock
        self.session = HostSession(instance, min_ms, max_ms,
                                   rng=random.Random(seed))
        self._connect = self.session.connect(clock(), heartbeat=True)
        self._hb = self.session.heartbeat  # while auto_heartbeat is off
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.reports = []   # (time, output) of every heartbeat report
        self.messages = []  # every message received
        self.errors = []    # RemoteProtocolErrors raised by the connection
        self.answer_syncs = True
        self.closed = False
        self.written = 0    # bytes written, for the bench
        self.read = 0       # bytes read, for the bench
        if sync:
            self._apply(self._connect, clock())

    @property
    def conn(self):
        return self.session.conn

    @property
    def hb(self):
        return self._hb

    @property
    def auto_heartbeat(self):
        """False: the heartbeat is left alone (no challenges, nothing
        received reaches it), for a test that speaks for the host."""
        return self.session.heartbeat is not None

    @auto_heartbeat.setter
    def auto_heartbeat(self, on):
        self.session.heartbeat = self._hb if on else None

    @classmethod
    def connect_unix(cls, path, timeout=0.0, **kwargs):
        """Connect to a daemon in unix-listen mode; ``timeout``: real
        seconds to keep trying while it is not listening yet (a daemon
        process starting), a safety deadline."""
        end = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() >= end:
                    raise
                selectors.DefaultSelector().select(0.02)  # try again soon
        return cls(sock=s, **kwargs)

    def write(self, data):
        view = memoryview(data)
        end = time.monotonic() + SAFETY
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                assert time.monotonic() < end, "the guest does not read"
                self.sel.select(0.01)
                continue
            self.written += n
            view = view[n:]

    def send(self, msg):
        self.write(self.session.send(msg).data)
        return msg

    def resync(self):
        self._apply(self.session.start_sync(self.clock()), self.clock())

    def _apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, Send):
                if self.answer_syncs or not isinstance(out.message, p.Sync):
                    self.write(out.data)
            elif isinstance(out, hb.Output):
                self.reports.append((now, out))
            elif isinstance(out, BadLine):
                self.errors.append(out.error)
            elif not isinstance(out, (p.Sync, p.Synced)):
                self.messages.append(out)

    def next_timer(self):
        return self.session.next_timer()

    def pump(self, wait=0.0):
        """Read what has arrived (waiting up to ``wait`` real seconds for
        something); returns the number of bytes read."""
        got = 0
        if self.closed:
            return got
        for _key, _mask in self.sel.select(wait):
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(self.fd)
                self.closed = True
                return got
            got += len(data)
            self.read += len(data)
            now = self.clock()
            self._apply(self.session.receive(data, now), now)
        return got

    def tick(self):
        if not self.closed:
            now = self.clock()
            self._apply(self.session.tick(now), now)

    def run(self, seconds, until=None):
        """Exchange traffic on the real clock for ``seconds`` or until
        ``until()`` (for a daemon in another process, with the default
        real clock)."""
        end = time.monotonic() + seconds
        while not (until is not None and until()) and (
                time.monotonic() < end) and not self.closed:
            t = self.next_timer()
            wait = 0.05 if t is None else max(0.0, min(0.05, t - self.clock()))
            self.pump(wait)
            self.tick()

    def of(self, kind):
        return [r for _t, r in self.reports if isinstance(r, kind)]

    def received(self, kind):
        return [m for m in self.messages if isinstance(m, kind)]

    def close(self):
        self.sel.close()
        self.closed = True
        if self.sock is not None:
            self.sock.close()


class Bench(object):
    """A daemon and (at most) one host on one fake clock, in one thread.

    Create the daemon with ``clock=bench.clock``, then :meth:`start` it;
    attach a host with :meth:`attach`.  :meth:`settle` exchanges bytes
    without moving the clock; :meth:`advance` and :meth:`run_until` move
    it from timer to timer.
    """

    def __init__(self):
        self.clock = FakeClock()
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
