# SPDX-License-Identifier: Apache-2.0
"""A simulated compute host: the host's side of a guest daemon's channel,
for trying an application, or a test, without a VM or an agent.

:class:`SimHost` speaks the real protocol, with the
:class:`~guestha_guest.protocol.session.HostSession` the compute agent
uses, over a file descriptor: a UNIX socket connected to a daemon in
``unix-listen:`` mode (:meth:`SimHost.connect_unix`), or a pty master
standing in for the virtio-serial port.  It grants the interval the guest
asks for, challenges it every interval and records what comes back::

    from guestha_guest.testing.simhost import SimHost
    host = SimHost.connect_unix("/tmp/gx/guest.sock")
    host.run(10)              # ten seconds of real time
    host.of(hb.Answered)      # the heartbeat's reports, by kind

Time is ``clock()`` (``time.monotonic`` unless given), so a test can run
it on a fake clock and move the clock itself (tests/unit/guest/bench.py
does).  It does not route broadcasts between guests.

Standard library only, Python 3.8+.
"""

import os
import random
import selectors
import socket
import time

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol.session import BadLine
from guestha_guest.protocol.session import HostSession
from guestha_guest.protocol.session import Send

#: Real seconds a write may wait for the guest to read before it gives up:
#: a safety net against a guest that stopped reading, not a timing.
SAFETY = 10.0


class SimHost(object):
    """The host's side of one guest daemon's channel.

    :param fd: the channel's file descriptor (a pty master), or
    :param sock: a connected socket (see :meth:`connect_unix`).
    :param instance: the instance uuid it tells the guest.
    :param min_ms, max_ms: the intervals it grants, as the agent's
        ``[agent] min_interval_ms`` and ``max_interval_ms``.
    :param seed: seeds the challenges' randomness, for a repeatable test.
    :param sync: start with the resync handshake at once.
    :param clock: seconds, ``time.monotonic`` unless a test passes its own.

    What it saw: :attr:`reports` (``(time, output)`` of the heartbeat:
    registered, answered, missed ...), :attr:`messages` (every message
    received) and :attr:`errors` (protocol errors in what it received).
    """

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
                if time.monotonic() >= end:
                    raise TimeoutError("the guest has not read for %.0f s"
                                       % SAFETY)
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
