# SPDX-License-Identifier: Apache-2.0
"""The base layer: framing, resynchronisation and version negotiation.

Theory of operation
-------------------
A :class:`Connection` turns the bytes of one side of a channel into
messages and back, without doing any I/O itself (after h11): feed what the
socket or port returned to :meth:`receive_data`, then call
:meth:`next_event` until it returns :data:`NEED_DATA`; to send, call
:meth:`send` and write the bytes it returns.  A read of one whole line
while nothing is buffered (every answer of every heartbeat round) may go
to :meth:`receive_line` instead, which gives the same and skips the
buffer.

A virtio-serial stream outlives its peers: QEMU buffers what the host wrote
before a guest opened the port, a guest daemon that restarts finds the
previous daemon's half-read lines, an agent that reconnects first reads the
answer to a question its predecessor asked.  So every side synchronises when
it (re)connects and after every timeout: it sends ``sync`` with a fresh
nonce and discards everything it receives until the ``sync_ack`` carrying
that nonce arrives.  The stream is ordered, so whatever follows that ack was
sent after the peer saw our sync: it is current.  While synchronising, only
the peer's own ``sync`` gets through (so both sides can synchronise at once
without waiting on each other), and so does a base-layer ``error`` that
names our ``sync`` in ``ref`` (the peer refused it, for instance with
``unsupported_version`` and the versions it speaks); everything else is
dropped silently, bad lines included, as it is most likely stale.

The state machine, as a table (``_TRANSITIONS``), the one place that
decides the next state.  The input is what ``_classify`` makes of a line
that parses, ``bad_line`` for one that does not parse or is too long,
``start_sync`` for a call of :meth:`start_sync`, and ``end`` when the end
of the stream is reached (the lines before it consumed)::

    state   | input          | the line is                  | next    | action
    --------+----------------+------------------------------+---------+--------
    SYNCING | sync_ack_ours  | sync_ack with our nonce and  | READY   | synced
            |                | a version we support         |         |
    SYNCING | sync_ack_stale | any other sync_ack           | SYNCING | drop
    SYNCING | sync           | sync                         | SYNCING | deliver
    SYNCING | sync_refused   | base error, ref = our sync   | SYNCING | deliver
    SYNCING | status_part    | one part of a long status    | SYNCING | drop
    SYNCING | message        | any other message            | SYNCING | drop
    SYNCING | bad_line       | invalid or too long          | SYNCING | drop
    SYNCING | start_sync     |                              | SYNCING | sync
    SYNCING | end            |                              | CLOSED  | closed
    READY   | sync_ack_stale | sync_ack (an old answer)     | READY   | drop
    READY   | sync           | sync                         | READY   | deliver
    READY   | status_part    | one part of a long status    | READY   | gather
    READY   | message        | any other message            | READY   | deliver
    READY   | bad_line       | invalid or too long          | READY   | raise
    READY   | start_sync     |                              | SYNCING | sync
    READY   | end            |                              | CLOSED  | closed
    CLOSED  | end            | (asked again)                | CLOSED  | none
    CLOSED  | start_sync     |                              | CLOSED  | refuse

*synced* returns a :class:`Synced` event and sets the version; *deliver*
returns the message as the event (a delivered ``sync`` must be answered
with :meth:`answer_sync`); *gather* keeps a part of a status answer and
returns the whole :class:`~guestha_guest.protocol.messages.Status` with
its last part; *drop* counts the line in ``discarded``; *raise* raises the
:class:`RemoteProtocolError`; *sync* makes a new nonce and returns the
``sync`` line; *closed* returns :class:`ConnectionClosed` (*none*: it was
returned already, :data:`NEED_DATA`); *refuse* raises a
:class:`LocalProtocolError`.  No other input arrives in a state (a
``sync_refused`` needs a ``sync`` of ours outstanding, no line follows the
end of the stream).  Empty lines are keepalives, ignored in every state.

Lines longer than :data:`MAX_LINE` are never buffered whole: the excess is
skipped up to the next newline, and the line is reported once, as
``line_too_long``.  :attr:`buffered` counts the bytes of the complete lines
not yet consumed by :meth:`next_event` (without their newlines) plus those
of the partial line.  :meth:`receive_data` refuses a chunk whole, with a
:class:`LocalProtocolError` (drain, then feed again), when ``buffered``
plus the chunk's length exceeds ``max_buffer + MAX_LINE``, so ``buffered``
never exceeds that.  The report of an overlong line holds no bytes and is
not counted.
"""

import collections
import random

from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m

SYNCING = "SYNCING"
READY = "READY"
CLOSED = "CLOSED"


class _Sentinel(object):
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


#: Returned by :meth:`Connection.next_event` when it needs more bytes.
NEED_DATA = _Sentinel("NEED_DATA")
_TOO_LONG = _Sentinel("TOO_LONG")


class Synced(object):
    """Our ``sync`` was acknowledged: what follows is current."""

    def __init__(self, version, nonce):
        self.version = version
        self.nonce = nonce

    def __repr__(self):
        return "Synced(version=%r)" % (self.version,)


class ConnectionClosed(object):
    """The peer closed the stream (end of file)."""

    def __repr__(self):
        return "ConnectionClosed()"


# (state, input) -> (next state, action).  The inputs classify a parsed
# line (Connection._classify) or name a call; Connection._deliver,
# _bad_line, start_sync and next_event carry the actions out.
_TRANSITIONS = {
    (SYNCING, "sync_ack_ours"): (READY, "synced"),
    (SYNCING, "sync_ack_stale"): (SYNCING, "drop"),
    (SYNCING, "sync"): (SYNCING, "deliver"),
    (SYNCING, "sync_refused"): (SYNCING, "deliver"),
    (SYNCING, "status_part"): (SYNCING, "drop"),
    (SYNCING, "message"): (SYNCING, "drop"),
    (SYNCING, "bad_line"): (SYNCING, "drop"),
    (SYNCING, "start_sync"): (SYNCING, "sync"),
    (SYNCING, "end"): (CLOSED, "closed"),
    (READY, "sync_ack_stale"): (READY, "drop"),
    (READY, "sync"): (READY, "deliver"),
    (READY, "status_part"): (READY, "gather"),
    (READY, "message"): (READY, "deliver"),
    (READY, "bad_line"): (READY, "raise"),
    (READY, "start_sync"): (SYNCING, "sync"),
    (READY, "end"): (CLOSED, "closed"),
    (CLOSED, "end"): (CLOSED, "none"),
    (CLOSED, "start_sync"): (CLOSED, "refuse"),
}


class Connection(object):
    """One side of a guestha channel.

    :param role: :data:`~guestha_guest.protocol.messages.HOST` or
        :data:`~guestha_guest.protocol.messages.GUEST`: who *we* are.
    :param max_buffer: bound on received bytes waiting to be parsed, plus
        one line: see the module docstring.  At least :data:`MAX_LINE`.
    :param rng: source of nonces and the initial sequence number; any object
        with ``getrandbits(k)`` (``random.Random`` in tests).
    """

    def __init__(self, role, max_buffer=64 * 1024, rng=None):
        if role not in (m.HOST, m.GUEST):
            raise ValueError("role must be %r or %r" % (m.HOST, m.GUEST))
        self.role = role
        self.peer = m.GUEST if role == m.HOST else m.HOST
        self.max_buffer = max(max_buffer, m.MAX_LINE)
        # (random's SystemRandom is the one secrets re-exports, without
        # importing secrets: it imports hashlib, hmac and OpenSSL's
        # libcrypto, 3.7 MiB of the guest daemon's 20 MB)
        self._rng = rng or random.SystemRandom()
        self.state = SYNCING
        self.version = m.VERSION
        self._nonce = None
        self._sync_seq = None  # seq of our outstanding sync
        self._seq = self._rng.getrandbits(31)
        self._partial = bytearray()
        self._skipping = False
        self._lines = collections.deque()
        self._queued = 0
        self._eof = False
        self._status_parts = {}
        #: lines dropped while synchronising (stale or garbage)
        self.discarded = 0

    # -- receiving -------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes read from the channel; ``b""`` means end of stream."""
        if self._eof:
            raise LocalProtocolError("unexpected_message",
                                     "data received after end of stream")
        if not data:
            self._eof = True
            return
        # The partial line counts too (self.buffered, not self._queued):
        # a partial line completed by this chunk joins the queue, and
        # buffered could reach max_buffer + 2 * MAX_LINE.  Reading at most
        # max_buffer bytes after draining never hits this.
        if (self._queued + len(self._partial) + len(data)  # buffered
                > self.max_buffer + m.MAX_LINE):
            raise LocalProtocolError(
                "unexpected_message",
                "receive buffer full: call next_event() until NEED_DATA "
                "before feeding more")
        if type(data) is not bytes:
            data = bytes(data)  # (a line is queued as bytes)
        start = 0
        partial = self._partial
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
                del partial[:]
            elif len(partial) + nl - start >= m.MAX_LINE:
                self._lines.append(_TOO_LONG)
                del partial[:]
            elif partial:
                partial += data[start:nl]
                self._lines.append(bytes(partial))
                self._queued += len(partial)
                del partial[:]
            else:
                # (the usual case: the line is all in this chunk; as
                # _queue, without the call or the copy to the bytearray)
                self._lines.append(data[start:nl])
                self._queued += nl - start
            start = nl + 1
        if not self._skipping and start < len(data):
            if len(self._partial) + len(data) - start >= m.MAX_LINE:
                # no newline within the bound: report it once, then skip
                # the rest of this line whatever its length
                self._queue(_TOO_LONG)
                self._skipping = True
                del self._partial[:]
            else:
                self._partial += data[start:]

    def _queue(self, item):
        self._lines.append(item)
        if item is not _TOO_LONG:
            self._queued += len(item)

    @property
    def buffered(self):
        """Bytes received and not yet turned into events."""
        return self._queued + len(self._partial)

    def next_event(self):
        """The next event: a message, :class:`Synced`,
        :class:`ConnectionClosed` or :data:`NEED_DATA`.

        :raises RemoteProtocolError: for a bad line while READY.  The line
            is consumed; the connection stays usable, so the caller may
            answer with ``send(exc.to_message())`` and call again, unless
            ``exc.answerable`` is false (the bad line is an ``error``,
            which is never answered).
        """
        while self._lines:
            item = self._lines.popleft()
            if item is _TOO_LONG:
                self._bad_line(RemoteProtocolError(
                    "line_too_long", "line longer than %d bytes"
                    % m.MAX_LINE))
                continue
            self._queued -= len(item)
            event = self._line_event(item)
            if event is not None:
                return event
        if self._eof:
            self.state, action = _TRANSITIONS[(self.state, "end")]
            if action == "closed":
                return ConnectionClosed()
        return NEED_DATA

    def receive_line(self, data):
        """:meth:`receive_data` and :meth:`next_event` at once, for the
        usual read: ``data`` is one whole line (it ends with its only
        newline, and is not too long) and nothing is buffered, so the line
        need not pass through the buffer.

        :returns: what :meth:`next_event` would return after
            ``receive_data(data)`` (the line's event, or :data:`NEED_DATA`
            if it makes none), or None, having consumed nothing, if
            ``data`` is not such a read: then feed it to
            :meth:`receive_data`.
        :raises RemoteProtocolError: as :meth:`next_event`.
        """
        if (self._lines or self._partial or self._eof or self._skipping
                or len(data) > m.MAX_LINE or data[-1:] != b"\n"
                or data.count(b"\n") != 1):
            return None
        event = self._line_event(data[:-1])
        return NEED_DATA if event is None else event

    def _line_event(self, line):
        # one received line (without its newline): its event, or None
        line = line.strip()
        if not line:
            return None  # empty lines are allowed as keepalives
        try:
            msg = m.decode(line, self.peer)
        except RemoteProtocolError as exc:
            self._bad_line(exc)
            return None
        return self._deliver(msg)

    def _bad_line(self, exc):
        self.state, action = _TRANSITIONS[(self.state, "bad_line")]
        if action == "raise":
            raise exc
        self.discarded += 1

    def _classify(self, msg):
        if isinstance(msg, m.SyncAck):
            # "ours" only if it answers the sync we are waiting for, in a
            # version we offered
            if (self._nonce is not None and msg.nonce == self._nonce
                    and msg.version in m.SUPPORTED_VERSIONS):
                return "sync_ack_ours"
            return "sync_ack_stale"
        if isinstance(msg, m.Sync):
            return "sync"
        if (self._nonce is not None and isinstance(msg, m.Error)
                and msg.app == "base" and msg.ref is not None
                and msg.ref == self._sync_seq):
            # the peer refused our sync: the caller must learn why (e.g.
            # unsupported_version, with the versions the peer speaks)
            return "sync_refused"
        if msg.__class__ is m.Status and msg.parts > 1:
            return "status_part"
        return "message"

    def _deliver(self, msg):
        self.state, action = _TRANSITIONS[(self.state, self._classify(msg))]
        if action == "deliver":
            return msg
        if action == "drop":
            self.discarded += 1
            return None
        if action == "synced":
            self._nonce = self._sync_seq = None
            self.version = msg.version
            return Synced(msg.version, msg.nonce)
        return self._reassemble(msg)  # gather

    def _reassemble(self, part):
        # Only one status answer is assembled at a time: a part with another
        # ref starts afresh, so a peer cannot make us hold many.
        pending = self._status_parts
        if pending.get("ref") != part.ref or pending.get(
                "parts") != part.parts:
            pending.clear()
            pending.update(ref=part.ref, parts=part.parts, got={})
        pending["got"][part.part] = part
        # part numbers are 1..parts (decode checks), so this many distinct
        # ones are all of them; and at most STATUS_MEMBERS_PER_PART members
        # each, so the whole is a valid Status
        if len(pending["got"]) < part.parts:
            return None
        members = []
        for i in range(1, part.parts + 1):
            members.extend(pending["got"][i].members)
        pending.clear()
        whole = m.Status(ref=part.ref, members=members, group=part.group)
        whole.seq = part.seq
        return whole

    # -- sending ---------------------------------------------------------

    def start_sync(self, nonce=None):
        """Begin a resynchronisation; returns the bytes to write: an empty
        line, then the ``sync`` line.

        Call it on every (re)connect and after every timeout.  Until the
        matching ``sync_ack`` arrives, everything else received is dropped.
        """
        self.state, action = _TRANSITIONS[(self.state, "start_sync")]
        if action == "refuse":
            raise LocalProtocolError("unexpected_message",
                                     "connection is closed")
        self._nonce = nonce or "%016x" % self._rng.getrandbits(64)
        del self._partial[:]
        self._skipping = False
        self._status_parts.clear()
        sync = m.Sync(nonce=self._nonce, versions=list(m.SUPPORTED_VERSIONS))
        line = self.send(sync)
        self._sync_seq = sync.seq
        # The leading LF ends any torn line the peer still holds (from an
        # earlier writer, or our own line cut short), so that this sync is
        # not glued to it and lost; to the peer it is an empty keepalive.
        return b"\n" + line

    def answer_sync(self, sync):
        """The bytes that answer the peer's :class:`Sync` ``sync``: an
        empty line, then a ``sync_ack`` with the highest common version, or
        an ``unsupported_version`` error listing ours.

        The leading LF is there for the reason given in :meth:`start_sync`:
        the peer may hold a stale half-line (it drops its own when it starts
        a sync, but one may arrive after that), and the answer must not be
        glued to it.
        """
        common = set(sync.versions) & set(m.SUPPORTED_VERSIONS)
        if not common:
            return b"\n" + self.send(m.Error(
                code="unsupported_version",
                message="no common version; I speak %s"
                % list(m.SUPPORTED_VERSIONS),
                ref=sync.seq, versions=list(m.SUPPORTED_VERSIONS)))
        self.version = max(common)
        return b"\n" + self.send(m.SyncAck(nonce=sync.nonce,
                                           version=self.version))

    def send(self, msg):
        """Serialise ``msg``; returns the bytes to write.

        Sets ``msg.seq``.  A long :class:`Status` becomes several lines.
        :raises LocalProtocolError: if we may not send it now.
        """
        if self.role not in msg.SENDERS:
            raise LocalProtocolError(
                "unexpected_message", "a %s may not send %s"
                % (self.role, msg.TYPE))
        if self.state == CLOSED:
            raise LocalProtocolError("unexpected_message",
                                     "connection is closed")
        if self.state != READY and msg.APP != "base":
            raise LocalProtocolError(
                "unexpected_message",
                "channel not synchronised: only sync, sync_ack and error "
                "may be sent before the sync_ack arrives")
        if isinstance(msg, m.Status) and len(
                msg.members) > m.STATUS_MEMBERS_PER_PART:
            return self._send_status_parts(msg)
        # (as _next_seq, without the call: a challenge every round)
        msg.seq = seq = self._seq
        self._seq = (seq + 1) & m.MAX_SEQ
        return m.encode(msg, seq, self.version)

    def _send_status_parts(self, msg):
        per = m.STATUS_MEMBERS_PER_PART
        chunks = [msg.members[i:i + per]
                  for i in range(0, len(msg.members), per)]
        out = []
        for i, chunk in enumerate(chunks, 1):
            part = m.Status(ref=msg.ref, members=chunk, group=msg.group,
                            part=i, parts=len(chunks))
            part.seq = self._next_seq()
            out.append(m.encode(part, part.seq, self.version))
        msg.seq = part.seq
        return b"".join(out)

    def _next_seq(self):
        seq = self._seq
        self._seq = (self._seq + 1) & m.MAX_SEQ
        return seq
