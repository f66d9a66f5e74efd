# SPDX-License-Identifier: Apache-2.0
"""The open faults in memory: a fault opens one, its own recovery closes
it, anything else leaves it.  (Loading them from the outbox and an older
agent's faults.json, through the loop: test_open_faults.py.)"""

from guestha.agent.openfaults import OpenFaults

A = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"


def test_a_fault_stays_open_until_its_own_recovery():
    faults = OpenFaults.load(None, "/nonexistent")
    assert faults == {}
    faults.follow({"type": "fault", "instance": A, "id": "f-1",
                   "kind": "missed"})
    assert faults == {A: {"id": "f-1", "kind": "missed"}}
    # a recovery of another (older) fault leaves it open
    faults.follow({"type": "recovery", "instance": A, "fault_id": "f-0"})
    assert faults == {A: {"id": "f-1", "kind": "missed"}}
    faults.follow({"type": "recovery", "instance": A, "fault_id": "f-1"})
    assert faults == {}
