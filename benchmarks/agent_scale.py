# SPDX-License-Identifier: Apache-2.0
"""How many instances one compute agent monitors, and at what cost.

    .venv/bin/python benchmarks/agent_scale.py --instances 1000

A benchmark, not a test: it starts the real ``guestha-agent`` process
against real RabbitMQ and libvirtd and measures it.

1. A fresh RabbitMQ vhost (deleted at the end), and the functional tests'
   controller stub (``guestha/testing/controller_stub.py``) on it, which
   records every fault the agent reports.
2. ``--instances`` domains named ``ghbench-<i>`` on libvirt's test driver
   served by libvirtd (``test+unix:///default``: one state shared by every
   connection), each with a guestha channel whose socket is in a temporary
   directory.  The test driver runs no guest: it only keeps the XML and the
   state, which is all the agent reads.
3. ``--farms`` simulated-guest processes
   (``python -m guestha_guest.testing.guestfarm``)
   listening on those sockets, as QEMU would, each guest running the real
   guest-side protocol and answering every challenge at once, healthy.
   They serve this benchmark's agent only: the test driver's state is
   shared, so agents of functional tests running meanwhile see these
   domains too, and connect to their channels.
4. The agent (``python -m guestha.cmd.agent``) with hot-plug off.  The
   benchmark waits until every ``ghbench-*`` instance is MONITORED (the
   time it takes is a result), lets it settle for ``--settle`` seconds, and
   then measures for ``--duration`` seconds: answered challenges per second
   (the agent's status counter), the challenge round trip (the status's
   ``rtt_ms``, sampled every ``--status-every`` seconds), missed
   challenges, faults received by the controller stub (every one is a false
   alarm: the guests are healthy), the agent's CPU (``/proc/<pid>/stat``)
   and RSS (``/proc/<pid>/status``, every second), and the farms' CPU.

It prints a table and, last, one line of JSON.  A run in which an instance
is not MONITORED at the end, or libvirtd restarted (which resets the test
driver), is not valid: it says so and exits with status 2.

Everything is removed at the end, also after an error, Ctrl-C or SIGTERM:
the processes, every ``ghbench-*`` domain, the vhost and the temporary
directory (``--keep`` leaves the domains and the directory).  If the
benchmark is killed outright its children get SIGTERM, and the next run, or
``--cleanup``, removes the domains and the vhost.  Run one benchmark at a
time per libvirtd.

``--profile FILE`` runs the agent under cProfile, timed by CPU time, and
writes the statistics of its main thread (the I/O loop) to FILE; the
figures of such a run are inflated by the profiler.
"""

import argparse
import collections
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import libvirt  # noqa: E402

from benchmarks import support  # noqa: E402
from benchmarks.support import cpu_seconds  # noqa: E402
from benchmarks.support import memory_kib  # noqa: E402
from benchmarks.support import rabbitmqctl  # noqa: E402
from guestha.agent import status as agent_status  # noqa: E402
from guestha.testing import processes as procs  # noqa: E402

LIBVIRT_URI = "test+unix:///default"
PREFIX = "ghbench-"
BROKER = "127.0.0.1:5672"
BROKER_USER = "guest"
BROKER_PASSWORD = "guest"
CHANNEL_NAME = "org.openstack.guestha.0"
GUESTS_PER_FARM = 1250

DOMAIN_XML = """<domain type='test'>
  <name>%(name)s</name><uuid>%(uuid)s</uuid>
  <memory unit='KiB'>8192</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='%(path)s'/>
      <target type='virtio' name='%(channel)s'/>
    </channel>
  </devices>
</domain>"""

AGENT_CONF = """[DEFAULT]
transport_url = %(url)s
debug = false
log_file = %(log)s
default_log_levels = %(levels)s

[agent]
host = ghbench-host
state_dir = %(dir)s/state
socket_dir = %(dir)s/hotplug
status_socket = %(dir)s/agent.sock
hotplug = false
min_interval_ms = 100

[libvirt]
connection_uri = %(uri)s
"""


# The agent under cProfile, timed by the CPU time of the profiled thread
# (the main thread: the I/O loop), not by the wall clock, so that waiting in
# select() or being descheduled on a busy machine counts for nothing.
# argv: the output file, then the agent's arguments.
PROFILED_AGENT = """
import cProfile, runpy, sys, time
out = sys.argv[1]
sys.argv = ["guestha-agent"] + sys.argv[2:]
import signal
profile = cProfile.Profile(time.thread_time)
# the benchmark sends SIGUSR1 when its measurement starts: only that
# window is profiled (the handler runs in the main thread, the I/O loop)
signal.signal(signal.SIGUSR1, lambda signo, frame: profile.enable())
try:
    runpy.run_module("guestha.cmd.agent", run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


# the agent logs at WARNING: per-instance INFO lines would cost it time
LOG_LEVELS = ",".join("%s=WARNING" % name for name in (
    "guestha", "oslo_messaging", "oslo.messaging", "amqp", "kombu",
    "stevedore", "oslo_config"))


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop and clean up."""


def log(fmt, *args):
    support.log(fmt, *args, stream=sys.stdout)


# -- processes ---------------------------------------------------------------

def spawn(argv, stdout, stderr, env=None):
    # guestha/testing/processes.py: our own session, so that a Ctrl-C reaches
    # the benchmark only and it stops the children in order; and the child dies
    # with the benchmark however that ends
    return procs.spawn(argv, cwd=REPO, stdout=stdout, stderr=stderr,
                       env=env)


def wait_ready(proc, what, timeout):
    """Wait for the child's ``ready`` line on its stdout (a pipe)."""
    result = {}

    def read():
        result["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if result.get("line", b"").strip() != b"ready":
        raise RuntimeError("%s did not start (exit status %s, said %r)"
                           % (what, proc.poll(), result.get("line")))


def stop(proc, what, timeout=20.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log("%s did not stop within %.0f s: killing it", what, timeout)
        proc.kill()
        proc.wait()


def thread_cpu_seconds(pid):
    """{tid: utime + stime} of every thread of a process (the main thread,
    the agent's I/O loop, has tid == pid)."""
    result = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        result[int(tid)] = ((int(fields[11]) + int(fields[12]))
                            / support.CLK_TCK)
    return result


def host_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class RssSampler(threading.Thread):
    """VmRSS of some processes, every second."""

    def __init__(self, pids):
        super(RssSampler, self).__init__(daemon=True)
        self.pids = pids
        self.samples = collections.defaultdict(list)
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(1.0):
            self.sample()

    def sample(self):
        for name, pid in self.pids.items():
            try:
                self.samples[name].append(memory_kib(pid))
            except OSError:
                pass

    def stop(self):
        self._done.set()
        self.join()


# -- libvirt -----------------------------------------------------------------

def libvirtd_pid():
    """The pid of libvirtd, to notice a restart (which resets the test
    driver: every domain is gone), or None."""
    try:
        out = subprocess.run(["pidof", "libvirtd"], stdout=subprocess.PIPE,
                             universal_newlines=True).stdout.split()
    except OSError:
        return None
    return int(out[0]) if out else None


def open_libvirt():
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt.open(LIBVIRT_URI)


def remove_domains(conn):
    """Destroy and undefine every ghbench-* domain; returns how many."""
    removed = 0
    for dom in conn.listAllDomains(0):
        try:
            if not dom.name().startswith(PREFIX):
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            removed += 1
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                log("cannot remove domain %s: %s", dom.name(), exc)
    return removed


def create_domains(conn, paths):
    uuids = []
    last = time.monotonic()
    for i, path in enumerate(paths):
        dom_uuid = str(uuid.uuid4())
        dom = conn.defineXML(DOMAIN_XML % {
            "name": "%s%d" % (PREFIX, i), "uuid": dom_uuid, "path": path,
            "channel": CHANNEL_NAME})
        dom.create()
        uuids.append(dom_uuid)
        if time.monotonic() - last >= 3.0:
            last = time.monotonic()
            log("  %d/%d domains defined and started", i + 1, len(paths))
    return uuids


# -- the agent's status ------------------------------------------------------

def fetch_status(path):
    started = time.monotonic()
    doc = agent_status.fetch(path, timeout=30.0)
    return doc, time.monotonic() - started


def bench_instances(doc):
    return [i for i in doc["instances"]
            if (i.get("name") or "").startswith(PREFIX)]


def counter_totals(instances):
    totals = collections.Counter()
    for inst in instances:
        totals.update(inst["counters"])
    return totals


# -- the run -----------------------------------------------------------------

class Bench(object):
    def __init__(self, args):
        self.args = args
        self.dir = None
        self.vhost = None
        self.stub = None
        self.farms = []
        self.agent = None
        self.conn = None
        self.domains_created = False
        self.uuids = set()
        self.result = {}
        self.files = []  # logs of the children, closed at the end

    def open_log(self, name):
        f = open(os.path.join(self.dir, name), "wb")
        self.files.append(f)
        return f

    def run(self):
        args = self.args
        n = args.instances
        self.conn = open_libvirt()
        self.result["libvirtd_pid"] = libvirtd_pid()
        leftover = remove_domains(self.conn)
        if leftover:
            log("removed %d leftover %s* domain(s) of an earlier run",
                leftover, PREFIX)
        self.dir = tempfile.mkdtemp(prefix=PREFIX)
        os.makedirs(os.path.join(self.dir, "ch"))
        log("working directory %s", self.dir)

        # 1. broker and controller stub
        self.vhost = PREFIX + uuid.uuid4().hex[:12]
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, BROKER_USER,
                    ".*", ".*", ".*")
        url = "rabbit://%s:%s@%s/%s" % (BROKER_USER, BROKER_PASSWORD,
                                        BROKER, self.vhost)
        self.events_path = os.path.join(self.dir, "events.jsonl")
        self.stub = spawn([sys.executable, "-m",
                           "guestha.testing.controller_stub",
                           "--url", url, "--out", self.events_path],
                          subprocess.PIPE, self.open_log("stub.log"))
        wait_ready(self.stub, "the controller stub", 60)
        log("vhost %s, controller stub pid %d", self.vhost, self.stub.pid)

        # 2. domains
        paths = [os.path.join(self.dir, "ch", "%d.sock" % i)
                 for i in range(n)]
        started = time.monotonic()
        self.domains_created = True
        self.uuids = set(create_domains(self.conn, paths))
        self.result["domains_start_s"] = round(time.monotonic() - started, 2)
        log("%d domains defined and started in %.1f s", n,
            self.result["domains_start_s"])

        # 3. guest farms, serving only our agent (its config file's path
        # is in its command line)
        conf_path = os.path.join(self.dir, "agent.conf")
        farms = args.farms or max(1, math.ceil(n / GUESTS_PER_FARM))
        started = time.monotonic()
        for k in range(farms):
            chunk = paths[k::farms]
            if not chunk:
                continue
            paths_file = os.path.join(self.dir, "farm-%d.paths" % k)
            with open(paths_file, "w") as f:
                f.write("\n".join(chunk) + "\n")
            proc = spawn([sys.executable, "-m",
                          "guestha_guest.testing.guestfarm",
                          "--paths-file", paths_file,
                          "--interval-ms", str(args.interval_ms),
                          "--owner", conf_path],
                         subprocess.PIPE, self.open_log("farm-%d.log" % k))
            self.farms.append(proc)
            wait_ready(proc, "guest farm %d" % k, 60)
        self.result["farms"] = len(self.farms)
        log("%d guest farm(s) listening (%s guests each) in %.1f s",
            len(self.farms), "/".join(
                str(len(paths[k::farms])) for k in range(len(self.farms))),
            time.monotonic() - started)

        # 4. the agent
        self.agent_log = os.path.join(self.dir, "agent.log")
        with open(conf_path, "w") as f:
            f.write(AGENT_CONF % {"url": url, "log": self.agent_log,
                                  "dir": self.dir, "uri": LIBVIRT_URI,
                                  "levels": LOG_LEVELS})
        self.status_path = os.path.join(self.dir, "agent.sock")
        argv = [sys.executable]
        if args.profile:
            argv += ["-c", PROFILED_AGENT, os.path.abspath(args.profile)]
        else:
            argv += ["-m", "guestha.cmd.agent"]
        argv += ["--config-file", conf_path]
        agent_started = time.monotonic()
        self.agent = spawn(argv, self.open_log("agent.out"),
                           subprocess.STDOUT)
        log("agent pid %d started", self.agent.pid)
        self.wait_monitored(agent_started)

        # 5. measure
        if args.settle > 0:
            log("settling for %.0f s", args.settle)
            self.sleep(args.settle)
        self.measure()

    def sleep(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.check_alive()
            time.sleep(min(left, 1.0))

    def check_alive(self):
        for proc, what in ([(self.agent, "the agent"),
                            (self.stub, "the controller stub")]
                           + [(f, "a guest farm") for f in self.farms]):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("%s exited with status %s"
                                   % (what, proc.returncode))

    def wait_monitored(self, agent_started):
        n = self.args.instances
        timeout = self.args.ready_timeout or max(120.0, 0.05 * n)
        first_status = None
        last_line = 0.0
        while True:
            self.check_alive()
            elapsed = time.monotonic() - agent_started
            if elapsed > timeout:
                raise RuntimeError("not all instances MONITORED after %.0f s"
                                   % timeout)
            try:
                doc, _ = fetch_status(self.status_path)
            except (OSError, ValueError):
                time.sleep(0.5)
                continue
            if first_status is None:
                first_status = elapsed
            mine = bench_instances(doc)
            states = collections.Counter(i["state"] for i in mine)
            monitored = states.get("MONITORED", 0)
            if monitored >= n or time.monotonic() - last_line >= 3.0:
                last_line = time.monotonic()
                others = ", ".join("%s %d" % kv for kv in sorted(
                    states.items()) if kv[0] != "MONITORED")
                log("  %5.1f s  %d/%d monitored%s", elapsed, monitored, n,
                    " (%s)" % others if others else "")
            if monitored >= n:
                break
            time.sleep(1.0)
        self.result["status_up_s"] = round(first_status, 2)
        self.result["all_monitored_s"] = round(
            time.monotonic() - agent_started, 2)
        self.result["rampup_agent_cpu_s"] = round(
            cpu_seconds(self.agent.pid), 2)
        log("all %d instances MONITORED %.1f s after the agent started",
            n, self.result["all_monitored_s"])

    def measure(self):
        args = self.args
        agent_pid = self.agent.pid
        farm_pids = [f.pid for f in self.farms]
        pids = {"agent": agent_pid}
        pids.update(("farm-%d" % k, pid) for k, pid in enumerate(farm_pids))
        sampler = RssSampler(pids)

        doc0, fetch0 = fetch_status(self.status_path)
        t0 = time.monotonic()
        agent_cpu0 = cpu_seconds(agent_pid)
        loop_cpu0 = thread_cpu_seconds(agent_pid).get(agent_pid, 0.0)
        farm_cpu0 = [cpu_seconds(p) for p in farm_pids]
        host0 = host_cpu()
        sampler.sample()
        sampler.start()
        log("measuring for %.0f s", args.duration)
        if args.profile:
            self.agent.send_signal(signal.SIGUSR1)

        rtts, fetches = [], [fetch0]
        deadline = t0 + args.duration
        next_status = t0 + min(args.status_every, args.duration / 2.0)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            self.check_alive()
            if now >= next_status:
                next_status = now + args.status_every
                doc, took = fetch_status(self.status_path)
                fetches.append(took)
                if doc.get("rtt_ms"):
                    rtts.append(doc["rtt_ms"])
                    log("  %4.0f s  rtt p50 %.2f ms  p99 %.2f ms  max "
                        "%.2f ms (latest %d answers)", now - t0,
                        doc["rtt_ms"]["p50"], doc["rtt_ms"]["p99"],
                        doc["rtt_ms"]["max"], doc["rtt_ms"]["samples"])
            time.sleep(min(0.5, max(0.0, deadline - now)))

        t1 = time.monotonic()
        agent_cpu1 = cpu_seconds(agent_pid)
        loop_cpu1 = thread_cpu_seconds(agent_pid).get(agent_pid, 0.0)
        farm_cpu1 = [cpu_seconds(p) for p in farm_pids]
        host1 = host_cpu()
        sampler.stop()
        doc1, took = fetch_status(self.status_path)
        fetches.append(took)
        if doc1.get("rtt_ms"):
            rtts.append(doc1["rtt_ms"])
        window = t1 - t0

        n = args.instances
        c0 = counter_totals(bench_instances(doc0))
        mine1 = bench_instances(doc1)
        c1 = counter_totals(mine1)
        delta = {k: c1[k] - c0[k] for k in c1}
        # faults the controller received: give the outbox a moment first
        time.sleep(2.0)
        faults, foreign_faults = self.stub_faults()
        foreign = len(doc1["instances"]) - len(mine1)
        rss = sampler.samples["agent"]
        farm_rss = [max(sampler.samples["farm-%d" % k] or [0])
                    for k in range(len(farm_pids))]
        host_busy = (host1[0] - host0[0]) / max(1, host1[1] - host0[1])
        problems = []
        monitored = sum(1 for i in mine1 if i["state"] == "MONITORED")
        if monitored < n:
            problems.append("only %d/%d instances MONITORED at the end"
                            % (monitored, n))
        if libvirtd_pid() != self.result["libvirtd_pid"]:
            problems.append("libvirtd restarted during the run (the test "
                            "driver's domains were reset)")
        r = self.result
        r["valid"] = not problems
        r["problems"] = problems
        r.update({
            "instances": n,
            "interval_ms": args.interval_ms,
            "duration_s": round(window, 1),
            "expected_per_s": round(n * 1000.0 / args.interval_ms, 1),
            "challenges_per_s": round(delta.get("answers", 0) / window, 1),
            "agent_answers_per_s": round(
                (doc1["answers"] - doc0["answers"]) / window, 1),
            "challenges_sent_per_s": round(
                delta.get("challenges", 0) / window, 1),
            "missed": delta.get("missed", 0),
            "stale": delta.get("stale", 0),
            "resets": delta.get("resets", 0),
            "monitored_at_end": monitored,
            # each sample covers the latest answers (20,000 at most):
            # the median sample, and the worst one
            "rtt_p50_ms": _median(s["p50"] for s in rtts),
            "rtt_p99_ms": _median(s["p99"] for s in rtts),
            "rtt_p99_worst_ms": _worst(s["p99"] for s in rtts),
            "rtt_max_ms": _worst(s["max"] for s in rtts),
            "rtt_samples": len(rtts),
            "false_alarms": faults,
            "foreign_instances": foreign,
            "foreign_faults": foreign_faults,
            "agent_faults_counted": c1.get("faults", 0),
            "agent_cpu_pct": round(
                100.0 * (agent_cpu1 - agent_cpu0) / window, 2),
            "agent_loop_cpu_pct": round(
                100.0 * (loop_cpu1 - loop_cpu0) / window, 2),
            "agent_rss_avg_mib": round(statistics.mean(rss) / 1024.0, 1),
            "agent_rss_peak_mib": round(max(rss) / 1024.0, 1),
            "agent_hwm_mib": round(memory_kib(agent_pid, "VmHWM") / 1024.0,
                                   1),
            "farm_cpu_pct": round(100.0 * sum(
                b - a for a, b in zip(farm_cpu0, farm_cpu1)) / window, 2),
            "farm_rss_peak_mib": round(max(farm_rss or [0]) / 1024.0, 1),
            "host_cpu_busy_pct": round(100.0 * host_busy, 1),
            "status_fetch_ms": round(1000.0 * statistics.mean(fetches), 1),
            "libvirt_connected": doc1.get("libvirt_connected"),
            "cores": os.cpu_count(),
        })

    def stub_faults(self):
        """Faults the controller stub received for our instances, and for
        others (domains of concurrent tests on the shared test driver)."""
        ours = others = 0
        try:
            with open(self.events_path) as f:
                for line in f:
                    record = json.loads(line)
                    event = record["event"]
                    if event.get("type") != "fault" or record["dup"]:
                        continue
                    if event.get("instance") in self.uuids:
                        ours += 1
                    else:
                        others += 1
        except FileNotFoundError:
            pass
        return ours, others

    # -- clean-up ---------------------------------------------------------

    def cleanup(self):
        keep = self.args.keep
        for what, step in (("agent", self._stop_agent),
                           ("guest farms", self._stop_farms),
                           ("controller stub",
                            lambda: stop(self.stub, "the controller stub")),
                           ("log files", self._close_files),
                           ("domains", lambda: None if keep
                            else self._remove_domains()),
                           ("vhost", self._delete_vhost),
                           ("directory", lambda: None if keep
                            else shutil.rmtree(self.dir or "/nonexistent",
                                               ignore_errors=True))):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest
                log("clean-up of the %s failed: %s", what, exc)

        if keep:
            log("kept the %s* domains and %s", PREFIX, self.dir)

    def _close_files(self):
        for f in self.files:
            f.close()

    def _stop_agent(self):
        stop(self.agent, "the agent")
        if self.agent is not None and self.agent.returncode not in (0, None):
            log("the agent exited with status %s; the end of its log:",
                self.agent.returncode)
            self._tail(self.agent_log)
            self._tail(os.path.join(self.dir, "agent.out"))

    def _stop_farms(self):
        for proc in self.farms:
            stop(proc, "a guest farm")
            try:
                report = proc.stdout.read().decode().strip()
            except (OSError, ValueError):
                report = ""
            if report and self.args.verbose:
                log("farm %d: %s", proc.pid, report)

    def _remove_domains(self):
        if not self.domains_created:
            return
        started = time.monotonic()
        try:
            removed = remove_domains(self.conn)
        except libvirt.libvirtError:
            # the connection broke (libvirtd restarted): a new one
            removed = remove_domains(open_libvirt())
        log("removed %d domain(s) in %.1f s", removed,
            time.monotonic() - started)

    def _delete_vhost(self):
        if self.vhost:
            rabbitmqctl("delete_vhost", self.vhost)

    @staticmethod
    def _tail(path, lines=20):
        try:
            with open(path, errors="replace") as f:
                for line in f.readlines()[-lines:]:
                    print("    " + line.rstrip())
        except OSError:
            pass


# -- output ------------------------------------------------------------------

def _median(values):
    values = list(values)
    return round(statistics.median(values), 2) if values else None


def _worst(values):
    values = list(values)
    return round(max(values), 2) if values else None


def machine():
    with open("/proc/meminfo") as f:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    return dict(support.machine(),
                ram_gib=round(mem_kib / 1024.0 / 1024.0, 1))


def print_table(r):
    rows = [
        ("instances", "%d (interval %d ms, %d guest farm(s))" % (
            r["instances"], r["interval_ms"], r["farms"])),
        ("domains defined+started", "%.1f s" % r["domains_start_s"]),
        ("agent start to all MONITORED", "%.1f s (status socket up after "
         "%.1f s; agent CPU so far %.1f s)" % (
             r["all_monitored_s"], r["status_up_s"],
             r["rampup_agent_cpu_s"])),
        ("measured for", "%.1f s" % r["duration_s"]),
        ("challenges answered/s", "%.1f (expected %.1f; sent %.1f/s; all "
         "instances %.1f/s)" % (
             r["challenges_per_s"], r["expected_per_s"],
             r["challenges_sent_per_s"], r["agent_answers_per_s"])),
        ("challenge RTT p50 / p99", "%s / %s ms (median of %d samples; "
         "worst p99 %s ms, max %s ms)" % (
             r["rtt_p50_ms"], r["rtt_p99_ms"], r["rtt_samples"],
             r["rtt_p99_worst_ms"], r["rtt_max_ms"])),
        ("missed challenges", "%d (stale %d, channel resets %d)" % (
            r["missed"], r["stale"], r["resets"])),
        ("false alarms (faults at the controller)", "%d (agent counted %d)"
         % (r["false_alarms"], r["agent_faults_counted"])),
        ("monitored at the end", "%d/%d" % (r["monitored_at_end"],
                                            r["instances"])),
        ("other domains the agent saw", "%d (faults for them: %d; domains "
         "of concurrent tests on the shared test driver)" % (
             r["foreign_instances"], r["foreign_faults"])),
        ("agent CPU", "%.2f %% of one core (I/O loop thread %.2f %%, the "
         "other threads %.2f %%)" % (
             r["agent_cpu_pct"], r["agent_loop_cpu_pct"],
             r["agent_cpu_pct"] - r["agent_loop_cpu_pct"])),
        ("agent RSS avg / peak", "%.1f / %.1f MiB (VmHWM %.1f MiB)" % (
            r["agent_rss_avg_mib"], r["agent_rss_peak_mib"],
            r["agent_hwm_mib"])),
        ("guest farms CPU", "%.2f %% of one core (peak RSS %.1f MiB per "
         "farm)" % (r["farm_cpu_pct"], r["farm_rss_peak_mib"])),
        ("whole machine busy", "%.1f %% of %d cores" % (
            r["host_cpu_busy_pct"], r["cores"])),
        ("status fetch", "%.1f ms on average" % r["status_fetch_ms"]),
    ]
    support.print_rows(rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure the guestha compute agent with many simulated "
                    "instances (libvirt test driver, real RabbitMQ).")
    parser.add_argument("--instances", type=int, default=100,
                        help="instances to monitor (default 100)")
    parser.add_argument("--interval-ms", type=int, default=1000,
                        help="heartbeat interval the guests ask for "
                             "(default 1000)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds measured once all are MONITORED "
                             "(default 60)")
    parser.add_argument("--farms", type=int, default=0,
                        help="guest farm processes (default: one per %d "
                             "instances)" % GUESTS_PER_FARM)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between all MONITORED and the "
                             "measurement (default 5)")
    parser.add_argument("--status-every", type=float, default=20.0,
                        help="seconds between status samples while "
                             "measuring (default 20: each sample's round "
                             "trips are the latest 20,000 answers, 20 s "
                             "at 1,000 instances, so the samples cover "
                             "the run; every fetch costs the agent the "
                             "whole status document, about 10 ms of CPU "
                             "at 1,000 instances)")
    parser.add_argument("--ready-timeout", type=float, default=0,
                        help="seconds to wait for all MONITORED (default "
                             "max(120, 0.05 x instances))")
    parser.add_argument("--keep", action="store_true",
                        help="leave the domains and the working directory")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the agent under cProfile, stats to FILE")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove what an earlier run left: %s* "
                             "domains and vhosts" % PREFIX)
    parser.add_argument("--verbose", action="store_true",
                        help="print the farms' counters at the end")
    return parser.parse_args(argv)


def cleanup_only():
    removed = remove_domains(open_libvirt())
    vhosts = [v for v in rabbitmqctl("list_vhosts", "name").split()
              if v.startswith(PREFIX)]
    for vhost in vhosts:
        rabbitmqctl("delete_vhost", vhost, check=False)
    log("removed %d domain(s) and %d vhost(s)", removed, len(vhosts))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cleanup:
        cleanup_only()
        return 0

    def _interrupted(signum, frame):
        raise Interrupted()

    # SIGINT too: a shell starts background jobs with it ignored
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    info = machine()
    log("machine: %(nproc)d core(s), %(cpu)s, %(ram_gib).1f GiB, Python "
        "%(python)s, Linux %(kernel)s" % info)
    bench = Bench(args)
    status = 0
    try:
        bench.run()
    except (KeyboardInterrupt, Interrupted):
        log("interrupted")
        status = 130
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        log("benchmark failed: %s", exc)
        status = 1
    finally:
        # a second Ctrl-C must not leave domains behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        bench.cleanup()
    if status == 0:
        print_table(bench.result)
        for problem in bench.result["problems"]:
            log("NOT A VALID MEASUREMENT: %s", problem)
        support.print_json(dict(bench.result, machine=info), sort_keys=True)
        if not bench.result["valid"]:
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
