# SPDX-License-Identifier: Apache-2.0
"""Server-group routing with a fake Nova and a fake AgentAPI: broadcasts
reach exactly the other members, refusals, status answers, and
notifications of Nova state changes."""

import base64
import threading

import oslo_messaging
import pytest

from guestha.nova import NovaUnavailable
from guestha.server import groups as groups_mod
from guestha.server.groups import ServerGroups
from tests.support.clock import ManualClock

GROUP = "788608ec-ebdc-45c5-bc7f-e5f24ab92c80"
OTHER_GROUP = "11111111-2222-4333-8444-555555555555"
A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
C = "cccccccc-0000-4000-8000-000000000003"
D = "dddddddd-0000-4000-8000-000000000004"   # same group, messaging off
X = "eeeeeeee-0000-4000-8000-000000000005"   # another group
LONER = "ffffffff-0000-4000-8000-000000000006"


class FakeNova(object):
    def __init__(self):
        self.groups = [
            {"id": GROUP, "name": "g", "policy": "anti-affinity",
             "members": [A, B, C, D], "project_id": "p"},
            {"id": OTHER_GROUP, "name": "h", "policy": "affinity",
             "members": [X], "project_id": "q"},
        ]
        self.servers = {
            A: {"id": A, "host": "host-1", "vm_state": "active"},
            B: {"id": B, "host": "host-2", "vm_state": "active"},
            C: {"id": C, "host": "host-2", "vm_state": "paused"},
            D: {"id": D, "host": "host-3", "vm_state": "active"},
            X: {"id": X, "host": "host-1", "vm_state": "active"},
            LONER: {"id": LONER, "host": "host-1", "vm_state": "active"},
        }
        self.enabled = {A, B, C, X, LONER}
        self.down = False
        self.group_reads = 0
        self.read = threading.Condition()
        self.server_reads = []
        self.forgotten = []

    def server_groups(self):
        with self.read:
            self.group_reads += 1
            self.read.notify_all()
        if self.down:
            raise NovaUnavailable("down")
        return [dict(g, members=list(g["members"])) for g in self.groups]

    def server(self, uuid):
        self.server_reads.append(uuid)
        if self.down:
            raise NovaUnavailable("down")
        return self.servers.get(uuid)

    def guestha_features(self, uuid):
        if self.down:
            raise NovaUnavailable("down")
        return {"heartbeat": True,
                "server_group_messaging": uuid in self.enabled,
                "corrective_action": None}

    def forget(self, uuid):
        self.forgotten.append(uuid)


class FakeAgents(object):
    def __init__(self):
        self.casts = []
        self.broken_hosts = set()

    def _record(self, method, host, **kwargs):
        if host in self.broken_hosts:
            raise oslo_messaging.MessageDeliveryFailure("broker down")
        self.casts.append((method, host, kwargs))

    def deliver_broadcast(self, host, **kwargs):
        self._record("deliver_broadcast", host, **kwargs)

    def deliver_notification(self, host, **kwargs):
        self._record("deliver_notification", host, **kwargs)

    def deliver_status(self, host, **kwargs):
        self._record("deliver_status", host, **kwargs)

    def deliver_error(self, host, **kwargs):
        self._record("deliver_error", host, **kwargs)

    def of(self, method):
        return [(h, k) for m, h, k in self.casts if m == method]


@pytest.fixture
def nova():
    return FakeNova()


@pytest.fixture
def agents():
    return FakeAgents()


@pytest.fixture
def clock():
    return ManualClock(1000.0)


@pytest.fixture
def groups(nova, agents, clock):
    groups = ServerGroups(nova, agents, broadcasts_per_second=2,
                          status_queries_per_second=1, clock=clock)
    assert groups.refresh()
    return groups


def payload(size=10):
    return base64.b64encode(b"x" * size).decode()


# -- broadcast ---------------------------------------------------------------

def test_broadcast_reaches_exactly_the_other_enabled_members(groups,
                                                             agents):
    groups.relay_broadcast("host-1", A, payload(), 7)
    assert agents.of("deliver_broadcast") == [
        ("host-2", {"instances": [B, C], "sender": A,
                    "payload_b64": payload()})]
    assert agents.of("deliver_error") == []


def test_broadcast_never_reaches_the_sender_on_the_same_host(groups,
                                                             agents):
    groups.relay_broadcast("host-2", B, payload(), 1)
    assert agents.of("deliver_broadcast") == [
        ("host-1", {"instances": [A], "sender": B,
                    "payload_b64": payload()}),
        ("host-2", {"instances": [C], "sender": B,
                    "payload_b64": payload()})]


def test_broadcast_of_a_non_member(groups, agents, nova, clock):
    clock.now += 10
    reads = nova.group_reads
    groups.relay_broadcast("host-1", LONER, payload(), 3)
    assert agents.of("deliver_broadcast") == []
    (host, error), = agents.of("deliver_error")
    assert host == "host-1"
    assert (error["instance"], error["seq"], error["code"]) == (
        LONER, 3, "not_member")
    # it looked again in Nova (maybe it just joined), but not every time
    assert nova.group_reads == reads + 1
    groups.relay_broadcast("host-1", LONER, payload(), 4)
    assert nova.group_reads == reads + 1


def test_a_new_member_is_found_by_the_refresh_on_a_miss(groups, agents,
                                                        nova, clock):
    nova.groups[0]["members"].append(LONER)
    clock.now += 10
    groups.relay_broadcast("host-1", LONER, payload(), 3)
    assert agents.of("deliver_error") == []
    assert [h for h, _ in agents.of("deliver_broadcast")] == ["host-1",
                                                              "host-2"]


def test_broadcast_from_a_disabled_member(groups, agents):
    groups.relay_broadcast("host-3", D, payload(), 5)
    assert agents.of("deliver_broadcast") == []
    assert [(h, e["code"]) for h, e in agents.of("deliver_error")] == [
        ("host-3", "disabled")]


def test_broadcast_size_limit(groups, agents):
    groups.relay_broadcast("host-1", A, payload(3050), 1)
    assert len(agents.of("deliver_broadcast")) == 1
    groups.relay_broadcast("host-1", A, payload(3051), 2)
    assert len(agents.of("deliver_broadcast")) == 1
    assert [e["code"] for _, e in agents.of("deliver_error")] == [
        "too_large"]


def test_broadcast_not_base64(groups, agents):
    groups.relay_broadcast("host-1", A, "not base64!", 1)
    assert [e["code"] for _, e in agents.of("deliver_error")] == [
        "invalid_message"]


def test_broadcast_rate_limit_per_instance(groups, agents, clock):
    for seq in range(6):     # burst of 2 x 2/s
        groups.relay_broadcast("host-1", A, payload(), seq)
    assert len(agents.of("deliver_broadcast")) == 4
    assert [e["seq"] for _, e in agents.of("deliver_error")] == [4, 5]
    assert {e["code"] for _, e in agents.of("deliver_error")} == {
        "rate_limited"}
    groups.relay_broadcast("host-2", B, payload(), 9)   # B has its own
    assert len(agents.of("deliver_broadcast")) == 6
    clock.now += 0.5
    groups.relay_broadcast("host-1", A, payload(), 10)
    assert len(agents.of("deliver_broadcast")) == 7


def test_broadcast_when_nova_is_down(groups, agents, nova):
    nova.down = True
    groups.relay_broadcast("host-1", A, payload(), 1)
    assert [e["code"] for _, e in agents.of("deliver_error")] == [
        "unavailable"]


def test_hosts_from_agent_alive_win_over_nova(groups, agents, nova):
    groups.on_agent_alive("host-9", [
        {"instance": B, "heartbeat": True, "server_group_messaging": True},
        "junk"])
    groups.relay_broadcast("host-1", A, payload(), 1)
    assert sorted(h for h, _ in agents.of("deliver_broadcast")) == [
        "host-2", "host-9"]
    assert B not in nova.server_reads


def test_a_failed_cast_does_not_stop_the_others(groups, agents):
    groups.learn_host(C, "host-3")
    agents.broken_hosts.add("host-2")
    groups.relay_broadcast("host-1", A, payload(), 1)
    assert [h for h, _ in agents.of("deliver_broadcast")] == ["host-3"]
    assert groups.counters["cast_failed"] == 1


def test_member_with_unknown_host_is_skipped(groups, agents, nova):
    nova.servers[C]["host"] = None
    groups.relay_broadcast("host-1", A, payload(), 1)
    assert agents.of("deliver_broadcast") == [
        ("host-2", {"instances": [B], "sender": A,
                    "payload_b64": payload()})]


# -- status -------------------------------------------------------------------

def test_status_lists_every_member_with_its_state(groups, agents):
    groups.on_instance_change(B, "stopped", "instance.power_off.end")
    groups.query_status("host-1", A, 42)
    (host, answer), = agents.of("deliver_status")
    assert host == "host-1"
    assert answer["instance"] == A and answer["seq"] == 42
    assert answer["group"] == GROUP
    assert answer["members"] == [
        {"instance": A, "state": "active"},
        {"instance": B, "state": "stopped"},
        {"instance": C, "state": "paused"},
        {"instance": D, "state": "active"}]


def test_status_refusals(groups, agents, clock):
    groups.query_status("host-1", LONER, 1)
    groups.query_status("host-3", D, 2)
    groups.query_status("host-1", A, 3)
    groups.query_status("host-1", A, 4)
    groups.query_status("host-1", A, 5)
    assert [(e["seq"], e["code"]) for _, e in agents.of("deliver_error")] \
        == [(1, "not_member"), (2, "disabled"), (5, "rate_limited")]
    assert len(agents.of("deliver_status")) == 2


def test_status_state_unknown_when_nova_has_none(groups, agents, nova):
    del nova.servers[C]
    groups.query_status("host-1", A, 1)
    (_, answer), = agents.of("deliver_status")
    assert {"instance": C, "state": "unknown"} in answer["members"]


# -- notifications ------------------------------------------------------------

def test_state_change_is_told_to_the_other_enabled_members(groups, agents):
    told = groups.on_instance_change(B, "stopped", "instance.power_off.end",
                                     host="host-2")
    assert told == {"host-1": [A], "host-2": [C]}
    assert agents.of("deliver_notification") == [
        ("host-1", {"instances": [A], "instance": B, "state": "stopped",
                    "event": "instance.power_off.end"}),
        ("host-2", {"instances": [C], "instance": B, "state": "stopped",
                    "event": "instance.power_off.end"})]


def test_one_notification_per_change(groups, agents):
    groups.on_instance_change(B, "active", "instance.update",
                              old_state="active")          # task only
    groups.on_instance_change(B, "stopped", "instance.update",
                              old_state="active")          # the change
    groups.on_instance_change(B, "stopped", "instance.power_off.end")
    assert [k["event"] for _, k in agents.of("deliver_notification")] == [
        "instance.update"] * 2      # one change, two hosts


def test_update_without_a_known_previous_state_is_not_a_change(groups,
                                                               agents):
    groups.on_instance_change(B, "active", "instance.update")
    assert agents.of("deliver_notification") == []


def test_first_end_event_is_told(groups, agents):
    groups.on_instance_change(B, "active", "instance.power_on.end")
    assert len(agents.of("deliver_notification")) == 2


def test_reboot_is_told_although_the_state_stays(groups, agents):
    groups.on_instance_change(B, "active", "instance.power_on.end")
    agents.casts.clear()
    groups.on_instance_change(B, "active", "instance.reboot.end")
    assert {k["event"] for _, k in agents.of("deliver_notification")} == {
        "instance.reboot.end"}


def test_only_the_relay_tells(nova, agents, clock):
    groups = ServerGroups(nova, agents, is_relay=lambda: False, clock=clock)
    groups.refresh()
    assert groups.on_instance_change(B, "stopped",
                                     "instance.power_off.end") is None
    assert agents.casts == []
    groups.query_status("host-1", A, 1)     # its cache is kept all the same
    (_, answer), = agents.of("deliver_status")
    assert {"instance": B, "state": "stopped"} in answer["members"]


def test_non_member_change_is_not_told(groups, agents):
    groups.on_instance_change(LONER, "stopped", "instance.power_off.end")
    assert agents.casts == []


def test_change_in_another_group_stays_there(groups, agents, nova):
    nova.groups[1]["members"].append(LONER)
    groups.refresh()
    groups.on_instance_change(X, "paused", "instance.pause.end")
    assert agents.of("deliver_notification") == [
        ("host-1", {"instances": [LONER], "instance": X, "state": "paused",
                    "event": "instance.pause.end"})]


def test_state_that_the_protocol_cannot_carry(groups, agents):
    groups.on_instance_change(B, "weird state!", "instance.power_off.end")
    assert {k["state"] for _, k in agents.of("deliver_notification")} == {
        "unknown"}


# -- membership ---------------------------------------------------------------

def test_update_group_and_forget_instance(groups, nova):
    groups.update_group(GROUP, [A, B])
    assert groups.group_of(C) == (None, [])
    assert groups.group_of(A) == (GROUP, [A, B])
    groups.forget_instance(B)
    assert groups.group_of(A) == (GROUP, [A])
    assert nova.forgotten == [B]
    groups.update_group(GROUP, None)
    assert groups.group_of(A) == (None, [])


def test_refresh_keeps_the_cache_when_nova_is_down(groups, nova):
    nova.down = True
    assert groups.refresh() is False
    assert groups.group_of(A)[0] == GROUP


def test_periodic_refresher_thread(nova, agents):
    groups = ServerGroups(nova, agents)
    groups.start(interval=3600, min_gap=0.01)
    try:
        # the timeouts only end a test that would hang: nothing is timed
        with nova.read:
            assert nova.read.wait_for(lambda: nova.group_reads >= 1, 30)
        groups.request_refresh()
        with nova.read:
            assert nova.read.wait_for(lambda: nova.group_reads >= 2, 30)
    finally:
        groups.stop()
    assert nova.group_reads >= 2
    assert groups.group_of(A)[0] == GROUP


def test_status_answer_is_bounded():
    assert groups_mod.MAX_STATUS_MEMBERS == 2560


# -- one instance's group, looked up alone (Nova 2.71+) ----------------------

class FakeNovaWithLookup(FakeNova):
    """Also answers ``server_group_of``, as NovaClient does at 2.71+."""

    def __init__(self):
        super().__init__()
        self.lookups = []
        self.lookup_unsupported = False

    def server_group_of(self, uuid):
        self.lookups.append(uuid)
        if self.down or self.lookup_unsupported:
            raise NovaUnavailable("down")
        for group in self.groups:
            if uuid in group["members"]:
                return dict(group, members=list(group["members"]))
        return None


@pytest.fixture
def lookup_nova():
    return FakeNovaWithLookup()


def test_a_new_member_is_looked_up_alone_not_by_reading_every_group(
        lookup_nova, agents, clock):
    groups = ServerGroups(lookup_nova, agents, clock=clock)
    groups.refresh()
    reads = lookup_nova.group_reads
    lookup_nova.groups[0]["members"].append(LONER)

    groups.relay_broadcast("host-1", LONER, payload(), 3)

    assert agents.of("deliver_error") == []
    assert lookup_nova.lookups == [LONER]
    assert lookup_nova.group_reads == reads
    assert groups.group_of(LONER)[0] == lookup_nova.groups[0]["id"]


def test_a_non_member_is_looked_up_once_per_gap(lookup_nova, agents,
                                                clock):
    groups = ServerGroups(lookup_nova, agents, clock=clock)
    groups.refresh()
    reads = lookup_nova.group_reads

    groups.relay_broadcast("host-1", LONER, payload(), 3)
    groups.relay_broadcast("host-1", LONER, payload(), 4)
    assert lookup_nova.lookups == [LONER]
    clock.now += groups_mod.MISS_REFRESH_GAP
    groups.relay_broadcast("host-1", LONER, payload(), 5)

    assert lookup_nova.lookups == [LONER, LONER]
    assert lookup_nova.group_reads == reads
    assert [e["code"] for _, e in agents.of("deliver_error")] == [
        "not_member"] * 3


def test_a_nova_before_2_71_falls_back_to_reading_every_group(
        lookup_nova, agents, clock):
    groups = ServerGroups(lookup_nova, agents, clock=clock)
    groups.refresh()
    clock.now += groups_mod.MISS_REFRESH_GAP
    reads = lookup_nova.group_reads
    lookup_nova.lookup_unsupported = True
    lookup_nova.groups[0]["members"].append(LONER)

    groups.relay_broadcast("host-1", LONER, payload(), 3)

    assert agents.of("deliver_error") == []
    assert lookup_nova.group_reads == reads + 1
