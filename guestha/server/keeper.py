# SPDX-License-Identifier: Apache-2.0
"""The ledger keeper: the controller's periodic ledger work, in one thread.

Every :data:`FLUSH_INTERVAL` it writes the delivery outcomes queued in
batches, settles failed commits and dispatches the events other
controllers handed to this one (they follow earlier events of their
instance that this one owes: :meth:`Ledger.take_handed`); it renews
this controller's lease and takes over the work of dead controllers
(after a database failure, only once the others had a lease's time to
renew); it elects the relay of Nova's state changes
(:mod:`guestha.server.coordination`) and prunes old events.  What it
dispatches again goes through :class:`~guestha.server.deliveries.
Deliveries`.
"""

import logging
import threading
import time

from guestha.db import api as db_api
from guestha.server import coordination as coordination_mod
from guestha.server import ledger as ledger_mod

LOG = logging.getLogger(__name__)

#: Seconds between two writes of the delivery outcomes.
FLUSH_INTERVAL = 0.2
#: Seconds between two prunes of the ledger.
PRUNE_INTERVAL = 600.0
#: Seconds between two tries to take (or keep) the relay: when the relay
#: dies, state changes are told late, by the next relay from the ledger,
#: after its lock expired and the next try of another controller (see
#: doc/source/server.rst).
RELAY_INTERVAL = 1.0


class LedgerKeeper(object):
    """The ledger's periodic work, in one thread."""

    def __init__(self, ledger, deliveries, retention, lease,
                 clock=time.monotonic, coordination=None):
        self.ledger = ledger
        self.deliveries = deliveries
        self.retention = retention
        self.lease = lease
        self._clock = clock
        self.coordination = (coordination if coordination is not None
                             else coordination_mod.LeaseRelay(ledger))
        self._stopping = threading.Event()
        self._thread = None
        self.relay = False
        # no take-over until then (see database_failed)
        self._quiet_until = None
        self._failures_seen = ledger.failures
        self._resubmit_actions = False
        self._next_renew = self._next_prune = self._next_relay = clock()

    def database_failed(self, now):
        """The database failed this controller (any of its threads).

        The other controllers' renewals may have failed too, so their
        leases look expired when it is back although they live: take over
        nothing for a lease, the time they need to renew.  And the
        corrective-action worker may have dropped a fault it was deciding
        on: when the database answers again, hand it this controller's
        pending faults again (:meth:`resubmit_actions`).
        """
        self._quiet_until = now + self.lease
        self._resubmit_actions = True

    def resubmit_actions(self):
        """This controller's faults whose action is still pending, to the
        worker again.  Deciding twice on one fault does no harm: the cap
        lets one action per fault, and an action record is stored once
        per id."""
        work = self.ledger.pending(targets=(ledger_mod.ACTIONS,))
        self._resubmit_actions = False
        return self.deliveries.redispatch(work)

    def watch_failures(self, now):
        """Whether the database failed any thread since the last look
        (then :meth:`database_failed`)."""
        if self.ledger.failures == self._failures_seen:
            return False
        self._failures_seen = self.ledger.failures
        self.database_failed(now)
        return True

    def update_relay(self):
        relay, who = self.coordination.elect()
        if relay != self.relay:
            LOG.info("%s relays Nova's state changes to the agents: %s",
                     self.ledger.server_id, "yes" if relay else
                     "no (%s does)" % (who or "nobody"))
        self.relay = relay

    def take_over(self, now=None):
        """Dispatch the work of dead controllers that this one takes."""
        now = self._clock() if now is None else now
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return 0
            self._quiet_until = None

        def claim():
            # queued before any commit of accept may dispatch the next
            # events of their instances (Ledger.order_lock)
            with self.ledger.order_lock:
                work = self.ledger.claim_orphans()
                self.deliveries.redispatch(work)
            return work

        return len(self.coordination.takeover(claim))

    def take_handed(self):
        """Dispatch the events other controllers handed to this one,
        after the earlier events of their instances that it owes
        (:meth:`Ledger.take_handed`)."""
        with self.ledger.order_lock:
            return self.deliveries.redispatch(self.ledger.take_handed())

    def is_relay(self):
        return self.relay

    def start(self):
        self._thread = threading.Thread(target=self._run,
                                        name="ledger-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def settle_uncertain(self):
        """Dispatch the events of commits that failed for this controller
        but happened (:meth:`Ledger.settle_uncertain`): nobody else
        would."""
        if not self.ledger.uncertain:
            return 0
        # handed to this controller: take_handed, next, queues them
        return len(self.ledger.settle_uncertain())

    def upkeep(self, now):
        """One round of the keeper's work (every :data:`FLUSH_INTERVAL`);
        raises what the database raises."""
        self.watch_failures(now)
        self.ledger.flush()
        self.settle_uncertain()
        self.take_handed()
        if self._resubmit_actions:
            self.resubmit_actions()
        now = self._clock()
        if now >= self._next_relay:
            self._next_relay = now + RELAY_INTERVAL
            self.update_relay()
        if now >= self._next_renew:
            self._next_renew = now + self.lease / 3.0
            self.ledger.renew()
            self.take_over(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            pruned = self.ledger.prune(time.time() - self.retention)
            if pruned:
                LOG.info("ledger: forgot %d delivered event(s) older than "
                         "%d s", pruned, self.retention)

    def _run(self):
        self._next_renew = self._clock() + self.lease / 3.0
        self._next_relay = self._clock() + RELAY_INTERVAL
        self._next_prune = self._clock() + PRUNE_INTERVAL
        while not self._stopping.wait(FLUSH_INTERVAL):
            try:
                self.upkeep(self._clock())
            except db_api.DB_ERRORS as exc:
                # the database is away: the agents' calls fail and are
                # sent again; the upkeep resumes when it is back
                LOG.warning("ledger upkeep: the database failed: %s", exc)
            except Exception:  # a thread's top level: keep the lease
                LOG.exception("ledger upkeep failed")
