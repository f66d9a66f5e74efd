# SPDX-License-Identifier: Apache-2.0
"""benchmarks/agent_floor.py: its challenge line is the protocol's, its
loop answers every challenge of a guest farm and counts the ones a guest
leaves unanswered, and its report holds the figures (not their values:
they are the machine's)."""

import json
import socket

import pytest

from benchmarks import agent_floor
from guestha_guest.protocol import messages as m
from guestha_guest.testing.guestfarm import Farm


def test_the_challenge_line_is_the_encoders():
    token = "0123456789abcdef0123456789abcdef"
    for seq, deadline_ms in ((0, 1000), (4294967295, 100), (77, 60000)):
        assert (agent_floor.CHALLENGE % (seq, token, deadline_ms)).encode(
        ) == m.encode(m.host_challenge(token, deadline_ms), seq)


@pytest.fixture
def farm(tmp_path):
    paths = [str(tmp_path / ("c%d.sock" % k)) for k in range(4)]
    farm = Farm(paths, interval_ms=100).start()
    yield farm
    farm.stop()
    assert farm.error is None


def test_every_challenge_is_answered(farm):
    channels = agent_floor.register([g.path for g in farm.guests],
                                    timeout=10)
    assert len(channels) == 4
    cpu, wall, answers, missed = agent_floor.run_floor(
        channels, duration=1.0, interval=0.1, batch=0.004)
    assert missed == 0
    assert wall >= 1.0 and cpu > 0
    # 4 guests, one challenge each every 100 ms
    assert 4 * 8 <= answers <= 4 * 11
    for ch in channels:
        ch.sock.close()


def test_a_guest_that_does_not_answer_is_missed(farm):
    channels = agent_floor.register([g.path for g in farm.guests],
                                    timeout=10)
    deaf, other = socket.socketpair()
    channels[0].sock.close()
    channels[0].sock = deaf
    channels[0].outstanding = None
    cpu, wall, answers, missed = agent_floor.run_floor(
        channels, duration=0.55, interval=0.1, batch=0.004)
    assert 3 <= missed <= 6  # one a 100 ms interval
    assert answers >= 3 * 4
    for ch in channels:
        ch.sock.close()
    other.close()


def test_the_report(capsys):
    assert agent_floor.main(["--instances", "3", "--duration", "0.5",
                             "--interval-ms", "100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["instances"] == 3 and report["missed"] == 0
    assert report["batch_ms"] == 4.0
    assert report["answers_per_s"] > 0 and report["floor_cpu_pct"] > 0


def test_bad_arguments_are_refused():
    for argv in (["--instances", "0"], ["--duration", "0"],
                 ["--batch-ms", "-1"]):
        with pytest.raises(SystemExit):
            agent_floor.main(argv)
