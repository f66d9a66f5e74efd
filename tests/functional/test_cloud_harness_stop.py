# SPDX-License-Identifier: Apache-2.0
"""``tools/cloud.sh down`` stops what ``up`` started and nothing else.

The harness's process bookkeeping (tools/cloud/harness.py) against real
processes: a service whose whole process group ignores SIGTERM (as
nova-compute does for a long while) is SIGKILLed after the grace, a helper
that made a session of its own (as privsep's does) is found by its command
line naming the harness's configuration, and a process outside both is left
alone.  No OpenStack is needed.
"""

import os
import subprocess
import sys

import pytest

from tools.cloud import harness

IGNORES_TERM = ("import signal, subprocess, time;"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "subprocess.Popen(['sleep', '300']);"  # inherits SIG_IGN
                "time.sleep(300)")


@pytest.fixture
def state(tmp_path, monkeypatch):
    state = str(tmp_path / "cloud")
    for name, sub in (("STATE", ""), ("ETC", "etc"), ("LOG", "log"),
                      ("RUN", "run"), ("STAMPS", "stamps")):
        monkeypatch.setattr(harness, name, os.path.join(state, sub)
                            if sub else state)
        os.makedirs(os.path.join(state, sub), exist_ok=True)
    monkeypatch.setattr(harness, "STOP_GRACE_S", 1.0)
    started = []
    yield state, started
    # whatever a failed test left of the "service" (ignores SIGTERM)
    harness.stop_all()
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_all_kills_groups_helpers_and_no_one_else(state, monkeypatch):
    state_dir, started = state
    monkeypatch.setattr(harness, "service_command", lambda name: (
        [sys.executable, "-c", IGNORES_TERM], {}))
    assert harness.start("nova-compute")
    assert not harness.start("nova-compute")  # running: not started twice
    pid = harness.pid_of("nova-compute")
    conf = os.path.join(harness.ETC, "nova", "nova.conf")
    helper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)",
         "--config-file", conf], start_new_session=True)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)",
         "--config-file", "/elsewhere/nova.conf"], start_new_session=True)
    started += [helper, bystander]

    # the service, its child (same session) and the helper are found
    deadline = 50
    while len(harness.our_processes()) < 3 and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.1"])
    found = harness.our_processes()
    assert pid in found and found[pid] == "nova-compute"
    assert helper.pid in found
    assert bystander.pid not in found
    assert len(found) == 3

    groups, killed = harness.stop_all()
    assert groups == 2  # the service's and the helper's
    assert killed >= 2  # the service and its child ignored SIGTERM
    helper.wait(timeout=10)
    assert harness.our_processes() == {}
    assert not any(alive(p) for p in found)
    assert harness.pid_of("nova-compute") is None
    assert bystander.poll() is None  # not ours: untouched
