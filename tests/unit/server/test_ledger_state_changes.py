# SPDX-License-Identifier: Apache-2.0
"""Nova's state changes in the shared ledger (issue 11): every controller
records what it hears, once per notification, and the relay tells what
is recorded and untold, so a change heard while no relay was elected is
told by the next relay, once.  Real ledgers on one SQLite file, the
directory of each controller with a fake Nova and fake agents."""

import pytest
import sqlalchemy as sa

from guestha.db import api as db_api
from guestha.server import groups as groups_mod
from guestha.server.groups import ServerGroups
from guestha.server.ledger import Ledger
from guestha.server import notifications
from tests.support.clock import ManualClock
from tests.unit.server.test_groups import A
from tests.unit.server.test_groups import B
from tests.unit.server.test_groups import C
from tests.unit.server.test_groups import FakeAgents
from tests.unit.server.test_groups import FakeNova

T0 = 1_800_000_000.0


@pytest.fixture
def wall():
    return ManualClock(T0)


class Controller(object):
    """One controller's ledger and directory; ``relay`` says whether it
    holds the relay now."""

    def __init__(self, path, wall, server_id, agents):
        self.ledger = Ledger(path, server_id, sinks=("log",), clock=wall)
        self.relay = False
        self.groups = ServerGroups(FakeNova(), agents,
                                   is_relay=lambda: self.relay,
                                   ledger=self.ledger, wallclock=wall)
        assert self.groups.refresh()

    def hear(self, message_id, instance, state, event, at):
        return self.groups.on_instance_change(
            instance, state, event, change_id=message_id, at=at)


@pytest.fixture
def agents():
    return FakeAgents()


@pytest.fixture
def ctl(path, wall, agents):
    made = {}

    def make(server_id):
        made[server_id] = Controller(path, wall, server_id, agents)
        return made[server_id]

    yield make
    for controller in made.values():
        controller.ledger.close()


def told(agents):
    return [(k["instance"], k["state"], k["event"])
            for _, k in agents.of("deliver_notification")]


def test_a_change_is_recorded_once_whoever_hears_it(path, wall):
    a = Ledger(path, "ctl-a", clock=wall)
    b = Ledger(path, "ctl-b", clock=wall)
    assert a.record_state_change("m1", B, "stopped", "instance.power_off.end",
                                 host="host-2", at=T0 - 1)
    assert not b.record_state_change("m1", B, "stopped",
                                     "instance.power_off.end", at=T0 - 1)
    (change, before), = b.claim_state_changes(T0 - 60)
    assert (change["id"], change["recorded_by"], change["told_by"],
            before) == ("m1", "ctl-a", "ctl-b", None)
    # each goes to one relay
    assert a.claim_state_changes(T0 - 60) == []


def test_a_relay_looks_back_only_its_window(path, wall):
    ledger = Ledger(path, "ctl-a", clock=wall)
    ledger.record_state_change("old", B, "stopped", "instance.power_off.end")
    wall.advance(100)
    ledger.record_state_change("new", B, "active", "instance.power_on.end")
    claimed = ledger.claim_state_changes(wall() - 60)
    assert [(c["id"], before) for c, before in claimed] == [("new", None)]
    # what was told is what a later change compares with
    wall.advance(1)
    ledger.record_state_change("newer", B, "paused", "instance.pause.end",
                               at=wall())
    (change, before), = ledger.claim_state_changes(wall() - 60)
    assert (change["id"], before) == ("newer", "active")


def test_the_relay_tells_what_it_hears_once(ctl, agents, wall):
    relay, other = ctl("ctl-a"), ctl("ctl-b")
    relay.relay = True
    assert relay.hear("m1", B, "stopped", "instance.power_off.end", T0) == {
        "host-1": [A], "host-2": [C]}
    assert other.hear("m1", B, "stopped", "instance.power_off.end",
                      T0) is None
    relay.groups.tell_recorded()
    other.groups.tell_recorded()
    assert told(agents) == [(B, "stopped", "instance.power_off.end")] * 2


def test_a_change_heard_while_no_relay_is_elected_is_told_by_the_next(
        ctl, agents, wall):
    dead, b, c = ctl("ctl-a"), ctl("ctl-b"), ctl("ctl-c")
    dead.relay = True
    dead.hear("m1", B, "stopped", "instance.power_off.end", T0)
    agents.casts.clear()
    dead.relay = False   # killed: its lock runs until it expires
    wall.advance(1)
    b.hear("m2", B, "active", "instance.power_on.end", T0 + 1)
    c.hear("m2", B, "active", "instance.power_on.end", T0 + 1)
    wall.advance(4)
    b.groups.tell_recorded()
    c.groups.tell_recorded()
    assert told(agents) == []          # nobody relays: nobody tells

    c.relay = True                     # elected; its next look
    assert list(c.groups.tell_recorded()) == ["m2"]
    b.relay = True                     # two think they relay a moment
    assert b.groups.tell_recorded() == {}
    # the dead one back: its pool's queue brings what it missed
    dead.hear("m2", B, "active", "instance.power_on.end", T0 + 1)
    assert told(agents) == [(B, "active", "instance.power_on.end")] * 2


def test_two_notifications_of_one_change_are_told_once(ctl, agents, wall):
    """A controller that started late knows no state: it records the
    ``.end`` of a change another recorded as ``instance.update``; the
    relay tells the state it told last only once."""
    relay, late = ctl("ctl-a"), ctl("ctl-b")
    relay.relay = True
    relay.groups.on_instance_change(B, "stopped", "instance.update",
                                    old_state="active", change_id="u1",
                                    at=T0)
    late.hear("e1", B, "stopped", "instance.power_off.end", T0 + 0.1)
    relay.groups.tell_recorded()
    assert told(agents) == [(B, "stopped", "instance.update")] * 2
    # but a reboot leaves the state as it was and is told
    late.hear("r1", B, "stopped", "instance.reboot.end", T0 + 5)
    relay.groups.tell_recorded()
    assert told(agents)[2:] == [(B, "stopped", "instance.reboot.end")] * 2


def test_the_relay_tells_in_novas_order(ctl, agents, wall):
    relay, b = ctl("ctl-a"), ctl("ctl-b")
    b.hear("m2", B, "active", "instance.power_on.end", T0 + 2)
    b.hear("m1", B, "stopped", "instance.power_off.end", T0 + 1)
    relay.relay = True
    relay.groups.tell_recorded()
    assert told(agents) == [(B, "stopped", "instance.power_off.end")] * 2 + [
        (B, "active", "instance.power_on.end")] * 2


def test_without_the_database_the_relay_tells_what_it_hears(
        ctl, agents, monkeypatch):
    relay = ctl("ctl-a")
    relay.relay = True

    def down(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("gone"))

    assert isinstance(sa.exc.OperationalError("x", {}, Exception()),
                      db_api.DB_ERRORS)
    monkeypatch.setattr(relay.ledger, "record_state_change", down)
    relay.hear("m1", B, "stopped", "instance.power_off.end", T0)
    assert told(agents) == [(B, "stopped", "instance.power_off.end")] * 2


def test_the_endpoint_keys_a_change_by_its_message_id():
    class Groups(object):
        def on_instance_change(self, instance, state, event, **kwargs):
            self.kwargs = kwargs

    groups = Groups()
    endpoint = notifications.NotificationEndpoint(groups)
    payload = {"nova_object.data": {"uuid": B, "state": "stopped",
                                    "host": "host-2"}}
    endpoint.info({}, "nova-compute:host-2", "instance.power_off.end",
                  payload, {"message_id": "m-1",
                            "timestamp": "2027-01-15 08:00:00.250000"})
    assert groups.kwargs["change_id"] == "m-1"
    assert groups.kwargs["at"] == 1_800_000_000.25
    assert notifications.nova_time("not a time") is None
    assert notifications.nova_time(None) is None


def test_the_replay_window_covers_the_longest_gap():
    from oslo_config import cfg

    from guestha.conf import coordination as coordination_conf
    from guestha.conf import server as server_conf

    conf = cfg.ConfigOpts()
    server_conf.register_opts(conf)
    coordination_conf.register_opts(conf)
    conf([])
    conf.set_override("lease_seconds", 120, "server")
    groups = ServerGroups.from_conf(conf, FakeNova(), FakeAgents(),
                                    lambda: True)
    assert groups.replay_window == 2 * (120 + groups_mod.TELL_INTERVAL)
    conf.set_override("backend_url", "redis://x", "coordination")
    assert ServerGroups.from_conf(
        conf, FakeNova(), FakeAgents(),
        lambda: True).replay_window == groups_mod.REPLAY_WINDOW


def test_recorded_but_not_claimed_is_told_at_the_next_look(
        ctl, agents, monkeypatch):
    relay = ctl("ctl-a")
    relay.relay = True
    real_claim = relay.ledger.claim_state_changes

    def down(*args, **kwargs):
        raise sa.exc.OperationalError("UPDATE", {}, Exception("gone"))

    monkeypatch.setattr(relay.ledger, "claim_state_changes", down)
    assert relay.hear("m1", B, "stopped", "instance.power_off.end",
                      T0) is None
    assert told(agents) == []
    monkeypatch.setattr(relay.ledger, "claim_state_changes", real_claim)
    assert list(relay.groups.tell_recorded()) == ["m1"]
    assert told(agents) == [(B, "stopped", "instance.power_off.end")] * 2
