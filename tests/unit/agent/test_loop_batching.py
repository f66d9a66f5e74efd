# SPDX-License-Identifier: Apache-2.0
"""The loop's wake-up batching (``batch_delay``) on a clock the test
moves: after a wake-up that found work the loop sleeps until
``batch_delay`` after it and then takes all that came meanwhile in one
look; after one that found nothing it waits as usual.

The loop's poller and sockets are real; the timers' owners are small
stand-ins for instances (what the loop uses of one: ``uuid``, ``wake_at``,
``tick``), and the loop's sleep advances the test's clock."""

import socket

import pytest

from guestha.agent import instance as im
from guestha.agent.loop import AgentLoop
from tests.support.clock import ManualClock

T0 = 1000.0


def ms(fired):
    """``(uuid, milliseconds after T0)`` of each firing or read."""
    return [(what, round((when - T0) * 1000, 3)) for what, when in fired]


class Timed(object):
    """Something with a timer, as an instance is to the loop."""

    def __init__(self, uuid, loop, fired):
        self.uuid = uuid
        self.wake_at = None
        self._loop = loop
        self._fired = fired

    def at(self, when, urgent=False):
        self.wake_at = when
        self._loop.schedule(self, when, urgent)

    def tick(self, now):
        self._fired.append((self.uuid, now))


@pytest.fixture
def world(tmp_path):
    clock = ManualClock(T0)
    sleeps = []

    def sleep(seconds):
        sleeps.append(round(seconds, 6))
        clock.advance(seconds)
    loop = AgentLoop("h", im.Policy(), reporter=None,
                     state_dir=str(tmp_path), clock=clock, sleep=sleep,
                     batch_delay=0.005)
    fired = []

    def timed(uuid, when, urgent=False):
        t = Timed(uuid, loop, fired)
        loop.instances[uuid] = t
        t.at(when, urgent)
        return t
    yield loop, clock, sleeps, fired, timed
    loop.sel.close()


def test_timers_due_within_the_delay_fire_in_one_wake_up(world):
    loop, clock, sleeps, fired, timed = world
    for i, offset in enumerate([0.0, 0.001, 0.002, 0.0045, 0.010]):
        timed("i%d" % i, T0 + offset)

    loop.run_once(max_wait=0)  # the first is due: no sleep before it
    assert sleeps == [] and ms(fired) == [("i0", 0)]

    clock.advance(0.0005)  # the work took half a millisecond
    loop.run_once(max_wait=0)
    # it slept until 5 ms after the wake-up and fired the three that fell
    # due meanwhile together, each late by less than the delay
    assert sleeps == [0.0045]
    assert ms(fired[1:]) == [("i1", 5), ("i2", 5), ("i3", 5)]

    loop.run_once(max_wait=0)
    # that wake-up found work too: the next look is 5 ms after it, when
    # the last is due
    assert sleeps == [0.0045, 0.005]
    assert ms(fired[4:]) == [("i4", 10)]


def test_an_idle_wake_up_is_followed_by_the_usual_wait(world):
    loop, clock, sleeps, fired, timed = world
    timed("i0", T0)
    loop.run_once(max_wait=0)
    loop.run_once(max_wait=0)  # the look after the work: nothing came
    assert sleeps == [0.005] and ms(fired) == [("i0", 0)]
    # nothing found: no more sleeping, the loop waits for what comes next
    timed("i1", T0 + 1.0)
    clock.advance(1.0)
    loop.run_once(max_wait=0)
    assert sleeps == [0.005] and ms(fired[-1:]) == [("i1", 1005)]


def test_answers_that_arrive_meanwhile_are_read_in_the_same_look(world):
    loop, clock, sleeps, fired, timed = world
    pairs = [socket.socketpair() for _ in range(3)]
    reads = []

    def readable(sock, mask):
        reads.append((sock.recv(100), clock()))
    for ours, _theirs in pairs:
        ours.setblocking(False)
        loop.sel.register(ours, readable)
    try:
        pairs[0][1].send(b"a0")
        loop.run_once(max_wait=0)  # read at once: the loop was idle
        assert ms(reads) == [(b"a0", 0)] and sleeps == []
        # two answers arrive during the delay: one wake-up reads both, and
        # a timer that fell due meanwhile fires after them (an answer in
        # before its deadline's timer fires still counts)
        clock.advance(0.001)
        pairs[1][1].send(b"a1")
        pairs[2][1].send(b"a2")
        timed("i0", T0 + 0.002)
        loop.run_once(max_wait=0)
        assert sleeps == [0.004]
        assert sorted(ms(reads[1:])) == [(b"a1", 5), (b"a2", 5)]
        assert ms(fired) == [("i0", 5)]
    finally:
        for a, b in pairs:
            loop.sel.unregister(a)
            a.close()
            b.close()


def test_a_deadline_ends_the_sleep_and_fires_on_time(world):
    loop, clock, sleeps, fired, timed = world
    timed("i0", T0)
    timed("late", T0 + 0.004)           # a challenge due: batched
    timed("deadline", T0 + 0.002, urgent=True)
    loop.run_once(max_wait=0)
    assert ms(fired) == [("i0", 0)]
    loop.run_once(max_wait=0)
    # the sleep ended at the deadline, not 5 ms after the wake-up
    assert sleeps == [0.002] and ms(fired[1:]) == [("deadline", 2)]
    loop.run_once(max_wait=0)
    assert sleeps == [0.002, 0.005]
    assert ms(fired[2:]) == [("late", 7)]


def test_an_answer_in_before_its_deadline_is_read_before_it(world):
    loop, clock, sleeps, fired, timed = world
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    order = []
    loop.sel.register(ours, lambda sock, mask: order.append(
        ("read", sock.recv(10))))
    try:
        timed("i0", T0)
        loop.run_once(max_wait=0)
        deadline = timed("deadline", T0 + 0.003, urgent=True)
        deadline._fired = order
        theirs.send(b"answer")  # in before the deadline, not yet read
        loop.run_once(max_wait=0)
        assert sleeps == [0.003]
        assert [what for what, _ in order] == ["read", "deadline"]
    finally:
        loop.sel.unregister(ours)
        ours.close()
        theirs.close()


def test_a_deadline_no_longer_due_costs_no_wake_up(world):
    loop, clock, sleeps, fired, timed = world
    timed("i0", T0)
    answered = timed("answered", T0 + 0.002, urgent=True)
    gone = timed("gone", T0 + 0.003, urgent=True)
    loop.run_once(max_wait=0)
    # the answer came: the instance's timer moved to its next challenge;
    # the other instance is gone
    answered.at(T0 + 1.0)
    del loop.instances["gone"]
    loop.run_once(max_wait=0)
    assert sleeps == [0.005]  # the batch, not an early wake-up
    assert ms(fired) == [("i0", 0)]
    assert gone.wake_at is not None and loop.io._urgent == []


def test_no_delay_means_no_sleep(world):
    loop, clock, sleeps, fired, timed = world
    loop.batch_delay = 0.0
    timed("deadline", T0 + 0.5, urgent=True)
    assert loop.io._urgent == []  # (without batching, one heap)
    for i, offset in enumerate([0.0, 0.001, 0.002]):
        timed("i%d" % i, T0 + offset)
    for step in range(3):
        loop.run_once(max_wait=0)
        clock.now = T0 + 0.001 * (step + 1)
    # each fired on its own wake-up, at its time
    assert sleeps == []
    assert ms(fired) == [("i0", 0), ("i1", 1), ("i2", 2)]


def test_the_delay_is_at_most_four_percent_of_the_shortest_interval(world):
    loop, clock, sleeps, fired, timed = world
    loop.batch_delay = 0.050
    slow = timed("slow", T0 + 10)
    fast = timed("fast", T0 + 10)
    slow.monitored = {"interval_ms": 1000, "action": "none"}
    fast.monitored = None
    loop.monitoring_changed()
    loop.run_once(max_wait=0)
    assert loop.io.batch_delay == pytest.approx(0.040)  # 4% of 1 s
    fast.monitored = {"interval_ms": 100, "action": "none"}
    loop.monitoring_changed()
    loop.run_once(max_wait=0)
    assert loop.io.batch_delay == pytest.approx(0.004)  # 4% of 100 ms
    fast.monitored = None  # the guest said exit
    loop.monitoring_changed()
    loop.run_once(max_wait=0)
    assert loop.io.batch_delay == pytest.approx(0.040)
    loop.batch_delay = 0.005  # asked for less than 4% of every interval
    assert loop.io.batch_delay == pytest.approx(0.005)


def test_urgent_timers_have_their_own_heap_and_fire_in_time_order(world):
    loop, clock, sleeps, fired, timed = world
    timed("a", T0 + 0.001)
    timed("u1", T0 + 0.002, urgent=True)
    timed("b", T0 + 0.003)
    timed("u2", T0 + 0.003, urgent=True)
    timed("c", T0 + 0.004)
    # each entry is in one heap: an answered deadline is one push, one pop
    assert len(loop.io._heap) == 3 and len(loop.io._urgent) == 2
    clock.now = T0 + 0.004
    loop.run_once(max_wait=0)
    # both heaps, in time order (the earlier scheduled first at a tie)
    assert [what for what, _ in fired] == ["a", "u1", "b", "u2", "c"]
    assert loop.io._heap == [] and loop.io._urgent == []


def test_an_idle_loop_waits_for_the_earliest_timer_of_either_heap(world):
    loop, clock, sleeps, fired, timed = world
    waits = []
    poll = loop.io.poller.poll

    def recording_poll(timeout):
        waits.append(round(timeout, 6))
        return poll(0)
    loop.io.poller.poll = recording_poll
    timed("next", T0 + 0.5)
    deadline = timed("deadline", T0 + 0.3, urgent=True)
    loop.run_once(max_wait=1.0)
    assert waits == [0.3] and fired == []
    # an answered deadline (its owner's timer moved) is not waited for
    deadline.wake_at = None
    loop.run_once(max_wait=1.0)
    assert waits == [0.3, 0.5] and loop.io._urgent == []
