"""The agent's loop with real sockets and a guest in a thread."""

import base64
import json
import threading
import time

import pytest

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent import status
from guestha.agent.loop import AgentLoop
from guestha_guest import protocol as p
from guestha_guest.daemon import GuestDaemon

UUID = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
PEER = "8e2a1b6f-3c4d-4e5f-9a71-8293a4b5c6d7"


class Reporter(object):
    def __init__(self):
        self.events = []
        self.casts = []

    def submit(self, event):
        self.events.append(event)

    def cast_relay(self, method, **kwargs):
        self.casts.append((method, kwargs))

    def stats(self):
        return {"pending": 0, "delivered": len(self.events)}


@pytest.fixture
def setup(tmp_path):
    sock = str(tmp_path / "chan.sock")
    guest = GuestDaemon("unix-listen:" + sock,
                        p.Init(name="g1", interval_ms=100))
    guest.start()
    gt = threading.Thread(target=guest.run, daemon=True)
    gt.start()
    rep = Reporter()
    loop = AgentLoop("compute-1", im.Policy(min_interval_ms=100), rep,
                     str(tmp_path), status_socket=str(tmp_path / "a.sock"),
                     alive_interval=0.5)
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


def _until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_monitors_and_serves_its_status(setup):
    loop, rep, guest, tmp = setup
    assert _until(lambda: loop.answers >= 5)
    doc = status.fetch(str(tmp / "a.sock"))
    inst = doc["instances"][0]
    assert inst["instance"] == UUID and inst["state"] == im.MONITORED
    assert inst["interval_ms"] == 100 and inst["fault"] is None
    assert doc["rtt_ms"]["p99"] < 100
    text = status.render(doc)
    assert UUID in text and "MONITORED" in text and "100 ms" in text
    assert "healthy" in text
    # agent_alive tells the controller what this host monitors
    assert _until(lambda: any(m == "agent_alive" for m, _ in rep.casts))
    alive = [k for m, k in rep.casts if m == "agent_alive"][-1]
    assert alive["instances"][0]["instance"] == UUID


def test_server_group_messages_reach_the_guest_and_back(setup):
    loop, rep, guest, tmp = setup
    assert _until(lambda: loop.answers >= 1)
    seen = []
    guest._publish = lambda event, msg, skip=None: seen.append(msg)
    loop.on_deliver_broadcast([UUID, "0" * 8 + "-0000-4000-8000-" + "0" * 12],
                              PEER, base64.b64encode(b"hi").decode())
    loop.on_deliver_notification([UUID], PEER, "stopped",
                                 "instance.power_off.end")
    assert _until(lambda: len(seen) >= 2)
    assert seen[0]["from"] == PEER
    assert base64.b64decode(seen[0]["payload"]) == b"hi"
    assert seen[1] == {"op": "notification", "instance": PEER,
                       "state": "stopped",
                       "event": "instance.power_off.end"}
    # the guest's broadcast is relayed with the source the host knows
    guest._send(p.Broadcast(payload=b"to peers",
                            sender=PEER))  # a lie, ignored by the host
    assert _until(lambda: any(m == "relay_broadcast"
                              for m, _ in rep.casts))
    relay = [k for m, k in rep.casts if m == "relay_broadcast"][0]
    assert relay["instance"] == UUID
    assert base64.b64decode(relay["payload_b64"]) == b"to peers"


def test_a_gone_domain_leaves_and_open_faults_survive_a_restart(setup):
    loop, rep, guest, tmp = setup
    assert _until(lambda: loop.answers >= 1)
    inst = loop.instances[UUID]
    loop.post(ev.DomainState(UUID, ev.RUNNING, "x", 0))  # no-op: no token
    # the guest turns unhealthy: a real fault opens (and stays open, since
    # every later answer is unhealthy too) and is saved for the next start
    guest.heartbeat._health = lambda now: (False, "test says so", None)
    assert _until(lambda: rep.events and rep.events[-1]["type"] == "fault")
    fault_id = rep.events[-1]["id"]
    assert rep.events[-1]["kind"] == "unhealthy"

    def saved():
        try:
            with open(tmp / "faults.json") as f:
                return json.load(f) == {UUID: {"id": fault_id,
                                               "kind": "unhealthy"}}
        except (OSError, ValueError):
            return False
    assert _until(saved)
    assert inst.fault == {"id": fault_id, "kind": "unhealthy"}
    loop.post(ev.Reconciled(frozenset(), 0))
    assert _until(lambda: UUID not in loop.instances
                  and rep.events[-1]["type"] == "recovery")
    # the domain stopped: the fault was cleared by a recovery
    assert [e["type"] for e in rep.events] == ["fault", "recovery"]
    assert rep.events[-1]["fault_id"] == fault_id
    assert _until(lambda: json.loads((tmp / "faults.json").read_text())
                  == {})
