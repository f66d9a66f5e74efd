# SPDX-License-Identifier: Apache-2.0
"""guestha-server processes against the real RabbitMQ: faults delivered
once by two controllers, nothing lost when one is killed, a dead one's work
taken over, one process per server id.  See server_harness.py for what runs
where; the controllers have no ``[nova]``
(guestha/testing/novaless_servers.py): nothing here is about Nova.

What the controller does with Nova is tested against the real Nova of the
cloud harness (tests/cloud/test_scenarios.py): server-group broadcasts,
status and Nova's notifications between members, with two controllers
(scenario 5); a soft reboot through nova-compute, Nova's own hard
fallback and the cap (scenario 10); a hard reboot and the cap (scenario
2).  The routing rules in every case (several hosts, payload limits,
refusals) are unit tests (tests/unit/server/test_groups.py).
"""

import random
import time
import uuid

import pytest

from guestha import records
from guestha.testing.novaless_servers import Servers
from guestha.testing.server_harness import FakeAgents
from guestha.testing.server_harness import read_jsonl
from guestha.testing.wait import wait_until

pytestmark = pytest.mark.functional

HOST = "compute-1"
HOSTS = (HOST,)


@pytest.fixture
def servers(rabbit_vhost, tmp_path):
    servers = Servers(str(tmp_path), rabbit_vhost)
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
    return [records.make_fault(str(uuid.uuid4()), HOST, "missed",
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
    wait_until(lambda: sorted(set(sink_ids(servers))) == expected, 30,
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
    wait_until(lambda: sorted({r["id"] for r in read_jsonl(sink_log)})
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
    wait_until(lambda: expected <= set(sink_ids(servers)), 30,
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
    wait_until(lambda: sorted(r["id"] for r in b.sink_records()
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
