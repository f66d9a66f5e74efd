# SPDX-License-Identifier: Apache-2.0
"""The agent's per-instance state machine, on a fake clock."""

import errno

import pytest

from guestha.agent import events as ev
from guestha.agent import instance as im
from tests.unit.agent.harness import Harness


def monitored(**kwargs):
    h = Harness(**kwargs)
    h.advance(0.5)
    assert h.inst.state == im.MONITORED
    return h


def test_registration_and_healthy_heartbeats_raise_nothing():
    h = monitored()
    h.advance(5)
    c = h.inst.counters
    assert c["answers"] >= 45
    assert c["missed"] == 0 and h.env.reports == []
    assert h.inst.interval_ms == 100
    assert h.inst.status(h.now)["last_answer"]["healthy"] is True


def test_timers_fired_late_do_not_stretch_the_challenge_period():
    # the loop fires timers up to a batch delay late (here 15 ms): each
    # challenge is still due one interval after the previous one was due,
    # so the lateness does not add up from round to round
    h = monitored(interval_ms=1000)
    sent, count = [], h.inst.counters["challenges"]
    for _ in range(4000):  # 60 s
        h.advance(0.015, step=0.015)
        if h.inst.counters["challenges"] != count:
            count = h.inst.counters["challenges"]
            sent.append(h.now)
    assert len(sent) >= 59
    drift = [t - sent[0] - k for k, t in enumerate(sent)]
    assert max(abs(d) for d in drift) <= 0.015 + 1e-9
    assert h.inst.counters["missed"] == 0


def test_deadlines_are_urgent_and_the_next_challenge_is_not():
    # the loop's batching must not make a deadline late: the instance
    # says which of its timers are deadlines
    h = monitored(interval_ms=1000)
    challenges = h.inst.counters["challenges"]
    while h.inst.counters["challenges"] == challenges:
        h.env.now += 0.01
        if h.inst.wake_at is not None and h.inst.wake_at <= h.env.now:
            h.inst.wake_at = None
            h.inst.tick(h.env.now)
    # the challenge is out: the timer is its deadline, urgent
    assert h.env.scheduled[-1] == (h.now + 1.0, True)
    h.pump()  # the answer
    when, urgent = h.env.scheduled[-1]
    assert not urgent and h.now < when <= h.now + 1.0
    # a hung guest: after the deadline that fires, every timer is one
    # (the resync's, the suspicion's confirmation)
    h.guest.frozen = True
    h.advance(1.0)
    before = len(h.env.scheduled)
    h.advance(1.2)
    assert h.env.confirms and h.inst.faults.suspicion is not None
    assert len(h.env.scheduled) > before
    assert all(urgent for _, urgent in h.env.scheduled[before:])


def test_interval_is_clamped_to_the_operator_bounds():
    h = Harness(policy=im.Policy(min_interval_ms=400), interval_ms=100)
    h.advance(1)
    assert h.inst.interval_ms == 400


def test_hung_guest_is_a_fault_within_two_intervals_once_confirmed():
    h = monitored()
    h.advance(0.05)
    h.guest.frozen = True
    frozen_at = h.now
    h.advance(0.25)
    assert h.env.confirms, "a suspected fault asks libvirt first"
    assert h.faults() == []
    h.confirm(ev.RUNNING)
    f = h.faults()
    assert len(f) == 1 and f[0]["kind"] == "missed"
    assert f[0]["instance"] == h.inst.uuid and f[0]["host"] == "compute-1"
    assert h.now - frozen_at <= 0.25
    # still frozen: no second report for the same fault
    h.advance(1)
    assert len(h.faults()) == 1
    h.guest.frozen = False
    h.advance(1)
    r = h.recoveries()
    assert len(r) == 1 and r[0]["fault_id"] == f[0]["id"]
    assert r[0]["kind"] == "missed"   # the kind of the fault it clears
    assert h.inst.fault is None


def test_a_paused_domain_is_not_a_fault():
    h = monitored()
    h.guest.frozen = True
    h.advance(0.3)
    h.confirm(ev.PAUSED)  # libvirt says: paused, not hung
    assert h.faults() == []
    assert h.inst.state == im.SUSPENDED


@pytest.mark.parametrize("state", [ev.PAUSED, ev.MIGRATING,
                                   ev.SHUTTING_DOWN, ev.PMSUSPENDED])
def test_suspended_domains_are_not_monitored_and_resume_afresh(state):
    h = monitored()
    h.domain(state)
    assert h.inst.state == im.SUSPENDED
    h.guest.frozen = True
    h.advance(3)
    assert h.env.reports == [] and h.env.confirms == []
    h.guest.frozen = False
    h.domain(ev.RUNNING)
    h.advance(0.5)
    assert h.inst.state == im.MONITORED
    h.advance(1)
    assert h.env.reports == []


def test_unhealthy_answers_are_a_fault_with_reason_and_action():
    h = monitored()
    h.guest.healthy = False
    h.guest.reason = "disk full"
    h.advance(0.3)
    h.confirm()
    f = h.faults()[0]
    assert (f["kind"], f["reason"], f["action"]) == (
        "unhealthy", "disk full", "reboot")
    h.guest.healthy = True
    h.advance(0.3)
    assert h.recoveries()[0]["fault_id"] == f["id"]


def test_thresholds_need_consecutive_failures():
    h = monitored(policy=im.Policy(min_interval_ms=100,
                                   unhealthy_threshold=3))
    h.guest.healthy = False
    h.advance(0.19)
    h.guest.healthy = True
    h.advance(0.5)
    assert h.env.confirms == []


def test_exit_is_not_a_fault():
    h = monitored()
    h.guest.apply(h.guest.session.exit(h.now), h.now)
    h.pump()
    assert h.inst.state == im.EXITED
    h.guest.frozen = True
    h.advance(5)
    assert h.env.reports == [] and h.env.confirms == []


def test_a_stopped_domain_clears_its_open_fault():
    h = monitored()
    h.guest.frozen = True
    h.advance(0.3)
    h.confirm()
    h.inst.domain_gone(h.now)
    assert h.inst.state == im.STOPPED
    assert h.recoveries()[0]["details"]["why"] == "instance stopped"


def test_channel_lost_while_monitored_is_a_fault_after_the_grace():
    h = monitored(policy=im.Policy(min_interval_ms=100,
                                   channel_lost_grace=1.0))
    h.env.refuse = errno.ENOENT
    h.guest.sock.close()
    h.guest = None
    h.pump()
    assert h.inst.state == im.CONNECTING
    h.advance(0.9)
    assert h.env.confirms == []
    h.advance(0.2)
    h.confirm()
    assert h.faults()[0]["kind"] == "channel-lost"


def test_channel_lost_then_back_within_the_grace_is_not_a_fault():
    h = monitored(policy=im.Policy(min_interval_ms=100,
                                   channel_lost_grace=2.0))
    h.guest.sock.close()
    h.guest = None
    h.pump()
    h.advance(1.5)
    assert h.inst.state == im.MONITORED
    h.advance(2)
    assert h.env.confirms == [] and h.env.reports == []


def test_guest_daemon_restart_without_exit_is_reported():
    h = monitored()
    h.advance(0.3)
    # a new daemon on the same port: fresh state, syncs and registers
    from tests.unit.agent.harness import Guest
    h.guest = Guest(h.guest.sock)
    h.advance(0.3)
    h.confirm()
    assert h.faults()[0]["kind"] == "guest-exit-unexpected"
    h.advance(0.3)
    assert len(h.recoveries()) == 1


def test_no_channel_asks_for_a_hotplug_once():
    h = Harness(channel=False)
    assert h.inst.state == im.NO_CHANNEL
    assert h.env.hotplugs == [h.inst.uuid]
    h.domain(ev.RUNNING, channel=False)
    assert h.env.hotplugs == [h.inst.uuid]
    h.domain(ev.RUNNING, channel=True)  # DEVICE_ADDED after the attach
    h.advance(0.5)
    assert h.inst.state == im.MONITORED


def test_a_restarted_domain_is_hot_plugged_again():
    h = Harness(channel=False)
    h.inst.domain_gone(h.now)
    h.domain(ev.RUNNING, channel=False)
    assert h.env.hotplugs == [h.inst.uuid, h.inst.uuid]


def test_a_silent_guest_is_synced_with_back_off_and_never_a_fault():
    h = Harness(guest_frozen=True)
    h.advance(60, step=0.05)
    assert h.inst.state == im.SYNCING
    syncs = h.guest.sock.recv(1 << 20).count(b'"type":"sync"')
    assert 5 <= syncs <= 10  # 1, 2, 4, 8, 16, 30 s...
    assert h.env.reports == []


def test_a_flooding_guest_is_reset_and_reopened():
    h = monitored(policy=im.Policy(min_interval_ms=100,
                                   misbehaviour_limit=5))
    for _ in range(20):
        h.guest.write(b"junk\n")
    h.pump()
    assert h.inst.counters["resets"] == 1
    assert h.inst.state == im.CONNECTING
    h.advance(1.5)
    assert h.inst.state == im.MONITORED


def test_the_table_is_complete_and_every_handler_exists():
    states = (im.NO_CHANNEL, im.CONNECTING, im.SYNCING, im.WAITING,
              im.MONITORED, im.EXITED, im.SUSPENDED, im.STOPPED)
    for state in states:
        # libvirt can say anything at any time: every state takes every
        # domain input and the timer
        for kind in ("running", "suspended", "stopped", "timer"):
            assert (state, kind) in im.TRANSITIONS, (state, kind)
    for (_state, _kind), (handler, nxt) in im.TRANSITIONS.items():
        assert callable(getattr(im.Instance, handler)), handler
        assert nxt in states


def test_a_missed_fault_carries_the_action_the_guest_recommended():
    h = monitored()  # the guest registered recommending reboot
    h.guest.frozen = True
    h.advance(0.3)
    h.confirm()
    f = h.faults()
    assert len(f) == 1 and (f[0]["kind"], f[0]["action"]) == (
        "missed", "reboot")


def test_a_guest_that_resets_itself_registers_again_without_a_fault():
    from tests.unit.agent.harness import Guest
    from tests.unit.agent.harness import PATH
    from tests.unit.agent.harness import UUID
    h = monitored()
    h.advance(0.05)
    # the guest reboots from inside: its daemon vanishes without exit and
    # libvirt says "reboot" (the domain keeps running, same channel)
    h.guest.frozen = True
    info = ev.DomainInfo(UUID, "vm", ev.RUNNING, PATH, True, {})
    h.inst.domain(info, h.now, "reboot")
    assert h.inst.state == im.SYNCING
    assert h.inst.status(h.now)["note"] == "guest rebooted"
    h.advance(2)  # booting: nobody answers, and that is no fault
    assert h.env.confirms == [] and h.env.reports == []
    # the new daemon comes up on the same port and registers afresh
    h.guest = Guest(h.env.guest_socks[-1])
    h.advance(2)
    assert h.inst.state == im.MONITORED
    assert h.inst.status(h.now)["note"] is None
    assert h.env.reports == [] and h.env.confirms == []


def test_without_a_reset_event_a_vanished_daemon_is_a_fault():
    h = monitored()
    h.guest.frozen = True
    h.inst.domain(h.inst.info, h.now, "lifecycle:resumed:unpaused")
    h.advance(0.3)
    assert h.env.confirms
