# SPDX-License-Identifier: Apache-2.0
"""The guest daemon benchmark (benchmarks/guest_daemon.py) runs and its
figures make sense.

A short run (1 s warm-up, 3 s measured) of the real script, under this
interpreter, with its JSON output: the daemon answered every challenge of
the window, healthy, its memory is plausible and its CPU a number.  It
checks that the benchmark works, not the brief's targets (a benchmark
measures those, see doc/source/benchmarks.rst).  Standard library only, so
it also runs under Python 3.8 with only pytest installed.
"""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "benchmarks", "guest_daemon.py")


def _run(*extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [x for x in [env.get("PYTHONPATH")] if x])
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--duration", "3", "--warmup", "1",
         "--json"] + list(extra),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60)
    assert proc.returncode == 0, (
        "benchmark failed (status %d):\n%s\n%s"
        % (proc.returncode, proc.stdout, proc.stderr))
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output; stderr:\n%s" % proc.stderr
    report = json.loads(lines[-1])
    report["stderr"] = proc.stderr  # (progress, and the daemon's log
    return report                    # when it did not exit as it should)


def test_benchmark_reports_a_healthy_daemon_and_its_footprint():
    r = _run("--apps", "1")
    # the daemon was challenged and answered, healthy, every time
    assert r["challenges_sent"] > 0
    assert r["answered"] > 0
    assert r["answered_healthy"] == r["answered"]
    assert r["missed"] == 0
    assert r["missed_whole_run"] == 0
    assert not r["daemon_died"]
    # the application answered the daemon's checks
    assert r["app_checks_answered"] > 0
    # memory: sampled, positive, plausible for a small Python process
    assert r["rss_samples"] >= 2
    for key in ("rss_avg_mib", "rss_peak_mib", "vmhwm_mib"):
        assert isinstance(r[key], (int, float)), key
        assert 0 < r[key] < 100, (key, r[key])
    assert r["rss_avg_mib"] <= r["rss_peak_mib"] <= r["vmhwm_mib"]
    # CPU: a number, not negative
    for key in ("daemon_cpu_pct", "hooks_cpu_pct"):
        value = r[key]
        assert isinstance(value, (int, float)) and not isinstance(
            value, bool), key
        assert math.isfinite(value) and value >= 0, (key, value)
    # round trips were measured
    assert 0 < r["rtt_p50_ms"] <= r["rtt_p99_ms"] <= r["rtt_max_ms"]
    # and the daemon stopped cleanly on SIGTERM, telling the host
    assert r["exit_received"], r["stderr"]
    assert r["daemon_returncode"] == 0
    assert r["machine"]["daemon_python"] == "%d.%d.%d" % sys.version_info[:3]
