# SPDX-License-Identifier: Apache-2.0
"""Coordination of the controllers through tooz (``[coordination]
backend_url``): the one relay of Nova's state changes, and one controller
at a time taking over the work of dead ones.

Theory of operation
-------------------
Every controller gets every Nova notification (each listens in a pool of
its own, to keep its cache); one of them, the **relay**, tells the agents.
The relay is the holder of the tooz lock :data:`RELAY_LOCK`: each
controller tries to take it every second
(:data:`~guestha.server.keeper.RELAY_INTERVAL`), without waiting, and
keeps it by the coordinator's heartbeat.  When the holder dies its lock
expires (``[coordination] lock_timeout``; at once on a backend that ties
locks to a connection, such as MySQL) and the next try of another
controller takes it: a state change in between is recorded in the ledger
by the controllers that hear it, and the next relay tells it
(:meth:`guestha.server.groups.ServerGroups.tell_recorded`, see
doc/source/server.rst).  A controller that cannot reach the backend does not
relay: two relays would tell the peers twice.

Without a backend, :class:`LeaseRelay` elects the relay from the leases
in the ledger (the live controller with the smallest ``server_id``),
which needs every controller to share the ledger's database.

Taking over a dead controller's deliveries is decided in the database (an
event changes owner in one locked UPDATE, :meth:`Ledger.claim_orphans`);
the lock :data:`TAKEOVER_LOCK` only keeps the other controllers from
doing the same work at the same moment.
"""

import logging

from tooz import coordination as tooz_coordination

LOG = logging.getLogger(__name__)

RELAY_LOCK = b"guestha-server-relay"
TAKEOVER_LOCK = b"guestha-server-takeover"


class LeaseRelay(object):
    """The relay elected from the ledger's leases (no tooz backend)."""

    backend = None

    def __init__(self, ledger):
        self.ledger = ledger

    def start(self):
        pass

    def stop(self):
        pass

    def elect(self):
        """Whether this controller is the relay now, and who is."""
        live = self.ledger.live_servers()
        relay = live[0] if live else None
        return relay == self.ledger.server_id, relay

    def takeover(self, claim):
        return claim()


class ToozRelay(object):
    """The relay elected through a tooz lock (see the module docstring).

    :param backend_url: ``[coordination] backend_url``.
    :param member_id: this controller's ``server_id``.
    """

    def __init__(self, backend_url, member_id, lock_timeout=10,
                 coordinator=None):
        self.backend = backend_url.split(":", 1)[0]
        self.member_id = member_id
        self._coordinator = coordinator or tooz_coordination.get_coordinator(
            backend_url, member_id.encode("utf-8"),
            lock_timeout=lock_timeout)
        self._relay_lock = None
        self._held = False
        self._unreachable = False

    @classmethod
    def from_conf(cls, conf):
        group = conf.coordination
        return cls(group.backend_url, conf.server.server_id,
                   lock_timeout=group.lock_timeout)

    def start(self):
        # the heart keeps this member's locks alive between two ticks
        self._coordinator.start(start_heart=True)
        self._relay_lock = self._coordinator.get_lock(RELAY_LOCK)

    def stop(self):
        if self._held:
            try:
                self._relay_lock.release()
            except tooz_coordination.ToozError as exc:
                LOG.warning("coordination: relay lock not released (it "
                            "expires): %s", exc)
            self._held = False
        try:
            self._coordinator.stop()
        except tooz_coordination.ToozError as exc:
            LOG.warning("coordination: stop failed: %s", exc)

    def elect(self):
        """Take or keep the relay lock; whether this controller holds it
        (and who relays, as far as this controller knows)."""
        try:
            if self._held and not self._still_owner():
                LOG.warning("coordination: the relay lock expired")
                self._held = False
            if not self._held:
                self._held = bool(self._relay_lock.acquire(blocking=False))
            self._unreachable = False
        except tooz_coordination.ToozError as exc:
            # every try (each second) while it lasts: say it once
            (LOG.debug if self._unreachable else LOG.warning)(
                "coordination backend unreachable; not relaying: %s", exc)
            self._unreachable = True
            self._held = False
        return self._held, (self.member_id if self._held else "another")

    def _still_owner(self):
        still = getattr(self._relay_lock, "is_still_owner", None)
        return still() if still is not None else True

    def takeover(self, claim):
        """``claim()`` unless another controller is doing it now."""
        lock = self._coordinator.get_lock(TAKEOVER_LOCK)
        try:
            if not lock.acquire(blocking=False):
                return []
        except tooz_coordination.ToozError as exc:
            # the database still decides who gets each event
            LOG.warning("coordination backend unreachable: %s", exc)
            return claim()
        try:
            return claim()
        finally:
            try:
                lock.release()
            except tooz_coordination.ToozError as exc:
                LOG.warning("coordination: take-over lock not released "
                            "(it expires): %s", exc)


def from_conf(conf, ledger):
    if conf.coordination.backend_url:
        return ToozRelay.from_conf(conf)
    return LeaseRelay(ledger)
