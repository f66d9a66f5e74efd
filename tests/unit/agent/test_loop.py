# SPDX-License-Identifier: Apache-2.0
"""The agent's loop with real sockets and a guest in a thread.

The guest and the loop run on real time (a 100 ms interval), but no test
sleeps or times anything: each waits on a condition the loop's reporter
and round-trip hook notify.  How fast the loop answers is measured by
benchmarks/agent_scale.py (round-trip p50/p99 at up to thousands of
instances), not here."""

import base64
import threading

import pytest

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent.loop import AgentLoop
from guestha.agent.outbox import Outbox
from guestha.agent import status
from guestha_guest.daemon import GuestDaemon
from guestha_guest import protocol as p

UUID = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
PEER = "8e2a1b6f-3c4d-4e5f-9a71-8293a4b5c6d7"


class Reporter(object):
    """Writes to a real outbox, as the agent's reporter does, and
    notifies ``changed``."""

    def __init__(self, outbox, changed):
        self.outbox = outbox
        self.changed = changed
        self.events = []
        self.casts = []

    def submit(self, event):
        self.outbox.put(event)
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def cast_relay(self, method, **kwargs):
        with self.changed:
            self.casts.append((method, kwargs))
            self.changed.notify_all()

    def until(self, cond):
        """Wait until ``cond()``, checked again whenever the loop reports,
        casts or records an answer.  The timeout only ends a test that
        would hang: nothing is timed."""
        with self.changed:
            return self.changed.wait_for(cond, timeout=30)

    def stats(self):
        return {"pending": 0, "delivered": len(self.events)}


@pytest.fixture(params=[0.0, 0.005], ids=["unbatched", "batched"])
def setup(tmp_path, request):
    sock = str(tmp_path / "chan.sock")
    guest = GuestDaemon("unix-listen:" + sock,
                        p.Init(name="g1", interval_ms=100))
    guest.start()
    gt = threading.Thread(target=guest.run, daemon=True)
    gt.start()
    changed = threading.Condition()
    outbox = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    rep = Reporter(outbox, changed)
    loop = AgentLoop("compute-1", im.Policy(min_interval_ms=100), rep,
                     str(tmp_path), status_socket=str(tmp_path / "a.sock"),
                     alive_interval=0.5, outbox=outbox,
                     batch_delay=request.param)
    record_rtt = loop.record_rtt

    def recorded(seconds):
        with changed:
            record_rtt(seconds)
            changed.notify_all()
    loop.record_rtt = recorded
    loop.start()
    lt = threading.Thread(target=loop.run, daemon=True)
    lt.start()
    loop.post(ev.DomainUpdate(ev.DomainInfo(UUID, "vm1", ev.RUNNING, sock,
                                            True, {}), "test", 0))
    yield loop, rep, guest, tmp_path
    loop.stop()
    lt.join(5)
    guest.stop()
    gt.join(5)
    outbox.close()


def test_monitors_and_serves_its_status(setup):
    loop, rep, guest, tmp = setup
    assert rep.until(lambda: loop.answers >= 5)
    doc = status.fetch(str(tmp / "a.sock"))
    inst = doc["instances"][0]
    assert inst["instance"] == UUID and inst["state"] == im.MONITORED
    assert inst["interval_ms"] == 100 and inst["fault"] is None
    assert doc["rtt_ms"]["samples"] >= 5
    text = status.render(doc)
    assert UUID in text and "MONITORED" in text and "100 ms" in text
    assert "healthy" in text
    # agent_alive tells the controller what this host monitors
    assert rep.until(lambda: any(m == "agent_alive" for m, _ in rep.casts))
    alive = [k for m, k in rep.casts if m == "agent_alive"][-1]
    assert alive["instances"][0]["instance"] == UUID


def test_server_group_messages_reach_the_guest_and_back(setup):
    loop, rep, guest, tmp = setup
    assert rep.until(lambda: loop.answers >= 1)
    seen = []

    def publish(event, msg, skip=None):
        with rep.changed:
            seen.append(msg)
            rep.changed.notify_all()
    guest.relay._publish = publish
    loop.deliveries.on_deliver_broadcast(
        [UUID, "0" * 8 + "-0000-4000-8000-" + "0" * 12],
        PEER, base64.b64encode(b"hi").decode())
    loop.deliveries.on_deliver_notification([UUID], PEER, "stopped",
                                            "instance.power_off.end")
    assert rep.until(lambda: len(seen) >= 2)
    assert seen[0]["from"] == PEER
    assert base64.b64decode(seen[0]["payload"]) == b"hi"
    assert seen[1] == {"op": "notification", "instance": PEER,
                       "state": "stopped",
                       "event": "instance.power_off.end"}
    # the guest's broadcast is relayed with the source the host knows
    guest.channel.send(p.Broadcast(payload=b"to peers",
                                   sender=PEER))  # a lie, ignored by the host
    assert rep.until(lambda: any(m == "relay_broadcast"
                                 for m, _ in rep.casts))
    relay = [k for m, k in rep.casts if m == "relay_broadcast"][0]
    assert relay["instance"] == UUID
    assert base64.b64decode(relay["payload_b64"]) == b"to peers"


def test_a_gone_domain_leaves_and_open_faults_survive_a_restart(setup):
    loop, rep, guest, tmp = setup
    assert rep.until(lambda: loop.answers >= 1)
    inst = loop.instances[UUID]
    loop.post(ev.DomainState(UUID, ev.RUNNING, "x", 0))  # no-op: no token
    # the guest turns unhealthy: a real fault opens (and stays open, since
    # every later answer is unhealthy too) and is saved for the next start
    guest.session.heartbeat._health = lambda now: (False, "test says so", None)
    assert rep.until(lambda: rep.events
                     and rep.events[-1]["type"] == "fault")
    fault_id = rep.events[-1]["id"]
    assert rep.events[-1]["kind"] == "unhealthy"

    # saved for the next start with the event itself, no later step
    assert rep.outbox.open_faults() == {UUID: {"id": fault_id,
                                               "kind": "unhealthy"}}
    assert inst.fault == {"id": fault_id, "kind": "unhealthy"}
    loop.post(ev.Reconciled(frozenset(), 0))
    assert rep.until(lambda: UUID not in loop.instances
                     and rep.events[-1]["type"] == "recovery")
    # the domain stopped: the fault was cleared by a recovery
    assert [e["type"] for e in rep.events] == ["fault", "recovery"]
    assert rep.events[-1]["fault_id"] == fault_id
    assert rep.outbox.open_faults() == {}
