# SPDX-License-Identifier: Apache-2.0
"""The reference guest daemon: one selector loop, no threads.

Theory of operation
-------------------
The loop owns four things and nothing blocks it:

* the **port** (:mod:`guestha_guest.port`): bytes to and from the host;
* the **session** (:class:`~guestha_guest.protocol.session.
  GuestSession`): the protocol, sans I/O: lines into messages with
  resynchronisation, registration and challenge answers, sync retries;
* **health**: hook scripts run as child processes
  (:class:`~guestha_guest.health.HookRunner`) and applications on the local
  API socket (:class:`~guestha_guest.appapi.AppServer`).  Both are polled
  and cached, so a challenge is answered at once from the last results: a
  hung hook or application makes the guest *unhealthy*, never late.

The daemon synchronises whenever it opens the port, whenever traffic shows
a host has (re)appeared, and whenever a sync goes unanswered (with
back-off).  Traffic cuts the back-off short: the first data after a silence
starts a new sync at once, and so does any data received while a sync has
been waiting for its answer for SYNC_RETRY or more, so a host that appears
while the back-off has reached 30 s is not kept waiting for it.  A host
that starts over (a restarted agent) invites the guest with
``not_registered`` and it registers again; a host that stops challenging is
noticed by the heartbeat's silence watchdog.

On SIGTERM it sends ``exit`` so that stopping the daemon on purpose is not
a fault.  If the channel is resynchronising then, it finishes the sync
first (a fresh one, at once) and sends ``exit`` after the ``sync_ack``;
all of this within STOP_WAIT, after which it stops anyway.  Stopping runs
in the loop like everything else (:meth:`stop` only sets a flag), so it is
driven by ``tick(now)`` as the rest.
"""

import base64
import logging
import selectors
import signal
import socket
import time

from guestha_guest import port as port_mod
from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import session as sessions

LOG = logging.getLogger(__name__)

#: Seconds to wait for a sync_ack before syncing again, doubling up to
#: SYNC_RETRY_MAX (the session's policy).
SYNC_RETRY = sessions.SYNC_RETRY
SYNC_RETRY_MAX = sessions.SYNC_RETRY_MAX
#: Server-group requests remembered to route the host's answers back.
MAX_PENDING = 256
#: Seconds a stopping daemon spends getting ``exit`` out: finishing a sync
#: in progress, then writing the line.
STOP_WAIT = 3.0


class RateLimitedLog(object):
    """At most ``burst`` messages per ``period`` seconds per key, so a host
    (or a broken peer) cannot flood the guest's journal."""

    def __init__(self, logger, burst=5, period=60.0, clock=time.monotonic):
        self._log = logger
        self._burst = burst
        self._period = period
        self._clock = clock
        self._seen = {}

    def warning(self, key, fmt, *args):
        now = self._clock()
        start, count = self._seen.get(key, (now, 0))
        if now - start > self._period:
            start, count = now, 0
        count += 1
        self._seen[key] = (start, count)
        if count <= self._burst:
            self._log.warning(fmt, *args)
        elif count == self._burst + 1:
            self._log.warning("%s: further messages suppressed for %d s",
                              key, self._period)


class ReplyBudget(object):
    """A token bucket: at most ``rate`` error replies a second, bursts of
    ``burst``, so a broken host cannot make us flood the channel back."""

    def __init__(self, rate=2.0, burst=10.0):
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = None

    def allow(self, now):
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens
                               + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class GuestDaemon(object):
    """The guest daemon.

    :param port_spec: the port's device path, or ``unix-listen:PATH``.
    :param init: the :class:`~guestha_guest.protocol.Init` to register with.
    :param hooks: a :class:`~guestha_guest.health.HookRunner` or ``None``.
    :param apps: an :class:`~guestha_guest.appapi.AppServer` or ``None``;
        this daemon is its handler.
    :param clock: monotonic clock, for tests.
    """

    def __init__(self, port_spec, init, hooks=None, apps=None,
                 clock=time.monotonic, hook_period_ms=0):
        self.init = init
        self.hooks = hooks
        self.apps = apps
        self._clock = clock
        self._hook_period_ms = hook_period_ms
        self.sel = selectors.DefaultSelector()
        self.port = port_mod.make_port(port_spec, self._on_data,
                                       self._on_host_connected,
                                       self._on_host_gone, clock=clock)
        self.session = sessions.GuestSession(init, self._health)
        self._stop_requested = False
        self._stop_deadline = None
        self._pending = {}  # seq of a server-group request -> (client, id)
        self._running = False
        self._rlog = RateLimitedLog(LOG, clock=clock)
        self._error_replies = ReplyBudget()
        self.stats = {"challenges": 0, "unhealthy": 0, "registrations": 0,
                      "protocol_errors": 0}
        if hooks is not None:
            hooks.set_period(self._period_s(init.interval_ms))

    # -- life cycle ----------------------------------------------------------

    def start(self):
        now = self._clock()
        # a signal handler only sets a flag; this pair wakes the select()
        # so that SIGTERM is acted on at once
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._woken)
        if self.apps is not None:
            self.apps.start(self.sel)
        self.port.open(self.sel, now)
        if self.port.fd is None and isinstance(self.port,
                                               port_mod.DevicePort):
            LOG.info("waiting for port %s to appear", self.port.path)
        self._new_connection(now)
        self._running = True

    @property
    def conn(self):
        """The protocol connection of the current channel."""
        return self.session.conn

    @property
    def heartbeat(self):
        return self.session.heartbeat

    def run(self):
        """Run until :meth:`stop` is called (e.g. from a signal handler)
        and the ``exit`` is out; then close everything."""
        if not self._running:
            self.start()
        while self._running:
            self.run_once()
        self.close()

    def run_once(self, max_wait=1.0):
        now = self._clock()
        deadline = self.next_timer()
        wait = max_wait if deadline is None else min(max_wait,
                                                     max(0.0, deadline - now))
        for key, mask in self.sel.select(wait):
            key.data(mask)
        self.tick(self._clock())

    def stop(self):
        """Ask the loop to stop: it sends ``exit`` (see STOP_WAIT), then
        :meth:`run` returns.  Only sets a flag: safe from a signal handler
        or another thread."""
        self._stop_requested = True

    @property
    def running(self):
        """False once the stop procedure has finished."""
        return self._running

    def install_signal_wakeup(self):
        """Make signals wake the loop (call from the main thread)."""
        signal.set_wakeup_fd(self._wake_w.fileno(),
                             warn_on_full_buffer=False)

    def _woken(self, mask):
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    # -- stopping ------------------------------------------------------------

    def _begin_stop(self, now):
        self._stop_deadline = now + STOP_WAIT
        # (without a port, no host can hold a registration of ours)
        outputs = self.session.exit(now, reachable=self.port.fd is not None)
        if self.session.stop_state == sessions.EXIT_PENDING:
            LOG.info("stopping: synchronising to send exit")
        self._apply(outputs, now)

    def _stop_step(self, now):
        """One step of stopping; returns True when done."""
        state = self.session.stop_state
        if self.port.fd is None or state == sessions.STOPPED:
            return True
        exit_sent = state == sessions.EXIT_SENT
        if exit_sent and not self.port.pending():
            return True
        if now >= self._stop_deadline:
            if not exit_sent:
                LOG.warning("stopping without exit: the channel did not "
                            "synchronise within %.0f s; the host may "
                            "report missed heartbeats", STOP_WAIT)
            else:
                LOG.warning("stopping: the exit line was not written "
                            "within %.0f s", STOP_WAIT)
            return True
        return False

    def close(self):
        """Release the port, the sockets and the hooks (after the loop)."""
        if self.apps is not None:
            self.apps.stop()
        if self.hooks is not None:
            self.hooks.close()  # kills hooks still running
        if isinstance(self.port, port_mod.UnixListenPort):
            self.port.shutdown()
        else:
            self.port.close()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
        LOG.info("stopped")

    # -- timers --------------------------------------------------------------

    def next_timer(self):
        timers = [self.port.retry_at, self._stop_deadline]
        if not self._stop_requested:
            timers.append(self.session.next_timer())
        elif self._stop_deadline is None:
            timers.append(self._clock())  # begin at once
        else:
            # (while stopping the heartbeat does not tick: its timer
            # would be due for ever and spin the loop; the session's
            # timer is then the sync retry only)
            timers.append(self.session.next_timer())
        if self.hooks is not None:
            timers.append(self.hooks.next_deadline())
        timers = [t for t in timers if t is not None]
        return min(timers) if timers else None

    def tick(self, now):
        if self.port.retry_at is not None and now >= self.port.retry_at:
            if self.port.fd is None:
                if self.port.poll(now) and self.port.fd is not None:
                    self._new_connection(now)
            else:
                self.port.poll(now)
        if self.hooks is not None:
            self.hooks.tick(now)
        if self._stop_requested and self._stop_deadline is None:
            self._begin_stop(now)  # the heartbeat stops ticking now
        self._apply(self.session.tick(now), now)
        if self._stop_requested and self._stop_step(now):
            self._running = False

    # -- the channel ---------------------------------------------------------

    def _new_connection(self, now):
        self._pending.clear()
        self._apply(self.session.connect(
            now, sync=self.port.fd is not None), now)

    def _on_host_connected(self, now):
        # Traffic after silence (the first data after 0-byte reads; in
        # unix-listen mode, a host connecting): whoever is there now may
        # be a new peer, so synchronise at once, even if a sync is in
        # progress: it may have been lost while nobody read, and its
        # retry may be 30 s away.  The registration is kept, as on a real
        # port: a new host invites us to register again.
        LOG.info("host connected")
        if self.port.fd is not None:
            self._apply(self.session.start_sync(now), now)

    def _on_host_gone(self, now):
        LOG.info("host not connected")
        self.session.peer_gone()
        if self.port.fd is None and isinstance(self.port,
                                               port_mod.DevicePort):
            # the device went away (unplugged): a new one means new peers
            self._new_connection(now)

    def _on_data(self, data, now):
        self._apply(self.session.receive(data, now), now)

    def _bad_line(self, bad, now):
        exc = bad.error
        self.stats["protocol_errors"] += 1
        self._rlog.warning(exc.code, "bad message from host: %s", exc)
        # an error is never answered, valid or not (no ping-pong)
        if exc.answerable and self._error_replies.allow(now):
            self._write(self.session.refuse(bad))

    def _dispatch(self, event, now):
        # (the session has answered syncs and fed the heartbeat, whose
        # reports _apply handles: what is left is the server group's
        # traffic and the host's other errors)
        if isinstance(event, p.Error) and event.app == "server_group":
            self._route_error(event)
        elif isinstance(event, p.Error) and event.app != "heartbeat":
            self._rlog.warning("host-error", "host reports an error: %s: %s",
                               event.code, event.message)
        elif isinstance(event, p.Broadcast):
            self._publish("broadcast", {
                "op": "broadcast", "from": event.sender,
                "payload": base64.b64encode(event.payload).decode("ascii")})
        elif isinstance(event, p.Notification):
            self._publish("notification", {
                "op": "notification", "instance": event.instance,
                "state": event.state, "event": event.event})
        elif isinstance(event, p.Status):
            self._answer_status(event)

    def _send(self, msg):
        """Send ``msg`` if the channel allows it; False if it could not."""
        try:
            out = self.session.send(msg)
        except p.LocalProtocolError as exc:
            LOG.debug("not sent: %s", exc)
            return False
        return self._write(out)

    def _write(self, out):
        return self.port.write(out.data, sync=out.sync)

    def _apply(self, outputs, now):
        for out in outputs:
            kind = type(out)
            if kind is sessions.Send:
                self._write(out)
            elif kind is sessions.BadLine:
                self._bad_line(out, now)
            elif isinstance(out, p.Message):
                self._dispatch(out, now)
            elif isinstance(out, hb.Acknowledged):
                self.stats["registrations"] += 1
                LOG.info("registered as %s, interval %d ms granted",
                         out.instance or "(instance not told)",
                         out.interval_ms)
                if self.hooks is not None:
                    self.hooks.set_period(self._period_s(out.interval_ms))
            elif isinstance(out, hb.ChallengeAnswered):
                self.stats["challenges"] += 1
                if not out.healthy:
                    self.stats["unhealthy"] += 1
                if self.apps is not None:
                    self.apps.send_checks(now)
            elif isinstance(out, hb.HostError):
                self._rlog.warning(
                    "hb-" + out.error.code, "host refused: %s: %s",
                    out.error.code, out.error.message)

    # -- health --------------------------------------------------------------

    def _period_s(self, interval_ms):
        return (self._hook_period_ms or interval_ms) / 1000.0

    def _health(self, now):
        reasons = []
        for source in (self.hooks, self.apps):
            if source is None:
                continue
            if source is self.hooks:
                healthy, reason = source.result(now)
            else:
                healthy, reason = source.health(now)
            if not healthy:
                reasons.append(reason or "unhealthy")
        if not reasons:
            return True, None, None
        return False, "; ".join(reasons), self.init.corrective_action

    # -- server group (the AppServer's handler interface) --------------------

    def _remember(self, seq, client, req_id):
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[seq] = (client, req_id)

    def _refuse(self, client, req_id, code, message):
        msg = {"op": "error", "code": code, "message": message}
        if req_id is not None:
            msg["id"] = req_id
        self.apps.reply(client, msg)

    def on_broadcast(self, client, payload, req_id):
        msg = p.Broadcast(payload=payload)
        if not self._send(msg):
            self._refuse(client, req_id, "unavailable",
                         "the host channel is not ready")
            return
        self._remember(msg.seq, client, req_id)
        reply = {"op": "ok"}
        if req_id is not None:
            reply["id"] = req_id
        self.apps.reply(client, reply)

    def on_status_query(self, client, req_id):
        msg = p.StatusQuery()
        if not self._send(msg):
            self._refuse(client, req_id, "unavailable",
                         "the host channel is not ready")
            return
        self._remember(msg.seq, client, req_id)

    def _route_error(self, error):
        client, req_id = self._pending.pop(error.ref, (None, None))
        if client is None or self.apps is None:
            self._rlog.warning("sg-error", "host refused a server-group "
                               "message: %s: %s", error.code, error.message)
            return
        self._refuse(client, req_id, error.code, error.message)

    def _answer_status(self, status):
        members = [m.to_wire() for m in status.members]
        client, req_id = self._pending.pop(status.ref, (None, None))
        msg = {"op": "status", "members": members}
        if status.group:
            msg["group"] = status.group
        if client is not None and self.apps is not None:
            mine = dict(msg)
            if req_id is not None:
                mine["id"] = req_id
            self.apps.reply(client, mine)
        self._publish("status", msg, skip=client)

    def _publish(self, event, msg, skip=None):
        if self.apps is not None:
            self.apps.publish(event, msg, skip=skip)
