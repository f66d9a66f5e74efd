# SPDX-License-Identifier: Apache-2.0
"""The fault tracker on plain values: counts, suspicions, confirmations,
faults and recoveries, with the time passed in."""

import pytest

from guestha.agent import faults
from guestha.agent import instance as im
from guestha import records

UUID = "0c3b6f0e-9a4d-4c1e-8b2a-5d6e7f809a1b"


def tracker(open_fault=None, monitored=None, **policy):
    clock = {"wall": 1.7e9}
    t = faults.FaultTracker(UUID, "compute-1", im.Policy(**policy),
                            lambda: clock["wall"], open_fault=open_fault,
                            monitored=monitored)
    t.registered(1000, "reboot")
    return t


def token_of(outputs):
    [out] = outputs
    assert type(out) is faults.Confirm
    return out.token


def event_of(outputs):
    [out] = outputs
    assert type(out) is faults.Report
    records.validate_event(out.event)
    return out.event


def opened(t, now=10.0):
    """A tracker with a confirmed missed fault open."""
    token = token_of(t.missed(now))
    return event_of(t.confirmed(token, True, now, im.MONITORED))


# -- counts -> suspicion ------------------------------------------------------

def test_misses_below_the_threshold_suspect_nothing():
    t = tracker(miss_threshold=3)
    assert t.missed(1.0) is None
    assert t.missed(2.0) is None
    assert t.misses == 2 and t.suspicion is None
    token = token_of(t.missed(3.0))
    s = t.suspicion
    assert (s.token, s.kind, s.action) == (token, "missed", "reboot")
    assert s.reason == "no answer for 3 interval(s)"
    assert s.deadline == 3.0 + t.policy.confirm_timeout


def test_an_answer_starts_the_misses_over():
    t = tracker(miss_threshold=2)
    assert t.missed(1.0) is None
    assert t.answered(1.5, True) is None
    assert t.missed(2.0) is None
    assert t.misses == 1


def test_unhealthy_answers_suspect_with_the_guests_reason_and_action():
    t = tracker(unhealthy_threshold=2)
    assert t.answered(1.0, False, "disk full", "stop") is None
    assert t.answered(1.1, True) is None  # consecutive ones only
    assert t.answered(1.2, False, "disk full", "stop") is None
    token_of(t.answered(1.3, False, "disk full", "stop"))
    s = t.suspicion
    assert (s.kind, s.reason, s.action) == ("unhealthy", "disk full", "stop")


def test_one_suspicion_at_a_time():
    t = tracker()
    token_of(t.missed(1.0))
    assert t.missed(2.0) is None
    assert t.suspect("channel-lost", 2.0, "closed") is None
    assert t.suspicion.kind == "missed"


def test_a_suspicion_without_an_action_takes_the_recommended_one():
    t = tracker()
    token_of(t.suspect(faults.CRASH, 1.0, "restarted"))
    assert t.suspicion.action == "reboot"


# -- suspicion -> confirmation -> fault ---------------------------------------

def test_a_running_domain_confirms_the_fault():
    t = tracker()
    token = token_of(t.missed(10.0))
    event = event_of(t.confirmed(token, True, 10.5, im.MONITORED))
    assert (event["type"], event["kind"], event["action"]) == (
        "fault", "missed", "reboot")
    assert (event["instance"], event["host"]) == (UUID, "compute-1")
    assert event["detected_at_ts"] == 1.7e9
    assert (event["interval_ms"], event["misses"]) == (1000, 1)
    assert event["details"] == {"unconfirmed": False, "state": im.MONITORED}
    assert t.fault == {"id": event["id"], "kind": "missed"}
    assert t.suspicion is None


def test_a_domain_not_running_drops_the_suspicion():
    t = tracker()
    token = token_of(t.missed(10.0))
    assert t.confirmed(token, False, 10.5) == []
    assert t.fault is None and t.suspicion is None


def test_an_answer_for_another_token_is_ignored():
    t = tracker()
    token_of(t.missed(10.0))
    assert t.confirmed("stale", True, 10.5) is None
    assert t.suspicion is not None and t.fault is None


def test_no_confirmation_in_time_opens_the_fault_unconfirmed():
    t = tracker(confirm_timeout=2.0)
    token_of(t.missed(10.0))
    assert t.next_timer() == 12.0
    assert t.check(11.9) is None
    event = event_of(t.check(12.0, im.MONITORED))
    assert event["details"]["unconfirmed"] is True
    assert t.fault is not None and t.next_timer() is None


def test_a_healthy_answer_takes_back_a_suspicion():
    t = tracker()
    token = token_of(t.missed(10.0))
    assert t.answered(10.2, True) is None
    assert t.suspicion is None
    assert t.confirmed(token, True, 10.5) is None


def test_a_healthy_answer_does_not_take_back_a_crash():
    t = tracker()
    token = token_of(t.suspect(faults.CRASH, 10.0, "restarted"))
    assert t.answered(10.2, True) is None
    assert event_of(t.confirmed(token, True, 10.5))["kind"] == faults.CRASH


def test_before_registration_the_fault_takes_what_was_monitored():
    t = faults.FaultTracker(UUID, "compute-1", im.Policy(), lambda: 1.7e9,
                            monitored={"interval_ms": 200,
                                       "action": "stop"})
    token = token_of(t.suspect("missed", 1.0, "no resync"))
    event = event_of(t.confirmed(token, True, 1.0))
    assert (event["interval_ms"], event["action"]) == (200, "stop")


# -- the lost channel ---------------------------------------------------------

def test_a_channel_lost_past_its_grace_is_suspected():
    t = tracker(channel_lost_grace=3.0)
    t.channel_lost(10.0)
    assert t.next_timer() == 13.0
    assert t.check_lost(12.9) is None
    token_of(t.check(13.0))
    assert t.suspicion.kind == "channel-lost"
    assert t.lost_deadline is None


def test_a_channel_back_within_its_grace_is_not():
    t = tracker(channel_lost_grace=3.0)
    t.channel_lost(10.0)
    t.registered(1000, "reboot")
    assert t.check(14.0) is None and t.next_timer() is None
    t.channel_lost(20.0)
    assert t.answered(21.0, True) is None
    assert t.check(30.0) is None


# -- fault -> recovery --------------------------------------------------------

def test_one_fault_at_a_time():
    t = tracker()
    opened(t)
    assert t.missed(11.0) is None and t.suspicion is None


def test_a_healthy_answer_recovers():
    t = tracker()
    fault = opened(t)
    event = event_of(t.answered(11.0, True))
    assert (event["type"], event["fault_id"], event["kind"]) == (
        "recovery", fault["id"], "missed")
    assert event["details"] == {"why": "guest answers healthy"}
    assert t.fault is None


def test_an_exit_recovers():
    t = tracker()
    opened(t)
    event = event_of(t.exited(11.0))
    assert event["details"]["why"] == "guest exited"
    assert t.exited(12.0) is None


def test_an_unhealthy_answer_keeps_the_fault():
    t = tracker()
    opened(t)
    assert t.answered(11.0, False, "still bad") is None
    assert t.fault is not None


def test_a_stopped_domain_recovers_and_forgets_its_suspicions():
    t = tracker()
    opened(t)
    assert event_of(t.stopped(11.0))["details"]["why"] == "instance stopped"
    token_of(t.missed(12.0))
    t.channel_lost(12.0)
    assert t.stopped(12.5) is None
    assert t.suspicion is None and t.next_timer() is None


def test_suspend_forgets_suspicions_and_counts_not_the_fault():
    t = tracker()
    fault = opened(t)
    assert t.missed(11.0) is None and t.misses == 2
    t.channel_lost(11.0)
    t.suspend()
    assert (t.misses, t.suspicion, t.lost_deadline) == (0, None, None)
    assert t.fault["id"] == fault["id"]


def test_a_fault_left_open_by_an_earlier_agent_recovers():
    t = tracker(open_fault={"id": "3f0b9a4e-1d2c-4b5a-9e8f-7a6b5c4d3e2f",
                            "kind": "unhealthy"})
    event = event_of(t.answered(1.0, True))
    assert (event["fault_id"], event["kind"]) == (
        "3f0b9a4e-1d2c-4b5a-9e8f-7a6b5c4d3e2f", "unhealthy")


# -- flapping: recoveries held back -------------------------------------------

def test_the_fault_limit_holds_the_recovery_back_until_the_window_allows():
    t = tracker(fault_limit=2, fault_window=60.0)
    opened(t, 10.0)
    event_of(t.answered(11.0, True))
    fault = opened(t, 20.0)
    assert fault["details"]["flapping"] == 2
    assert t.answered(21.0, True) is None  # held: 2 faults in 60 s
    assert (t.held, t.release_at) == ("guest answers healthy", 70.0)
    assert t.fault is not None and t.next_timer() == 70.0
    assert t.release(69.9) is None
    event = event_of(t.release(70.0))
    assert event["fault_id"] == fault["id"]
    assert event["details"]["why"] == (
        "guest answers healthy (held back: 2 faults within 60 s)")
    assert t.fault is None and t.release_at is None


def test_a_new_suspicion_while_held_keeps_the_fault():
    t = tracker(fault_limit=1, fault_window=60.0)
    opened(t, 10.0)
    assert t.answered(11.0, True) is None
    assert t.release_at == 70.0
    assert t.missed(12.0) is None  # faulty again: nothing held
    assert t.release_at is None and t.release(80.0) is None
    assert t.fault is not None


def test_a_stopped_domain_recovers_even_when_held():
    t = tracker(fault_limit=1, fault_window=600.0)
    opened(t, 10.0)
    assert t.answered(11.0, True) is None
    assert event_of(t.stopped(12.0))["details"]["why"] == "instance stopped"
    assert t.release_at is None


@pytest.mark.parametrize("limit,window,times,flapping", [
    (3, 60.0, [0.0, 10.0], False),
    (3, 60.0, [0.0, 10.0, 20.0], True),
    (3, 60.0, [0.0, 10.0, 70.0], False),    # the oldest left it
    (3, 60.0, [0.0, 10.0, 20.0, 65.0], True),
    (2, 60.0, [0.0, 70.0], False),
])
def test_flapping_counts_the_faults_of_the_window(limit, window, times,
                                                  flapping):
    t = tracker(fault_limit=limit, fault_window=window)
    for now in times:
        t.opened.append(now)
    assert t.flapping(times[-1]) is flapping
