"""A simulated compute host for guest-daemon tests.

It speaks the real protocol (the same Connection and HostHeartbeat the
agent uses) over a file descriptor: a pty master standing in for the
virtio-serial port, or a UNIX socket connected to a daemon running in
``unix-listen:`` mode.  It runs in the test's thread: ``run(seconds)``
drives it with the real clock, because the daemon on the other side runs
in real time.
"""

import os
import random
import selectors
import socket
import time

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb


class SimHost(object):
    def __init__(self, fd=None, sock=None, instance=None, min_ms=100,
                 max_ms=60000, seed=None, sync=True):
        self.fd = fd if fd is not None else sock.fileno()
        self.sock = sock
        self.conn = p.Connection(p.HOST, rng=random.Random(seed))
        self.hb = hb.HostHeartbeat(min_ms, max_ms, instance=instance,
                                   rng=random.Random(seed))
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.reports = []   # (time, output) of every heartbeat report
        self.messages = []  # every message received
        self.errors = []    # RemoteProtocolErrors raised by the connection
        self.auto_heartbeat = True
        self._sync_at = None
        if sync:
            self.resync()

    @classmethod
    def connect_unix(cls, path, timeout=5.0, **kwargs):
        end = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        return cls(sock=s, **kwargs)

    def write(self, data):
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            view = view[n:]

    def send(self, msg):
        self.write(self.conn.send(msg))
        return msg

    def resync(self):
        self.write(self.conn.start_sync())
        self._sync_at = time.monotonic()

    def _apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, p.Message):
                self.send(out)
            elif isinstance(out, hb.Resync):
                self.resync()
            else:
                self.reports.append((now, out))

    def run(self, seconds, until=None):
        """Exchange traffic for ``seconds`` or until ``until()`` is true."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end or (until is not None and until()):
                return
            wait = end - now
            t = self.hb.next_timer()
            if t is not None and self.auto_heartbeat:
                wait = max(0.0, min(wait, t - now))
            for _key, _mask in self.sel.select(min(wait, 0.05)):
                try:
                    data = os.read(self.fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(self.fd)
                    self.closed = True
                    return
                self.conn.receive_data(data)
                self._drain(time.monotonic())
            if self.auto_heartbeat:
                self._apply(self.hb.tick(time.monotonic()), time.monotonic())

    def _drain(self, now):
        while True:
            try:
                ev = self.conn.next_event()
            except p.RemoteProtocolError as exc:
                self.errors.append(exc)
                continue
            if ev is p.NEED_DATA:
                return
            if isinstance(ev, p.Sync):
                self.write(self.conn.answer_sync(ev))
                continue
            if isinstance(ev, p.Synced):
                if self.auto_heartbeat:
                    self._apply(self.hb.synced(now), now)
                continue
            self.messages.append(ev)
            if self.auto_heartbeat and isinstance(
                    ev, (p.Init, p.ChallengeResponse, p.Exit)):
                self._apply(self.hb.receive(ev, now), now)

    def of(self, kind):
        return [r for _t, r in self.reports if isinstance(r, kind)]

    def received(self, kind):
        return [m for m in self.messages if isinstance(m, kind)]

    def close(self):
        self.sel.close()
        if self.sock is not None:
            self.sock.close()
