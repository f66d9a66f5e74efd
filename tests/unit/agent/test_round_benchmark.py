# SPDX-License-Identifier: Apache-2.0
"""benchmarks/agent_round.py: the instances it measures are MONITORED, every
challenge of the measured rounds is answered, and its report holds the
figures (not their values: they are the machine's)."""

import json
import socket

import pytest

from benchmarks import agent_round


def test_every_round_is_measured_and_answered():
    env, rigs = agent_round.monitored(3)
    samples = agent_round.measure(env, rigs, 4)
    assert len(samples) == 4
    assert all(timers > 0 and reads > 0 for timers, reads in samples)
    assert all(i.counters["missed"] == 0 for i, _, _ in rigs)
    # a guest that stops answering breaks the run, loudly
    deaf, other = socket.socketpair()
    deaf.setblocking(False)
    rigs[0][1].close()
    rigs[0] = (rigs[0][0], deaf, rigs[0][2])
    with pytest.raises((RuntimeError, AssertionError)):
        agent_round.measure(env, rigs, 2)
    other.close()
    agent_round.close(env, rigs)


def test_the_report(capsys):
    assert agent_round.main(["--instances", "2", "--rounds", "3"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["instances"] == 2 and report["rounds"] == 3
    assert report["round_us"] > 0
    assert report["round_us"] == pytest.approx(
        report["timer_us"] + report["read_us"], rel=0.5)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        agent_round.main(["--instances", "0"])
