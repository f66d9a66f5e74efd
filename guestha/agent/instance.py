# SPDX-License-Identifier: Apache-2.0
"""One monitored instance: its lifecycle and its channel.

Theory of operation
-------------------
An :class:`Instance` lives in the agent's single I/O loop thread; it never
blocks and never calls libvirt, Nova or RabbitMQ itself.  It asks its
environment (the loop, :class:`Env`) to do that: to schedule a timer, to
watch a socket, to confirm the domain's state with libvirt, to hot-plug the
channel, to report a fault.

Two things drive it.  The **domain state** comes from libvirt (lifecycle
events and periodic reconciles): only a *running* domain is monitored; a
paused, migrating, shutting-down or suspended one is not, and a stopped one
is forgotten.  The **channel** is the host side of the virtio-serial port, a
UNIX socket that QEMU serves: the instance connects, synchronises (which
discards whatever an earlier agent left in the stream), invites the guest to
register, and then lets :class:`~guestha_guest.protocol.heartbeat.
HostHeartbeat` challenge it.  The protocol itself is a
:class:`~guestha_guest.protocol.session.HostSession`: the instance feeds it
what the socket returned and the time, and carries out its outputs (bytes
to write, whole lines only; the heartbeat's reports; the guest's
server-group messages).

The states, and what moves between them, are one table,
:data:`TRANSITIONS`: ``(state, input) -> (handler, next state)``, the
only place that decides the next state (a handler does the work of its
transition and returns nothing).  Where the next state depends on a fact,
the fact is an input: the domain runs with its guestha channel
(``running``) or without (``unplugged``); connecting to the channel's
socket succeeded (``connected``) or not (``refused``).  The other inputs:
``suspended``, ``stopped``, ``rebooted`` (domain), ``lost``,
``misbehaved`` (channel), ``synced``, ``registered``, ``exited`` (guest),
``timer``.

The instance's parts decide the rest, with no I/O, and it carries out
what they return:

* :class:`~guestha.agent.faults.FaultTracker` (:attr:`Instance.faults`):
  what the heartbeat's reports, the lost channel, a daemon registering
  again without exit and a guest that answers no resync after the agent
  started mean: suspicions, the domain's state to confirm with libvirt
  (:meth:`Env.confirm_running`), fault and recovery records to report.
* :class:`~guestha.agent.conduct.ChannelConduct` (:attr:`Instance.conduct`):
  the channel's rate budgets, its misbehaviour and the back-off of the
  resets it earns (the ``misbehaved`` input).
* :class:`~guestha.agent.grouprelay.GroupRelay` (:attr:`Instance.group`):
  the guest's broadcasts and status queries, relayed to the controller
  (:meth:`Env.relay`) or refused.
* :class:`~guestha.agent.linewriter.LineWriter` (:attr:`Instance.writer`):
  whole lines to the channel's socket, the rest queued (bounded) until it
  is writable.
* :func:`guestha.agent.instancestatus.describe` renders
  :meth:`Instance.status`.

Open faults are kept in the agent's state directory, so a restarted agent
still reports the recovery (the ``open_fault`` an instance starts with).
"""

import errno
import functools
import logging

from guestha.agent.conduct import ChannelConduct
from guestha.agent.conduct import RESET_DECAY
from guestha.agent import events as ev
from guestha.agent import faults as faults_mod
from guestha.agent import grouprelay
from guestha.agent import guestlog
from guestha.agent import instancestatus
from guestha.agent import linewriter
from guestha.agent import randomness
from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import session as sessions

LOG = logging.getLogger(__name__)

NO_CHANNEL = "NO_CHANNEL"      # running, no guestha channel (yet)
CONNECTING = "CONNECTING"      # connecting to the channel's socket
SYNCING = "SYNCING"            # connected, our sync unanswered
WAITING = "WAITING"            # synced, waiting for the guest's init
MONITORED = "MONITORED"        # registered: challenged every interval
EXITED = "EXITED"              # the guest said exit: not monitored
SUSPENDED = "SUSPENDED"        # paused, migrating, shutting down
STOPPED = "STOPPED"            # not running here any more


#: The lifecycle, ``(state, input) -> (handler, next state)``: the one
#: place that decides the next state.  A handler does the transition's
#: work (on the channel, through the loop, with the fault tracker) and
#: returns nothing; where the next state depends on a fact, the fact is
#: an input of its own (``running`` or ``unplugged``; ``connected`` or
#: ``refused``).  Inputs: ``running`` (with a guestha channel),
#: ``unplugged`` (without), ``suspended``, ``stopped``, ``rebooted`` (from
#: inside the guest) for the domain; ``connected``, ``refused``, ``lost``,
#: ``misbehaved`` (a reset) for the channel; ``synced``, ``registered``,
#: ``exited`` for the guest; ``timer``.
TRANSITIONS = {
    (NO_CHANNEL, "running"): ("_adopt", CONNECTING),
    (NO_CHANNEL, "unplugged"): ("_ask_hotplug", NO_CHANNEL),
    (NO_CHANNEL, "suspended"): ("_nothing", NO_CHANNEL),
    (NO_CHANNEL, "stopped"): ("_stop", STOPPED),
    (NO_CHANNEL, "rebooted"): ("_nothing", NO_CHANNEL),
    (NO_CHANNEL, "timer"): ("_nothing", NO_CHANNEL),

    (CONNECTING, "running"): ("_nothing", CONNECTING),
    (CONNECTING, "unplugged"): ("_unplugged", NO_CHANNEL),
    (CONNECTING, "suspended"): ("_suspend", SUSPENDED),
    (CONNECTING, "stopped"): ("_stop", STOPPED),
    (CONNECTING, "rebooted"): ("_nothing", CONNECTING),
    (CONNECTING, "connected"): ("_connected", SYNCING),
    (CONNECTING, "refused"): ("_connect_later", CONNECTING),
    (CONNECTING, "timer"): ("_connect_timer", CONNECTING),

    (SYNCING, "running"): ("_nothing", SYNCING),
    (SYNCING, "unplugged"): ("_unplugged", NO_CHANNEL),
    (SYNCING, "suspended"): ("_suspend", SUSPENDED),
    (SYNCING, "stopped"): ("_stop", STOPPED),
    (SYNCING, "rebooted"): ("_nothing", SYNCING),
    (SYNCING, "lost"): ("_lost", CONNECTING),
    (SYNCING, "misbehaved"): ("_reset", CONNECTING),
    (SYNCING, "synced"): ("_invite", WAITING),
    (SYNCING, "timer"): ("_sync_again", SYNCING),

    (WAITING, "running"): ("_nothing", WAITING),
    (WAITING, "unplugged"): ("_unplugged", NO_CHANNEL),
    (WAITING, "suspended"): ("_suspend", SUSPENDED),
    (WAITING, "stopped"): ("_stop", STOPPED),
    (WAITING, "rebooted"): ("_guest_reset", SYNCING),
    (WAITING, "lost"): ("_lost", CONNECTING),
    (WAITING, "misbehaved"): ("_reset", CONNECTING),
    (WAITING, "synced"): ("_nothing", WAITING),
    (WAITING, "registered"): ("_registered", MONITORED),
    (WAITING, "timer"): ("_heartbeat_timer", WAITING),

    (MONITORED, "running"): ("_nothing", MONITORED),
    (MONITORED, "unplugged"): ("_unplugged", NO_CHANNEL),
    (MONITORED, "suspended"): ("_suspend", SUSPENDED),
    (MONITORED, "stopped"): ("_stop", STOPPED),
    (MONITORED, "rebooted"): ("_guest_reset", SYNCING),
    (MONITORED, "lost"): ("_lost_monitored", CONNECTING),
    (MONITORED, "misbehaved"): ("_reset", CONNECTING),
    (MONITORED, "synced"): ("_nothing", MONITORED),
    (MONITORED, "registered"): ("_registered_again", MONITORED),
    (MONITORED, "exited"): ("_exited", EXITED),
    (MONITORED, "timer"): ("_heartbeat_timer", MONITORED),

    (EXITED, "running"): ("_nothing", EXITED),
    (EXITED, "unplugged"): ("_unplugged", NO_CHANNEL),
    (EXITED, "suspended"): ("_suspend", SUSPENDED),
    (EXITED, "stopped"): ("_stop", STOPPED),
    (EXITED, "rebooted"): ("_nothing", EXITED),
    (EXITED, "lost"): ("_lost", CONNECTING),
    (EXITED, "misbehaved"): ("_reset", CONNECTING),
    (EXITED, "synced"): ("_nothing", EXITED),
    (EXITED, "registered"): ("_registered", MONITORED),
    (EXITED, "timer"): ("_heartbeat_timer", EXITED),

    (SUSPENDED, "running"): ("_resume", CONNECTING),
    (SUSPENDED, "unplugged"): ("_unplugged", NO_CHANNEL),
    (SUSPENDED, "suspended"): ("_nothing", SUSPENDED),
    (SUSPENDED, "stopped"): ("_stop", STOPPED),
    (SUSPENDED, "rebooted"): ("_nothing", SUSPENDED),
    (SUSPENDED, "lost"): ("_close_quietly", SUSPENDED),
    (SUSPENDED, "misbehaved"): ("_reset", SUSPENDED),
    (SUSPENDED, "synced"): ("_nothing", SUSPENDED),
    (SUSPENDED, "timer"): ("_nothing", SUSPENDED),

    (STOPPED, "running"): ("_restart", CONNECTING),
    (STOPPED, "unplugged"): ("_restart_unplugged", NO_CHANNEL),
    (STOPPED, "suspended"): ("_suspend", SUSPENDED),
    (STOPPED, "stopped"): ("_nothing", STOPPED),
    (STOPPED, "rebooted"): ("_nothing", STOPPED),
    (STOPPED, "timer"): ("_nothing", STOPPED),
}

_RUNNING_STATES = (ev.RUNNING, ev.STARTING)
_SUSPENDED_STATES = (ev.PAUSED, ev.MIGRATING, ev.SHUTTING_DOWN,
                     ev.PMSUSPENDED)


def domain_input(state, channel_path=None):
    """The table input for a normalised domain state, and the path of the
    domain's guestha channel (None: it has none)."""
    if state in _RUNNING_STATES:
        return "unplugged" if channel_path is None else "running"
    if state in _SUSPENDED_STATES:
        return "suspended"
    return "stopped"


class Policy(object):
    """The operator's settings an instance needs (from ``[agent]``)."""

    def __init__(self, min_interval_ms=100, max_interval_ms=60000,
                 miss_threshold=1, unhealthy_threshold=1,
                 confirm_timeout=2.0, channel_lost_grace=3.0,
                 sync_retry_min=1.0, sync_retry_max=30.0,
                 max_bytes_per_second=32768, max_messages_per_second=50,
                 misbehaviour_limit=20, reset_backoff_max=60.0,
                 broadcasts_per_second=10, status_queries_per_second=5.0,
                 guest_log_lines_per_minute=10, fault_limit=3,
                 fault_window=600.0, output_buffer_bytes=256 * 1024):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    @classmethod
    def from_conf(cls, group):
        names = ("min_interval_ms", "max_interval_ms", "miss_threshold",
                 "unhealthy_threshold", "confirm_timeout",
                 "channel_lost_grace", "sync_retry_min", "sync_retry_max",
                 "max_bytes_per_second", "max_messages_per_second",
                 "misbehaviour_limit", "reset_backoff_max",
                 "broadcasts_per_second", "status_queries_per_second",
                 "guest_log_lines_per_minute", "fault_limit",
                 "fault_window", "output_buffer_bytes")
        return cls(**{n: getattr(group, n) for n in names})


class Env(object):
    """What an instance needs from the loop (the loop implements it)."""

    host = None

    def schedule(self, instance, when, urgent=False):
        """Call ``instance.tick`` at ``when`` if its ``wake_at`` is still
        ``when`` then; ``urgent``: a deadline that decides a fault, which
        the loop's batching must not make late."""
        raise NotImplementedError

    def open_channel(self, path):
        """A connected, non-blocking socket to the channel at ``path``;
        raises OSError."""
        raise NotImplementedError

    def watch(self, instance, sock):
        raise NotImplementedError

    def unwatch(self, sock):
        raise NotImplementedError

    def watch_writable(self, instance, sock, writable):
        """Also call ``instance.writable(now)`` when ``sock`` can take
        more bytes (``writable`` True), or stop that (False)."""
        raise NotImplementedError

    def confirm_running(self, instance, token):
        raise NotImplementedError

    def hotplug(self, instance):
        raise NotImplementedError

    def report(self, event):
        raise NotImplementedError

    def relay(self, method, **kwargs):
        raise NotImplementedError

    def faults_changed(self):
        raise NotImplementedError

    def wallclock(self):
        raise NotImplementedError

    def record_rtt(self, seconds):
        """A challenge was answered after ``seconds`` (for statistics)."""

    def monitoring_changed(self):
        """What :attr:`Instance.monitored` says changed: save it for the
        next start of the agent."""


class Instance(object):
    """One domain on this host, as the agent monitors it."""

    def __init__(self, uuid, env, policy, now, open_fault=None,
                 was_monitored=None):
        self.uuid = uuid
        self.env = env
        self.policy = policy
        self.state = STOPPED
        self.info = None
        self.note = None          # why not monitored, for the status
        self.sock = None
        # the protocol on the channel (a HostSession while connected)
        self.session = None
        self.wake_at = None
        self._connect_at = None
        self._connect_backoff = 0.5
        self._sync_at = None
        self._sync_backoff = policy.sync_retry_min
        # suspicions, faults and recoveries: it decides, we carry out
        # what it returns (_carry)
        self.faults = faults_mod.FaultTracker(
            uuid, env.host, policy, env.wallclock, open_fault=open_fault,
            monitored=was_monitored)
        self.answered_since_init = 0
        self.last_answer = None   # (monotonic time, healthy, reason)
        self.features = {}        # from Nova, when looked up
        self._hotplug_asked = False
        # {"interval_ms", "action"} of a guest registered here, kept by the
        # agent across its restarts (Env.monitoring_changed); an instance
        # monitored before this start of the agent must answer its first
        # resync within the detection bound, or it hung while we were away
        self.monitored = was_monitored
        self._restart_interval_ms = (was_monitored or {}).get("interval_ms")
        self._resync_deadline = None
        self.counters = {"challenges": 0, "answers": 0, "missed": 0,
                         "unhealthy": 0, "faults": 0, "protocol_errors": 0,
                         "dropped_bytes": 0, "resets": 0, "stale": 0,
                         "dropped_lines": 0, "discarded_lines": 0,
                         "refused_queries": 0, "log_suppressed": 0}
        # whole lines to the channel's socket (CLOSED while there is none)
        self.writer = linewriter.CLOSED
        self.rtt = None           # [answers, last, mean, max] (seconds)
        self._log = guestlog.LogBudget(policy.guest_log_lines_per_minute,
                                       now)
        # the guest's server-group requests to the controller
        self.group = grouprelay.GroupRelay(uuid, policy, now)
        # the guest's rate budgets, misbehaviour and reset back-off
        self.conduct = ChannelConduct(policy, now)
        self._discarded_seen = 0

    @property
    def conn(self):
        """The channel's protocol connection, or None."""
        return None if self.session is None else self.session.conn

    @property
    def hb(self):
        """The channel's heartbeat, or None."""
        return None if self.session is None else self.session.heartbeat

    @property
    def fault(self):
        """The open fault, ``{"id":..., "kind":...}``, or None."""
        return self.faults.fault

    @property
    def interval_ms(self):
        """The interval granted to the guest at its registration."""
        return self.faults.interval_ms

    # -- the table ---------------------------------------------------------

    def fire(self, kind, now, arg=None):
        handler, next_state = TRANSITIONS[(self.state, kind)]
        getattr(self, handler)(now, arg)
        old, self.state = self.state, next_state
        if old != next_state:
            LOG.debug("instance %s: %s -> %s on %s", self.uuid, old,
                      next_state, kind)
        self._reschedule(now)

    def domain(self, info, now, event=None):
        """A DomainUpdate: the domain's state and XML as libvirt sees it,
        after libvirt's ``event``."""
        self.info = info
        if event == "reboot":
            # a daemon that reboots with its guest is not hung: no deadline
            # from before the agent's start (in any state)
            self._restart_interval_ms = self._resync_deadline = None
        self.fire(domain_input(info.state, info.channel_path), now, info)
        if self.state == CONNECTING and self.sock is not None:
            # resumed with the channel's socket still open: connected
            self.fire("connected", now)
        if event == "reboot":
            # the guest reset itself (a reboot from inside, a watchdog):
            # its daemon is gone without exit; wait for it to register
            # again instead of counting missed answers
            self.fire("rebooted", now, info)

    def domain_gone(self, now):
        self.fire("stopped", now)

    # -- handlers ------------------------------------------------------------

    def _nothing(self, now, arg):
        pass

    def _adopt(self, now, info):
        """The domain runs with a channel: connect to it now."""
        self.note = None
        self._connect_at = now

    def _ask_hotplug(self, now, info):
        """The domain runs without a channel: ask for one, once."""
        if not self._hotplug_asked:
            self._hotplug_asked = True
            self.note = "no guestha channel"
            self.env.hotplug(self)

    def _unplugged(self, now, info):
        self._close()
        self.note = "channel removed"

    def hotplug_result(self, result, now):
        """The answer to our hot-plug request."""
        if result.outcome == "attached":
            self.note = "channel hot-plugged"
            LOG.info("instance %s: guestha channel hot-plugged at %s",
                     self.uuid, result.channel_path)
        else:
            self.note = result.message or result.outcome
            log = LOG.info if result.outcome == "not_enabled" else LOG.warning
            log("instance %s: not monitored: %s", self.uuid, self.note)
            if result.outcome == "error":
                # Nova or libvirt failed us: ask again at the next update
                # (the periodic reconcile brings one)
                self._hotplug_asked = False

    def _restart(self, now, info):
        """A (re)started domain with its channel."""
        self._start_over()
        self._adopt(now, info)

    def _restart_unplugged(self, now, info):
        """A (re)started domain without a channel: hot-plug again."""
        self._start_over()
        self._ask_hotplug(now, info)

    def _start_over(self):
        self.note = None
        self._hotplug_asked = False
        self._connect_backoff = 0.5

    def _connect_timer(self, now, arg):
        self._check_confirm(now)
        self._check_resync_deadline(now)

    def _open_channel(self, now):
        """Connect to the channel's socket (when :meth:`tick` finds it
        time): its outcome is the table's input."""
        try:
            sock = self.env.open_channel(self.info.channel_path)
        except OSError as exc:
            self.fire("refused", now, exc)
            return
        self.sock = sock
        self.env.watch(self, sock)
        self.writer = linewriter.LineWriter(
            sock, self.policy.output_buffer_bytes, self.counters,
            functools.partial(self.env.watch_writable, self, sock))
        self.fire("connected", now)

    def _connect_later(self, now, exc):
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            LOG.warning("instance %s: cannot connect to %s: %s",
                        self.uuid, self.info.channel_path, exc)
        self.note = "channel socket not available (%s)" % (
            errno.errorcode.get(exc.errno, exc.errno))
        self._connect_at = now + self._connect_backoff
        self._connect_backoff = min(self._connect_backoff * 2, 10.0)

    def _connected(self, now, arg):
        self._connect_backoff = 0.5
        self._connect_at = None
        self.note = None
        self._start_sync(now)

    def _start_sync(self, now):
        self.session = sessions.HostSession(
            self.uuid, self.policy.min_interval_ms,
            self.policy.max_interval_ms, rng=randomness.SHARED)
        self._discarded_seen = 0
        self._sync_backoff = self.policy.sync_retry_min
        if (self._restart_interval_ms is not None
                and self._resync_deadline is None):
            # monitored before this start of the agent: a guest that
            # answers no sync within the detection bound (the bound of a
            # monitored channel that closed) hung while we were away
            self._resync_deadline = (
                now + 2 * self._restart_interval_ms / 1000.0
                + self.policy.channel_lost_grace)
        self._apply(self.session.connect(now), now)
        self._sync_at = now + self._sync_backoff

    def _send_sync(self, now):
        self._apply(self.session.start_sync(now), now)
        self._sync_at = now + self._sync_backoff

    def _check_resync_deadline(self, now):
        if self._resync_deadline is None or now < self._resync_deadline:
            return
        self._resync_deadline = None
        interval_ms, self._restart_interval_ms = (
            self._restart_interval_ms, None)
        self._carry(self.faults.suspect(
            "missed", now, "no answer to the resync after the agent "
            "started; the guest was monitored every %d ms before"
            % interval_ms), now)

    def _sync_again(self, now, arg):
        self._check_confirm(now)
        self._check_resync_deadline(now)
        if self._sync_at is not None and now >= self._sync_at:
            self._sync_backoff = min(self._sync_backoff * 2,
                                     self.policy.sync_retry_max)
            self.note = "waiting for the guest daemon"
            self._send_sync(now)

    def _invite(self, now, arg):
        self._sync_at = None
        self.note = None
        self._apply(self.session.start_heartbeat(now), now)

    def _registered(self, now, reg):
        self.faults.registered(reg.interval_ms, reg.init.corrective_action)
        self.note = None
        self.answered_since_init = 0
        self._resync_deadline = None
        self._restart_interval_ms = None
        self._set_monitored({"interval_ms": reg.interval_ms,
                             "action": reg.init.corrective_action})
        if self._log.allow(now):
            LOG.info("instance %s: guest '%s' registered, interval %d ms "
                     "(asked %d), recommends %s%s", self.uuid,
                     guestlog.sanitise(reg.init.name), reg.interval_ms,
                     reg.init.interval_ms, reg.init.corrective_action,
                     self._log.take_suppressed())

    def _set_monitored(self, record):
        if record != self.monitored:
            self.monitored = self.faults.monitored = record
            self.env.monitoring_changed()

    def _registered_again(self, now, reg):
        crashed = self.answered_since_init > 0
        self._registered(now, reg)
        if crashed:
            # the daemon started over without saying exit: it crashed or
            # was killed; a retransmitted init comes before any answer
            self._carry(self.faults.suspect(
                faults_mod.CRASH, now,
                "guest daemon restarted without exit"), now)

    def _exited(self, now, out):
        if self._log.allow(now):
            LOG.info("instance %s: guest ended monitoring (%s)%s",
                     self.uuid, guestlog.sanitise(out.reason),
                     self._log.take_suppressed())
        self._set_monitored(None)
        self._carry(self.faults.exited(now), now)

    def _heartbeat_timer(self, now, arg):
        if self.session is not None:
            self._apply(self.session.tick(now), now)
        if self._resync_deadline is not None:
            self._check_resync_deadline(now)
        f = self.faults
        if f.suspicion is not None or f.lost_deadline is not None:
            self._check_confirm(now)  # (it has nothing to do otherwise)

    def _lost(self, now, arg):
        self._close()
        self._connect_at = now + self._connect_backoff
        self._carry(self.faults.check_lost(now), now)

    def _lost_monitored(self, now, arg):
        LOG.warning("instance %s: channel closed while monitored",
                    self.uuid)
        self.faults.channel_lost(now)
        self._lost(now, arg)

    def _close_quietly(self, now, arg):
        self._close()

    def _guest_reset(self, now, info):
        LOG.info("instance %s: the guest reset (rebooted from inside); "
                 "waiting for its daemon to register again", self.uuid)
        self._suspend(now, info)
        # same QEMU, same socket: start over with a fresh sync so the
        # guest registers afresh
        self._start_sync(now)
        self.note = "guest rebooted"

    def _suspend(self, now, info):
        self.faults.suspend()
        self._resync_deadline = None
        if self.session is not None:
            self.session.stop_heartbeat()
        self._sync_at = None
        self.note = "domain %s" % (info.state if info else "suspended")

    def _resume(self, now, info):
        # with the channel's socket still open (same QEMU, same socket),
        # domain() says connected at once: a fresh sync, so that the
        # guest registers afresh
        self.note = None
        if self.sock is None:
            self._connect_at = now

    def _stop(self, now, arg):
        self._close()
        self._resync_deadline = None
        self._restart_interval_ms = None
        self.note = None
        self._set_monitored(None)
        self._carry(self.faults.stopped(now), now)

    # -- the channel ----------------------------------------------------------

    def writable(self, now):
        """The loop says our socket can take more of what we queued."""
        self.writer.flush()

    def _send(self, msg):
        try:
            out = self.session.send(msg)
        except p.LocalProtocolError as exc:
            LOG.debug("instance %s: not sent: %s", self.uuid, exc)
            return False
        return self.writer.write(out.data)

    def readable(self, now):
        """The loop says our socket is readable."""
        if self.sock is None:
            return  # closed by writable() in the same wake-up
        try:
            data = self.sock.recv(16384)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.fire("lost", now)
            return
        conduct = self.conduct
        if not conduct.bytes.take(now, len(data)):
            self.counters["dropped_bytes"] += len(data)
            self._misbehaved(now, "sends more than %d bytes/s"
                             % self.policy.max_bytes_per_second)
            return
        # every line counts, the empty keep-alives and the ones dropped
        # while synchronising too (they never become events)
        lines = data.count(b"\n")
        if lines and not conduct.lines.take(now, lines):
            self.counters["dropped_bytes"] += len(data)
            self._misbehaved(now, "sends more than %d lines/s"
                             % self.policy.max_messages_per_second)
            return
        session = self.session
        # a read of one whole line (every answer of every round) need not
        # pass through the connection's buffer
        outputs = session.receive_line(data, now) if lines == 1 else None
        if outputs is not None:
            self._apply(outputs, now)
        else:
            try:
                session.receive_data(data, now)
            except p.LocalProtocolError:
                self.fire("misbehaved", now, "receive buffer overflow")
                return
            # line by line, as a reset for misbehaviour ends the channel
            while self.session is session:
                outputs = session.next_events(now)
                if outputs is p.NEED_DATA:
                    break
                self._apply(outputs, now)
        discarded = session.conn.discarded - self._discarded_seen
        if discarded > 0 and self.session is session:
            self._discarded_seen = session.conn.discarded
            self.counters["discarded_lines"] += discarded
            if not conduct.discards.take(now, discarded):
                self._misbehaved(now, "sends lines that are not the "
                                 "protocol while synchronising")

    def _bad_line(self, bad, now):
        self.counters["protocol_errors"] += 1
        # an error line is never answered, valid or not (issue 8)
        if bad.error.answerable and self.conduct.errors.take(now):
            try:
                self.writer.write(self.session.refuse(bad).data)
            except p.LocalProtocolError as exc:
                LOG.debug("instance %s: not sent: %s", self.uuid, exc)
        self._misbehaved(now, "protocol error: %s" % bad.error)

    def _event(self, event, now):
        # what the session leaves to us: the guest's heartbeat messages
        # and syncs are answered, the heartbeat's reports go to _apply
        if isinstance(event, p.Synced):
            self.fire("synced", now)
        elif isinstance(event, p.Broadcast):
            self._relay(self.group.broadcast(event, now))
        elif isinstance(event, p.StatusQuery):
            out = self.group.query(event, now)
            if type(out) is not grouprelay.Relay:
                self.counters["refused_queries"] += 1
            self._relay(out)
        elif isinstance(event, p.Error):
            if self._log.allow(now):
                LOG.info("instance %s: guest reports error %s: %s%s",
                         self.uuid, guestlog.sanitise(event.code),
                         guestlog.sanitise(event.message),
                         self._log.take_suppressed())

    def _relay(self, out):
        """Carry out the group relay's answer."""
        if type(out) is grouprelay.Relay:
            self.env.relay(out.method, **out.kwargs)
        else:
            self._send(out)  # the guest is refused

    def _apply(self, outputs, now):
        """Carry out the session's outputs."""
        for out in outputs:
            # the three outputs of every round first
            kind = type(out)
            if kind is sessions.Send:
                if out.sync:
                    # a resync makes whatever is still queued stale; only
                    # the rest of a line the guest has begun to receive
                    # is kept (the sync starts with a newline, so that
                    # line is not glued to it)
                    self.writer.trim()
                    self.writer.write(out.data)
                elif type(out.message) is p.Challenge:
                    # sent again next interval: dropped, not queued, when
                    # the guest does not read
                    self.counters["challenges"] += 1
                    self.writer.write(out.data, True)
                else:
                    self.writer.write(out.data)
            elif kind is hb.Answered:
                self._answered(out, now)
            elif kind is p.ChallengeResponse:
                pass  # (its report, Answered or Stale, follows)
            elif kind is hb.Registered:
                self.fire("registered", now, out)
            elif kind is hb.Missed:
                self._missed(out, now)
            elif kind is hb.Exited:
                self.fire("exited", now, out)
            elif kind is hb.Stale:
                self.counters["stale"] += 1
            elif kind is hb.Rejected:
                self.counters["protocol_errors"] += 1
            elif kind is sessions.BadLine:
                self._bad_line(out, now)
            else:
                self._event(out, now)

    # -- faults ---------------------------------------------------------------

    def _answered(self, out, now):
        counters = self.counters
        counters["answers"] += 1
        self.answered_since_init += 1
        rtt = self.rtt
        if rtt is None:
            self.rtt = [1, out.rtt, out.rtt, out.rtt]
        else:
            rtt[0] += 1
            rtt[1] = out.rtt
            rtt[2] += (out.rtt - rtt[2]) / min(rtt[0], 100)  # recent mean
            if out.rtt > rtt[3]:
                rtt[3] = out.rtt
        # a channel being reset or misbehaving does not colour the
        # agent-wide figures (its own are in its status); as
        # ChannelConduct.in_good_standing, without its call (once a round)
        conduct = self.conduct
        if (conduct.last_bad is None
                or now - max(conduct.last_bad, conduct.reset_until or 0.0)
                >= RESET_DECAY):
            self.env.record_rtt(out.rtt)
        healthy = out.healthy
        self.last_answer = (now, healthy, out.reason)
        if not healthy:
            counters["unhealthy"] += 1
        outputs = self.faults.answered(now, healthy, out.reason, out.action)
        if outputs:
            self._carry(outputs, now)
        # the next challenge is due one interval after this one was due,
        # which is before this one's deadline (our timer) when it went out
        # late
        self._reschedule(now)

    def _missed(self, out, now):
        self.counters["missed"] += 1
        self._carry(self.faults.missed(now), now)

    def confirmed(self, state, token, now):
        """libvirt's answer to :meth:`Env.confirm_running`."""
        outputs = self.faults.confirmed(token, state in _RUNNING_STATES, now,
                                        self.state, state)
        if outputs is None:
            return  # not (or no longer) asked
        if outputs:
            self._carry(outputs, now)
        elif state is None:
            self.fire("stopped", now)
        else:
            self.fire(domain_input(state), now, self.info)

    def _check_confirm(self, now):
        self._carry(self.faults.check(now, self.state), now)

    def _carry(self, outputs, now):
        """Carry out the fault tracker's outputs."""
        if not outputs:
            return
        for out in outputs:
            if type(out) is faults_mod.Confirm:
                self.env.confirm_running(self, out.token)
            else:
                if out.event["type"] == "fault":
                    self.counters["faults"] += 1
                self.env.report(out.event)
                self.env.faults_changed()

    # -- misbehaviour ---------------------------------------------------------

    def _misbehaved(self, now, what):
        count, reset = self.conduct.misbehaved(now)
        if count == 1 or count % 100 == 0:
            LOG.warning("instance %s: guest misbehaves: %s (%d in the last "
                        "minute)", self.uuid, guestlog.sanitise(what), count)
        if reset:
            self.fire("misbehaved", now, what)

    def _reset(self, now, why):
        """Close the channel and reopen it after a back-off."""
        self.counters["resets"] += 1
        backoff = self.conduct.reset(now)
        LOG.warning("instance %s: resetting the channel for %.0f s: %s",
                    self.uuid, backoff, guestlog.sanitise(why))
        self._close()
        self._connect_at = self.conduct.reset_until
        self.note = "channel reset: %s" % guestlog.sanitise(why)

    def _close(self):
        if self.sock is not None:
            self.env.unwatch(self.sock)
            self.sock.close()
            self.sock = None
        self.writer = linewriter.CLOSED
        self.session = None
        self._sync_at = None

    # -- timers ---------------------------------------------------------------

    def tick(self, now):
        if self.faults.release_at is not None:
            self._carry(self.faults.release(now), now)
        self.fire("timer", now)
        if (self.state == CONNECTING and self._connect_at is not None
                and now >= self._connect_at):
            self._open_channel(now)

    def _reschedule(self, now):
        # the earliest of the timers that apply (no lists: this runs after
        # every event of every instance), urgent while a deadline that
        # decides a fault is pending (the loop's batching does not make
        # it late; whichever timer comes first then fires on time too)
        when = None
        urgent = False
        state = self.state
        if state == SYNCING:
            when = self._sync_at
        elif state == CONNECTING:
            when = self._connect_at
        session = self.session
        if session is not None and session.heartbeat is not None:
            # (the host session's only timer is its heartbeat's: the next
            # challenge while IDLE, else a deadline)
            heartbeat = session.heartbeat
            t = heartbeat.next_timer()
            if t is not None:
                urgent = heartbeat.state != hb.IDLE
                if when is None or t < when:
                    when = t
        # (the fault tracker's deadlines, as its next_timer() without
        # the call)
        faults = self.faults
        if faults.suspicion is not None:
            urgent = True
            t = faults.suspicion.deadline
            if when is None or t < when:
                when = t
        t = faults.lost_deadline
        if t is not None:
            urgent = True
            if when is None or t < when:
                when = t
        t = self._resync_deadline
        if t is not None:
            urgent = True
            if when is None or t < when:
                when = t
        t = faults.release_at
        if t is not None and (when is None or t < when):
            when = t
        if when != self.wake_at:
            self.wake_at = when
            if when is not None:
                self.env.schedule(self, when, urgent)

    # -- server group deliveries (from the controller) ------------------------

    def deliver(self, msg):
        """Send a server-group message to the guest; False if not ready."""
        if self.session is None or self.session.state != p.READY:
            return False
        return self._send(msg)

    def status(self, now):
        """Our entry in the agent's status document."""
        return instancestatus.describe(self, now, self.env.wallclock())

    @property
    def restart_interval_ms(self):
        """The interval of a guest monitored before this start of the
        agent, until it answers a resync (or the deadline passes)."""
        return self._restart_interval_ms

    @property
    def resync_deadline(self):
        """When that guest must have answered, once connected."""
        return self._resync_deadline

    @property
    def output_queued(self):
        """Bytes waiting for the channel's socket to take them."""
        return len(self.writer.out)

    @property
    def log_suppressed(self):
        """Log lines about the guest suppressed by its budget."""
        return self._log.total_suppressed
