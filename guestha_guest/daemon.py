# SPDX-License-Identifier: Apache-2.0
"""The reference guest daemon: one selector loop, no threads.

Theory of operation
-------------------
The loop (:class:`GuestDaemon`) runs these and nothing blocks it:

* the **channel** (:class:`~guestha_guest.channel.HostChannel`): the port
  (:mod:`guestha_guest.port`), bytes to and from the host, wired to the
  **session** (:class:`~guestha_guest.protocol.session.GuestSession`), the
  protocol, sans I/O: lines into messages with resynchronisation,
  registration and challenge answers, sync retries;
* **health** (:class:`~guestha_guest.healthsources.HealthSources`): hook
  scripts run as child processes (:class:`~guestha_guest.health.
  HookRunner`) and applications on the local API socket
  (:class:`~guestha_guest.appapi.AppServer`).  Both are polled and cached,
  so a challenge is answered at once from the last results: a hung hook or
  application makes the guest *unhealthy*, never late;
* the **server group** (:class:`~guestha_guest.relay.GroupRelay`): the
  applications' requests to the host and the host's answers and news.

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
first (a fresh one, at once) and sends ``exit`` after the ``sync_ack``
(the session's stop procedure); all of this within STOP_WAIT, after which
it stops anyway.  Stopping runs in the loop like everything else
(:meth:`GuestDaemon.stop` only sets a flag), so it is driven by
``tick(now)`` as the rest.
"""

import logging
import selectors
import signal
import socket
import time

from guestha_guest.channel import HostChannel
from guestha_guest.healthsources import HealthSources
from guestha_guest.protocol import session as sessions
from guestha_guest.relay import GroupRelay

LOG = logging.getLogger(__name__)

#: Seconds to wait for a sync_ack before syncing again, doubling up to
#: SYNC_RETRY_MAX (the session's policy).
SYNC_RETRY = sessions.SYNC_RETRY
SYNC_RETRY_MAX = sessions.SYNC_RETRY_MAX
#: Seconds a stopping daemon spends getting ``exit`` out: finishing a sync
#: in progress, then writing the line.
STOP_WAIT = 3.0


class GuestDaemon(object):
    """The guest daemon's loop and life cycle: start, run, stop (with
    ``exit``), close.

    :param port_spec: the port's device path, or ``unix-listen:PATH``.
    :param init: the :class:`~guestha_guest.protocol.Init` to register with.
    :param hooks: a :class:`~guestha_guest.health.HookRunner` or ``None``.
    :param apps: an :class:`~guestha_guest.appapi.AppServer` or ``None``
        (or set :attr:`apps` before :meth:`start`); its handler is
        :attr:`relay`.
    :param clock: monotonic clock, for tests.
    """

    def __init__(self, port_spec, init, hooks=None, apps=None,
                 clock=time.monotonic, hook_period_ms=0):
        self.init = init
        self.hooks = hooks
        self._clock = clock
        self.sel = selectors.DefaultSelector()
        self.health = HealthSources(init, hooks,
                                    hook_period_ms=hook_period_ms)
        self.session = sessions.GuestSession(init, self.health)
        self.relay = GroupRelay(lambda msg: self.channel.send(msg),
                                clock=clock)
        self.channel = HostChannel(port_spec, self.session, self.health,
                                   self.relay, clock=clock)
        self.port = self.channel.port
        self.apps = apps
        self._stop_requested = False
        self._stop_deadline = None
        self._running = False

    @property
    def apps(self):
        """The :class:`~guestha_guest.appapi.AppServer`, or None."""
        return self.relay.apps

    @apps.setter
    def apps(self, apps):
        # a health source and the relay's way to the applications
        self.health.apps = self.relay.apps = apps

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
        self.channel.open(self.sel, now)
        self._running = True

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

    def close(self):
        """Release the port, the sockets and the hooks (after the loop)."""
        if self.apps is not None:
            self.apps.stop()
        if self.hooks is not None:
            self.hooks.close()  # kills hooks still running
        self.channel.close()
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
        LOG.info("stopped")

    # -- stopping ------------------------------------------------------------

    def _begin_stop(self, now):
        self._stop_deadline = now + STOP_WAIT
        self.channel.say_exit(now)

    def _stop_step(self, now):
        """One step of stopping; returns True when done."""
        if self.channel.exit_done():
            return True
        if now >= self._stop_deadline:
            if self.session.stop_state != sessions.EXIT_SENT:
                LOG.warning("stopping without exit: the channel did not "
                            "synchronise within %.0f s; the host may "
                            "report missed heartbeats", STOP_WAIT)
            else:
                LOG.warning("stopping: the exit line was not written "
                            "within %.0f s", STOP_WAIT)
            return True
        return False

    # -- timers --------------------------------------------------------------

    def next_timer(self):
        # (while stopping the heartbeat does not tick: its timer would be
        # due for ever and spin the loop; the session's timer is then the
        # sync retry only)
        timers = [self.channel.next_timer(), self._stop_deadline]
        if self._stop_requested and self._stop_deadline is None:
            timers.append(self._clock())  # begin at once
        if self.hooks is not None:
            timers.append(self.hooks.next_deadline())
        timers = [t for t in timers if t is not None]
        return min(timers) if timers else None

    def tick(self, now):
        # read once: a signal handler (stop()) may set it at any point of
        # this tick, and a stop begun in a later tick is still in time
        stopping = self._stop_requested
        self.channel.poll(now)
        if self.hooks is not None:
            self.hooks.tick(now)
        if stopping and self._stop_deadline is None:
            self._begin_stop(now)  # the heartbeat stops ticking now
        self.channel.tick(now)
        if stopping and self._stop_step(now):
            self._running = False
