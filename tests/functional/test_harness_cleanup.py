# SPDX-License-Identifier: Apache-2.0
"""The test harnesses leave nothing behind, however they end (issue 8).

Seen before: a real-VM test or the demo failed, and its guestha-agent and
guestha-server ran on for about 20 minutes, connected to qemu:///system,
where they took QEMU's one client slot of a channel from the next test's
agent: one failing test made the following ones fail.

* A harness process (this test's child) that is SIGKILLed takes its
  agent-side processes with it: a real guest daemon, a real
  guestha-server and a shell with a child of its own
  (guestha/testing/processes.py: PR_SET_PDEATHSIG for the children, the
  watchdog for the grandchild).
* A pytest run whose real-VM rig fails, in a test and in its set-up ("did
  not boot within 120 s"), has no guestha process and no domain of it
  left when its next test starts (the fixtures' teardown).

Polls end as soon as what they wait for is there; their deadlines are
generous upper bounds, not measurements.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from guestha.testing import processes as procs
from guestha.testing.wait import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

pytestmark = [pytest.mark.functional]

HARNESS = textwrap.dedent("""\
    # a harness: the functional tests' process helpers, as a test uses them
    import json, os, sys, time
    from guestha.testing import agent_harness, child_processes, server_harness
    from guestha.testing import processes as proc

    workdir, url = sys.argv[1], sys.argv[2]
    processes = child_processes.Processes()
    guest = agent_harness.GuestProcess(processes, workdir, workdir,
                                       "g1").start()
    server = server_harness.ServerProcess(workdir, url, "ghhc-ctl",
                                     "http://127.0.0.1:9/nova").start()
    # a child of its own, and a daemon (a session of its own, as
    # rabbitmq-server -detached or libvirtd -d make): not ours to kill
    shell = processes.spawn(["sh", "-c", "setsid sleep 601 & sleep 600 & "
                             "wait"], os.path.join(workdir, "sh.log"))
    deadline = time.monotonic() + 10
    grandchildren = []
    while len(grandchildren) < 2 and time.monotonic() < deadline:
        with open("/proc/%d/task/%d/children" % (shell.pid, shell.pid)) as f:
            grandchildren = [int(p) for p in f.read().split()]
    while time.monotonic() < deadline and not all(
            proc.cmdline(p).startswith("sleep") for p in grandchildren):
        pass
    daemon = [p for p in grandchildren if proc.cmdline(p) == "sleep 601"]
    print(json.dumps({"token": proc.owner_token(),
                      "children": [guest.proc.pid, server.proc.pid,
                                   shell.pid],
                      "grandchildren": [p for p in grandchildren
                                        if p not in daemon],
                      "daemon": daemon}), flush=True)
    time.sleep(600)
    """)


def _alive(pid):
    return procs.start_time(pid) is not None


def test_a_killed_harness_takes_its_processes_with_it(tmp_path, rabbit_vhost):
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    # short: the guest daemon's socket path must fit in 107 bytes
    workdir = tempfile.mkdtemp(prefix="ghhc-", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(str(tmp_path / "err"), "wb") as err:
        harness = procs.spawn(
            [sys.executable, "-W", "ignore", str(script), workdir,
             rabbit_vhost], stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
            env=env)
    started = None
    try:
        line = harness.stdout.readline()
        assert line, "the harness did not start:\n%s" % (
            tmp_path / "err").read_text()
        started = json.loads(line)
        everything = started["children"] + started["grandchildren"]
        assert len(started["grandchildren"]) == 1
        assert len(started["daemon"]) == 1
        assert all(_alive(pid) for pid in everything + started["daemon"])
        assert sorted(procs.owned_by(started["token"])) == sorted(everything)
        watchdogs = _watchdogs_of(started["token"])
        assert len(watchdogs) == 1

        harness.send_signal(signal.SIGKILL)
        harness.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in everything), 10,
                   "the harness's processes to die with it: %s" % [
                       "%d %s" % (pid, procs.cmdline(pid))
                       for pid in everything if _alive(pid)])
        assert procs.owned_by(started["token"]) == []
        # the watchdog is no leftover either
        wait_until(lambda: not any(_alive(pid) for pid in watchdogs), 10,
                   "the watchdog to end")
        # and the daemon was not the harness's to kill
        assert all(_alive(pid) for pid in started["daemon"])
    finally:
        procs.kill(harness)
        for pid in started["daemon"] if started else []:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def _watchdogs_of(token):
    found = []
    for pid in procs._pids():
        argv = procs.cmdline(pid)
        if "guestha.testing.processes watch %s" % token in argv:
            found.append(pid)
    return found


# -- a failing real-VM test ---------------------------------------------------

FAILS_IN_TEST = textwrap.dedent("""\
    from tests.functional.test_real_vm import rig  # noqa: F401 (fixture)


    def test_fails_with_the_rig_up(rig):
        assert rig.agent.proc.poll() is None and rig.vm.is_active()
        assert False, "a failing real-VM test"
    """)

FAILS_IN_SETUP = textwrap.dedent("""\
    import pytest

    from tests.functional import test_real_vm
    from tests.functional.test_real_vm import rig  # noqa: F401 (fixture)


    @pytest.fixture(scope="module", autouse=True)
    def no_boot():
        # the VM "does not boot": what a checkout under /tmp used to do
        test_real_vm.BOOT_TIMEOUT = 0.5
        yield
        test_real_vm.BOOT_TIMEOUT = 120.0


    def test_never_runs(rig):
        pass
    """)

CHECK = textwrap.dedent("""\
    import json, os
    from guestha.testing import guest_vms as vm, processes as proc


    def rig_processes():
        # also without our mark: agents and servers of a rig's work
        # directory (tests/functional/test_real_vm.py) started after us
        me = int(proc.start_time(os.getpid()))
        found = []
        for pid in proc._pids():
            argv = proc.cmdline(pid)
            started = proc.start_time(pid)
            if (started and int(started) >= me and "guestha.cmd." in argv
                    and " /tmp/ghrv-" in argv):
                found.append("%d %s" % (pid, argv))
        return found


    def test_nothing_left(request):
        token = proc.owner_token()
        conn = vm.connect()
        try:
            domains = [d.name() for d in conn.listAllDomains(0)
                       if d.name().startswith("%s%d-" % (vm.PREFIX,
                                                        os.getpid()))]
        finally:
            conn.close()
        with open(os.environ["GHHC_OUT"], "a") as f:
            f.write(json.dumps({"module": request.module.__name__,
                                "processes": sorted(set([
                                    "%d %s" % (p, proc.cmdline(p))
                                    for p in proc.owned_by(token)]
                                    + rig_processes())),
                                "domains": domains}) + "\\n")
    """)


@pytest.mark.libvirt
@pytest.mark.vm
def test_a_failing_real_vm_test_leaves_nothing_for_the_next_one(tmp_path):
    """An inner pytest run: a real-VM test fails (check), the rig's set-up
    fails (check); each check, the next test, finds no process and no
    domain of the run."""
    if os.geteuid() != 0:
        pytest.skip("the real-VM tests need root")
    from tests.functional import test_real_vm
    test_real_vm.require_qemu()
    files = []
    for name, text in (("test_a_fails_in_test.py", FAILS_IN_TEST),
                       ("test_b_check.py", CHECK),
                       ("test_c_fails_in_setup.py", FAILS_IN_SETUP),
                       ("test_d_check.py", CHECK)):
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    out = tmp_path / "checks.jsonl"
    inner = procs.spawn(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.functional.conftest", "--rootdir", str(tmp_path),
         "-W", "ignore::DeprecationWarning"] + files,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, GHHC_OUT=str(out)))
    try:
        report, _ = inner.communicate(timeout=600)
    finally:
        procs.kill(inner)
    assert inner.returncode == 1, report
    counts = dict((kind, int(n)) for n, kind in re.findall(
        r"(\d+) (failed|passed|errors?)\b", report.splitlines()[-1]))
    assert counts == {"failed": 1, "passed": 2, "error": 1}, report
    assert "did not boot within 0 s" in report, report
    checks = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["module"] for c in checks] == ["test_b_check", "test_d_check"]
    for check in checks:
        assert check["processes"] == [] and check["domains"] == [], checks
