# SPDX-License-Identifier: Apache-2.0
"""Many protocol-level guests in one thread, for tests at a scale where a
guest daemon process per instance would be too heavy: :class:`GuestFarm`
serves many channel sockets with the protocol's guest session, as the
daemon runs it."""

import os
import selectors
import socket
import threading
import time

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol.session import BadLine
from guestha_guest.protocol.session import GuestSession
from guestha_guest.protocol.session import Send


class _FarmGuest(object):
    """One listening channel socket and, while the host is connected, the
    protocol's guest side (a GuestSession), as the daemon runs it: sync on
    connect, answer the host's syncs, register, answer every challenge
    healthy."""

    def __init__(self, path, name, interval_ms):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.sock = None
        self.session = GuestSession(
            p.Init(name=name, interval_ms=interval_ms,
                   corrective_action="none"),
            lambda now: (True, None, None))
        self.answers = 0
        self.registrations = 0
        self.protocol_errors = 0

    def accept(self, sel, now):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.sock is not None:
            sock.close()  # one host at a time, as QEMU
            return
        sock.setblocking(False)
        self.sock = sock
        sel.register(sock, selectors.EVENT_READ, ("data", self))
        self.apply(self.session.connect(now), now)

    def write(self, data):
        if self.sock is None:
            return
        try:
            self.sock.send(data)
        except (BlockingIOError, OSError):
            pass  # dropped, as the daemon's port would; sync recovers

    def readable(self, sel, now):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(sel)
            return
        self.apply(self.session.receive(data, now), now)

    def apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, Send):
                self.write(out.data)
            elif isinstance(out, hb.Acknowledged):
                self.registrations += 1
            elif isinstance(out, hb.ChallengeAnswered):
                self.answers += 1
            elif isinstance(out, BadLine):
                self.protocol_errors += 1

    def tick(self, now):
        self.apply(self.session.tick(now), now)

    def next_timer(self):
        return self.session.next_timer()

    def close(self, sel):
        if self.sock is not None:
            sel.unregister(self.sock)
            self.sock.close()
        self.sock = None
        self.session.disconnect()


class GuestFarm(object):
    """Guests for ``paths`` (one channel socket each), served by one
    thread of the test process."""

    def __init__(self, paths, interval_ms=200):
        self.guests = [_FarmGuest(path, "farm-%d" % i, interval_ms)
                       for i, path in enumerate(paths)]
        self._sel = selectors.DefaultSelector()
        for guest in self.guests:
            self._sel.register(guest.listener, selectors.EVENT_READ,
                               ("accept", guest))
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="guest-farm")
        self.error = None

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        try:
            while not self._stopping:
                now = time.monotonic()
                timers = [g.next_timer() for g in self.guests]
                timers = [t for t in timers if t is not None]
                wait = 0.1 if not timers else max(
                    0.0, min(0.1, min(timers) - now))
                for key, _mask in self._sel.select(wait):
                    kind, guest = key.data
                    if kind == "accept":
                        guest.accept(self._sel, time.monotonic())
                    else:
                        guest.readable(self._sel, time.monotonic())
                now = time.monotonic()
                for guest in self.guests:
                    guest.tick(now)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            raise

    def stop(self):
        self._stopping = True
        self._thread.join(5)
        for guest in self.guests:
            guest.close(self._sel)
            guest.listener.close()
            try:
                os.unlink(guest.path)
            except OSError:
                pass
        self._sel.close()
