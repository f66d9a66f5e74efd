# SPDX-License-Identifier: Apache-2.0
"""One side of a channel: the connection and the heartbeat, wired.

Theory of operation
-------------------
A :class:`~guestha_guest.protocol.connection.Connection` turns bytes into
messages and a heartbeat machine turns messages and times into answers and
reports; something has to route the one into the other: answer the peer's
``sync``, hand a ``Synced`` and the heartbeat's messages to the heartbeat,
encode what the heartbeat wants sent, start a synchronisation when it asks
for one.  A session does that for one side, so that every user of the
protocol (the guest daemon, the compute agent's instances, the test hosts
and guests, the benchmark farms) does only the I/O (after h11: bytes and
times in, bytes to write and events out):

* :meth:`receive_data` takes what the socket or port returned;
  :meth:`next_events` then returns the *outputs* of the next received line
  (a list, possibly empty) until it returns
  :data:`~guestha_guest.protocol.connection.NEED_DATA`; :meth:`receive`
  does both and returns every output at once;
* :meth:`tick` fires the timers that are due; :meth:`next_timer` says when
  it must be called next;
* :meth:`send` encodes a message of the caller's (server-group traffic).

The outputs, in the order they happen:

* :class:`Send`: bytes to write, in order, each a whole number of lines;
* every message received, as an event (the heartbeat's too: the session
  has answered them already, they are there for the caller to see);
* the heartbeat's reports (``Registered``, ``Answered``, ``Missed``...
  on the host, ``Acknowledged``, ``ChallengeAnswered``, ``HostError`` on
  the guest), :class:`~guestha_guest.protocol.connection.Synced`,
  :class:`~guestha_guest.protocol.connection.ConnectionClosed`;
* :class:`BadLine`: the peer sent a line that is not the protocol while
  the channel is synchronised.  The session does not answer it: replies
  to bad lines are rate-limited by the caller's policy
  (:meth:`refuse` makes the answer).

The guest session also owns the guest's synchronisation policy from the
specification: it repeats an unanswered ``sync`` after ``sync_retry``
seconds, doubling up to ``sync_retry_max``, and starts a fresh one at once
when data arrives while its ``sync`` has waited ``sync_retry`` or more.
How the host retries is the host's business (the compute agent has its
own settings), so the host session only starts a synchronisation when
asked to or when its heartbeat asks.

Stopping on purpose (the guest's :meth:`GuestSession.exit`) is a table of
its own, ``STOP_TRANSITIONS``: ``(stop state, input) -> (handler, next
state)``, the one place that decides where the stop procedure goes (its
handlers return outputs only).  The inputs are what :meth:`exit` makes of
the request (``stop``: synchronised and the host may hold a registration
of ours; ``stop_unsynced``: the same but the channel is synchronising;
``stop_silent``: nothing to say, or nobody to say it to), ``synced`` (a
``Synced``) and ``reset`` (:meth:`~GuestSession.connect` or
:meth:`~GuestSession.disconnect`: a new peer holds no registration)::

    state        | input         | next         | outputs
    -------------+---------------+--------------+---------------------------
    RUNNING      | stop          | EXIT_SENT    | exit
    RUNNING      | stop_unsynced | EXIT_PENDING | a fresh sync
    RUNNING      | stop_silent   | STOPPED      | none
    RUNNING      | synced        | RUNNING      | the heartbeat's (init)
    RUNNING      | reset         | RUNNING      | none
    EXIT_PENDING | synced        | EXIT_SENT    | exit (not init)
    EXIT_PENDING | reset         | STOPPED      | none
    EXIT_PENDING | stop_unsynced | EXIT_PENDING | none (its sync is out)
    EXIT_PENDING | stop_silent   | STOPPED      | none
    EXIT_SENT    | synced, reset, stop_silent  | EXIT_SENT | none
    STOPPED      | every input   | STOPPED      | none

Once stopping (any state but RUNNING) the heartbeat neither ticks nor
hears of a ``Synced``: it registers no more, and its silence watchdog does
not resynchronise.  The sync retries go on, so an ``exit`` waiting for a
lost ``sync_ack`` still gets out.  The pairs missing from the table cannot
happen: EXIT_PENDING's channel is synchronising until its ``synced``, and
after ``exit`` (EXIT_SENT) the heartbeat has nothing more to say.
"""

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import messages as m

NEED_DATA = c.NEED_DATA

#: Guest sync retry: seconds to wait for a ``sync_ack`` before syncing
#: again, doubling up to SYNC_RETRY_MAX.
SYNC_RETRY = 1.0
SYNC_RETRY_MAX = 30.0

# -- the guest's stop procedure (see the module docstring) -------------------

RUNNING = "RUNNING"            # not asked to stop
EXIT_PENDING = "EXIT_PENDING"  # asked; exit goes after a fresh sync's ack
EXIT_SENT = "EXIT_SENT"        # exit is out (handed to the caller)
STOPPED = "STOPPED"            # asked, with nothing to say: no exit

STOP_TRANSITIONS = {
    (RUNNING, "stop"): ("_send_exit", EXIT_SENT),
    (RUNNING, "stop_unsynced"): ("_sync_for_exit", EXIT_PENDING),
    (RUNNING, "stop_silent"): ("_nothing", STOPPED),
    (RUNNING, "synced"): ("_heartbeat_synced", RUNNING),
    (RUNNING, "reset"): ("_nothing", RUNNING),

    (EXIT_PENDING, "synced"): ("_send_exit", EXIT_SENT),
    # a new channel: its peer holds no registration of ours
    (EXIT_PENDING, "reset"): ("_nothing", STOPPED),
    # asked again: the sync for the exit is on its way already
    (EXIT_PENDING, "stop_unsynced"): ("_nothing", EXIT_PENDING),
    (EXIT_PENDING, "stop_silent"): ("_nothing", STOPPED),

    (EXIT_SENT, "synced"): ("_nothing", EXIT_SENT),
    (EXIT_SENT, "reset"): ("_nothing", EXIT_SENT),
    (EXIT_SENT, "stop_silent"): ("_nothing", EXIT_SENT),

    # (stop and stop_unsynced: a stop asked for while no peer could read,
    # asked again)
    (STOPPED, "stop"): ("_nothing", STOPPED),
    (STOPPED, "stop_unsynced"): ("_nothing", STOPPED),
    (STOPPED, "stop_silent"): ("_nothing", STOPPED),
    (STOPPED, "synced"): ("_nothing", STOPPED),
    (STOPPED, "reset"): ("_nothing", STOPPED),
}


class Send(object):
    """Bytes to write to the channel, whole lines, in order.

    ``sync``: they begin a synchronisation (an empty line and a ``sync``):
    a writer that buffers keeps only the latest such line not yet begun,
    and may drop the lines queued before it, which are stale now.
    ``message``: the message they encode, or for the answer to a peer's
    ``sync``, that ``Sync``; None for a sync of ours.
    """

    __slots__ = ("data", "message", "sync")

    def __init__(self, data, message=None, sync=False):
        self.data = data
        self.message = message
        self.sync = sync

    @property
    def droppable(self):
        """A line that may be dropped rather than queued when the peer
        does not read: a challenge, which the next interval repeats."""
        return type(self.message) is m.Challenge

    def __eq__(self, other):
        return (type(other) is Send and self.data == other.data
                and self.sync == other.sync)

    def __repr__(self):
        return "Send(%r%s)" % (self.data, ", sync=True" if self.sync else "")


class BadLine(object):
    """The peer sent a line that is not the protocol (``error``, a
    :class:`~guestha_guest.protocol.errors.RemoteProtocolError`)."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error

    def __repr__(self):
        return "BadLine(%r)" % (self.error,)


class _Session(object):
    """What both sides share: the connection, the routing of its events
    to the heartbeat, and the encoding of the heartbeat's outputs."""

    ROLE = None
    #: message types the heartbeat of this side takes
    HEARTBEAT_TYPES = ()
    #: whether it takes the peer's errors of class ``heartbeat`` too
    HEARTBEAT_ERRORS = False

    def __init__(self, rng=None, max_buffer=64 * 1024):
        self._rng = rng
        self._max_buffer = max_buffer
        self.conn = None
        self.heartbeat = None

    def _new_connection(self):
        self.conn = c.Connection(self.ROLE, max_buffer=self._max_buffer,
                                 rng=self._rng)

    @property
    def state(self):
        """The connection's state (SYNCING, READY, CLOSED), or None
        without a connection."""
        return None if self.conn is None else self.conn.state

    @property
    def discarded(self):
        """Lines the connection dropped while synchronising."""
        return 0 if self.conn is None else self.conn.discarded

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data, now):
        """Feed bytes read from the channel (``b""``: end of stream).

        :raises LocalProtocolError: the receive buffer is full (drain with
            :meth:`next_events` first).
        """
        self.conn.receive_data(data)

    def next_events(self, now):
        """The outputs of the next received line: a list (empty if the
        line made none), or NEED_DATA when no complete line is left."""
        conn = self.conn
        if conn is None:
            return NEED_DATA
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            return [BadLine(exc)]
        if event is NEED_DATA:
            return NEED_DATA
        return self._route(event, now)

    def _route(self, event, now):
        # the outputs of one event of the connection
        kind = type(event)
        if kind in self.HEARTBEAT_TYPES or (
                kind is m.Error and self.HEARTBEAT_ERRORS
                and event.app == "heartbeat"):
            if self.heartbeat is None:
                return [event]
            return self._heartbeat_outputs(
                self.heartbeat.receive(event, now), now, event)
        if kind is m.Sync:
            return [event, Send(self.conn.answer_sync(event), event)]
        if kind is c.Synced:
            return self._synced(event, now)
        return [event]

    def receive(self, data, now):
        """:meth:`receive_data` and every output it leads to."""
        outputs = []
        self.receive_data(data, now)
        while True:
            more = self.next_events(now)
            if more is NEED_DATA:
                return outputs
            outputs += more

    def _synced(self, event, now):
        if self.heartbeat is None:
            return [event]
        return self._heartbeat_outputs(self.heartbeat.synced(now), now,
                                       event)

    # -- sending -----------------------------------------------------------

    def send(self, msg):
        """Encode ``msg`` (sets its ``seq``): a :class:`Send`.

        :raises LocalProtocolError: it may not be sent now (not
            synchronised, no connection, not this side's message).
        """
        if self.conn is None:
            raise LocalProtocolError("unexpected_message", "not connected")
        return Send(self.conn.send(msg), msg)

    def start_sync(self, now):
        """Begin a synchronisation: the outputs (one :class:`Send`)."""
        data = self.conn.start_sync()
        return [Send(data, None, sync=True)]

    def _resync(self, now):
        # the heartbeat asks for a synchronisation
        return self.start_sync(now)

    def refuse(self, bad):
        """The answer to a :class:`BadLine`: a :class:`Send` of the
        ``error``, or None if the bad line must not be answered (it is an
        ``error`` itself)."""
        if not bad.error.answerable:
            return None
        return self.send(bad.error.to_message())

    # -- time --------------------------------------------------------------

    def tick(self, now):
        """Fire the timers that are due; returns the outputs."""
        if self.heartbeat is None:
            return []
        return self._heartbeat_outputs(self.heartbeat.tick(now), now)

    def next_timer(self):
        """When :meth:`tick` must next be called (None: no timer)."""
        return None if self.heartbeat is None else \
            self.heartbeat.next_timer()

    # -- the heartbeat's outputs -------------------------------------------

    def _heartbeat_outputs(self, results, now, event=None):
        """The heartbeat's ``results`` as outputs, after ``event`` (the
        message that caused them) if given.  Its list is rewritten in
        place (every round of every instance passes here: no new list)."""
        i = 0
        while i < len(results):
            out = results[i]
            if isinstance(out, m.Message):
                try:
                    results[i] = self.send(out)
                except LocalProtocolError:
                    # not synchronised (a resync is on its way, which
                    # will bring the heartbeat back); nothing to write
                    del results[i]
                    continue
            elif type(out) is hb.Resync:
                results[i:i + 1] = self._resync(now)
            i += 1
        if event is not None:
            results.insert(0, event)
        return results


class HostSession(_Session):
    """The host's side of one channel (one connection to QEMU's socket).

    The heartbeat starts when the caller says (:meth:`start_heartbeat`,
    typically at the first ``Synced`` of a connection) and can be stopped
    (:meth:`stop_heartbeat`, a paused domain) while the connection stays.
    Without a heartbeat, ``Synced`` and the guest's heartbeat messages are
    returned as events and nothing else is done with them.

    :param instance: the instance uuid told to the guest in ``init_ack``.
    :param min_interval_ms, max_interval_ms: the operator's bounds.
    :param rng: source of nonces, sequence numbers and tokens.
    """

    ROLE = m.HOST
    HEARTBEAT_TYPES = (m.Init, m.ChallengeResponse, m.Exit)

    def __init__(self, instance=None, min_interval_ms=100,
                 max_interval_ms=60000, rng=None, max_buffer=64 * 1024):
        super().__init__(rng=rng, max_buffer=max_buffer)
        self.instance = instance
        self.min_interval_ms = min_interval_ms
        self.max_interval_ms = max_interval_ms

    def connect(self, now, heartbeat=False):
        """A new connection: the outputs that begin its synchronisation.
        ``heartbeat``: with a fresh heartbeat, which the first ``Synced``
        starts (else none until :meth:`start_heartbeat`)."""
        self._new_connection()
        self.heartbeat = self._new_heartbeat() if heartbeat else None
        return self.start_sync(now)

    def _new_heartbeat(self):
        return hb.HostHeartbeat(
            self.min_interval_ms, self.max_interval_ms,
            instance=self.instance, rng=self._rng)

    def start_heartbeat(self, now):
        """A fresh heartbeat on the synchronised channel: it invites the
        guest to register.  Returns the outputs."""
        self.heartbeat = self._new_heartbeat()
        return self._heartbeat_outputs(self.heartbeat.synced(now), now)

    def stop_heartbeat(self):
        self.heartbeat = None

    def receive_line(self, data, now):
        """:meth:`receive_data` and :meth:`next_events` at once, for the
        read of every heartbeat round: ``data`` is one whole line and
        nothing is buffered (:meth:`Connection.receive_line
        <guestha_guest.protocol.connection.Connection.receive_line>`).

        :returns: the outputs of that line (a list, empty if it made
            none), or None, having consumed nothing, if ``data`` is not
            such a read: then :meth:`receive_data` and :meth:`next_events`
            as usual.
        """
        conn = self.conn
        if conn is None:
            return None
        try:
            event = conn.receive_line(data)
        except RemoteProtocolError as exc:
            return [BadLine(exc)]
        if event is None or event is NEED_DATA:
            return None if event is None else []
        return self._route(event, now)


class GuestSession(_Session):
    """The guest's side of the channel.

    The heartbeat lives as long as the session (a new connection resets
    it: a reopened port is a new channel).  Stopping on purpose
    (:meth:`exit`) follows the specification: ``exit`` at once if
    synchronised, else after the ``sync_ack`` of a fresh ``sync``;
    :attr:`stop_state` says how far it is (``STOP_TRANSITIONS``).

    :param init: the :class:`~guestha_guest.protocol.messages.Init` to
        register with.
    :param health: ``health(now) -> (healthy, reason, action)``, from
        cached results.
    """

    ROLE = m.GUEST
    HEARTBEAT_TYPES = (m.InitAck, m.Challenge)
    HEARTBEAT_ERRORS = True

    def __init__(self, init, health, rng=None, max_buffer=64 * 1024,
                 sync_retry=SYNC_RETRY, sync_retry_max=SYNC_RETRY_MAX):
        super().__init__(rng=rng, max_buffer=max_buffer)
        self.heartbeat = hb.GuestHeartbeat(init, health)
        self._sync_retry_first = sync_retry
        self._sync_retry_max = sync_retry_max
        #: seconds the current sync waits for its answer before another
        self.sync_retry = sync_retry
        self.sync_at = None        # when to repeat an unanswered sync
        self.sync_sent_at = None
        self._pending = []         # outputs of receive_data, not yet read
        #: the stop procedure's state: RUNNING, EXIT_PENDING, EXIT_SENT
        #: or STOPPED
        self.stop_state = RUNNING

    def connect(self, now, sync=True):
        """A new channel (the port opened or reopened, a host connected
        to a test socket): forget the registration, and synchronise
        (``sync`` false: not yet, there is no peer to write to)."""
        self._new_connection()
        self.heartbeat.reset()
        self.sync_retry = self._sync_retry_first
        self.sync_at = self.sync_sent_at = None
        del self._pending[:]
        self._fire_stop("reset", now)
        return self.start_sync(now) if sync else []

    def peer_gone(self):
        """Nobody reads the channel now (a port whose host went away, a
        test socket nobody is connected to): the unanswered ``sync`` is
        not repeated until data arrives or :meth:`start_sync`; the
        registration is kept."""
        self.sync_at = None

    def disconnect(self):
        """The channel is gone (no port, the host closed the test
        socket): nothing is received or sent until :meth:`connect`."""
        self.conn = None
        self.heartbeat.reset()
        self.sync_at = self.sync_sent_at = None
        del self._pending[:]
        self._fire_stop("reset", None)

    def start_sync(self, now, fresh=True):
        """Synchronise now; ``fresh``: with the retry delay back at its
        first value (traffic after a silence: a new peer may be there)."""
        if fresh:
            self.sync_retry = self._sync_retry_first
        self.sync_at = now + self.sync_retry
        self.sync_sent_at = now
        return super().start_sync(now)

    def _resync(self, now):
        # (the heartbeat's init retry or silence watchdog: the back-off
        # goes on)
        return self.start_sync(now, fresh=False)

    def receive_data(self, data, now):
        conn = self.conn
        if (conn is not None and conn.state == c.SYNCING
                and self.sync_sent_at is not None
                and now - self.sync_sent_at >= self._sync_retry_first):
            # a host is talking but our sync has had no answer for a
            # while: it was most likely lost; do not wait for the back-off
            self._pending += self.start_sync(now)
        conn.receive_data(data)

    def next_events(self, now):
        if self._pending:
            pending, self._pending = self._pending, []
            return pending
        return super().next_events(now)

    def _synced(self, event, now):
        self.sync_at = None
        self.sync_retry = self._sync_retry_first
        outputs = self._fire_stop("synced", now)
        outputs.insert(0, event)
        return outputs

    def tick(self, now):
        if self.conn is None:
            return []
        outputs = []
        if (self.sync_at is not None and now >= self.sync_at
                and self.conn.state == c.SYNCING):
            self.sync_retry = min(self.sync_retry * 2, self._sync_retry_max)
            outputs += self.start_sync(now, fresh=False)
        if self.stop_state != RUNNING:
            return outputs  # no init retries or resyncs by the heartbeat
        more = self._heartbeat_outputs(self.heartbeat.tick(now), now)
        return outputs + more if outputs else more

    def next_timer(self):
        if self.conn is None:
            return None
        hb_timer = (self.heartbeat.next_timer()
                    if self.stop_state == RUNNING else None)
        timers = [t for t in (self.sync_at, hb_timer) if t is not None]
        return min(timers) if timers else None

    # -- stopping on purpose -----------------------------------------------

    def says_exit(self):
        """Whether the host may hold a registration of ours now (so a stop
        would say ``exit``)."""
        return self.conn is not None and self.heartbeat.says_exit()

    def exit(self, now, reachable=True):
        """Stop on purpose: the outputs that get ``exit`` out, now or after
        a fresh sync's ``sync_ack`` (:attr:`stop_state` is then EXIT_SENT
        or EXIT_PENDING), or none if there is nothing to say (STOPPED).
        ``reachable`` false: no peer can read the channel now (no port, no
        host connected), so nothing is said.  From now on the heartbeat
        neither ticks nor registers."""
        if not reachable or not self.says_exit():
            kind = "stop_silent"
        elif self.conn.state == c.READY:
            kind = "stop"
        else:
            kind = "stop_unsynced"
        return self._fire_stop(kind, now)

    def _fire_stop(self, kind, now):
        handler, next_state = STOP_TRANSITIONS[(self.stop_state, kind)]
        outputs = getattr(self, handler)(now)
        self.stop_state = next_state
        return outputs

    def _nothing(self, now):
        return []

    def _heartbeat_synced(self, now):
        return self._heartbeat_outputs(self.heartbeat.synced(now), now)

    def _sync_for_exit(self, now):
        # the sync in progress may be lost or far in its back-off: a fresh
        # one now, and exit after its sync_ack
        return self.start_sync(now)

    def _send_exit(self, now):
        # (not init, even if the heartbeat would: we are leaving)
        return self._heartbeat_outputs(self.heartbeat.exit(now), now)
