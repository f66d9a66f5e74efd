# SPDX-License-Identifier: Apache-2.0
"""HookRunner tests.

Hooks are real subprocesses (that is what is being tested), but where the
test is about time (periods, timeouts, staleness) the runner is driven
with made-up ``now`` values: a hook that sleeps for 30 s is "timed out" by
passing a ``now`` past its timeout, not by waiting.
"""

import logging
import os
import signal
import time

import pytest

from guestha_guest import health
from guestha_guest.health import HookRunner


def hook(directory, name, body, mode=0o755):
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(str(path), mode)
    return path


def run_round(runner, limit=10.0):
    """Run one round in real time; return its HealthState.

    Done when a round completes, whatever starts next: with a short period
    the next round may start in the same tick, on a loaded machine."""
    start = time.monotonic()
    before = runner.state
    runner.tick(start)
    while runner.state is before:
        assert time.monotonic() - start < limit, "round did not complete"
        time.sleep(0.005)
        runner.tick(time.monotonic())
    return runner.state


def wait_exited(runner, now, limit=5.0):
    """Tick (with fake times from ``now``) until killed hooks are reaped."""
    end = time.monotonic() + limit
    while runner._killed:
        assert time.monotonic() < end, "killed hook was not reaped"
        time.sleep(0.01)
        now += health.POLL_MAX
        runner.tick(now)
    return now


def gone(pid):
    """True if ``pid`` no longer runs (gone, or a zombie nobody reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def hooks(tmp_path):
    d = tmp_path / "health.d"
    d.mkdir()
    return d


def test_healthy_hook(hooks):
    hook(hooks, "10-ok", "exit 0")
    runner = HookRunner(str(hooks), timeout_s=5)
    state = run_round(runner)
    assert state.healthy is True
    assert state.reason is None
    assert state.hooks == ["10-ok"]
    assert runner.result(state.finished) == (True, None)


def test_failing_hook_gives_reason(hooks):
    hook(hooks, "10-ok", "exit 0")
    hook(hooks, "20-disk", "echo; echo '  root fs 97% full  '; "
                           "echo second line; exit 3")
    runner = HookRunner(str(hooks), timeout_s=5)
    state = run_round(runner)
    assert runner.result(state.finished) == (
        False, "hook 20-disk exited 3: root fs 97% full")


def test_failing_hook_without_output(hooks):
    hook(hooks, "x", "exit 1")
    runner = HookRunner(str(hooks), timeout_s=5)
    assert run_round(runner).reason == "hook x exited 1"


def test_stderr_is_captured_and_control_characters_removed(hooks):
    hook(hooks, "x", "printf 'bad\\tthing\\033[1m\\n' >&2; exit 2")
    runner = HookRunner(str(hooks), timeout_s=5)
    assert run_round(runner).reason == "hook x exited 2: bad thing [1m"


def test_hook_killed_by_signal(hooks):
    hook(hooks, "x", "kill -TERM $$")
    runner = HookRunner(str(hooks), timeout_s=5)
    assert run_round(runner).reason == "hook x killed by SIGTERM"


def test_reason_line_is_cut_to_120_characters(hooks):
    hook(hooks, "x", "printf '%0200d\\n' 0; exit 1")
    runner = HookRunner(str(hooks), timeout_s=5)
    assert run_round(runner).reason == "hook x exited 1: " + "0" * 120


def test_hanging_hook_is_killed_with_its_children(hooks, tmp_path):
    pids = tmp_path / "pids"
    hook(hooks, "10-hang", "sleep 30 & echo $$ $! > %s; wait" % pids)
    runner = HookRunner(str(hooks), timeout_s=0.2)
    t0 = 1000.0
    runner.tick(t0)
    end = time.monotonic() + 5
    while not pids.exists() or not pids.read_text().endswith("\n"):
        assert time.monotonic() < end
        time.sleep(0.01)
    shell, child = (int(x) for x in pids.read_text().split())
    runner.tick(t0 + 0.1)
    assert runner.running and runner.state is None
    assert not gone(shell) and not gone(child)

    runner.tick(t0 + 0.2)  # the timeout
    assert not runner.running
    assert runner.result(t0 + 0.2) == (
        False, "hook 10-hang timed out after 200 ms")
    wait_exited(runner, t0 + 0.2)
    assert gone(shell)
    assert gone(child)  # the whole process group went
    with pytest.raises(ProcessLookupError):
        os.kill(shell, 0)  # reaped, not a zombie


def test_hanging_hook_in_real_time(hooks, tmp_path):
    hook(hooks, "x", "echo $$ > %s; exec sleep 30" % (tmp_path / "pid"))
    runner = HookRunner(str(hooks), timeout_s=0.2)
    start = time.monotonic()
    state = run_round(runner)
    assert time.monotonic() - start >= 0.2  # not before its timeout
    assert state.reason == "hook x timed out after 200 ms"
    wait_exited(runner, time.monotonic())
    assert gone(int((tmp_path / "pid").read_text()))


def test_chatty_hook_does_not_block(hooks):
    # 1 MB is far more than a pipe holds: with a pipe nobody reads, the
    # hook would block and time out
    hook(hooks, "10-chatty", "head -c 1048576 /dev/zero | tr '\\0' x; "
                             "echo; exit 1")
    runner = HookRunner(str(hooks), timeout_s=10)
    state = run_round(runner)
    assert state.reason == "hook 10-chatty exited 1: " + "x" * 120


def test_what_is_not_a_hook_is_skipped(hooks, tmp_path, caplog):
    marker = tmp_path / "ran"
    body = "echo $0 >> %s; exit 1" % marker
    hook(hooks, "10-run", "echo $0 >> %s" % marker)
    hook(hooks, "20-not-executable", body, mode=0o644)
    hook(hooks, ".hidden", body)
    hook(hooks, "30-backup~", body)
    hook(hooks, "40-x.dpkg-old", body)
    hook(hooks, "50-y.dpkg-dist", body)
    (hooks / "60-dir").mkdir()
    os.symlink(str(hooks / "nowhere"), str(hooks / "70-dangling"))
    caplog.set_level(logging.INFO, logger="guestha_guest.health")
    runner = HookRunner(str(hooks), timeout_s=5)
    state = run_round(runner)
    assert state.healthy
    assert state.hooks == ["10-run"]
    assert marker.read_text() == str(hooks / "10-run") + "\n"
    run_round(HookRunner(str(hooks), timeout_s=5))
    runner._next_round = None
    run_round(runner)
    skipped = [r for r in caplog.records if "not executable" in r.message]
    assert len(skipped) == 2  # once per runner, not once per round
    assert "20-not-executable" in skipped[0].message


def test_symlink_to_executable_is_a_hook(hooks, tmp_path):
    target = hook(tmp_path, "real", "exit 4")
    os.symlink(str(target), str(hooks / "10-link"))
    runner = HookRunner(str(hooks), timeout_s=5)
    assert run_round(runner).reason == "hook 10-link exited 4"


def test_missing_dir_is_healthy_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="guestha_guest.health")
    runner = HookRunner(str(tmp_path / "absent"), timeout_s=1)
    runner.tick(10.0)
    assert not runner.running
    assert runner.state.hooks == []
    assert runner.result(10.0) == (True, None)
    runner.tick(11.0)
    runner.tick(12.0)
    assert runner.state.finished == 12.0
    msgs = [r.message for r in caplog.records]
    assert msgs == ["hook directory %s does not exist: no health hooks"
                    % (tmp_path / "absent")]
    assert caplog.records[0].levelno == logging.INFO


def test_hook_dir_that_is_a_file_is_unhealthy(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    runner = HookRunner(str(f), timeout_s=1)
    runner.tick(1.0)
    assert runner.result(1.0) == (
        False, "cannot read hook directory %s: Not a directory" % f)


def test_hook_that_cannot_start(hooks):
    path = hooks / "10-noshebang"
    path.write_bytes(b"\x7fELF garbage")
    os.chmod(str(path), 0o755)
    runner = HookRunner(str(hooks), timeout_s=1)
    runner.tick(1.0)
    assert not runner.running
    assert runner.result(1.0) == (
        False, "hook 10-noshebang could not start: Exec format error")


def test_failures_in_name_order(hooks):
    # 20 fails at once, 10 fails later: reported in name order all the same
    hook(hooks, "20-b", "echo b; exit 2")
    hook(hooks, "10-a", "sleep 0.2; echo a; exit 1")
    hook(hooks, "15-ok", "exit 0")
    runner = HookRunner(str(hooks), timeout_s=5)
    state = run_round(runner)
    assert state.hooks == ["10-a", "15-ok", "20-b"]
    assert state.reason == "hook 10-a exited 1: a; hook 20-b exited 2: b"


def test_hooks_of_a_round_run_side_by_side(hooks, tmp_path):
    # each hook says it started, then waits for all four to have started:
    # run one after the other, the round would time out
    flags = tmp_path / "flags"
    flags.mkdir()
    for name in ("a", "b", "c", "d"):
        hook(hooks, name, 'touch "%s/%s"; while [ "$(ls "%s" | wc -l)" '
                          '-lt 4 ]; do sleep 0.01; done' % (flags, name,
                                                            flags))
    runner = HookRunner(str(hooks), timeout_s=60)
    state = run_round(runner, limit=60)
    assert (state.healthy, state.reason) == (True, None)


def test_rounds_follow_the_period(tmp_path):
    runner = HookRunner(str(tmp_path), timeout_s=1, period_s=2.0)
    assert runner.next_deadline() == 0.0  # due at once
    runner.tick(100.0)
    assert runner.state.finished == 100.0
    assert runner.next_deadline() == 102.0
    runner.tick(101.9)
    assert runner.state.finished == 100.0  # not due yet
    runner.tick(102.0)
    assert runner.state.finished == 102.0
    runner.set_period(0.5)  # learned from the host later
    assert runner.next_deadline() == 102.5
    runner.tick(102.5)
    assert runner.state.finished == 102.5


def test_no_new_round_while_one_runs(hooks):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=5, period_s=1.0)
    runner.tick(0.0)
    first = runner._round.hooks[0].proc
    runner.tick(1.0)
    runner.tick(2.0)
    assert runner._round.hooks[0].proc is first
    assert runner._round.started == 0.0
    # SIGKILL is not instant: keep the killed hook alive past the tick by
    # stopping it first and making the kill a no-op this once
    os.kill(first.pid, signal.SIGSTOP)
    real_kill = health.os.killpg
    health.os.killpg = lambda pid, sig: None
    try:
        runner.tick(5.0)  # timeout: "killed", round complete
    finally:
        health.os.killpg = real_kill
    assert runner.state.reason == "hook x timed out after 5000 ms"
    assert not runner.running
    # the next round is overdue, but waits for the killed hook to die
    assert runner.next_deadline() == pytest.approx(5.0 + health.POLL_MAX)
    runner.tick(5.0 + health.POLL_MAX)
    assert not runner.running  # still alive: no new round
    os.kill(first.pid, signal.SIGKILL)
    now = wait_exited(runner, 5.0 + health.POLL_MAX)
    assert runner.running  # started as soon as the old one was reaped
    assert runner._round.started == now
    assert runner._round.hooks[0].proc is not first
    runner.close()


def test_next_deadline_while_running(hooks):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=0.05)
    runner.tick(10.0)
    # first poll after POLL_MIN, capped by the hook's timeout
    assert runner.next_deadline() == pytest.approx(10.0 + health.POLL_MIN)
    runner.tick(10.01)
    assert runner.next_deadline() == pytest.approx(10.03)
    runner.tick(10.03)
    assert runner.next_deadline() == pytest.approx(10.05)  # the timeout
    runner.tick(10.05)
    assert runner.state.reason == "hook x timed out after 50 ms"
    wait_exited(runner, 10.05)
    assert runner.next_deadline() == 11.0


def test_polling_backs_off_to_poll_max(hooks):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=100)
    now = 0.0
    runner.tick(now)
    gaps = []
    for _ in range(6):
        nxt = runner.next_deadline()
        gaps.append(round(nxt - now, 3))
        now = nxt
        runner.tick(now)
    assert gaps == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    runner.close()


def test_no_result_yet(hooks):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=2)
    assert runner.result(0.0) == (True, None)  # nothing ran yet
    runner.tick(50.0)
    assert runner.result(51.9) == (True, None)  # just started: no fault
    assert runner.result(52.1) == (False, "no health result yet")
    runner.close()


def test_stale_result(tmp_path):
    runner = HookRunner(str(tmp_path), timeout_s=2, period_s=1.0)
    assert runner.max_age_s == 3.0
    runner.tick(100.0)
    assert runner.result(103.0) == (True, None)
    assert runner.result(103.5) == (
        False, "health result stale (3500 ms old)")
    runner.tick(103.5)
    assert runner.result(103.5) == (True, None)


def test_max_age(tmp_path):
    runner = HookRunner(str(tmp_path), timeout_s=2, period_s=0.1)
    # a round may run for its whole timeout without its result going stale
    assert runner.max_age_s == pytest.approx(2.1)
    runner.set_period(5.0)
    assert runner.max_age_s == 15.0
    runner = HookRunner(str(tmp_path), timeout_s=2, period_s=1.0,
                        max_age_s=10.0)
    runner.tick(0.0)
    assert runner.result(10.0) == (True, None)
    assert runner.result(10.25) == (False,
                                    "health result stale (10250 ms old)")


def test_stale_unhealthy_result_reports_staleness(hooks):
    hook(hooks, "x", "exit 1")
    runner = HookRunner(str(hooks), timeout_s=5, period_s=1.0,
                        max_age_s=4.0)
    state = run_round(runner)
    assert runner.result(state.finished + 4.5) == (
        False, "health result stale (4500 ms old)")


def test_recovers_after_failure(hooks, tmp_path):
    flag = tmp_path / "bad"
    flag.write_text("")
    hook(hooks, "x", "[ ! -e %s ] || { echo broken; exit 1; }" % flag)
    runner = HookRunner(str(hooks), timeout_s=5, period_s=0.01)
    assert run_round(runner).reason == "hook x exited 1: broken"
    flag.unlink()
    fixed_at = time.monotonic()
    # With a 10 ms period the next round may already have started in the
    # tick that completed the first, and found the flag or not: judge the
    # first round that started after the fix.
    state = run_round(runner)
    while state.started < fixed_at:
        state = run_round(runner)
    assert state.healthy and state.reason is None


def test_killed_hook_that_will_not_die_is_not_started_again(
        hooks, monkeypatch):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=0.5, period_s=1.0)
    monkeypatch.setattr(runner, "_kill", lambda h: None)  # SIGKILL ignored
    runner.tick(0.0)
    proc = runner._round.hooks[0].proc
    runner.tick(0.5)
    assert runner.state.reason == "hook x timed out after 500 ms"
    assert runner._killed and proc.poll() is None
    runner.tick(1.0)  # due, but waits a grace period for it to die
    assert not runner.running
    assert runner.state.reason == "hook x timed out after 500 ms"
    assert runner.next_deadline() == pytest.approx(1.1)  # the next reaping
    runner.tick(1.4)
    assert runner.state.reason == "hook x timed out after 500 ms"
    runner.tick(1.5)  # grace over: a round without it
    assert not runner.running
    assert runner.state.reason == "hook x did not exit after being killed"
    assert runner._killed[0].proc is proc
    monkeypatch.undo()
    runner.close()
    end = time.monotonic() + 5
    while proc.poll() is None:
        assert time.monotonic() < end
        time.sleep(0.01)
    assert proc.returncode == -9


def test_close_kills_running_hooks(hooks):
    hook(hooks, "x", "exec sleep 30")
    runner = HookRunner(str(hooks), timeout_s=100)
    runner.tick(0.0)
    proc = runner._round.hooks[0].proc
    runner.close()
    assert not runner.running
    assert proc.wait(5) == -9


def test_bad_arguments():
    with pytest.raises(ValueError):
        HookRunner("/x", timeout_s=0)
    with pytest.raises(ValueError):
        HookRunner("/x", timeout_s=1, period_s=0)
    with pytest.raises(ValueError):
        HookRunner("/x", timeout_s=1).set_period(0)


@pytest.mark.parametrize("name,ok", [
    ("10-disk", True), ("check.sh", True), (".10-disk", False),
    ("10-disk~", False), ("10-disk.dpkg-old", False),
    ("10-disk.dpkg-new", False), ("10-disk.dpkg-dist", False),
])
def test_is_hook_name(name, ok):
    assert health.is_hook_name(name) is ok


def test_invalid_utf8_in_hook_output_becomes_replacement_characters():
    # each invalid sequence is one U+FFFD; the reason stays valid text on
    # the wire (clean_text passes U+FFFD through)
    from guestha_guest.protocol import clean_text
    line = health.first_line(b"disk \xff\xfe full \xc3\n")
    assert line == "disk \ufffd\ufffd full \ufffd"
    assert clean_text(line) == line
