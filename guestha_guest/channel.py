# SPDX-License-Identifier: Apache-2.0
"""The guest's end of the channel: the port and the session, wired.

The port (:mod:`guestha_guest.port`) moves bytes to and from the host; the
session (:class:`~guestha_guest.protocol.session.GuestSession`) is the
protocol, sans I/O.  :class:`HostChannel` is the glue between them: what
the port reads goes into the session, what the session wants written goes
to the port, and the session's other outputs go where they belong: bad
lines are answered (within a :class:`~guestha_guest.ratelimit.
ReplyBudget`) and logged (rate-limited), the heartbeat's reports pace the
health sources, and server-group messages go to the relay.

It synchronises whenever the port opens, whenever traffic shows a host has
(re)appeared, and whenever a sync goes unanswered (the session's back-off).
Traffic cuts the back-off short: the first data after a silence starts a
new sync at once, so a host that appears while the back-off has reached
30 s is not kept waiting for it.
"""

import logging
import time

from guestha_guest import port as port_mod
from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import session as sessions
from guestha_guest.ratelimit import RateLimitedLog
from guestha_guest.ratelimit import ReplyBudget

LOG = logging.getLogger(__name__)


class HostChannel(object):
    """The port to the host and the guest session on it.

    :param port_spec: the port's device path, or ``unix-listen:PATH``.
    :param session: the :class:`~guestha_guest.protocol.session.
        GuestSession`.
    :param health: the :class:`~guestha_guest.healthsources.
        HealthSources`, told of registrations and answered challenges.
    :param relay: the :class:`~guestha_guest.relay.GroupRelay`, given
        every server-group message from the host (its errors included)
        and told of every new channel.
    :param clock: monotonic clock, for tests.
    """

    def __init__(self, port_spec, session, health, relay,
                 clock=time.monotonic):
        self.session = session
        self._health = health
        self._relay = relay
        self.port = port_mod.make_port(port_spec, self._on_data,
                                       self._on_host_connected,
                                       self._on_host_gone, clock=clock)
        self._rlog = RateLimitedLog(LOG, clock=clock)
        self._error_replies = ReplyBudget()
        self.stats = {"challenges": 0, "unhealthy": 0, "registrations": 0,
                      "protocol_errors": 0}

    def open(self, selector, now):
        """Open the port (or wait for it) and begin the first channel."""
        self.port.open(selector, now)
        if self.port.fd is None and isinstance(self.port,
                                               port_mod.DevicePort):
            LOG.info("waiting for port %s to appear", self.port.path)
        self._new_connection(now)

    def close(self):
        if isinstance(self.port, port_mod.UnixListenPort):
            self.port.shutdown()
        else:
            self.port.close()

    # -- time ----------------------------------------------------------------

    def poll(self, now):
        """Retry opening the port, or writing to it, if it is time."""
        port = self.port
        if port.retry_at is not None and now >= port.retry_at:
            if port.fd is None:
                if port.poll(now) and port.fd is not None:
                    self._new_connection(now)
            else:
                port.poll(now)

    def tick(self, now):
        """Fire the session's timers."""
        self.apply(self.session.tick(now), now)

    def next_timer(self):
        """When :meth:`poll` or :meth:`tick` must next be called."""
        timers = [t for t in (self.port.retry_at, self.session.next_timer())
                  if t is not None]
        return min(timers) if timers else None

    # -- stopping --------------------------------------------------------

    def say_exit(self, now):
        """Begin the session's stop procedure: ``exit`` goes out now, or
        after a fresh sync (without a port, nothing is said)."""
        outputs = self.session.exit(now, reachable=self.port.fd is not None)
        if self.session.stop_state == sessions.EXIT_PENDING:
            LOG.info("stopping: synchronising to send exit")
        self.apply(outputs, now)

    def exit_done(self):
        """Whether stopping need wait no more: ``exit`` is written, or
        there is nothing to say or nobody to say it to."""
        state = self.session.stop_state
        return (self.port.fd is None or state == sessions.STOPPED
                or (state == sessions.EXIT_SENT and not self.port.pending()))

    # -- the port's callbacks ------------------------------------------------

    def _new_connection(self, now):
        self._relay.forget()
        self.apply(self.session.connect(
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
            self.apply(self.session.start_sync(now), now)

    def _on_host_gone(self, now):
        LOG.info("host not connected")
        self.session.peer_gone()
        if self.port.fd is None and isinstance(self.port,
                                               port_mod.DevicePort):
            # the device went away (unplugged): a new one means new peers
            self._new_connection(now)

    def _on_data(self, data, now):
        self.apply(self.session.receive(data, now), now)

    # -- the session's outputs -----------------------------------------------

    def send(self, msg):
        """Send ``msg`` if the channel allows it; False if it could not."""
        try:
            out = self.session.send(msg)
        except p.LocalProtocolError as exc:
            LOG.debug("not sent: %s", exc)
            return False
        return self._write(out)

    def _write(self, out):
        return self.port.write(out.data, sync=out.sync)

    def apply(self, outputs, now):
        """Carry out the session's ``outputs``."""
        for out in outputs:
            kind = type(out)
            if kind is sessions.Send:
                self._write(out)
            elif kind is sessions.BadLine:
                self._bad_line(out, now)
            elif isinstance(out, p.Message):
                self._message(out)
            elif isinstance(out, hb.Acknowledged):
                self.stats["registrations"] += 1
                LOG.info("registered as %s, interval %d ms granted",
                         out.instance or "(instance not told)",
                         out.interval_ms)
                self._health.registered(out.interval_ms)
            elif isinstance(out, hb.ChallengeAnswered):
                self.stats["challenges"] += 1
                if not out.healthy:
                    self.stats["unhealthy"] += 1
                self._health.challenge_answered(now)
            elif isinstance(out, hb.HostError):
                self._rlog.warning(
                    "hb-" + out.error.code, "host refused: %s: %s",
                    out.error.code, out.error.message)

    def _bad_line(self, bad, now):
        exc = bad.error
        self.stats["protocol_errors"] += 1
        self._rlog.warning(exc.code, "bad message from host: %s", exc)
        # an error is never answered, valid or not (no ping-pong)
        if exc.answerable and self._error_replies.allow(now):
            self._write(self.session.refuse(bad))

    def _message(self, event):
        # (the session has answered syncs and fed the heartbeat, whose
        # reports apply handles: what is left is the server group's
        # traffic and the host's other errors)
        if isinstance(event, p.Error):
            if event.app == "server_group":
                self._relay.receive(event)
            elif event.app != "heartbeat":
                self._rlog.warning("host-error",
                                   "host reports an error: %s: %s",
                                   event.code, event.message)
        elif isinstance(event, (p.Broadcast, p.Notification, p.Status)):
            self._relay.receive(event)
