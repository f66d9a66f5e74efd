# SPDX-License-Identifier: Apache-2.0
"""Whether one instance has a fault: what the heartbeat says becomes
suspicions, a suspicion the hypervisor confirms becomes a fault record,
and a fault the guest earns back becomes a recovery record.

Theory of operation
-------------------
A :class:`FaultTracker` does no I/O and knows nothing of sockets, libvirt
or the bus: the instance (:mod:`guestha.agent.instance`) tells it what
happened, with the time (``now``, monotonic seconds), and carries out
what it returns, a list of outputs (or None when there is nothing to do):

* :class:`Confirm`: ask the hypervisor whether the domain runs, and pass
  the answer to :meth:`FaultTracker.confirmed`;
* :class:`Report`: a fault or recovery record (:mod:`guestha.records`) to
  report; the set of open faults changed.

Counts.  ``miss_threshold`` consecutive missed challenges or
``unhealthy_threshold`` consecutive unhealthy answers make a *suspicion*;
so do a monitored channel that stays closed for ``channel_lost_grace``
seconds (:meth:`~FaultTracker.channel_lost`, then
:meth:`~FaultTracker.check`) and what the instance suspects itself
(:meth:`~FaultTracker.suspect`: a daemon that registered again without
exit, a guest that answered no resync after the agent started).

Confirmation.  A paused or migrating domain looks exactly like a hung
guest on the channel, so a suspicion opens no fault before the
hypervisor's answer: *running* opens it, anything else drops it (the
domain's new state is the instance's business), and no answer within
``confirm_timeout`` opens it as *unconfirmed*.  A healthy answer in the
meantime drops it too, but for a daemon that restarted: that restart has
happened whatever it answers now.

Faults and recoveries.  One fault is open at a time, reported once with a
unique id.  A healthy answer or the guest's exit clears it with a
recovery, unless ``fault_limit`` faults opened within ``fault_window``
seconds: then the recovery is *held* until the oldest of them leaves the
window (a debounce: no guest opens more than ``fault_limit`` faults, and
so actions, per window, however it behaves), and a new suspicion while
held keeps the fault open.  A stopped domain clears its fault at once.

The deadlines (:attr:`~Suspicion.deadline` of :attr:`suspicion`,
:attr:`lost_deadline`, :attr:`release_at`) are plain attributes that the
instance reads when it schedules its next timer, without a call, as it
does after every event; :meth:`next_timer` is the earliest of them.
"""

import collections
import logging
import uuid as uuidlib

from guestha.agent import guestlog
from guestha import records

LOG = logging.getLogger(__name__)

#: The kind of fault a healthy answer does not take back (the daemon
#: restarted without exit: it did, whatever it answers now).
CRASH = "guest-exit-unexpected"


class Confirm(object):
    """Ask the hypervisor whether the domain runs; its answer goes to
    :meth:`FaultTracker.confirmed` with ``token``."""

    __slots__ = ("token",)

    def __init__(self, token):
        self.token = token

    def __repr__(self):
        return "Confirm(%r)" % self.token


class Report(object):
    """A fault or recovery record to report (the open faults changed)."""

    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event

    def __repr__(self):
        return "Report(%s %s)" % (self.event["type"], self.event["id"])


class Suspicion(object):
    """A fault waiting for the hypervisor's confirmation."""

    __slots__ = ("token", "kind", "reason", "action", "deadline")

    def __init__(self, token, kind, reason, action, deadline):
        self.token = token
        self.kind = kind
        self.reason = reason
        self.action = action
        self.deadline = deadline


class FaultTracker(object):
    """The faults of one instance.

    :param instance: the instance's uuid (for the records and the logs).
    :param host: this host's name (for the records).
    :param policy: the operator's thresholds (an
        :class:`~guestha.agent.instance.Policy`: ``miss_threshold``,
        ``unhealthy_threshold``, ``confirm_timeout``,
        ``channel_lost_grace``, ``fault_limit``, ``fault_window``).
    :param wallclock: a function returning the epoch time, for the times
        the records carry (all decisions use ``now``).
    :param open_fault: ``{"id", "kind"}`` of a fault an earlier run of the
        agent left open, or None.
    :param monitored: what the agent knows of the guest's monitoring
        (``{"interval_ms", "action"}``, kept across the agent's restarts;
        the instance keeps :attr:`monitored` up to date), or None: the
        interval and action of a fault found before the guest registers
        again.
    """

    def __init__(self, instance, host, policy, wallclock, open_fault=None,
                 monitored=None):
        self.instance = instance
        self.host = host
        self.policy = policy
        self.wallclock = wallclock
        self.fault = open_fault       # {"id":..., "kind":...} or None
        self.monitored = monitored
        self.misses = 0               # consecutive missed challenges
        self.unhealthy = 0            # consecutive unhealthy answers
        self.interval_ms = None       # granted at registration
        # what the guest recommended at registration: the action of a
        # fault that carries none of its own (a missed answer, a lost
        # channel, a crashed daemon)
        self.recommended = None
        self.suspicion = None         # a Suspicion, or None
        self.lost_deadline = None     # a monitored channel closed: until
        # when the latest faults opened: at most fault_limit per
        # fault_window, whatever the guest does
        self.opened = collections.deque(maxlen=policy.fault_limit)
        self.held = None              # why, of a recovery held back
        self.release_at = None        # when it is released

    # -- what the heartbeat says ---------------------------------------------

    def registered(self, interval_ms, action):
        """The guest registered (again): counts start over."""
        self.interval_ms = interval_ms
        self.recommended = action
        self.misses = self.unhealthy = 0
        self.lost_deadline = None

    def answered(self, now, healthy, reason=None, action=None):
        """The guest answered a challenge (once a round: keep it short)."""
        self.misses = 0
        self.lost_deadline = None
        if healthy:
            self.unhealthy = 0
            if (self.suspicion is not None
                    and self.suspicion.kind != CRASH):
                self.suspicion = None  # it answered after all
            if self.fault is not None:
                return self._earned(now, "guest answers healthy")
            return None
        self.unhealthy += 1
        if self.unhealthy >= self.policy.unhealthy_threshold:
            return self.suspect("unhealthy", now, reason, action)
        return None

    def missed(self, now):
        """A challenge went unanswered."""
        self.misses += 1
        if self.misses >= self.policy.miss_threshold:
            return self.suspect("missed", now, "no answer for %d "
                                "interval(s)" % self.misses)
        return None

    def exited(self, now):
        """The guest ended monitoring: not a fault, and the end of one."""
        self.misses = self.unhealthy = 0
        self.suspicion = None
        if self.fault is not None:
            return self._earned(now, "guest exited")
        return None

    def channel_lost(self, now):
        """A monitored channel closed: a suspicion unless it is back (a
        registration or an answer) within ``channel_lost_grace``."""
        self.lost_deadline = now + self.policy.channel_lost_grace

    def suspect(self, kind, now, reason, action=None):
        """A fault of ``kind`` is suspected: ask for confirmation, unless
        one is open (then a recovery held back is off) or asked for."""
        if self.fault is not None:
            # still (or again) faulty: a recovery held back is off
            self.held = self.release_at = None
            return None
        if self.suspicion is not None:
            return None
        if action is None:
            action = self.recommended
        token = uuidlib.uuid4().hex
        self.suspicion = Suspicion(token, kind, reason, action,
                                   now + self.policy.confirm_timeout)
        return [Confirm(token)]

    # -- what the hypervisor says --------------------------------------------

    def confirmed(self, token, running, now, state=None, seen=None):
        """The hypervisor's answer to :class:`Confirm` ``token``: whether
        the domain runs (``seen``: the state it saw, for the log).  None if
        no longer awaited (a stale answer); otherwise the outputs (none
        when the suspicion is dropped).  ``state`` is the instance's, for
        the record's details."""
        s = self.suspicion
        if s is None or s.token != token:
            return None
        self.suspicion = None
        if not running:
            LOG.info("instance %s: suspected %s fault dropped: the domain "
                     "is %s", self.instance, s.kind, seen)
            return []
        return self._open(s, now, False, state)

    def check(self, now, state=None):
        """The timers of suspicions: an unanswered confirmation opens its
        fault, a channel closed past its grace is suspected."""
        outputs = None
        s = self.suspicion
        if s is not None and now >= s.deadline:
            self.suspicion = None
            LOG.warning("instance %s: libvirt did not confirm the domain "
                        "state in time; reporting the %s fault anyway",
                        self.instance, s.kind)
            outputs = self._open(s, now, True, state)
        return self.check_lost(now) or outputs

    def check_lost(self, now):
        """A monitored channel closed past its grace is suspected."""
        if (self.lost_deadline is not None and self.fault is None
                and self.suspicion is None and now >= self.lost_deadline):
            self.lost_deadline = None
            return self.suspect("channel-lost", now, "channel closed "
                                "while monitored")
        return None

    # -- the domain ----------------------------------------------------------

    def suspend(self):
        """The domain does not run (paused, migrating, rebooting): no
        suspicion holds, counts start over."""
        self.suspicion = None
        self.lost_deadline = None
        self.misses = self.unhealthy = 0

    def stopped(self, now):
        """The domain stopped: its fault is over at once."""
        self.suspicion = None
        self.lost_deadline = None
        self.held = self.release_at = None
        if self.fault is not None:
            return self._recover(now, "instance stopped")
        return None

    def release(self, now):
        """A recovery held back, once its time has come."""
        if self.release_at is None or now < self.release_at:
            return None
        why = self.held
        self.held = self.release_at = None
        if self.fault is None:
            return None
        return self._recover(now, "%s (held back: %d faults within %.0f s)"
                             % (why, self.policy.fault_limit,
                                self.policy.fault_window))

    def next_timer(self):
        """When :meth:`check` or :meth:`release` has something to do."""
        times = [t for t in (
            self.suspicion.deadline if self.suspicion else None,
            self.lost_deadline, self.release_at) if t is not None]
        return min(times) if times else None

    def flapping(self, now):
        """Whether ``fault_limit`` faults opened within the window."""
        opened = self.opened
        return (len(opened) >= self.policy.fault_limit
                and now - opened[0] < self.policy.fault_window)

    # -- records -------------------------------------------------------------

    def _open(self, s, now, unconfirmed, state):
        self.opened.append(now)
        interval_ms = self.interval_ms
        monitored = self.monitored or {}
        if interval_ms is None:
            interval_ms = monitored.get("interval_ms")
        action = s.action
        if action is None:
            action = monitored.get("action")
        details = {"unconfirmed": unconfirmed, "state": state}
        if self.flapping(now):
            details["flapping"] = len(self.opened)
        event = records.make_fault(
            instance=self.instance, host=self.host, kind=s.kind,
            reason=s.reason, action=action, detected_at=self.wallclock(),
            interval_ms=interval_ms, misses=self.misses, details=details)
        self.fault = {"id": event["id"], "kind": s.kind}
        LOG.warning("instance %s: FAULT %s (%s): %s", self.instance, s.kind,
                    event["id"], guestlog.sanitise(s.reason))
        return [Report(event)]

    def _earned(self, now, why):
        """A recovery the guest's behaviour earns: held back while the
        faults of the window are at their limit."""
        if self.flapping(now):
            if self.held is None:
                self.held = why
                self.release_at = self.opened[0] + self.policy.fault_window
                LOG.warning("instance %s: %d faults within %.0f s: the "
                            "recovery (%s) is held back for %.0f s",
                            self.instance, len(self.opened),
                            self.policy.fault_window, why,
                            self.release_at - now)
            return None
        return self._recover(now, why)

    def _recover(self, now, why):
        fault = self.fault
        self.fault = None
        self.held = self.release_at = None
        event = records.make_recovery(
            instance=self.instance, host=self.host, fault_id=fault["id"],
            recovered_at=self.wallclock(), details={"why": why},
            kind=fault["kind"])
        LOG.info("instance %s: recovered from %s fault %s: %s",
                 self.instance, fault["kind"], fault["id"], why)
        return [Report(event)]
