# SPDX-License-Identifier: Apache-2.0
"""The README's run command, tools/demo.py, on real parts: it brings up
RabbitMQ, guestha-server, guestha-agent and a real VM, takes injected
faults from another shell, shows them, and leaves nothing behind: neither
when it is stopped nor when it is killed (issue 8)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from guestha.testing import guest_vms as vmlib
from guestha.testing import processes as procs
from guestha.testing.wait import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEMO = [sys.executable, os.path.join(ROOT, "tools", "demo.py")]

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm]


def _demo(workdir, *args, **kwargs):
    return subprocess.run(DEMO + ["--dir", workdir] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120, **kwargs)


class Output(object):
    """The demo's output, read by a thread."""

    def __init__(self, proc):
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,),
                                        daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            with self._lock:
                self.text += line

    def get(self):
        with self._lock:
            return self.text


def _until(cond, timeout, what, output):
    return wait_until(cond, timeout, what, interval=0.25,
                      details=lambda: "demo output:\n" + output.get()[-4000:])


def _records(workdir):
    try:
        with open(os.path.join(workdir, "faults.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def _our_domains(pid):
    conn = vmlib.connect()
    try:
        return [d.name() for d in conn.listAllDomains(0)
                if d.name().startswith("%s%d-" % (vmlib.PREFIX, pid))]
    finally:
        conn.close()


def test_bad_script_is_refused_before_anything_starts(tmp_path):
    result = _demo(str(tmp_path / "d"), "run", "--script", "5:explode")
    assert result.returncode == 1
    assert "bad --script step '5:explode'" in result.stdout
    assert not os.path.exists(str(tmp_path / "d"))


def test_inject_without_a_running_demo_says_so(tmp_path):
    result = _demo(str(tmp_path), "inject", "freeze")
    assert result.returncode == 1
    assert "no running demo answers" in result.stdout


def _start_demo(workdir):
    """The demo in a child process (guestha/testing/processes.py: it and what
    it started go with this test process, however it ends) and its output."""
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    vmlib.build_assets()
    proc = procs.spawn(
        DEMO + ["--dir", workdir, "run", "--vms", "1", "--interval-ms",
                "500", "--refresh", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, cwd=ROOT)
    return proc, Output(proc)


def _stop_demo(proc):
    """The demo's clean stop (SIGTERM: it tears down), SIGKILL after a
    minute."""
    procs.stop(proc, timeout=60)


def _alive(pid):
    return procs.start_time(pid) is not None


def test_demo_shows_an_injected_fault_and_its_recovery_then_stops(tmp_path):
    workdir = str(tmp_path / "demo")
    proc, out = _start_demo(workdir)
    try:
        _until(lambda: "MONITORED" in out.get(), 150,
               "the VM to be MONITORED on the demo's screen", out)
        assert _our_domains(proc.pid) != []
        # a fault injected from another shell reaches the screen and the
        # log sink, and so does its recovery
        assert "vm1: freeze" in _demo(workdir, "inject", "freeze").stdout
        fault = _until(lambda: [r for r in _records(workdir)
                                if r["type"] == "fault"], 30,
                       "the fault at the log sink", out)[0]
        assert fault["kind"] == "missed"
        _until(lambda: "open alarms at the controller: vm1 missed"
               in out.get(), 15, "the alarm on the screen", out)
        _demo(workdir, "inject", "thaw")
        _until(lambda: [r for r in _records(workdir)
                        if r["type"] == "recovery"
                        and r["fault_id"] == fault["id"]], 30,
               "the recovery at the log sink", out)
        _until(lambda: "RECOVERY vm1" in out.get(), 15,
               "the recovery on the screen", out)
        # a wrong request gets a clear error and changes nothing
        bad = _demo(workdir, "inject", "freeze", "vm7")
        assert bad.returncode == 1 and "no VM 'vm7'" in bad.stdout
        stop = _demo(workdir, "stop")
        assert stop.returncode == 0, stop.stdout
        assert proc.wait(60) == 0
    finally:
        _stop_demo(proc)
    text = out.get()
    assert "vm1 destroyed and undefined" in text
    assert "guestha-agent stopped" in text and "guestha-server stopped" in text
    assert _our_domains(proc.pid) == []
    assert not os.path.exists(os.path.join(workdir, "demo.pid"))
    # no agent or server of this demo is left running
    leftovers = subprocess.run(
        ["pgrep", "-f", "--config-file %s/" % workdir],
        stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    assert leftovers == []


def test_a_killed_demo_takes_its_agent_server_and_vms_with_it(tmp_path):
    """SIGKILL, which the demo cannot catch: the agent and the server die
    with it (they would otherwise hold QEMU's one client slot of every
    channel on qemu:///system), and its watchdog removes its VMs."""
    workdir = str(tmp_path / "demo")
    proc, out = _start_demo(workdir)
    try:
        _until(lambda: "MONITORED" in out.get(), 150,
               "the VM to be MONITORED on the demo's screen", out)
        children = [int(pid) for pid in re.findall(
            r"guestha-(?:server|agent) started \(pid (\d+)", out.get())]
        assert len(children) == 2, out.get()
        assert all(_alive(pid) for pid in children)
        assert _our_domains(proc.pid) != []
        token = procs.owner_token(proc.pid)
        assert sorted(procs.owned_by(token)) == sorted(children)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _until(lambda: not any(_alive(pid) for pid in children), 10,
               "the agent and the server to die with the demo", out)
        _until(lambda: _our_domains(proc.pid) == [], 60,
               "the demo's watchdog to remove its VM", out)
    finally:
        _stop_demo(proc)
    # nothing of it is left: no process it owned, no work directory
    assert procs.owned_by(token) == []
    assert [e for e in os.listdir("/tmp")
            if e.startswith("%s%d-" % (vmlib.PREFIX, proc.pid))] == []
