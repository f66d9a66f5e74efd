# SPDX-License-Identifier: Apache-2.0
"""Open faults are kept with the events that open and close them (issue
13 point 5): a fault and the record that it is open are one durable step,
and an older agent's faults.json is taken over on start."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent.loop import AgentLoop
from guestha.agent.outbox import Outbox
from guestha import records

UUID = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class Reporter(object):
    """The real reporter's submit, without its threads."""

    def __init__(self, outbox):
        self.outbox = outbox

    def submit(self, event):
        self.outbox.put(event)

    def cast_relay(self, method, **kwargs):
        pass


def make_fault():
    return records.make_fault(instance=UUID, host="compute-1", kind="missed",
                              reason="no answer", action=None,
                              detected_at=1.7e9, interval_ms=1000, misses=3)


def loop_on(state_dir, outbox):
    return AgentLoop("compute-1", im.Policy(), Reporter(outbox),
                     str(state_dir), outbox=outbox)


def test_an_agent_killed_right_after_reporting_a_fault_keeps_it_open(
        tmp_path):
    # The agent reports a fault and is killed -9 before anything else
    # runs (before, faults.json was written later in the loop pass: the
    # restarted agent had the fault in its outbox but not as open, and
    # never sent its recovery).
    script = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, %(root)r)
        from guestha.agent.outbox import Outbox
        from tests.unit.agent import test_open_faults as t
        box = Outbox(%(path)r, 1000)
        loop = t.loop_on(%(dir)r, box)
        event = t.make_fault()
        print(event["id"], flush=True)
        loop.report(event)
        os.kill(os.getpid(), signal.SIGKILL)
    """) % {"root": ROOT, "dir": str(tmp_path),
            "path": str(tmp_path / "outbox.sqlite")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          stdout=subprocess.PIPE, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    fault_id = proc.stdout.decode().strip()

    box = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    assert [e["id"] for _, e in box.peek(10)] == [fault_id]
    loop = loop_on(tmp_path, box)
    assert loop._open_faults == {UUID: {"id": fault_id, "kind": "missed"}}
    # the instance returns with its fault open: the recovery can follow
    loop._handle(ev.DomainUpdate(ev.DomainInfo(
        UUID, "vm1", ev.RUNNING, None, False, {}), "reconcile", 0), 0.0)
    assert loop.instances[UUID].fault == {"id": fault_id, "kind": "missed"}
    box.close()


def test_a_recovery_closes_the_fault_in_the_same_step(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    loop = loop_on(tmp_path, box)
    fault = make_fault()
    loop.report(fault)
    loop.report(records.make_recovery(
        instance=UUID, host="compute-1", fault_id=fault["id"],
        recovered_at=1.7e9))
    assert loop._open_faults == {}
    again = Outbox(str(tmp_path / "outbox.sqlite"), 1000)  # a restart
    assert again.open_faults() == {}
    assert len(again) == 2
    again.close()
    box.close()


def test_faults_json_of_an_older_agent_is_taken_over(tmp_path):
    legacy = tmp_path / "faults.json"
    legacy.write_text(json.dumps({UUID: {"id": "f-1", "kind": "unhealthy"}}))
    box = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    loop = loop_on(tmp_path, box)
    assert loop._open_faults == {UUID: {"id": "f-1", "kind": "unhealthy"}}
    assert not legacy.exists()
    assert box.open_faults() == loop._open_faults
    box.close()


def test_faults_json_is_used_as_it_is_when_the_outbox_cannot_take_it(
        tmp_path):
    legacy = tmp_path / "faults.json"
    legacy.write_text(json.dumps({UUID: {"id": "f-1", "kind": "unhealthy"}}))
    box = Outbox(str(tmp_path / "outbox.sqlite"), 1000)
    box._conn.execute(
        "CREATE TEMP TRIGGER full BEFORE INSERT ON meta BEGIN "
        "SELECT RAISE(ABORT, 'database or disk is full'); END")
    loop = loop_on(tmp_path, box)
    assert loop._open_faults == {UUID: {"id": "f-1", "kind": "unhealthy"}}
    assert legacy.exists()                 # for the next start
    box.close()
