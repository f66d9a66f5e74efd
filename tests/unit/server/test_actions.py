# SPDX-License-Identifier: Apache-2.0
"""Corrective actions: the policy table, the cap, soft then hard reboot,
and the Nova calls (against the Nova stand-in over HTTP)."""

import itertools
import logging
import threading

import pytest

from guestha.conf.actions import ACTIONS
from guestha.nova import NovaUnavailable
from guestha import records
from guestha.server import actions
from guestha.server.ledger import ACTIONS as ACTION_TARGET
from guestha.testing.fake_nova import FakeNova
from guestha.testing.fake_nova import nova_conf

INSTANCE = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
OTHER = "7a1d9e2c-3b4f-4a5e-9c8d-1e2f3a4b5c6d"
HOST = "compute-1"


class FakeNovaActions(object):
    def __init__(self):
        self.flavor_action = {}
        self.calls = []
        self.unavailable = False
        self.fail_with = None
        self.called = threading.Event()
        self.task_states = {}
        self.deleted = set()
        self.server_reads = []
        # instance -> when Nova's last reboot finished (epoch seconds), a
        # callable of the time asked, or an exception to raise
        self.reboots_finished = {}
        self.reboot_asks = []

    def guestha_features(self, instance):
        if self.unavailable:
            raise NovaUnavailable("Nova is down")
        return {"heartbeat": True, "server_group_messaging": False,
                "corrective_action": self.flavor_action.get(instance)}

    def server(self, instance):
        # Nova's view, as NovaClient.server gives it; task_states: what
        # the next reads answer (the last one sticks)
        if self.unavailable:
            raise NovaUnavailable("Nova is down")
        if instance in self.deleted:
            return None
        states = self.task_states.get(instance) or [None]
        task_state = states.pop(0) if len(states) > 1 else states[0]
        self.server_reads.append((instance, task_state))
        return {"id": instance, "status": "ACTIVE", "host": HOST,
                "vm_state": "active", "task_state": task_state}

    def reboot_finished(self, instance, started_after):
        # as NovaClient.reboot_finished: Nova's instance actions
        self.reboot_asks.append((instance, started_after))
        finished = self.reboots_finished.get(instance)
        if isinstance(finished, Exception):
            raise finished
        return finished(started_after) if callable(finished) else finished

    def reboot(self, instance, hard=False):
        self._call(instance, "hard" if hard else "soft")

    def stop(self, instance):
        self._call(instance, "stop")

    def _call(self, instance, what):
        if self.fail_with is not None:
            raise actions.ActionFailed(self.fail_with)
        self.calls.append((instance, what))
        self.called.set()


def fault(instance=INSTANCE, action="reboot", kind="unhealthy"):
    # unhealthy: the guest answers (a soft reboot first); missed: it hangs
    return records.make_fault(instance, HOST, kind, "app wedged", action,
                              1_700_000_000.0, 1000, 1)


# -- the policy table ---------------------------------------------------------

RANK = {a: i for i, a in enumerate(ACTIONS)}


@pytest.mark.parametrize("recommended,allowed",
                         list(itertools.product(ACTIONS, ACTIONS)))
def test_less_intrusive_of_recommendation_and_allowance(recommended,
                                                        allowed):
    decision = actions.decide(recommended, allowed)
    expected = recommended if RANK[recommended] <= RANK[allowed] else allowed
    assert decision.action == expected
    assert decision.allowed == allowed
    assert decision.recommended == recommended


@pytest.mark.parametrize(
    "recommended,allowed,flavor",
    list(itertools.product(ACTIONS, ACTIONS, ACTIONS)))
def test_flavor_narrows_the_allowance(recommended, allowed, flavor):
    decision = actions.decide(recommended, allowed, flavor)
    assert decision.action == min(recommended, allowed, flavor,
                                  key=RANK.get)
    assert decision.allowed == min(allowed, flavor, key=RANK.get)


def test_flavor_never_widens():
    assert actions.decide("stop", "log", "stop").action == "log"


def test_no_recommendation_is_none():
    assert actions.decide(None, "stop").action == "none"


@pytest.mark.parametrize("allowed,expected", [("stop", "log"),
                                              ("reboot", "log"),
                                              ("log", "log"),
                                              ("none", "none")])
def test_unknown_flavor_value_narrows_to_log(allowed, expected):
    decision = actions.decide("stop", allowed, "restart")
    assert decision.action == expected
    assert "restart" in decision.reason


# -- the worker ---------------------------------------------------------------

@pytest.fixture
def nova():
    return FakeNovaActions()


class Reports(list):
    def __call__(self, record):
        self.append(record)

    def outcomes(self):
        return [(r["action"], r["step"], r["outcome"]) for r in self]


def worker_for(nova, ledger, clock, **kw):
    reports = Reports()
    kw.setdefault("allowed_max", "stop")
    worker = actions.ActionWorker(nova, ledger, reports, "ctl-a",
                                  clock=clock, **kw)
    return worker, reports


def pending_follow_ups(worker):
    """Follow-ups (hard reboots after a soft one) the worker still has."""
    with worker._cond:
        return len(worker._timers)


def act(worker, ledger, clock, event):
    ledger.accept([event])
    worker.submit(event)
    return worker.run_once(clock.now)


def test_soft_reboot_then_hard_without_recovery(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    f = fault()
    assert act(worker, ledger, clock, f) == 60
    assert nova.calls == [(INSTANCE, "soft")]
    clock.now += 59
    assert worker.run_once(clock.now) == pytest.approx(1)
    assert nova.calls == [(INSTANCE, "soft")]
    clock.now += 1
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
    assert reports.outcomes() == [("reboot", "soft", "applied"),
                                  ("reboot", "hard", "applied")]
    record = reports[1]
    assert record["type"] == "action" and record["fault_id"] == f["id"]
    assert record["instance"] == INSTANCE and record["server"] == "ctl-a"
    assert "no recovery" in record["reason"]
    assert record["recommended"] == "reboot"


def test_soft_reboot_enough_when_the_guest_recovers(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    f = fault()
    act(worker, ledger, clock, f)
    clock.now += 30
    ledger.accept([records.make_recovery(INSTANCE, HOST, f["id"],
                                         1_700_000_030.0)])
    clock.now += 30
    worker.run_once(clock.now)
    assert nova.calls == [(INSTANCE, "soft")]
    assert reports.outcomes() == [("reboot", "soft", "applied")]


def test_a_hung_guest_is_rebooted_hard_at_once(nova, ledger, clock):
    # a guest that stopped answering ignores ACPI too: no soft reboot for
    # Nova to wait [libvirt] wait_soft_reboot_seconds on, no follow-up
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    assert act(worker, ledger, clock, fault(kind="missed")) is None
    assert nova.calls == [(INSTANCE, "hard")]
    assert reports.outcomes() == [("reboot", "hard", "applied")]
    assert "stopped answering" in reports[0]["reason"]
    assert pending_follow_ups(worker) == 0
    clock.now += 600
    worker.run_once(clock.now)
    assert nova.calls == [(INSTANCE, "hard")]


def test_no_hard_reboot_while_novas_own_reboot_is_under_way(nova, ledger,
                                                            clock):
    # Nova's soft reboot falls back to hard by itself after [libvirt]
    # wait_soft_reboot_seconds; a hard reboot asked meanwhile would be a
    # second one.  The follow-up waits for Nova to finish.
    nova.task_states[INSTANCE] = ["rebooting", "rebooting_hard", None]
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    clock.now += 60
    assert worker.run_once(clock.now) == 60      # Nova still soft
    clock.now += 60
    assert worker.run_once(clock.now) == 60      # Nova's own hard step
    assert nova.calls == [(INSTANCE, "soft")]
    clock.now += 60
    assert worker.run_once(clock.now) is None    # Nova done, no recovery
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
    assert [s for _, s in nova.server_reads] == [
        "rebooting", "rebooting_hard", None]
    assert reports.outcomes() == [("reboot", "soft", "applied"),
                                  ("reboot", "hard", "applied")]


def test_novas_reboot_that_leads_to_a_recovery_needs_nothing_more(
        nova, ledger, clock):
    nova.task_states[INSTANCE] = ["rebooting_hard"]
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    f = fault()
    act(worker, ledger, clock, f)
    clock.now += 60
    worker.run_once(clock.now)                  # deferred
    clock.now += 30
    ledger.accept([records.make_recovery(INSTANCE, HOST, f["id"],
                                         clock.now)])
    clock.now += 30
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft")]
    assert reports.outcomes() == [("reboot", "soft", "applied")]


def test_a_reboot_nova_never_finishes_is_given_up(nova, ledger, clock):
    nova.task_states[INSTANCE] = ["rebooting"]
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    for _ in range(actions.MAX_FOLLOW_UP_DEFERRALS + 1):
        clock.now += 60
        worker.run_once(clock.now)
    assert nova.calls == [(INSTANCE, "soft")]
    assert reports.outcomes() == [
        ("reboot", "soft", "applied"),
        ("reboot", "hard", "failed: nova still rebooting")]
    assert pending_follow_ups(worker) == 0


def test_no_hard_reboot_of_a_guest_booting_after_novas_fallback(
        nova, ledger, clock):
    # the race: Nova's own hard reboot (after [libvirt]
    # wait_soft_reboot_seconds) finished 2 s before the follow-up, the
    # task state is back to None and the guest is booting, not registered
    # yet.  A hard reboot now would be a second one.
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    f = fault()
    act(worker, ledger, clock, f)
    asked = clock.now
    nova.reboots_finished[INSTANCE] = asked + 58
    clock.now += 60
    wait = worker.run_once(clock.now)
    assert wait == pytest.approx(58)        # 60 s after Nova's boot
    assert nova.calls == [(INSTANCE, "soft")]
    assert nova.reboot_asks == [(INSTANCE, asked - actions.CLOCK_SLACK)]
    clock.now += 30
    ledger.accept([records.make_recovery(INSTANCE, HOST, f["id"],
                                         clock.now)])
    clock.now += 28
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft")]
    assert reports.outcomes() == [("reboot", "soft", "applied")]


def test_a_guest_still_down_after_its_boot_time_is_rebooted_hard(
        nova, ledger, clock, caplog):
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    nova.reboots_finished[INSTANCE] = clock.now + 58
    clock.now += 60
    with caplog.at_level(logging.INFO, logger="guestha.server.actions"):
        worker.run_once(clock.now)
    assert "booting anew" in caplog.text
    clock.now += 58                               # 60 s after Nova's boot
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
    assert reports.outcomes() == [("reboot", "soft", "applied"),
                                  ("reboot", "hard", "applied")]


def test_novas_reboot_finished_long_ago_means_hard_reboot(nova, ledger,
                                                          clock):
    # Nova still rebooting at the first follow-up, done soon after; at the
    # second one its reboot finished more than soft_reboot_timeout ago
    nova.task_states[INSTANCE] = ["rebooting", None]
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    nova.reboots_finished[INSTANCE] = clock.now + 55
    clock.now += 60
    assert worker.run_once(clock.now) == 60       # task state deferral
    clock.now += 60
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]


def test_a_follow_up_when_nova_cannot_tell_its_reboots(nova, ledger, clock,
                                                       caplog):
    # the server reads fine, the instance actions do not: as before the
    # check, a hard reboot
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    nova.reboots_finished[INSTANCE] = NovaUnavailable("Nova is down")
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="guestha.server.actions"):
        assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
    assert "cannot tell whether Nova rebooted" in caplog.text


def test_reboots_that_keep_finishing_use_up_the_deferrals(nova, ledger,
                                                          clock):
    # a guest Nova keeps rebooting (or a clock gone wrong): the follow-up
    # gives up waiting after MAX_FOLLOW_UP_DEFERRALS and reboots hard
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    nova.reboots_finished[INSTANCE] = lambda _: clock.now - 1
    clock.now += 60
    for _ in range(actions.MAX_FOLLOW_UP_DEFERRALS):
        assert worker.run_once(clock.now) == pytest.approx(59)
        clock.now += 59
    assert nova.calls == [(INSTANCE, "soft")]
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
    assert len(nova.reboot_asks) == actions.MAX_FOLLOW_UP_DEFERRALS


def test_no_hard_reboot_of_an_instance_nova_deleted(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock,
                                 soft_reboot_timeout=60)
    act(worker, ledger, clock, fault())
    nova.deleted.add(INSTANCE)
    clock.now += 60
    assert worker.run_once(clock.now) is None
    assert nova.calls == [(INSTANCE, "soft")]


def test_the_follow_up_reads_novas_task_state_over_http(fake_nova):
    fake_nova.add_server(INSTANCE, task_state="rebooting")
    nova = actions.NovaActions.from_conf(nova_conf(fake_nova))
    worker = actions.ActionWorker(nova, None, Reports(), "ctl-a")
    assert worker.actions.nova_still_rebooting(INSTANCE) == "rebooting"
    fake_nova.servers[INSTANCE]["task_state"] = None
    assert worker.actions.nova_still_rebooting(INSTANCE) is None
    assert worker.actions.nova_still_rebooting(OTHER) == "gone"


def test_the_follow_up_reads_novas_reboot_over_http(fake_nova):
    # 2023-11-14T22:13:20Z: the soft reboot asked; Nova's one "reboot"
    # action finishes with its fallback to hard, 121.5 s later
    fake_nova.add_server(INSTANCE)
    asked = 1_700_000_000.0
    nova = actions.NovaActions.from_conf(nova_conf(fake_nova))
    worker = actions.ActionWorker(nova, None, Reports(), "ctl-a")
    assert worker.actions.nova_reboot_finished(INSTANCE, asked) is None
    fake_nova.add_instance_action(
        INSTANCE, "reboot", "req-soft", "2023-11-14T22:13:20.200000",
        [{"event": "compute_reboot_instance",
          "start_time": "2023-11-14T22:13:20.300000",
          "finish_time": "2023-11-14T22:15:21.500000",
          "result": "Success"}])
    assert worker.actions.nova_reboot_finished(INSTANCE, asked) == (
        pytest.approx(asked + 121.5))
    fake_nova.fail(500)
    assert worker.actions.nova_reboot_finished(INSTANCE, asked) is None


def test_stop(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock)
    act(worker, ledger, clock, fault(action="stop"))
    assert nova.calls == [(INSTANCE, "stop")]
    assert reports.outcomes() == [("stop", None, "applied")]
    assert pending_follow_ups(worker) == 0


def test_cap_refuses_within_the_window(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock, max_actions=1,
                                 window=600, soft_reboot_timeout=1000)
    first, second, third = fault(), fault(), fault()
    act(worker, ledger, clock, first)
    ledger.accept([records.make_recovery(INSTANCE, HOST, first["id"],
                                         1_700_000_001.0)])
    clock.now += 100
    act(worker, ledger, clock, second)
    assert nova.calls == [(INSTANCE, "soft")]
    assert reports.outcomes()[-1] == ("reboot", None, "refused: cap")
    assert "at most 1" in reports[-1]["reason"]
    # another instance has its own count
    act(worker, ledger, clock, fault(instance=OTHER))
    assert nova.calls[-1] == (OTHER, "soft")
    # the window passes
    clock.now += 501
    act(worker, ledger, clock, third)
    assert nova.calls[-1] == (INSTANCE, "soft")


def test_cap_zero_refuses_everything(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock, max_actions=0)
    act(worker, ledger, clock, fault(action="stop"))
    assert nova.calls == []
    assert reports.outcomes() == [("stop", None, "refused: cap")]


def test_nothing_recommended_nothing_recorded(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock)
    for action in (None, "none"):
        f = fault(action=action)
        act(worker, ledger, clock, f)
    assert reports == [] and nova.calls == []
    ledger.flush()
    assert all(ACTION_TARGET not in targets
               for _, targets in ledger.pending())


def test_narrowed_to_log(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock, allowed_max="log")
    act(worker, ledger, clock, fault(action="stop"))
    assert nova.calls == []
    assert reports.outcomes() == [("log", None, "logged")]
    assert "recommends stop" in reports[0]["reason"]
    assert reports[0]["allowed"] == "log"


def test_narrowed_to_none_is_a_refusal(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock, allowed_max="none")
    act(worker, ledger, clock, fault(action="reboot"))
    assert nova.calls == []
    assert reports.outcomes() == [("reboot", None, "refused: policy")]


def test_flavor_narrows_reboot_to_log(nova, ledger, clock):
    nova.flavor_action[INSTANCE] = "log"
    worker, reports = worker_for(nova, ledger, clock, allowed_max="stop")
    act(worker, ledger, clock, fault(action="reboot"))
    assert nova.calls == []
    assert reports.outcomes() == [("log", None, "logged")]
    assert "flavor allows at most log" in reports[0]["reason"]


def test_flavor_allows_reboot_but_guest_asks_stop(nova, ledger, clock):
    nova.flavor_action[INSTANCE] = "reboot"
    worker, reports = worker_for(nova, ledger, clock, allowed_max="stop")
    act(worker, ledger, clock, fault(action="stop"))
    assert nova.calls == [(INSTANCE, "soft")]


def test_nova_unavailable_fails_the_action(nova, ledger, clock, caplog):
    nova.unavailable = True
    worker, reports = worker_for(nova, ledger, clock)
    with caplog.at_level(logging.ERROR):
        act(worker, ledger, clock, fault())
    assert nova.calls == []
    assert reports.outcomes() == [("reboot", None,
                                   "failed: nova unavailable")]
    assert INSTANCE in caplog.text


def test_nova_refuses_the_action(nova, ledger, clock):
    nova.fail_with = "Conflict: Cannot 'reboot' instance while stopped"
    worker, reports = worker_for(nova, ledger, clock)
    act(worker, ledger, clock, fault())
    assert reports.outcomes() == [
        ("reboot", "soft", "failed: Conflict: Cannot 'reboot' instance "
                           "while stopped")]
    assert pending_follow_ups(worker) == 0


def test_fault_recovered_before_the_action(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock)
    f = fault()
    ledger.accept([f, records.make_recovery(INSTANCE, HOST, f["id"],
                                            1_700_000_001.0)])
    worker.submit(f)
    worker.run_once(clock.now)
    assert nova.calls == []
    assert reports.outcomes() == [("reboot", None, "skipped: recovered")]


def test_at_most_one_action_per_fault(nova, ledger, clock):
    worker, reports = worker_for(nova, ledger, clock)
    f = fault(action="stop")
    act(worker, ledger, clock, f)
    worker.submit(f)     # dispatched again after a restart
    worker.run_once(clock.now)
    assert nova.calls == [(INSTANCE, "stop")]
    assert reports.outcomes()[-1] == ("stop", None,
                                      "skipped: already acted")


def test_action_delivery_marked_done(nova, ledger, clock):
    worker, _ = worker_for(nova, ledger, clock)
    act(worker, ledger, clock, fault(action="stop"))
    ledger.flush()
    assert [targets for _, targets in ledger.pending()] == [["log"]]


def test_record_ids_are_stable_per_step():
    f = fault()
    a = actions.action_record(f, "reboot", "applied", "x", "s", 1.0,
                              step="soft")
    b = actions.action_record(f, "reboot", "applied", "y", "t", 2.0,
                              step="soft")
    c = actions.action_record(f, "reboot", "applied", "y", "t", 2.0,
                              step="hard")
    assert a["id"] == b["id"] != c["id"]


def test_worker_thread_acts_and_stops(nova, ledger):
    worker = actions.ActionWorker(nova, ledger, Reports(), "ctl-a",
                                  allowed_max="stop")
    worker.start()
    try:
        f = fault(action="stop")
        ledger.accept([f])
        worker.submit(f)
        # the timeout only ends a test that would hang: nothing is timed
        assert nova.called.wait(30)
    finally:
        worker.stop()
    assert nova.calls == [(INSTANCE, "stop")]


# -- Nova, over HTTP ----------------------------------------------------------

@pytest.fixture
def fake_nova():
    with FakeNova() as fake:
        yield fake


def test_nova_actions_against_the_stand_in(fake_nova):
    fake_nova.add_server(INSTANCE)
    nova = actions.NovaActions.from_conf(nova_conf(fake_nova))
    nova.reboot(INSTANCE)
    nova.reboot(INSTANCE, hard=True)
    nova.stop(INSTANCE)
    assert fake_nova.actions == [(INSTANCE, "reboot", {"type": "SOFT"}),
                                 (INSTANCE, "reboot", {"type": "HARD"}),
                                 (INSTANCE, "os-stop", None)]
    with pytest.raises(actions.ActionFailed, match="Conflict|409"):
        nova.reboot(INSTANCE)      # stopped: Nova says 409
    with pytest.raises(actions.ActionFailed):
        nova.stop(OTHER)           # unknown: 404


def test_the_stand_in_hands_accepted_actions_to_its_hypervisor(fake_nova):
    fake_nova.add_server(INSTANCE)
    done = []
    fake_nova.on_action = lambda uuid, action, args: done.append(
        (uuid, action, args))
    nova = actions.NovaActions.from_conf(nova_conf(fake_nova))
    nova.reboot(INSTANCE, hard=True)
    nova.stop(INSTANCE)
    with pytest.raises(actions.ActionFailed):
        nova.stop(INSTANCE)  # refused (409): not carried out
    assert done == [(INSTANCE, "reboot", {"type": "HARD"}),
                    (INSTANCE, "os-stop", None)]


# -- the actions on their own: what a fault asks, returned, not scheduled -----

def actions_for(nova, ledger, **kw):
    reports = Reports()
    worker = actions.ActionWorker(nova, ledger, reports, "ctl-a",
                                  allowed_max="stop", **kw)
    return worker.actions, reports


def test_a_soft_reboot_returns_its_follow_up(nova, ledger, clock):
    acting, reports = actions_for(nova, ledger, soft_reboot_timeout=60)
    f = fault()
    ledger.accept([f])

    due = acting.act(f, clock.now)

    assert nova.calls == [(INSTANCE, "soft")]
    assert (due.due, due.since, due.deferrals) == (
        clock.now + 60, clock.now, 0)
    assert due.fault is f and due.decision.action == "reboot"


@pytest.mark.parametrize("action, kind", [("stop", "unhealthy"),
                                          ("reboot", "missed"),
                                          ("log", "unhealthy")])
def test_other_actions_return_no_follow_up(nova, ledger, clock, action,
                                           kind):
    acting, reports = actions_for(nova, ledger)
    f = fault(action=action, kind=kind)
    ledger.accept([f])

    assert acting.act(f, clock.now) is None
    assert len(reports) == 1


def test_a_follow_up_while_nova_reboots_returns_the_next_one(
        nova, ledger, clock):
    acting, reports = actions_for(nova, ledger, soft_reboot_timeout=60)
    f = fault()
    ledger.accept([f])
    first = acting.act(f, clock.now)
    nova.task_states[INSTANCE] = ["rebooting"]

    later = clock.now + 60
    second = acting.follow_up(first, later)

    assert (second.due, second.since, second.deferrals) == (
        later + 60, first.since, 1)
    assert nova.calls == [(INSTANCE, "soft")]      # no hard reboot yet
    nova.task_states[INSTANCE] = [None]
    assert acting.follow_up(second, later + 60) is None
    assert nova.calls == [(INSTANCE, "soft"), (INSTANCE, "hard")]
