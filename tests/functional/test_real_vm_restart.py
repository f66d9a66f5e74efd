# SPDX-License-Identifier: Apache-2.0
"""guestha on a real VM: a guest that hangs while the agent is down.

Issue 13, point 4.  The rig of tests/functional/test_real_vm.py (its
``rig`` and ``ready`` fixtures: one VM, a real ``guestha-agent`` on
``qemu:///system``, a ``guestha-server`` with the log sink), and a
second VM, ``silent``, that has the guestha channel but whose daemon never
ran while an agent was there (a guest with no daemon installed).

The agent is stopped (SIGTERM, then SIGKILL), the daemon of the rig's VM
is frozen (SIGSTOP through the test control channel), and the agent is
started again with the state directory it had.  The rig's instance was
monitored before (``<state_dir>/monitored.json``): its unanswered resync
must be a ``missed`` fault in the sink within 2 x interval +
``[agent] channel_lost_grace`` (+ the delivery margin) of the agent's
start; the thaw brings its recovery.  The silent instance, never
monitored, must stay quiet across the same restart: nothing in the sink
for it within the same bound plus a margin (a real-time wait for an event
that must not come: the bound is all a functional test can give).

And the false fault a ``monitored.json`` entry must not cause: a domain
destroyed and started again while the agent was down runs a new QEMU
process (another libvirt domain id), so its entry is dropped, and a new
guest slow to register is no fault.

Needs what test_real_vm.py needs (root, libvirtd, the VM assets).
"""

import inspect
import signal
import time

import pytest

from guestha.testing import agent_harness
from guestha.testing import guest_vms as vmlib
from guestha.testing import processes as procs
from tests.functional import test_real_vm as rv

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm]

# the rig of test_real_vm.py, a module-scoped one of this module's own
rig = rv.rig
ready = rv.ready

#: The rig's agent runs with agent_harness.agent_conf's default.
CHANNEL_LOST_GRACE = inspect.signature(
    agent_harness.agent_conf).parameters["channel_lost_grace"].default
#: From the agent's start to the fault in the sink, at most.
BOUND = 2 * rv.INTERVAL + CHANNEL_LOST_GRACE + rv.DELIVERY_MARGIN
RESYNC_REASON = "no answer to the resync after the agent started"


def stop_agent(rig, sig):
    """Stop the rig's agent with ``sig`` and wait until it is gone."""
    if sig == signal.SIGKILL:
        rig.agent.kill()
    else:
        procs.stop_all([rig.agent.proc], timeout=15.0, sig=sig)
    assert rig.agent.proc.poll() is not None


def records(rig, uuid, since):
    """Whatever reached the sink for ``uuid`` since the wall time
    ``since``."""
    return [r for r in rig.server.sink_records()
            if r.get("instance") == uuid
            and r.get("detected_at_ts", 0) >= since]


@pytest.fixture(scope="module")
def silent(rig):
    """A second VM with the guestha channel, known to the agent but never
    monitored: it is booted while the agent is down, its daemon stopped
    before any agent could answer it, then the agent is started."""
    vm = vmlib.GuestVM("nd", interval_ms=rv.INTERVAL_MS)
    try:
        stop_agent(rig, signal.SIGTERM)
        vm.start()
        vm.wait_booted(rv.BOOT_TIMEOUT)
        vm.control("daemon_stop")
        assert vm.control("daemon_pid")["pid"] is None
        rig.agent.start()
        rv.wait_for(lambda: (rig.agent.instance(vm.uuid) or {}).get(
            "state") == "SYNCING", "the agent to sync the silent VM",
            rig=rig)
        yield vm
    finally:
        vm.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL],
                         ids=["sigterm", "sigkill"])
def test_guest_hung_during_agent_restart_is_missed(ready, silent, sig):
    vmrig = ready
    silent_inst = vmrig.agent.instance(silent.uuid)
    assert silent_inst["state"] == "SYNCING", silent_inst
    assert silent_inst["monitored"] is None, silent_inst
    since = time.time()
    stop_agent(vmrig, sig)
    vmrig.vm.control("signal", sig="STOP")
    try:
        ready_at = vmrig.agent.start().ready_at
        fault = rv.wait_for(lambda: vmrig.faults(since),
                            "a missed fault after the agent's start",
                            rig=vmrig)[0]
        detected = time.monotonic() - ready_at
        vmrig.figures["agent start -> resync missed fault in sink s (%s)"
                      % signal.Signals(sig).name] = detected
        assert fault["kind"] == "missed", fault
        assert RESYNC_REASON in fault["reason"], fault
        assert fault["host"] == vmrig.agent.host
        assert detected <= BOUND, (
            "the fault took %.2f s after the agent's start (bound %.1f s)"
            % (detected, BOUND))
        # the same bound, and a margin, for the silent VM: nothing
        time.sleep(max(0.0, ready_at + BOUND + rv.QUIET
                       - time.monotonic()))
        assert records(vmrig, silent.uuid, since) == [], vmrig.diagnostics()
        silent_inst = vmrig.agent.instance(silent.uuid)
        assert silent_inst["fault"] is None, silent_inst
        assert silent_inst["counters"]["faults"] == 0, silent_inst
        assert silent_inst["restart_resync"] is None, silent_inst
    finally:
        continued_at = time.monotonic()
        vmrig.vm.control("signal", sig="CONT")
    rv.wait_for(lambda: vmrig.recoveries(fault["id"]),
                "the recovery in the log sink", rig=vmrig)
    vmrig.figures["SIGCONT -> recovery in sink s (%s)" % signal.Signals(
        sig).name] = time.monotonic() - continued_at
    vmrig.wait_monitored()
    assert len(vmrig.faults(since)) == 1
    assert records(vmrig, silent.uuid, since) == []


def test_domain_started_again_while_the_agent_was_down_is_no_fault(ready):
    """The false fault the entry's QEMU process guards against: the
    domain was destroyed and started again while the agent was down (a
    Nova stop and start, a Masakari recovery), and its new guest's daemon
    is slow to register (frozen here, before any agent could answer it).
    It is a new guest, not a hang: no fault, and monitoring once the
    daemon answers."""
    vmrig = ready
    since = time.time()
    stop_agent(vmrig, signal.SIGTERM)
    vmrig.vm.destroy()
    vmrig.vm.start()
    vmrig.vm.wait_booted(rv.BOOT_TIMEOUT)
    vmrig.vm.control("signal", sig="STOP")
    try:
        ready_at = vmrig.agent.start().ready_at
        rv.wait_for(lambda: vmrig.state() == "SYNCING",
                    "the agent to sync the restarted VM", rig=vmrig)
        inst = vmrig.agent.instance(vmrig.uuid)
        assert inst["monitored"] is None, inst  # the entry was dropped
        assert inst["restart_resync"] is None, inst
        time.sleep(max(0.0, ready_at + BOUND + rv.QUIET
                       - time.monotonic()))
        assert vmrig.faults(since) == [], vmrig.diagnostics()
        assert vmrig.agent.instance(vmrig.uuid)["fault"] is None
    finally:
        vmrig.vm.control("signal", sig="CONT")
    vmrig.wait_monitored(timeout=rv.ARRIVAL)
    assert vmrig.faults(since) == []
