# SPDX-License-Identifier: Apache-2.0
"""Two protocol connections joined back to back, with no sockets.

:class:`Channel` stands in for the virtio-serial port: a host-side and a
guest-side :class:`~guestha_guest.protocol.connection.Connection`, one byte
queue in each direction.  Tests write bytes into it (``send``,
``start_sync``, ``write`` for raw or stale bytes), then ``pump`` it: the
queued bytes are fed to the far end in chunks of a chosen size and every
event is collected.  Syncs are answered as a real endpoint would.
"""

import random

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m


class Channel(object):

    def __init__(self, seed=0, answer_syncs=True, **conn_kwargs):
        self.ends = {
            m.HOST: c.Connection(m.HOST, rng=random.Random(seed),
                                 **conn_kwargs),
            m.GUEST: c.Connection(m.GUEST, rng=random.Random(seed + 1),
                                  **conn_kwargs),
        }
        #: bytes written by each side, not yet read by the other
        self.queued = {m.HOST: bytearray(), m.GUEST: bytearray()}
        #: events each side received, in order (never NEED_DATA)
        self.events = {m.HOST: [], m.GUEST: []}
        #: RemoteProtocolErrors each side's next_event() raised
        self.errors = {m.HOST: [], m.GUEST: []}
        #: the largest ``buffered`` seen on each side
        self.high_water = {m.HOST: 0, m.GUEST: 0}
        self.answer_syncs = answer_syncs

    @property
    def host(self):
        return self.ends[m.HOST]

    @property
    def guest(self):
        return self.ends[m.GUEST]

    def write(self, side, data):
        """``side`` writes raw bytes toward its peer."""
        self.queued[side] += data

    def send(self, side, msg):
        data = self.ends[side].send(msg)
        self.write(side, data)
        return data

    def start_sync(self, side, nonce=None):
        data = self.ends[side].start_sync(nonce)
        self.write(side, data)
        return data

    def sync(self):
        """Both sides synchronise at once; returns when both are READY."""
        self.start_sync(m.HOST)
        self.start_sync(m.GUEST)
        self.pump()
        assert self.host.state == c.READY, self.events
        assert self.guest.state == c.READY, self.events

    def pump(self, chunk=None, rounds=100):
        """Move bytes both ways until nothing is left to move."""
        for _ in range(rounds):
            moved = False
            for sender in (m.HOST, m.GUEST):
                data = bytes(self.queued[sender])
                del self.queued[sender][:]
                if data:
                    moved = True
                    self.feed(self._peer(sender), data, chunk)
            if not moved:
                return
        raise AssertionError("the channel never went quiet")

    def feed(self, side, data, chunk=None):
        """Feed ``data`` to ``side`` in chunks, draining after each."""
        chunk = chunk or len(data) or 1
        conn = self.ends[side]
        for start in range(0, len(data), chunk):
            conn.receive_data(data[start:start + chunk])
            self._note(side)
            self.drain(side)

    def drain(self, side):
        """Call next_event() until NEED_DATA; returns the new events."""
        conn = self.ends[side]
        new = []
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self.errors[side].append(exc)
                continue
            finally:
                self._note(side)
            if event is c.NEED_DATA:
                break
            new.append(event)
            if self.answer_syncs and isinstance(event, m.Sync):
                self.write(side, conn.answer_sync(event))
        self.events[side].extend(new)
        return new

    def messages(self, side, kind=m.Message):
        """The events of ``side`` that are messages of class ``kind``."""
        return [e for e in self.events[side] if isinstance(e, kind)]

    def _note(self, side):
        self.high_water[side] = max(self.high_water[side],
                                    self.ends[side].buffered)

    @staticmethod
    def _peer(side):
        return m.GUEST if side == m.HOST else m.HOST
