# SPDX-License-Identifier: Apache-2.0
"""Corrective actions: what the controller does about a fault through Nova.

Theory of operation
-------------------
A fault carries the action its guest recommends (``none``, ``log``,
``reboot``, ``stop``).  The operator allows at most ``[actions]
allowed_max``; a flavor narrows that with the extra spec
``guestha:corrective_action``.  The controller applies the LESS intrusive
of the recommendation and the allowance (:func:`decide`), so a guest can
never obtain more than the operator allows, and the operator never forces
on a guest more than it asked for:

========  ==========================================================
action    what happens
========  ==========================================================
none      nothing (a recommendation cut down to none is a refusal,
          recorded as ``refused: policy``)
log       an action record to the sinks and the log; the instance is
          not touched
reboot    for a guest that stopped answering (kind ``missed``), a
          hard reboot through Nova at once; for any other fault, a soft
          reboot through Nova, and a hard one only if no recovery of
          the instance reaches any controller within
          ``soft_reboot_timeout`` AND Nova's own reboot is over (see
          below)
stop      ``os-stop`` through Nova
========  ==========================================================

Reboots and Nova's own fallback.  A soft reboot in Nova (libvirt driver)
asks the guest to shut down by ACPI, waits up to nova.conf's ``[libvirt]
wait_soft_reboot_seconds`` (120 s by default, the same as
``soft_reboot_timeout``'s default) and then reboots hard by itself.  A
hard reboot asked meanwhile is accepted (Nova allows one in the soft
reboot's task states), so a guestha follow-up timed on its own clock
would race Nova's fallback and reboot the instance twice.  Hence: a hung
guest, which ignores ACPI anyway, gets the hard reboot directly, which is
also the fastest repair; a guest that still answers (``unhealthy`` and the
rest) gets the soft one, Nova's fallback covers a guest that ignores it,
and the follow-up first asks Nova for the server: while its
``task_state`` is one of Nova's reboot states the follow-up waits another
``soft_reboot_timeout`` (at most :data:`MAX_FOLLOW_UP_DEFERRALS` times),
and it reboots hard only once Nova has finished and the guest has still
not recovered.

Nova's reboot being over is not enough: if Nova's fallback (or the soft
reboot itself) has just finished when the follow-up is due, the guest is
booting and has not registered yet, and a hard reboot would start its boot
over.  So the follow-up also asks Nova's instance actions
(:meth:`guestha.nova.NovaClient.reboot_finished`) when Nova last rebooted
the instance.  Nova records a soft reboot, its fallback to hard included,
as ONE ``reboot`` action (the one guestha asked for) with one
``compute_reboot_instance`` event; the compute manager finishes that event
after the driver's reboot returned, that is once the guest was started
anew (after ACPI, or after ``_hard_reboot``).  That event's
``finish_time`` is thus when the guest's new boot began; a hard reboot
someone else asked meanwhile is a ``reboot`` action of its own and counts
the same.  If such a reboot, asked since the soft reboot, finished less
than ``soft_reboot_timeout`` ago, the follow-up waits until
``soft_reboot_timeout`` after it (a deferral counted with the others);
after the last deferral, or if Nova cannot tell (no answer, events hidden
by its policy), a guest still not recovered is rebooted hard as before.

Reboots and stops are capped at ``[actions] max_actions`` per instance per
``window`` seconds, counted in the ledger (so across controllers and
restarts); one soft reboot with its hard follow-up counts once.  A refused
action is recorded as ``refused: cap``.  The same count (:class:`ActionCap`)
holds every other path that leads to a recovery of the instance: a fault
sink that asks another service to recover it (Masakari) takes a slot too
before it sends, and sends nothing once the cap is reached (see
:func:`guestha.sinks.base.bind_recovery_cap`).  The count also makes an action
happen at most once per fault: a fault whose action was started before a
restart is not acted on again (``skipped: already acted``).

Only the controller that owns a fault in the ledger acts on it: the one
that accepted it, or the one that took it over from a dead one.

Every decision other than "nothing recommended" becomes an action record
(:func:`action_record`), logged with the instance uuid and delivered to
the fault sinks like an event.  :class:`CorrectiveActions` acts on one
fault (or one soft reboot's follow-up) and returns the follow-up to run
later; :class:`ActionWorker` is the thread that feeds it, in its own
thread because Nova is HTTP, with the queue of faults and the timers of
the follow-ups.  :meth:`ActionWorker.run_once` takes the time as an
argument so tests drive it with a fake clock.  A soft reboot waiting for its
recovery lives in memory only: after a restart no hard reboot follows.
"""

import collections
import datetime
import heapq
import itertools
import logging
import threading
import time
import uuid

from keystoneauth1 import exceptions as ks_exc
from novaclient import exceptions as nova_exc

from guestha.conf.actions import ACTIONS
from guestha import metrics
from guestha import nova as nova_mod
from guestha.server import ledger as ledger_mod

LOG = logging.getLogger(__name__)

_RANK = {action: rank for rank, action in enumerate(ACTIONS)}

APPLIED = "applied"
LOGGED = "logged"
REFUSED_CAP = "refused: cap"
REFUSED_POLICY = "refused: policy"
SKIPPED_RECOVERED = "skipped: recovered"
SKIPPED_ACTED = "skipped: already acted"
FAILED = "failed"
#: The action record and cap path of ``[actions] nova_mark = error``.
MARK_ACTION = "nova-mark-error"
MARK_PATH = "nova-mark"

#: Fault kinds of a guest that stopped answering: hung, so it would ignore
#: a soft reboot's ACPI request too; rebooted hard at once.
UNRESPONSIVE_KINDS = frozenset(("missed",))
#: Nova's task states of a reboot under way (nova.compute.task_states
#: soft_reboot_states and hard_reboot_states): Nova is still at it, its
#: own soft-to-hard fallback included.
NOVA_REBOOT_TASK_STATES = frozenset((
    "rebooting", "reboot_pending", "reboot_started",
    "rebooting_hard", "reboot_pending_hard", "reboot_started_hard"))
#: How many times a follow-up waits for Nova's reboot to end before it
#: gives up (nova-compute may have died with the task state set).
MAX_FOLLOW_UP_DEFERRALS = 3
#: Seconds by which Nova's clock may lag the controller's: a reboot action
#: Nova records as started up to this long before the soft reboot was
#: asked still counts as the soft reboot's.
CLOCK_SLACK = 30.0


class Decision(object):
    """The outcome of :func:`decide`: ``action`` is what to apply,
    ``allowed`` the allowance in force, ``reason`` why, in words."""

    __slots__ = ("action", "recommended", "allowed", "reason")

    def __init__(self, action, recommended, allowed, reason):
        self.action = action
        self.recommended = recommended
        self.allowed = allowed
        self.reason = reason

    def __repr__(self):
        return "Decision(%s, recommended=%s, allowed=%s)" % (
            self.action, self.recommended, self.allowed)


def less_intrusive(a, b):
    return a if _RANK[a] <= _RANK[b] else b


def decide(recommended, allowed_max, flavor_action=None):
    """The action to apply for a fault.

    :param recommended: the guest's recommendation (one of
        :data:`~guestha.conf.actions.ACTIONS`, or None for none).
    :param allowed_max: ``[actions] allowed_max``.
    :param flavor_action: the flavor's ``guestha:corrective_action``, or
        None when the flavor has none.  A value that is not an action
        narrows to ``log``: a typo must not widen what is allowed, and the
        action record shows it to the operator.
    """
    recommended = recommended or "none"
    allowed = allowed_max
    reasons = []
    if flavor_action is not None:
        if flavor_action in _RANK:
            if _RANK[flavor_action] < _RANK[allowed]:
                reasons.append("the flavor allows at most %s"
                               % flavor_action)
            allowed = less_intrusive(allowed, flavor_action)
        else:
            reasons.append("the flavor's guestha:corrective_action %r is "
                           "not one of %s; treated as log"
                           % (flavor_action, ", ".join(ACTIONS)))
            allowed = less_intrusive(allowed, "log")
    action = less_intrusive(recommended, allowed)
    if action != recommended:
        reasons.insert(0, "the guest recommends %s, policy allows at most %s"
                       % (recommended, allowed))
    else:
        reasons.insert(0, "the guest recommends %s" % recommended)
    return Decision(action, recommended, allowed, "; ".join(reasons))


def _iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="microseconds")


def action_record(fault, action, outcome, reason, server, at, step=None,
                  decision=None):
    """An action record, delivered to the sinks like an event.

    Its id is derived from the fault's id and the step, so the same step
    of the same fault is recorded once even when it is decided again.
    """
    name = "%s:%s" % (action, step or "")
    return {
        "version": "1.0",
        "type": "action",
        "id": str(uuid.uuid5(uuid.UUID(fault["id"]), name)),
        "instance": fault["instance"],
        "host": fault.get("host"),
        "fault_id": fault["id"],
        "kind": fault.get("kind"),
        "action": action,
        "step": step,
        "recommended": decision.recommended if decision else None,
        "allowed": decision.allowed if decision else None,
        "outcome": outcome,
        "reason": reason,
        "server": server,
        "at": _iso(at),
        "at_ts": at,
        "details": {},
    }


class ActionCap(object):
    """The per-instance cap of ``[actions]``: at most ``max_actions``
    recoveries per ``window`` seconds, counted in the ledger over every
    path that leads to one (this worker's reboots and stops, a Masakari
    notification).

    Safe to call from any thread (the ledger serialises).
    """

    def __init__(self, ledger, max_actions, window):
        self.ledger = ledger
        self.max_actions = max_actions
        self.window = window

    def take(self, instance, fault_id, path=None, now=None):
        """Count a recovery of ``instance`` for fault ``fault_id`` by
        ``path`` (None: this worker) if the window has room.

        :returns: ``(granted, count)`` as
            :meth:`~guestha.server.ledger.Ledger.take_action_slot`:
            ``granted`` is None when this path counted one for this fault
            already (a retry: go on), False when the cap is reached.
        """
        key = fault_id if path is None else "%s:%s" % (path, fault_id)
        return self.ledger.take_action_slot(instance, key, self.window,
                                            self.max_actions, now=now)


class ActionFailed(Exception):
    """Nova refused or could not take an action."""


class NovaActions(nova_mod.NovaClient):
    """The Nova client of the agent, plus the controller's actions."""

    def _act(self, instance_uuid, verb, call):
        try:
            call()
        except (nova_exc.ClientException, ks_exc.ClientException) as exc:
            raise ActionFailed("%s of instance %s: %s: %s" % (
                verb, instance_uuid, type(exc).__name__, exc))

    def reboot(self, instance_uuid, hard=False):
        kind = "HARD" if hard else "SOFT"
        self._act(instance_uuid, "%s reboot" % kind.lower(),
                  lambda: self._client.servers.reboot(
                      instance_uuid, reboot_type=kind))

    def stop(self, instance_uuid):
        self._act(instance_uuid, "stop",
                  lambda: self._client.servers.stop(instance_uuid))

    def mark_error(self, instance_uuid):
        """``os-resetState`` to ``error`` (``[actions] nova_mark``)."""
        self._act(instance_uuid, "reset-state error",
                  lambda: self._client.servers.reset_state(instance_uuid,
                                                           "error"))


class FollowUp(object):
    """A soft reboot's check, due at ``due``: recovered since ``since``,
    or is a hard reboot needed?  ``deferrals``: how often it waited
    already for Nova's own reboot to end."""

    __slots__ = ("due", "fault", "since", "decision", "deferrals")

    def __init__(self, due, fault, since, decision, deferrals):
        self.due = due
        self.fault = fault
        self.since = since
        self.decision = decision
        self.deferrals = deferrals


class CorrectiveActions(object):
    """What the controller does about one fault, and about a soft
    reboot's follow-up: decides, takes a slot of the cap, calls Nova and
    records the outcome.  No thread and no timers: a soft reboot returns
    the :class:`FollowUp` to run later, and the caller keeps it.

    :param nova: :class:`NovaActions` (or a fake with ``guestha_features``,
        ``reboot`` and ``stop``).
    :param ledger: the :class:`~guestha.server.ledger.Ledger`.
    :param report: called with each action record.
    :param cap: the :class:`ActionCap`.
    :param outcomes: a :class:`~guestha.metrics.Tally` of
        ``(action, outcome)``.
    """

    def __init__(self, nova, ledger, report, server_id, cap, outcomes,
                 allowed_max="log", soft_reboot_timeout=120.0,
                 nova_mark="none"):
        self.nova = nova
        self.ledger = ledger
        self.report = report
        self.server_id = server_id
        self.cap = cap
        self.outcomes = outcomes
        self.allowed_max = allowed_max
        self.soft_reboot_timeout = soft_reboot_timeout
        self.nova_mark = nova_mark

    def _record(self, fault, action, outcome, reason, now, step=None,
                decision=None, level=logging.WARNING):
        LOG.log(level, "instance %s: fault %s: corrective action %s%s: %s "
                "(%s)", fault["instance"], fault["id"], action,
                " (%s)" % step if step else "", outcome, reason)
        self.outcomes.add(action, outcome)
        self.report(action_record(fault, action, outcome, reason,
                                  self.server_id, now, step=step,
                                  decision=decision))

    def _done(self, fault):
        self.ledger.mark_later(fault["id"], ledger_mod.ACTIONS,
                               ledger_mod.DONE)

    def act(self, fault, now):
        """Act on a fault this controller owns.

        :returns: the :class:`FollowUp` of a soft reboot, else None.
        """
        instance = fault["instance"]
        recommended = fault.get("action") or "none"
        if recommended == "none":
            self._done(fault)
            return None
        if self.ledger.fault_recovered(fault):
            self._record(fault, recommended, SKIPPED_RECOVERED,
                         "the instance recovered from this fault before "
                         "any action", now, level=logging.INFO)
            self._done(fault)
            return None
        flavor_action = None
        nova_error = None
        if less_intrusive(recommended, self.allowed_max) not in ("none",
                                                                 "log"):
            try:
                features = self.nova.guestha_features(instance)
                flavor_action = features.get("corrective_action")
            except nova_mod.NovaUnavailable as exc:
                nova_error = str(exc)
        decision = decide(recommended, self.allowed_max, flavor_action)
        follow_up = None
        if decision.action == "none":
            self._record(fault, recommended, REFUSED_POLICY,
                         decision.reason, now, decision=decision)
        elif decision.action == "log":
            self._record(fault, "log", LOGGED, decision.reason, now,
                         decision=decision)
            if self.nova_mark == "error":
                self._mark_error(fault, decision, now)
        elif nova_error is not None:
            self._record(fault, decision.action,
                         "%s: nova unavailable" % FAILED,
                         "%s; %s" % (decision.reason, nova_error), now,
                         decision=decision, level=logging.ERROR)
        else:
            follow_up = self._intrusive(fault, decision, now)
        self._done(fault)
        return follow_up

    def _mark_error(self, fault, decision, now):
        """``[actions] nova_mark = error``: the instance's Nova state to
        ERROR, for the VNF manager; capped like a recovery (path
        ``nova-mark``), at most once per fault."""
        instance = fault["instance"]
        granted, count = self.cap.take(instance, fault["id"],
                                       path=MARK_PATH, now=now)
        if granted is None:
            self._record(fault, MARK_ACTION, SKIPPED_ACTED,
                         "marked for this fault earlier", now,
                         decision=decision, level=logging.INFO)
        elif not granted:
            self._record(fault, MARK_ACTION, REFUSED_CAP,
                         "%d action(s) on this instance in the last %d s, "
                         "at most %d allowed" % (count, self.cap.window,
                                                 self.cap.max_actions),
                         now, decision=decision)
        else:
            try:
                self.nova.mark_error(instance)
            except ActionFailed as exc:
                self._record(fault, MARK_ACTION, FAILED, str(exc), now,
                             decision=decision, level=logging.ERROR)
            else:
                self._record(fault, MARK_ACTION, APPLIED,
                             "Nova state set to ERROR for the VNF manager",
                             now, decision=decision)

    def _intrusive(self, fault, decision, now):
        instance = fault["instance"]
        granted, count = self.cap.take(instance, fault["id"], now=now)
        if granted is None:
            self._record(fault, decision.action, SKIPPED_ACTED,
                         "an action on this fault was started earlier",
                         now, decision=decision, level=logging.INFO)
            return None
        if not granted:
            self._record(fault, decision.action, REFUSED_CAP,
                         "%s; %d action(s) on this instance in the last "
                         "%d s, at most %d allowed" % (
                             decision.reason, count, self.cap.window,
                             self.cap.max_actions),
                         now, decision=decision)
            return None
        step = None
        if decision.action == "reboot":
            step = ("hard" if fault.get("kind") in UNRESPONSIVE_KINDS
                    else "soft")
        try:
            if decision.action == "reboot":
                self.nova.reboot(instance, hard=step == "hard")
            else:
                self.nova.stop(instance)
        except ActionFailed as exc:
            self._record(fault, decision.action, "%s: %s" % (FAILED, exc),
                         decision.reason, now, step=step, decision=decision,
                         level=logging.ERROR)
            return None
        reason = decision.reason
        if step == "hard":
            reason = ("%s; the guest stopped answering (%s), so it would "
                      "ignore a soft reboot" % (reason, fault.get("kind")))
        self._record(fault, decision.action, APPLIED, reason, now,
                     step=step, decision=decision)
        if step == "soft":
            return FollowUp(now + self.soft_reboot_timeout, fault, now,
                            decision, 0)
        return None

    def nova_still_rebooting(self, instance):
        """Nova's task state if it is one of a reboot under way, "gone"
        if Nova no longer knows the instance, else None.

        :raises guestha.nova.NovaUnavailable: Nova did not answer.
        """
        server_of = getattr(self.nova, "server", None)
        if server_of is None:
            return None
        server = server_of(instance)
        if server is None:
            return "gone"
        task_state = server.get("task_state")
        return task_state if task_state in NOVA_REBOOT_TASK_STATES else None

    def nova_reboot_finished(self, instance, since):
        """When Nova's latest reboot of the instance asked since the soft
        reboot (``since``, less :data:`CLOCK_SLACK`) finished, in epoch
        seconds; None if none did, or if Nova cannot tell (then the
        follow-up goes on as without this check).
        """
        finished_of = getattr(self.nova, "reboot_finished", None)
        if finished_of is None:
            return None
        try:
            return finished_of(instance, since - CLOCK_SLACK)
        except nova_mod.NovaUnavailable as exc:
            LOG.warning("instance %s: cannot tell whether Nova rebooted "
                        "it since the soft reboot: %s", instance, exc)
            return None

    def follow_up(self, due, now):
        """A soft reboot's time is up: hard reboot unless recovered,
        unless Nova is still rebooting (its own fallback to hard), or
        unless Nova's reboot finished less than ``soft_reboot_timeout``
        ago (the guest is booting).

        :param due: the :class:`FollowUp`.
        :returns: the next :class:`FollowUp` if Nova is still at it.
        """
        fault, since, decision, deferrals = (
            due.fault, due.since, due.decision, due.deferrals)
        instance = fault["instance"]
        if self.ledger.recovered_since(instance, since):
            LOG.info("instance %s: fault %s: recovered after the soft "
                     "reboot", instance, fault["id"])
            return None
        try:
            nova_state = self.nova_still_rebooting(instance)
        except nova_mod.NovaUnavailable as exc:
            nova_state = "unknown (%s)" % exc
        if nova_state == "gone":
            LOG.info("instance %s: fault %s: no hard reboot: Nova no "
                     "longer knows the instance", instance, fault["id"])
            return None
        if nova_state is not None:
            if deferrals < MAX_FOLLOW_UP_DEFERRALS:
                LOG.info("instance %s: fault %s: Nova's reboot is still "
                         "under way (task state %s); hard reboot "
                         "deferred %.0f s", instance, fault["id"],
                         nova_state, self.soft_reboot_timeout)
                return FollowUp(now + self.soft_reboot_timeout, fault,
                                since, decision, deferrals + 1)
            self._record(fault, "reboot", "%s: nova still rebooting"
                         % FAILED,
                         "Nova's reboot did not end within %d follow-ups "
                         "(task state %s); no hard reboot asked" % (
                             deferrals + 1, nova_state),
                         now, step="hard", decision=decision,
                         level=logging.ERROR)
            return None
        if deferrals < MAX_FOLLOW_UP_DEFERRALS:
            booted = self.nova_reboot_finished(instance, since)
            if (booted is not None
                    and now - booted < self.soft_reboot_timeout):
                LOG.info("instance %s: fault %s: Nova's reboot finished "
                         "%.0f s ago, so the guest is booting anew; hard "
                         "reboot deferred %.0f s", instance, fault["id"],
                         now - booted, self.soft_reboot_timeout)
                return FollowUp(min(booted, now) + self.soft_reboot_timeout,
                                fault, since, decision, deferrals + 1)
        reason = ("no recovery within %.0f s of the soft reboot, and "
                  "Nova's reboot is over" % ((now - since)))
        try:
            self.nova.reboot(instance, hard=True)
        except ActionFailed as exc:
            self._record(fault, "reboot", "%s: %s" % (FAILED, exc), reason,
                         now, step="hard", decision=decision,
                         level=logging.ERROR)
            return None
        self._record(fault, "reboot", APPLIED, reason, now, step="hard",
                     decision=decision)
        return None


class ActionWorker(object):
    """The corrective-action thread: a queue of the faults this controller
    owns and the soft reboots' follow-ups, handed in turn to its
    :class:`CorrectiveActions`.

    :param nova: :class:`NovaActions` (or a fake with ``guestha_features``,
        ``reboot`` and ``stop``).
    :param ledger: the :class:`~guestha.server.ledger.Ledger`.
    :param report: called with each action record (stores it in the
        ledger and hands it to the sinks).
    :param clock: ledger (wall-clock) time, as the ledger's.
    """

    def __init__(self, nova, ledger, report, server_id, allowed_max="log",
                 soft_reboot_timeout=120.0, max_actions=3, window=3600,
                 clock=time.time, nova_mark="none"):
        self._clock = clock
        self.cap = ActionCap(ledger, max_actions, window)
        # (action, outcome) of every record, for the metrics
        self.outcomes = metrics.Tally()
        self.actions = CorrectiveActions(
            nova, ledger, report, server_id, self.cap, self.outcomes,
            allowed_max=allowed_max,
            soft_reboot_timeout=soft_reboot_timeout, nova_mark=nova_mark)
        self._queue = collections.deque()
        self._timers = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = None

    @classmethod
    def from_conf(cls, conf, nova, ledger, report):
        group = conf.actions
        return cls(nova, ledger, report, conf.server.server_id,
                   allowed_max=group.allowed_max,
                   soft_reboot_timeout=group.soft_reboot_timeout,
                   max_actions=group.max_actions, window=group.window,
                   nova_mark=group.nova_mark)

    # -- any thread ------------------------------------------------------

    def submit(self, fault):
        """Queue a fault this controller owns (any thread)."""
        with self._cond:
            self._queue.append(fault)
            self._cond.notify()

    def start(self):
        self._thread = threading.Thread(target=self._run,
                                        name="corrective-actions",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout=10.0):
        """Stop after the fault in hand; queued faults stay pending in the
        ledger for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cond:
                if self._stopping:
                    return
                wait = None
                if not self._queue and self._timers:
                    wait = max(0.0, self._timers[0][0] - self._clock())
                if not self._queue and (wait is None or wait > 0):
                    self._cond.wait(wait)
                    continue
            try:
                self.run_once(self._clock())
            except Exception:  # a thread's top level: keep acting
                LOG.exception("corrective-action worker error")

    # -- the worker --------------------------------------------------------

    def run_once(self, now):
        """Act on the queued faults and the due follow-ups.

        :returns: seconds until the next follow-up, or None.
        """
        while True:
            with self._cond:
                if self._stopping or not self._queue:
                    break
                fault = self._queue.popleft()
            self._schedule(self.actions.act(fault, now))
        while True:
            with self._cond:
                if not self._timers or self._timers[0][0] > now:
                    break
                _, _, due = heapq.heappop(self._timers)
            self._schedule(self.actions.follow_up(due, now))
        with self._cond:
            return (self._timers[0][0] - now) if self._timers else None

    def _schedule(self, follow_up):
        if follow_up is None:
            return
        with self._cond:
            heapq.heappush(self._timers, (
                follow_up.due, next(self._seq), follow_up))
