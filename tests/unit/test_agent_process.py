# SPDX-License-Identifier: Apache-2.0
"""guestha/testing/agent_harness.py's AgentProcess without an agent: the
configuration it writes (the real-VM and cloud rigs start their agents
through it) and what it reads from the agent's log and process."""

import configparser
import sys

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes

UUID = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
OTHER = "0f9e8d7c-6b5a-4e3d-9c2b-1a0f9e8d7c6b"
#: lines as guestha.agent.virt and guestha.agent.instance log them
LOG = """\
2026-12-04 14:00:00.100 7 INFO guestha.agent.virt [-] instance {u}: \
guestha channel hot-plugged at /s/{u}.sock in 40 ms
2026-12-04 14:00:00.101 7 INFO guestha.agent.instance [-] instance {u}: \
guestha channel hot-plugged at /s/{u}.sock
2026-12-04 14:00:02.000 7 INFO guestha.agent.instance [-] instance {u}: \
guest 'g' registered, interval 1000 ms
2026-12-04 14:00:03.000 7 INFO guestha.agent.instance [-] instance {o}: \
guest 'h' registered, interval 1000 ms
2026-12-04 14:00:09.000 7 INFO guestha.agent.instance [-] instance {u}: \
guest 'g' registered, interval 1000 ms
""".format(u=UUID, o=OTHER)


@pytest.fixture
def agent(tmp_path):
    processes = child_processes.Processes()
    try:
        yield agent_harness.AgentProcess(
            processes, str(tmp_path), str(tmp_path),
            "rabbit://guest:guest@127.0.0.1:5672/x", host="h1",
            uri="qemu:///system", debug=None, agent={"hotplug": "true"})
    finally:
        processes.kill_all()


def test_the_config_takes_the_uri_and_more_groups(agent, tmp_path):
    conf = configparser.ConfigParser()
    conf.read(agent.config)
    assert conf["libvirt"]["connection_uri"] == "qemu:///system"
    assert conf["agent"]["hotplug"] == "true"
    assert conf["agent"]["host"] == "h1"
    assert conf["agent"]["socket_dir"] == agent.socket_dir == str(
        tmp_path / "channels")
    # the defaults stay where no group overrides them
    assert conf["agent"]["miss_threshold"] == "1"


def test_log_counters_count_each_event_once_per_instance(agent):
    assert agent.registrations(UUID) == 0     # no log yet
    with open(agent.log, "w") as f:
        f.write(LOG)
    assert agent.registrations(UUID) == 2
    assert agent.registrations(OTHER) == 1
    assert agent.hotplugs(UUID) == 1          # virt's line, not the note's
    assert agent.hotplugs(OTHER) == 0
    assert OTHER not in agent.lines_of(UUID)
    assert agent.lines_of(UUID).count("\n") == 4


def test_an_exited_agent_fails_status_with_its_log(agent):
    agent.proc = agent.procs.spawn(
        [sys.executable, "-c", "print('ERROR the last words'); exit(3)"],
        agent.log)
    agent.proc.wait(10)
    with pytest.raises(AssertionError, match="exited \\(3\\)"
                       "(.|\n)*the last words"):
        agent.status()
    with pytest.raises(AssertionError):
        agent.states()


def test_kill_leaves_the_process_to_look_at(agent):
    # in a process group of its own, as the agent is: kill() ends the group
    agent.proc = agent.procs.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], agent.log)
    agent.kill()
    assert agent.proc.poll() == -9
