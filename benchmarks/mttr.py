# SPDX-License-Identifier: Apache-2.0
"""Time to repair (MTTR) on the real cloud: a hung guest daemon until the
instance is healthy again, through guestha's reboot and through Masakari.

    bash tools/cloud.sh up
    .venv/bin/python -m benchmarks.mttr [--samples 10] [--path reboot]

A benchmark, not a test: it prints a table, then one line of JSON.  Runs
on the cloud of tools/cloud.sh (brought up if it is not) with the real
guestha-agent and guestha-server of guestha/testing/cloud_rig.py.

Per sample: the instance is MONITORED and answering healthy; its guest
daemon is frozen (SIGSTOP through qemu-ga's guest-exec: the daemon hangs,
the guest does not); the clock runs until the agent sees the guest
daemon register again and answer healthy.  Also recorded: when the
``missed`` fault reached the controller's sink.

``reboot``
    ``[actions] allowed_max = reboot`` (the cap raised for the run): the
    controller reboots the server HARD through Nova (the guest stopped
    answering, so a soft reboot would be ignored).
``masakari``
    the masakari sink (``allowed_max = log``), the server's metadata
    ``HA_Enabled=True``, the compute host in the harness's segment:
    masakari-engine stops and starts the server.

The server boots once per path; the cloud and everything the benchmark
started is stopped at the end (the cloud only if the benchmark brought it
up, unless ``--keep-cloud``).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.support import percentile  # noqa: E402
from guestha.testing import cloud_rig as riglib  # noqa: E402


def sample(gha, server, timeout):
    """One hang and repair: (fault seen s, healthy again s)."""
    gha.wait_monitored(server.id, timeout=timeout)
    since = time.time()
    regs = gha.agent.registrations(server.id)
    t0 = time.monotonic()
    riglib.guest_ok(server.id, "kill -STOP $(guestha-daemon-pid)")
    riglib.wait_for(lambda: gha.faults(server.id, since), "the fault",
                    timeout=60, interval=0.05)
    fault_s = time.monotonic() - t0

    def healthy():
        inst = gha.agent.instance(server.id)
        return (gha.agent.registrations(server.id) > regs and inst
                and inst["state"] == "MONITORED"
                and inst["counters"]["answers"] > 0
                and (inst.get("last_answer") or {}).get("healthy"))

    riglib.wait_for(healthy, "the instance healthy again", timeout=timeout,
                    interval=0.05, diag=lambda: gha.diagnostics(server.id))
    return fault_s, time.monotonic() - t0


def run_path(gha, path, samples, timeout, say):
    if path == "masakari":
        gha.start_server(masakari=True, max_actions=1000)
        server = gha.create("mttr-mk", metadata={"HA_Enabled": "True"})
    else:
        gha.start_server(max_actions=1000)
        server = gha.create("mttr-rb")
    server, _ = gha.wait_active(server)
    gha.wait_monitored(server.id)
    results = []
    for i in range(samples):
        fault_s, repair_s = sample(gha, server, timeout)
        results.append((fault_s, repair_s))
        say("%-8s sample %2d: fault after %5.1f s, healthy again after "
            "%5.1f s" % (path, i + 1, fault_s, repair_s))
        if path == "masakari":
            # Masakari refuses a notification equal to one of the last
            # duplicate_notification_detection_interval seconds (5 s in
            # the harness, 180 s by default): let the last one finish
            gha.wait_active(server)
            ha = gha.conn.instance_ha
            riglib.wait_for(lambda ha=ha: all(
                n.status in ("finished", "ignored", "failed")
                for n in ha.notifications()
                if (n.payload or {}).get("instance_uuid") == server.id),
                "Masakari's notifications finished", timeout=120,
                interval=1)
            time.sleep(5)
    gha.delete(server)
    repairs = [r for _, r in results]
    faults = [f for f, _ in results]
    return {"samples": len(results),
            "mttr_p50_s": round(percentile(repairs, 50), 1),
            "mttr_p99_s": round(percentile(repairs, 99), 1),
            "mttr_min_s": round(min(repairs), 1),
            "mttr_max_s": round(max(repairs), 1),
            "fault_p50_s": round(percentile(faults, 50), 1),
            "fault_p99_s": round(percentile(faults, 99), 1),
            "raw": [[round(f, 2), round(r, 2)] for f, r in results]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--path", choices=["reboot", "masakari", "both"],
                        default="both")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="longest wait for one repair, s")
    parser.add_argument("--keep-cloud", action="store_true")
    args = parser.parse_args(argv)

    def say(msg):
        print(msg, flush=True)

    was_up = riglib.cloud_status()["services"]["nova-compute"]["running"]
    if not was_up:
        say("bringing the cloud up (tools/cloud.sh up) ...")
        riglib.cloud_sh("up")
    cloud = riglib.Cloud(True)
    gha = riglib.GuestHA(cloud).start()
    report = {"machine": "%d cores, %s" % (os.cpu_count(),
                                           os.uname().release)}
    try:
        paths = ["reboot", "masakari"] if args.path == "both" else [
            args.path]
        for path in paths:
            report[path] = run_path(gha, path, args.samples, args.timeout,
                                    say)
    finally:
        gha.close()
        if not was_up and not args.keep_cloud:
            riglib.cloud_sh("down", check=False)
    say("")
    say("%-9s %7s %9s %9s %10s" % ("path", "samples", "MTTR p50",
                                   "MTTR p99", "fault p50"))
    for path in ("reboot", "masakari"):
        if path in report:
            r = report[path]
            say("%-9s %7d %8.1fs %8.1fs %9.1fs" % (
                path, r["samples"], r["mttr_p50_s"], r["mttr_p99_s"],
                r["fault_p50_s"]))
    say(json.dumps(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit("%s\n%s" % (exc, exc.stderr))
