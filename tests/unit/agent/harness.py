# SPDX-License-Identifier: Apache-2.0
"""Drive one agent Instance against an in-process guest, on a fake clock.

The channel is a socketpair: the instance holds one end (as if connected to
QEMU's socket), the test's guest (a real GuestSession, the same code the
guest daemon runs) the other.  Nothing sleeps: ``advance`` moves the clock
and fires the instance's timers, ``pump`` moves bytes both ways until both
sides are quiet.
"""

import select
import socket

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha_guest import protocol as p
from guestha_guest.protocol.session import GuestSession
from guestha_guest.protocol.session import Send

UUID = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
PATH = "/nonexistent/%s.sock" % UUID


class FakeEnv(im.Env):
    host = "compute-1"

    def __init__(self):
        self.now = 1000.0
        self.timers = []
        self.scheduled = []  # (when, urgent) of every schedule()
        self.reports = []
        self.relays = []
        self.confirms = []
        self.hotplugs = []
        self.guest_socks = []
        self.refuse = None  # errno to refuse connects with
        self.faults_saved = 0
        self.watched = set()
        self.writable = set()     # sockets watched for writable too
        self.rtts = []
        self.monitoring_saves = 0

    def schedule(self, instance, when, urgent=False):
        self.timers.append(when)
        self.scheduled.append((when, urgent))

    def open_channel(self, path):
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.guest_socks.append(b)
        return a

    def watch(self, instance, sock):
        self.watched.add(sock)

    def unwatch(self, sock):
        self.watched.discard(sock)
        self.writable.discard(sock)

    def watch_writable(self, instance, sock, writable):
        assert sock in self.watched
        if writable:
            self.writable.add(sock)
        else:
            self.writable.discard(sock)

    def monitoring_changed(self):
        self.monitoring_saves += 1

    def confirm_running(self, instance, token):
        self.confirms.append(token)

    def hotplug(self, instance):
        self.hotplugs.append(instance.uuid)

    def report(self, event):
        self.reports.append(event)

    def relay(self, method, **kwargs):
        self.relays.append((method, kwargs))

    def faults_changed(self):
        self.faults_saved += 1

    def wallclock(self):
        return 1.7e9 + self.now

    def record_rtt(self, seconds):
        self.rtts.append(seconds)


class Guest(object):
    """The guest side: answers as told (healthy, unhealthy, or frozen)."""

    def __init__(self, sock, interval_ms=100, now=0.0):
        self.sock = sock
        self.healthy = True
        self.reason = None
        self.frozen = False
        self.received = []  # every message and report of the session
        self.session = GuestSession(
            p.Init(name="g", interval_ms=interval_ms,
                   corrective_action="reboot"),
            lambda now: (self.healthy, self.reason,
                         None if self.healthy else "reboot"))
        self.apply(self.session.connect(now), now)

    @property
    def conn(self):
        return self.session.conn

    @property
    def hb(self):
        return self.session.heartbeat

    def write(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the host closed its end (a reset): as a port, lost

    def send(self, msg):
        self.write(self.session.send(msg).data)

    def apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, Send):
                self.write(out.data)
            else:
                self.received.append(out)

    def pump(self, now):
        moved = False
        if self.frozen:
            return False
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            moved = True
            self.apply(self.session.receive(data, now), now)
        self.apply(self.session.tick(now), now)
        return moved


class Harness(object):
    def __init__(self, policy=None, channel=True, state=ev.RUNNING,
                 interval_ms=100, guest_frozen=False, was_monitored=None):
        self.guest_frozen = guest_frozen
        self.env = FakeEnv()
        self.policy = policy or im.Policy(min_interval_ms=100)
        kwargs = {} if was_monitored is None else {
            "was_monitored": was_monitored}
        self.inst = im.Instance(UUID, self.env, self.policy, self.env.now,
                                **kwargs)
        self.interval_ms = interval_ms
        self.guest = None
        self._attached = 0
        self.domain(state, channel)

    @property
    def now(self):
        return self.env.now

    def domain(self, state, channel=True):
        info = ev.DomainInfo(UUID, "vm", state, PATH if channel else None,
                             True, {})
        self.inst.domain(info, self.now)
        self._attach_guest()

    def _attach_guest(self):
        # a new connection from the instance gets a guest that has been
        # waiting on the port all along
        if len(self.env.guest_socks) > self._attached:
            self._attached = len(self.env.guest_socks)
            self.guest = Guest(self.env.guest_socks[-1], self.interval_ms,
                               self.now)
            self.guest.frozen = self.guest_frozen

    def pump(self):
        for _ in range(50):
            moved = False
            if self.guest is not None:
                moved |= self.guest.pump(self.now)
            s = self.inst.sock
            if (s is not None and s in self.env.writable
                    and select.select([], [s], [], 0)[1]):
                queued = self.inst.output_queued
                self.inst.writable(self.now)
                moved |= self.inst.output_queued != queued
            s = self.inst.sock
            if s is not None and select.select([s], [], [], 0)[0]:
                self.inst.readable(self.now)
                moved = True
            self._attach_guest()
            if not moved:
                return

    def advance(self, seconds, step=0.01):
        end = self.env.now + seconds
        while self.env.now < end:
            self.env.now = min(end, self.env.now + step)
            w = self.inst.wake_at
            if w is not None and w <= self.env.now:
                self.inst.wake_at = None
                self.inst.tick(self.env.now)
                self._attach_guest()
            self.pump()

    def confirm(self, state=ev.RUNNING):
        token = self.env.confirms[-1]
        self.inst.confirmed(state, token, self.now)

    def faults(self):
        return [r for r in self.env.reports if r["type"] == "fault"]

    def recoveries(self):
        return [r for r in self.env.reports if r["type"] == "recovery"]
