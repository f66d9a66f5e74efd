# SPDX-License-Identifier: Apache-2.0
"""Every transition of the instance's lifecycle table, each driven through
the instance's own entry points (domain updates, ticks, the channel's
bytes) against an in-process guest, as tests/unit/protocol/test_heartbeat.py
does for the heartbeat's tables."""

import errno

import pytest

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha_guest import protocol as p
from guestha_guest.protocol.session import Send
from tests.unit.agent.harness import Guest
from tests.unit.agent.harness import Harness
from tests.unit.agent.harness import PATH
from tests.unit.agent.harness import UUID

NC, CN, SY, WA, MO, EX, SU, ST = (
    im.NO_CHANNEL, im.CONNECTING, im.SYNCING, im.WAITING, im.MONITORED,
    im.EXITED, im.SUSPENDED, im.STOPPED)

# (state, input) -> next state, written out independently of
# instance.TRANSITIONS.
EXPECTED = {
    (NC, "running"): CN,
    (NC, "unplugged"): NC,
    (NC, "suspended"): NC,
    (NC, "stopped"): ST,
    (NC, "rebooted"): NC,
    (NC, "timer"): NC,

    (CN, "running"): CN,
    (CN, "unplugged"): NC,
    (CN, "suspended"): SU,
    (CN, "stopped"): ST,
    (CN, "rebooted"): CN,
    (CN, "connected"): SY,
    (CN, "refused"): CN,
    (CN, "timer"): CN,

    (SY, "running"): SY,
    (SY, "unplugged"): NC,
    (SY, "suspended"): SU,
    (SY, "stopped"): ST,
    (SY, "rebooted"): SY,
    (SY, "lost"): CN,
    (SY, "misbehaved"): CN,
    (SY, "synced"): WA,
    (SY, "timer"): SY,

    (WA, "running"): WA,
    (WA, "unplugged"): NC,
    (WA, "suspended"): SU,
    (WA, "stopped"): ST,
    (WA, "rebooted"): SY,
    (WA, "lost"): CN,
    (WA, "misbehaved"): CN,
    (WA, "synced"): WA,
    (WA, "registered"): MO,
    (WA, "timer"): WA,

    (MO, "running"): MO,
    (MO, "unplugged"): NC,
    (MO, "suspended"): SU,
    (MO, "stopped"): ST,
    (MO, "rebooted"): SY,
    (MO, "lost"): CN,
    (MO, "misbehaved"): CN,
    (MO, "synced"): MO,
    (MO, "registered"): MO,
    (MO, "exited"): EX,
    (MO, "timer"): MO,

    (EX, "running"): EX,
    (EX, "unplugged"): NC,
    (EX, "suspended"): SU,
    (EX, "stopped"): ST,
    (EX, "rebooted"): EX,
    (EX, "lost"): CN,
    (EX, "misbehaved"): CN,
    (EX, "synced"): EX,
    (EX, "registered"): MO,
    (EX, "timer"): EX,

    (SU, "running"): CN,
    (SU, "unplugged"): NC,
    (SU, "suspended"): SU,
    (SU, "stopped"): ST,
    (SU, "rebooted"): SU,
    (SU, "lost"): SU,
    (SU, "misbehaved"): SU,
    (SU, "synced"): SU,
    (SU, "timer"): SU,

    (ST, "running"): CN,
    (ST, "unplugged"): NC,
    (ST, "suspended"): SU,
    (ST, "stopped"): ST,
    (ST, "rebooted"): ST,
    (ST, "timer"): ST,
}


class Rig(Harness):
    """A harness whose guest can hold back its init (to stay WAITING)."""

    def __init__(self, **kwargs):
        self.drop_init = False
        kwargs.setdefault("policy", im.Policy(min_interval_ms=100,
                                              misbehaviour_limit=1))
        super().__init__(**kwargs)

    def _attach_guest(self):
        before = self.guest
        super()._attach_guest()
        if self.guest is not before:
            self._filter(self.guest)

    def _filter(self, guest):
        apply = guest.apply

        def without_init(outputs, now):
            apply([o for o in outputs if not (
                self.drop_init and isinstance(o, Send)
                and isinstance(o.message, p.Init))], now)
        guest.apply = without_init

    def info(self, state, channel=True):
        return ev.DomainInfo(UUID, "vm", state, PATH if channel else None,
                             True, {})

    def tick(self):
        self.inst.tick(self.now)
        self._attach_guest()
        self.pump()


def rig_in(state):
    if state == NC:
        rig = Rig(channel=False)
    elif state == ST:
        rig = Rig()
        rig.inst.domain_gone(rig.now)
    elif state == CN:
        rig = Rig()
        rig.env.refuse = errno.ECONNREFUSED
        rig.tick()  # refused: tried again in 0.5 s
        rig.env.refuse = None
    elif state == SY:
        rig = Rig(guest_frozen=True)
        rig.tick()  # connected, our sync unanswered
    elif state == WA:
        rig = Rig()
        rig.drop_init = True
        rig.advance(0.2)  # synced; the guest's init does not come
    else:
        rig = Rig()
        rig.advance(0.5)
        if state == EX:
            rig.guest.apply(rig.guest.session.exit(rig.now), rig.now)
            rig.pump()
        elif state == SU:
            rig.domain(ev.PAUSED)
    assert rig.inst.state == state
    return rig


def _running(rig):
    if rig.inst.state == SU:
        # (the channel's socket closed while paused: with it still open,
        # domain() says connected at once; see the test below)
        _lost(rig)
        assert rig.inst.state == SU and rig.inst.sock is None
    rig.inst.domain(rig.info(ev.RUNNING), rig.now)


def _rebooted(rig):
    # the domain keeps the state it has, rebooting from inside
    domain = {NC: ev.RUNNING, SU: ev.PAUSED, ST: ev.SHUTOFF}.get(
        rig.inst.state, ev.RUNNING)
    rig.inst.domain(rig.info(domain, channel=rig.inst.state != NC),
                    rig.now, "reboot")


def _connected(rig):
    rig.guest_frozen = True  # (else it syncs and registers at once)
    rig.env.now += 0.5
    rig.tick()


def _refused(rig):
    rig.env.refuse = errno.ENOENT
    rig.env.now += 0.5
    rig.tick()
    assert rig.inst.note.startswith("channel socket not available")


def _lost(rig):
    rig.guest.sock.close()
    rig.guest = None
    rig.pump()


def _misbehaved(rig):
    # more lines a second than the policy allows, with a limit of one
    rig.env.guest_socks[-1].send(b"\n" * 500)
    rig.pump()
    assert rig.inst.counters["resets"] == 1


def _synced(rig):
    if rig.inst.state == SY:
        rig.drop_init = True
        rig.guest.frozen = False
    else:
        rig.inst._send_sync(rig.now)  # a resync of ours
    rig.pump()


def _registered(rig):
    if rig.inst.state == MO:
        # the daemon starts over (the fault it is suspected of does not
        # change the state)
        rig.guest = Guest(rig.guest.sock, now=rig.now)
    else:
        rig.drop_init = False
        rig.guest.send(p.Init(name="g", interval_ms=100,
                              corrective_action="reboot"))
    rig.pump()


def _exited(rig):
    rig.guest.apply(rig.guest.session.exit(rig.now), rig.now)
    rig.pump()


INPUTS = {
    "running": _running,
    "unplugged": lambda rig: rig.inst.domain(
        rig.info(ev.RUNNING, channel=False), rig.now),
    "suspended": lambda rig: rig.inst.domain(rig.info(ev.PAUSED), rig.now),
    "stopped": lambda rig: rig.inst.domain_gone(rig.now),
    "rebooted": _rebooted,
    "connected": _connected,
    "refused": _refused,
    "lost": _lost,
    "misbehaved": _misbehaved,
    "synced": _synced,
    "registered": _registered,
    "exited": _exited,
    "timer": lambda rig: rig.tick(),
}


def test_every_transition_has_a_test():
    assert set(EXPECTED) == set(im.TRANSITIONS)
    assert {kind for _state, kind in im.TRANSITIONS} == set(INPUTS)


@pytest.mark.parametrize("key", sorted(im.TRANSITIONS),
                         ids=lambda key: "%s-%s" % key)
def test_transition(key):
    state, kind = key
    assert im.TRANSITIONS[key][1] == EXPECTED[key]
    rig = rig_in(state)
    seen = []
    fire = rig.inst.fire

    def recording(kind, now, arg=None):
        seen.append((rig.inst.state, kind))
        fire(kind, now, arg)
    rig.inst.fire = recording
    INPUTS[kind](rig)
    assert (state, kind) in seen
    assert rig.inst.state == EXPECTED[key]


def test_a_resumed_domain_with_its_socket_open_syncs_at_once():
    rig = rig_in(SU)
    assert rig.inst.sock is not None
    rig.inst.domain(rig.info(ev.RUNNING), rig.now)
    assert rig.inst.state == SY  # running, then connected
    rig.advance(0.5)
    assert rig.inst.state == MO
