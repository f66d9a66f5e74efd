# SPDX-License-Identifier: Apache-2.0
"""guestha-server processes against the real RabbitMQ and the Nova
stand-in: faults delivered once by two controllers, nothing lost when one
is killed, server-group broadcasts, notifications and status, and a
corrective action under the cap.  See serverctl.py for what runs where.
"""

import base64
import os
import random
import time
import uuid

import pytest

from guestha.rpc import api
from tests.fakes.nova import FakeNova
from tests.functional.serverctl import FakeAgents
from tests.functional.serverctl import NovaNotifier
from tests.functional.serverctl import read_jsonl
from tests.functional.serverctl import Servers
from tests.functional.serverctl import wait_for

pytestmark = pytest.mark.functional

HOST = "compute-1"
GROUP = "788608ec-ebdc-45c5-bc7f-e5f24ab92c80"
OTHER_GROUP = "11111111-2222-4333-8444-555555555555"
A = "aaaaaaaa-0000-4000-8000-000000000001"   # host-1
B = "bbbbbbbb-0000-4000-8000-000000000002"   # host-2
C = "cccccccc-0000-4000-8000-000000000003"   # host-2
D = "dddddddd-0000-4000-8000-000000000004"   # host-3, messaging off
X = "eeeeeeee-0000-4000-8000-000000000005"   # host-1, another group
LONER = "ffffffff-0000-4000-8000-000000000006"   # host-3, no group
HOSTS = ("host-1", "host-2", "host-3")
MESSAGING = {"guestha:heartbeat": "true",
             "guestha:server_group_messaging": "true"}


@pytest.fixture
def nova():
    with FakeNova() as fake:
        yield fake


@pytest.fixture
def servers(rabbit_vhost, tmp_path, nova):
    servers = Servers(str(tmp_path), rabbit_vhost, nova.endpoint)
    yield servers
    unclean = servers.stop_all()
    servers.kill_all()
    assert not unclean, "\n".join(unclean)


@pytest.fixture
def agents(rabbit_vhost):
    agents = FakeAgents(rabbit_vhost, HOSTS)
    yield agents
    agents.close()


def faults(n, action=None):
    return [api.make_fault(str(uuid.uuid4()), HOST, "missed",
                           "fault %d" % i, action, time.time(), 1000, 1)
            for i in range(n)]


def sink_ids(servers, type_="fault"):
    ids = []
    for server in servers.all:
        ids.extend(r["id"] for r in server.sink_records()
                   if r["type"] == type_)
    return ids


# -- (a) two controllers, exactly once ----------------------------------------

def test_two_servers_dispatch_each_fault_exactly_once(servers, agents):
    servers.start("ctl-a")
    servers.start("ctl-b")
    client = agents.controller(HOST)
    events = faults(500)
    batches = [events[i:i + 25] for i in range(0, len(events), 25)]
    rng = random.Random(4)
    resent = 0
    for n, batch in enumerate(batches):
        answer = client.report_events(batch)
        assert answer == {"accepted": [e["id"] for e in batch],
                          "rejected": {}}
        # an agent whose answer was lost sends the batch again, maybe
        # with newer events behind it; another controller may answer
        if rng.random() < 0.4:
            again = batch + (batches[n + 1][:5] if n + 1 < len(batches)
                             else [])
            answer = client.report_events(again)
            assert answer["accepted"] == [e["id"] for e in again]
            resent += len(again)
    assert resent > 50
    expected = sorted(e["id"] for e in events)
    wait_for(lambda: sorted(set(sink_ids(servers))) == expected, 30,
             "every fault at a sink")
    time.sleep(1.0)     # anything delivered twice would show by now
    delivered = sink_ids(servers)
    assert sorted(delivered) == expected
    per_server = [len([r for r in s.sink_records() if r["type"] == "fault"])
                  for s in servers.all]
    assert all(per_server), ("both controllers took a share", per_server)


# -- (b) a controller killed after acknowledging ------------------------------

def test_killed_server_loses_nothing_acknowledged(servers, agents,
                                                  tmp_path):
    # The sink's directory is a plain file at first: every delivery
    # fails, so what the controller acknowledges stays owed.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    sink_log = str(blocked / "events.jsonl")
    server = servers.start("ctl-a", sink_log=sink_log)
    client = agents.controller(HOST)
    events = faults(200)
    for i in range(0, 200, 50):
        assert len(client.report_events(events[i:i + 50])["accepted"]) == 50
    server.kill()
    assert read_jsonl(sink_log) == []

    blocked.unlink()
    server.start()
    expected = sorted(e["id"] for e in events)
    wait_for(lambda: sorted({r["id"] for r in read_jsonl(sink_log)})
             == expected, 30, "the owed events at the sink")


def test_killed_right_after_the_answer(servers, agents):
    server = servers.start("ctl-a")
    client = agents.controller(HOST)
    events = faults(300)
    for i in range(0, 300, 100):
        client.report_events(events[i:i + 100])
    server.kill()         # at once: the sink may not have had them yet
    server.start()
    expected = {e["id"] for e in events}
    wait_for(lambda: expected <= set(sink_ids(servers)), 30,
             "every acknowledged fault at the sink")


def test_live_server_takes_over_a_dead_ones_work(servers, agents,
                                                 tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("x")
    a = servers.start("ctl-a", sink_log=str(blocked / "a.jsonl"))
    b = servers.start("ctl-b")
    client = agents.controller(HOST)
    # only ctl-a takes calls now
    b.stop()
    events = faults(40)
    client.report_events(events)
    b.start()
    a.kill()
    expected = sorted(e["id"] for e in events)
    wait_for(lambda: sorted(r["id"] for r in b.sink_records()
                            if r["type"] == "fault") == expected,
             30, "ctl-b to deliver what ctl-a owed")
    assert "took over 40 undelivered event(s)" in b.log_text()


def test_second_process_with_the_same_id_refuses_to_start(servers):
    servers.start("ctl-a")
    twin = servers.make("ctl-a", name="ctl-a-twin")
    with pytest.raises(AssertionError, match="exited"):
        twin.start(timeout=30)
    assert twin.proc.returncode == 1
    assert "is in use by pid %d" % servers.all[0].proc.pid \
        in twin.log_text()


# -- server groups ------------------------------------------------------------

@pytest.fixture
def cloud(nova):
    """Nova's view: one group A, B, C, D (D without messaging), one with
    X, and LONER in none."""
    for uuid_, host, specs in ((A, "host-1", MESSAGING),
                               (B, "host-2", MESSAGING),
                               (C, "host-2", MESSAGING),
                               (D, "host-3", {"guestha:heartbeat": "1"}),
                               (X, "host-1", MESSAGING),
                               (LONER, "host-3", MESSAGING)):
        nova.add_server(uuid_, flavor_extra_specs=specs, host=host)
    nova.add_server_group(GROUP, "vnf", members=[A, B, C, D])
    nova.add_server_group(OTHER_GROUP, "other", members=[X])
    return nova


def settle(seconds=0.7):
    time.sleep(seconds)


def test_broadcast_reaches_exactly_the_other_members(cloud, servers,
                                                     agents):
    servers.start("ctl-a")
    servers.start("ctl-b")
    payload = base64.b64encode(os.urandom(3050)).decode()
    agents.controller("host-1").relay_broadcast(A, payload, 11)
    wait_for(lambda: agents.of("deliver_broadcast"), 10, "the broadcast")
    settle()
    assert agents.of() == [("host-2", {"instances": [B, C], "sender": A,
                                       "payload_b64": payload})]

    agents.clear()
    agents.controller("host-3").relay_broadcast(LONER, payload, 12)
    wait_for(lambda: agents.of("deliver_error"), 10, "the refusal")
    settle()
    (host, error), = agents.of()
    assert host == "host-3"
    assert (error["instance"], error["seq"], error["code"]) == (
        LONER, 12, "not_member")

    agents.clear()
    too_big = base64.b64encode(os.urandom(3051)).decode()
    agents.controller("host-2").relay_broadcast(B, too_big, 13)
    agents.controller("host-3").relay_broadcast(D, payload, 14)
    wait_for(lambda: len(agents.of("deliver_error")) == 2, 10,
             "two refusals")
    settle()
    assert sorted((h, e["instance"], e["code"]) for h, e in agents.of()) == [
        ("host-2", B, "too_large"), ("host-3", D, "disabled")]


def test_nova_notification_reaches_the_other_members(cloud, servers,
                                                     agents, rabbit_vhost):
    servers.start("ctl-a")
    servers.start("ctl-b")
    notifier = NovaNotifier(rabbit_vhost, host="host-2")
    try:
        notifier.instance_event("instance.power_off.end", B, "stopped",
                                "host-2")
        wait_for(lambda: len(agents.of("deliver_notification")) == 2, 10,
                 "the notifications")
        settle()
        assert sorted(agents.of()) == [
            ("host-1", {"instances": [A], "instance": B, "state": "stopped",
                        "event": "instance.power_off.end"}),
            ("host-2", {"instances": [C], "instance": B, "state": "stopped",
                        "event": "instance.power_off.end"})]
        # Nova's instance.update for the same change tells nobody again
        agents.clear()
        notifier.instance_event("instance.update", B, "stopped", "host-2",
                                old_state="active",
                                sample="nova-instance.update.wire.json")
        notifier.instance_event("instance.pause.end", X, "paused",
                                "host-1")
        settle(1.5)
        assert agents.of() == []    # X's group has no other member

        # every controller keeps the state: a status answer from either
        # has B stopped (agents' casts go to either controller)
        for seq in range(4):
            agents.controller("host-2").query_status(C, seq)
        wait_for(lambda: len(agents.of("deliver_status")) == 4, 10,
                 "four status answers")
        for host, answer in agents.of("deliver_status"):
            assert host == "host-2"
            assert {"instance": B, "state": "stopped"} in answer["members"]
    finally:
        notifier.close()


def test_status_answer_lists_every_member(cloud, servers, agents):
    cloud.servers[D]["status"] = "PAUSED"
    servers.start("ctl-a")
    agents.controller("host-2").query_status(C, 77)
    wait_for(lambda: agents.of("deliver_status"), 10, "the answer")
    settle()
    (host, answer), = agents.of()
    assert host == "host-2"
    assert (answer["instance"], answer["seq"], answer["group"]) == (
        C, 77, GROUP)
    assert answer["members"] == [
        {"instance": A, "state": "active"},
        {"instance": B, "state": "active"},
        {"instance": C, "state": "active"},
        {"instance": D, "state": "paused"}]


# -- (f) corrective actions ---------------------------------------------------

def test_reboot_by_policy_then_the_cap(nova, servers, agents):
    vm = "1b2c3d4e-0000-4000-8000-0000000000aa"
    nova.add_server(vm, flavor_extra_specs={"guestha:heartbeat": "true"},
                    host=HOST)
    server = servers.start("ctl-a", actions={
        "allowed_max": "reboot", "soft_reboot_timeout": "2",
        "max_actions": "1", "window": "600"})
    client = agents.controller(HOST)
    # the guest recommends stop; the operator allows at most reboot
    first = api.make_fault(vm, HOST, "unhealthy", "wedged", "stop",
                           time.time(), 1000, 2)
    client.report_events([first])
    # unhealthy: the guest answers, so a soft reboot first
    wait_for(lambda: len(nova.actions) == 2, 15,
             "a soft, then (no recovery) a hard reboot")
    assert nova.actions == [(vm, "reboot", {"type": "SOFT"}),
                            (vm, "reboot", {"type": "HARD"})]
    second = api.make_fault(vm, HOST, "missed", "hung again", "reboot",
                            time.time(), 1000, 2)
    client.report_events([second])

    def records():
        return [r for r in server.sink_records() if r["type"] == "action"]

    wait_for(lambda: len(records()) == 3, 10, "three action records")
    settle()
    assert len(nova.actions) == 2       # the cap held
    assert [(r["fault_id"], r["action"], r["step"], r["outcome"])
            for r in records()] == [
        (first["id"], "reboot", "soft", "applied"),
        (first["id"], "reboot", "hard", "applied"),
        (second["id"], "reboot", None, "refused: cap")]
    assert all(r["instance"] == vm for r in records())
    assert records()[0]["recommended"] == "stop"
    assert records()[0]["allowed"] == "reboot"
    log = server.log_text()
    assert "instance %s: fault %s: corrective action reboot: refused: cap" \
        % (vm, second["id"]) in log
