# SPDX-License-Identifier: Apache-2.0
"""The agent's cheaper ways of doing the same thing: the shared random
source and its tokens, the epoll poller of the loop, the instance's timer
bookkeeping and the lighter import of the reporter."""

import os
import random
import select
import socket

import pytest

from guestha.agent import faults
from guestha.agent import instance as im
from guestha.agent import ioloop
from guestha.agent import loop as loop_mod
from guestha.agent import randomness
from guestha_guest.protocol import heartbeat as hb
from tests.unit.agent.harness import Harness


def monitored():
    h = Harness()
    h.advance(0.5)
    assert h.inst.state == im.MONITORED
    return h


# -- the random source -------------------------------------------------------

class _BitsOnly(object):
    """An rng with getrandbits and random only (as Python 3.8's Random)."""

    def __init__(self, seed):
        self._r = random.Random(seed)

    def getrandbits(self, k):
        return self._r.getrandbits(k)

    def random(self):
        return self._r.random()


def _tokens(rng, count):
    beat = hb.HostHeartbeat(rng=rng)
    beat.interval_ms = 1000
    return [beat._challenge(None, float(i))[0].challenge
            for i in range(count)]


def test_shared_source_tokens_are_32_hex_digits_and_vary():
    tokens = _tokens(randomness.SHARED, 500)
    assert all(len(t) == 32 and int(t, 16) >= 0 and t == t.lower()
               for t in tokens)
    assert len(set(tokens)) == len(tokens)
    # every digit position takes many values (the whole 128 bits are used)
    for pos in (0, 15, 31):
        assert len({t[pos] for t in tokens}) > 8
    assert 0.0 <= randomness.SHARED.random() < 1.0


def test_tokens_from_an_rng_without_randbytes_are_the_same_format():
    ref = _BitsOnly(7)
    assert _tokens(_BitsOnly(7), 50) == [
        "%032x" % ref.getrandbits(128) for _ in range(50)]


def test_a_seeded_rng_gives_repeatable_tokens():
    ref = random.Random(3)
    assert _tokens(random.Random(3), 5) == [
        ref.randbytes(16).hex() for _ in range(5)]
    assert _tokens(random.Random(3), 5) == _tokens(random.Random(3), 5)
    assert _tokens(random.Random(3), 5) != _tokens(random.Random(4), 5)


def test_instances_share_the_random_source():
    h = monitored()
    assert h.inst.conn._rng is randomness.SHARED
    assert h.inst.hb._rng is randomness.SHARED


# -- the loop's poller --------------------------------------------------------

def test_poller_reports_readable_sockets_with_their_callback():
    poller = ioloop.Poller()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        calls = []
        poller.register(a, lambda s, m: calls.append(("a", s, m)))
        poller.register(c, lambda s, m: calls.append(("c", s, m)))
        with pytest.raises(KeyError):
            poller.register(a, lambda s, m: None)
        assert poller.poll(0) == []
        b.send(b"x")
        ready = poller.poll(1.0)
        assert [(cb.__class__, f, mask) for cb, f, mask in ready] == [
            (type(lambda: 0), a, 1)]
        for cb, f, mask in ready:
            cb(f, mask)
        assert calls == [("a", a, 1)]
        # a closed peer is readable (end of file), as with selectors
        d.close()
        assert [f for _cb, f, _m in poller.poll(1.0)] == [a, c]
        poller.unregister(a)
        with pytest.raises(KeyError):
            poller.unregister(a)
        # unregistering a socket closed meanwhile is fine
        c.close()
        poller.unregister(c)
        assert poller.poll(0) == []
    finally:
        for s in (a, b, c, d):
            s.close()
        poller.close()


def test_poller_reports_writable_only_when_asked():
    poller = ioloop.Poller()
    a, b = socket.socketpair()
    try:
        poller.register(a, lambda s, m: None)
        assert poller.poll(0) == []  # writable, but not asked for
        poller.modify(a, True)
        (_cb, f, mask), = poller.poll(0)
        assert f is a and mask & select.EPOLLOUT
        b.send(b"x")
        (_cb, f, mask), = poller.poll(0)
        assert mask & select.EPOLLOUT and mask & select.EPOLLIN
        poller.modify(a, False)
        (_cb, f, mask), = poller.poll(0)
        assert mask == 1  # readable only, as before
        with pytest.raises(KeyError):
            poller.modify(b, True)
    finally:
        a.close()
        b.close()
        poller.close()


class _Ready(object):
    def __init__(self):
        self.calls = []

    def readable(self, now):
        self.calls.append("r")

    def writable(self, now):
        self.calls.append("w")


def test_loop_hands_writable_and_readable_to_the_instance(tmp_path):
    loop = loop_mod.AgentLoop("h", im.Policy(), reporter=None,
                              state_dir=str(tmp_path))
    a, b = socket.socketpair()
    inst = _Ready()
    try:
        loop.watch(inst, a)
        loop.watch_writable(inst, a, True)
        for cb, f, mask in loop.sel.poll(0):
            cb(f, mask)
        assert inst.calls == ["w"]
        b.send(b"x")
        for cb, f, mask in loop.sel.poll(0):
            cb(f, mask)
        assert inst.calls == ["w", "w", "r"]
        loop.watch_writable(inst, a, False)
        loop.unwatch(a)
        loop.watch_writable(inst, a, True)  # unwatched: nothing happens
    finally:
        a.close()
        b.close()
        loop.sel.close()


def test_poller_rounds_timeouts_up_to_the_millisecond(monkeypatch):
    poller = ioloop.Poller()
    seen = []

    class FakeEpoll(object):
        def poll(self, timeout, maxevents):
            seen.append((timeout, maxevents))
            return []

    poller._epoll = FakeEpoll()
    for timeout in (0, -1.0, 0.0001, 0.001, 0.0015, 1.0):
        poller.poll(timeout)
    assert [round(t, 6) for t, _ in seen] == [0, 0, 0.001, 0.001, 0.002,
                                              1.0]
    assert all(n == 1 for _, n in seen)


# -- the instance's timers ---------------------------------------------------

def reference_when(inst):
    """When the instance must next be ticked, as the list-based
    _reschedule computed it."""
    times = [inst._sync_at if inst.state == im.SYNCING else None,
             inst._connect_at if inst.state == im.CONNECTING else None,
             inst.hb.next_timer() if inst.hb is not None else None,
             inst.faults.next_timer()]
    times = [t for t in times if t is not None]
    return min(times) if times else None


@pytest.mark.parametrize("state", [im.SYNCING, im.CONNECTING, im.MONITORED,
                                   im.WAITING])
def test_reschedule_picks_the_earliest_timer(state):
    h = monitored()
    inst, env = h.inst, h.env
    values = [None, 5.0, 7.0, 1000.5]
    for sync_at in values:
        for connect_at in values:
            for confirm in (None, 3.0, 9.0):
                for lost_at in (None, 1.0, 8.0):
                    for with_hb in (True, False):
                        inst.state = state
                        inst._sync_at = sync_at
                        inst._connect_at = connect_at
                        inst.faults.suspicion = None if confirm is None \
                            else faults.Suspicion("t", "missed", "r", None,
                                                  confirm)
                        inst.faults.lost_deadline = lost_at
                        saved = inst.session
                        if not with_hb:
                            inst.session = None
                        inst.wake_at = -1.0
                        inst._reschedule(env.now)
                        assert inst.wake_at == reference_when(inst)
                        inst.session = saved


def test_heartbeat_timer_checks_confirmations_and_lost_channels():
    # the timer only skips _check_confirm when it has nothing to check
    h = monitored()
    inst, env = h.inst, h.env
    calls = []
    inst._check_confirm = lambda now: calls.append(now)
    inst._heartbeat_timer(env.now, None)
    assert calls == []
    inst.faults.lost_deadline = env.now
    inst._heartbeat_timer(env.now, None)
    inst.faults.lost_deadline = None
    inst.faults.suspicion = faults.Suspicion("t", "missed", "r", None,
                                             env.now + 1)
    inst._heartbeat_timer(env.now, None)
    assert calls == [env.now, env.now]


def test_challenges_and_answers_still_counted():
    h = monitored()
    before = dict(h.inst.counters)
    h.advance(1.0)  # ten intervals of 100 ms
    sent = h.inst.counters["challenges"] - before["challenges"]
    assert 9 <= sent <= 10  # (the phase decides)
    assert h.inst.counters["answers"] - before["answers"] == sent
    assert h.inst.counters["missed"] == 0
    assert isinstance(h.inst.hb, hb.HostHeartbeat)


# -- the reporter's import --------------------------------------------------

def test_reporter_import_leaves_the_environment_as_it_was(monkeypatch):
    from guestha.agent import service
    monkeypatch.delenv("EVENTLET_NO_GREENDNS", raising=False)
    assert service._import_reporter().__name__ == "Reporter"
    assert "EVENTLET_NO_GREENDNS" not in os.environ
    monkeypatch.setenv("EVENTLET_NO_GREENDNS", "no")
    service._import_reporter()
    assert os.environ["EVENTLET_NO_GREENDNS"] == "no"
