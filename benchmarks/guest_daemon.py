# SPDX-License-Identifier: Apache-2.0
"""What the guest daemon costs a guest: its CPU and memory at work.

    .venv/bin/python benchmarks/guest_daemon.py
    .venv/bin/python benchmarks/guest_daemon.py --apps 0 --no-hooks
    .venv/bin/python benchmarks/guest_daemon.py --python /usr/bin/python3.8

A benchmark, not a test: it runs the real guest daemon (``python -m
guestha_guest``) as a process of its own and measures that process while
a simulated compute host challenges it with the real protocol.

1. A temporary directory with the daemon's ini file: ``interval_ms`` from
   ``--interval-ms`` (default 1000), log level ``--log-level`` (default
   INFO, the daemon's default), a hook directory holding one health hook
   (``ok``, a shell script that does ``exit 0``; with ``--no-hooks`` the
   directory does not exist, which means no hooks), and the application
   API's socket.  The daemon runs under ``--python`` (default: this
   interpreter) with ``PYTHONPATH`` set to the repository, listening on a
   UNIX socket (``--port unix-listen:PATH``) as QEMU would for a VM's
   channel.  Its log goes to a file in the directory.
2. The compute host's side: ``SimHost`` of the guest package
   (``guestha_guest/testing/simhost.py``), on the daemon's socket, with the
   same ``Connection`` and ``HostHeartbeat`` (``guestha_guest.protocol``)
   the compute agent uses.  It grants the interval the guest asks for,
   challenges every interval and records each answer with its round trip
   (from the challenge's sending to the answer's processing).  It runs in
   this process's main thread.
3. ``--apps`` applications (default 1), each a thread of this process on
   the daemon's application API (``guestha_guest.client.GuestHAClient``),
   registered as critical and answering every health check healthy.  The
   daemon sends its checks after each challenge it answers.  Their CPU,
   like the simulated host's, is this process's, not the daemon's.

Once the guest is registered and every application too, the benchmark
waits ``--warmup`` seconds (default 5) and then measures for
``--duration`` seconds (default 60):

* **CPU**: the daemon's ``utime + stime`` from ``/proc/<pid>/stat`` over
  the window, in percent of one core; and, separately, that of its
  children that ended in the window (``cutime + cstime``: the health
  hooks, which the daemon runs as child processes and reaps);
* **RSS**: ``VmRSS`` from ``/proc/<pid>/status`` every second (average
  and peak), ``VmHWM`` (the peak of the whole run) at the end, and
  ``RssAnon`` / ``RssFile`` at the end;
* **challenges**: sent by the host in the window, answered (healthy and
  unhealthy) and missed (the host's heartbeat timed out), also counted
  over the whole run; the round trip's p50 / p99 (nearest rank) and
  maximum; the checks the applications answered.

It prints a table with the machine (CPU model, Python versions, load
average) and a last line comparing the figures with the brief's targets
(less than 20 MB RSS, less than 0.5% of a core at a 1 s interval): the
RSS target against ``VmHWM``, the CPU target against the daemon process
(the hooks' own CPU is shown beside it).  ``--json`` prints one JSON
document instead.

At the end, also after an error, Ctrl-C or SIGTERM, the applications
unregister, the daemon gets SIGTERM (it sends ``exit`` to the host, which
the benchmark checks) and the directory is removed (``--keep`` leaves
it).  Should the benchmark be killed outright, the daemon gets SIGTERM
(``PR_SET_PDEATHSIG``).  Exit status 1 if the daemon died, could not be
set up, or answered no challenge in the window; 130 when interrupted;
otherwise 0, whether the targets are met or not.

Standard library only, Python 3.8 and newer, like the daemon.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import support  # noqa: E402
from benchmarks.support import cpu_seconds  # noqa: E402
from benchmarks.support import log  # noqa: E402
from benchmarks.support import percentile  # noqa: E402
from guestha.testing import processes as procs  # noqa: E402
from guestha_guest.client import GuestHAClient  # noqa: E402
from guestha_guest.client import GuestHAError  # noqa: E402
from guestha_guest import protocol as p  # noqa: E402
from guestha_guest.protocol import heartbeat as hb  # noqa: E402
from guestha_guest.protocol.session import Send  # noqa: E402
from guestha_guest.testing.simhost import SimHost  # noqa: E402

MIB = 1024.0 * 1024.0
#: The brief's targets for the guest daemon (at a 1 s interval).
TARGET_RSS_BYTES = 20 * 1000 * 1000  # 20 MB
TARGET_CPU_PCT = 0.5
#: An application's check deadline: generous, it answers at once.
APP_DEADLINE_MS = 5000
HOOK = "#!/bin/sh\nexit 0\n"

CONFIG = """\
[guestha]
name = ghbench-guest
interval_ms = %(interval_ms)d
log_level = %(log_level)s

[health]
hook_dir = %(hook_dir)s

[app_api]
enabled = true
socket = %(app_socket)s
"""


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop and clean up."""


class SetupError(Exception):
    """The daemon or an application could not be brought up."""


# -- processes ---------------------------------------------------------------

def proc_status(pid):
    """The ``kB`` fields of ``/proc/<pid>/status``, in bytes."""
    values = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[key] = int(parts[0]) * 1024
            elif key in ("Threads", "voluntary_ctxt_switches",
                         "nonvoluntary_ctxt_switches"):
                values[key] = int(parts[0])
    return values


def sched_seconds(pid):
    """CPU time of ``pid``'s main thread from ``/proc/<pid>/schedstat``
    (nanoseconds, so finer than ``/proc/<pid>/stat``'s clock ticks); the
    daemon has no other thread.  None where schedstats are missing."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def interpreter_version(python):
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=30)
    if out.returncode != 0:
        raise SetupError("%s does not run: %s" % (python, out.stdout.strip()))
    return out.stdout.strip()


def machine():
    return dict(support.machine(),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


# -- the simulated host and applications --------------------------------------

class CountingHost(SimHost):
    """SimHost that also counts (and times) the challenges it sends."""

    def __init__(self, *args, **kwargs):
        self.challenges = []  # monotonic time of each challenge sent
        super().__init__(*args, **kwargs)

    def _apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, Send) and isinstance(out.message, p.Challenge):
                self.challenges.append(time.monotonic())
        super()._apply(outputs, now)

    def is_closed(self):
        return getattr(self, "closed", False)


class App(threading.Thread):
    """An application on the daemon's API answering every check healthy."""

    def __init__(self, socket_path, name):
        super().__init__(name=name, daemon=True)
        self.socket_path = socket_path
        self.app_name = name
        self.checks = 0
        self.registered = threading.Event()
        self.error = None
        self._halt = threading.Event()

    def _health(self, check):
        self.checks += 1
        return True, None

    def run(self):
        try:
            with GuestHAClient(self.socket_path, timeout=5.0,
                               health_callback=self._health) as ha:
                ha.register(self.app_name, APP_DEADLINE_MS, critical=True)
                self.registered.set()
                while not self._halt.is_set():
                    ha.next_event(timeout=0.2)  # answers checks meanwhile
                ha.unregister()
        except (GuestHAError, OSError) as exc:
            self.error = "%s: %s" % (self.app_name, exc)
            self.registered.set()  # wake the waiter, who sees the error

    def stop(self):
        self._halt.set()


# -- the benchmark ------------------------------------------------------------

class Bench(object):
    def __init__(self, args):
        self.args = args
        self.dir = None
        self.proc = None
        self.host = None
        self.apps = []
        self.log_file = None
        self.result = {}

    # set-up

    def _write_config(self):
        self.dir = tempfile.mkdtemp(prefix="ghguestbench-")
        hook_dir = os.path.join(self.dir, "health.d")
        if not self.args.no_hooks:
            os.mkdir(hook_dir)
            hook = os.path.join(hook_dir, "ok")
            with open(hook, "w") as f:
                f.write(HOOK)
            os.chmod(hook, 0o755)
        self.port = os.path.join(self.dir, "guest.sock")
        self.app_socket = os.path.join(self.dir, "app.sock")
        self.config = os.path.join(self.dir, "guestha-guest.ini")
        with open(self.config, "w") as f:
            f.write(CONFIG % {"interval_ms": self.args.interval_ms,
                              "log_level": self.args.log_level,
                              "hook_dir": hook_dir,
                              "app_socket": self.app_socket})

    def _start_daemon(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO] + [x for x in [env.get("PYTHONPATH")] if x])
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.log_file = open(self.log_path, "wb")
        # guestha/testing/processes.py: our own session, so that a Ctrl-C
        # reaches the benchmark only and it stops the daemon itself (SIGTERM);
        # and the daemon dies with the benchmark however that ends
        self.proc = procs.spawn(
            [self.args.python, "-m", "guestha_guest", "--config",
             self.config, "--port", "unix-listen:" + self.port],
            cwd=self.dir, env=env, stdout=self.log_file,
            stderr=subprocess.STDOUT)
        end = time.monotonic() + 20.0
        while not os.path.exists(self.port):
            if self.proc.poll() is not None:
                raise SetupError("the daemon exited with status %s at "
                                 "start" % self.proc.returncode)
            if time.monotonic() > end:
                raise SetupError("the daemon did not listen on %s within "
                                 "20 s" % self.port)
            time.sleep(0.02)

    def _wait(self, seconds, until, what):
        self.host.run(seconds, until=until)
        if not until():
            raise SetupError("%s: not within %.0f s" % (what, seconds))

    def setup(self):
        self._write_config()
        self._start_daemon()
        self.host = CountingHost.connect_unix(self.port, timeout=10.0)
        self._wait(10.0, lambda: bool(self.host.of(hb.Registered)),
                   "the guest's registration")
        for i in range(self.args.apps):
            app = App(self.app_socket, "bench-app-%d" % i)
            app.start()
            self.apps.append(app)
        self._wait(10.0, lambda: all(a.registered.is_set()
                                     for a in self.apps),
                   "the applications' registration")
        errors = [a.error for a in self.apps if a.error]
        if errors:
            raise SetupError("an application failed: %s" % "; ".join(errors))

    # measurement

    def _alive(self):
        return self.proc.poll() is None and not self.host.is_closed()

    def measure(self):
        args = self.args
        self.host.run(args.warmup, until=lambda: not self._alive())
        if not self._alive():
            raise SetupError("the daemon died during the warm-up")
        pid = self.proc.pid
        load_before = os.getloadavg()
        t0 = time.monotonic()
        cpu0, children0 = cpu_seconds(pid, children=True)
        sched0 = sched_seconds(pid)
        switches0 = proc_status(pid)["voluntary_ctxt_switches"]
        checks0 = sum(a.checks for a in self.apps)
        rss = []
        died = False
        end = t0 + args.duration
        k = 1
        while True:
            now = time.monotonic()
            if now >= end:
                break
            try:
                self.host.run(min(t0 + k, end) - now,
                              until=lambda: not self._alive())
            except OSError:  # the daemon's end went away mid-write
                died = True
                break
            if not self._alive():
                died = True
                break
            rss.append(proc_status(pid)["VmRSS"])
            k += 1
        t1 = time.monotonic()
        if died:
            cpu1, children1, sched1 = cpu0, children0, sched0
            status = {}
        else:
            cpu1, children1 = cpu_seconds(pid, children=True)
            sched1 = sched_seconds(pid)
            status = proc_status(pid)
        window = t1 - t0
        sent = sum(1 for t in self.host.challenges if t0 <= t < t1)
        checks = sum(a.checks for a in self.apps) - checks0
        if not died:
            # the fate of the window's last challenge: its answer (or its
            # deadline) comes after the window; the daemon's CPU is read
            self.host.run(self.host.hb.interval + 0.5, until=lambda: (
                self._settled(t0, t1) >= sent or not self._alive()))
        answered, missed = self._outcomes(t0, t1)
        rtts = [o.rtt * 1000.0 for o in answered]
        self.result = {
            "interval_ms": args.interval_ms,
            "granted_interval_ms": self.host.hb.interval_ms,
            "apps": args.apps,
            "hooks": 0 if args.no_hooks else 1,
            "warmup_s": args.warmup,
            "duration_s": round(window, 3),
            "daemon_died": died,
            "daemon_pid": pid,
            "daemon_cpu_s": round(cpu1 - cpu0, 3),
            "daemon_cpu_pct": round(100.0 * (cpu1 - cpu0) / window, 3),
            "daemon_sched_cpu_pct": None if sched0 is None or sched1 is None
            else round(100.0 * (sched1 - sched0) / window, 4),
            "wakeups_per_s": round((status["voluntary_ctxt_switches"]
                                    - switches0) / window, 1) if status
            else None,
            "hooks_cpu_s": round(children1 - children0, 3),
            "hooks_cpu_pct": round(100.0 * (children1 - children0) / window,
                                   3),
            "rss_samples": len(rss),
            "rss_avg_mib": round(sum(rss) / len(rss) / MIB, 2) if rss
            else None,
            "rss_peak_mib": round(max(rss) / MIB, 2) if rss else None,
            "vmhwm_mib": round(status["VmHWM"] / MIB, 2) if status
            else None,
            "rss_anon_mib": round(status.get("RssAnon", 0) / MIB, 2)
            if status else None,
            "rss_file_mib": round(status.get("RssFile", 0) / MIB, 2)
            if status else None,
            "threads": status.get("Threads"),
            "challenges_sent": sent,
            "answered": len(answered),
            "answered_healthy": sum(1 for o in answered if o.healthy),
            "answered_unhealthy": sum(1 for o in answered if not o.healthy),
            "unhealthy_reasons": sorted(set(
                o.reason or "" for o in answered if not o.healthy)),
            "missed": len(missed),
            "rtt_p50_ms": _round(percentile(rtts, 50), 3),
            "rtt_p99_ms": _round(percentile(rtts, 99), 3),
            "rtt_max_ms": _round(max(rtts) if rtts else None, 3),
            "app_checks_answered": checks,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        }

    def _outcomes(self, t0, t1):
        """The answers to, and misses of, the challenges sent in [t0, t1)
        (an answer comes ``rtt`` after its challenge, a miss one interval
        after it)."""
        answered, missed = [], []
        interval = self.host.hb.interval
        for t, out in self.host.reports:
            if isinstance(out, hb.Answered) and t0 <= t - out.rtt < t1:
                answered.append(out)
            elif isinstance(out, hb.Missed) and t0 <= t - interval < t1:
                missed.append(out)
        return answered, missed

    def _settled(self, t0, t1):
        answered, missed = self._outcomes(t0, t1)
        return len(answered) + len(missed)

    # tear-down

    def teardown(self):
        for app in self.apps:
            app.stop()
        for app in self.apps:
            app.join(5.0)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                if self.host is not None and not self.host.is_closed():
                    # until the exit comes, or the channel's end of
                    # stream: not until the process is gone, which can be
                    # before the host has read the exit it wrote last
                    try:
                        self.host.run(5.0, until=lambda: bool(
                            self.host.of(hb.Exited)))
                    except OSError:
                        pass
                try:
                    self.proc.wait(10.0)
                except subprocess.TimeoutExpired:
                    log("the daemon did not stop within 10 s: killing it")
                    self.proc.kill()
                    self.proc.wait()
        if self.host is not None:
            self.host.close()
        if self.log_file is not None:
            self.log_file.close()
        if self.result:
            self.result["exit_received"] = bool(
                self.host is not None and self.host.of(hb.Exited))
            self.result["daemon_returncode"] = (
                self.proc.returncode if self.proc is not None else None)
            self.result["missed_whole_run"] = (
                len(self.host.of(hb.Missed)) if self.host is not None
                else None)

    def daemon_log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except (AttributeError, OSError):
            return ""

    def remove_dir(self):
        if self.dir is not None and not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def _round(value, digits):
    return None if value is None else round(value, digits)


def verdict(r):
    """The comparison with the brief's targets: (rss_met, cpu_met, line)."""
    rss_met = (r["vmhwm_mib"] is not None
               and r["vmhwm_mib"] * MIB < TARGET_RSS_BYTES)
    cpu_met = r["daemon_cpu_pct"] < TARGET_CPU_PCT
    at = ("" if r["interval_ms"] == 1000 else
          " (measured at %d ms, the target is for 1000 ms)"
          % r["interval_ms"])
    line = ("targets: RSS < 20 MB: %s (VmHWM %.1f MB); CPU < %.1f%% of a "
            "core: %s (%.3f%%, hooks %.3f%% more)%s" % (
                "met" if rss_met else "NOT MET",
                (r["vmhwm_mib"] or 0) * MIB / 1e6, TARGET_CPU_PCT,
                "met" if cpu_met else "NOT MET", r["daemon_cpu_pct"],
                r["hooks_cpu_pct"], at))
    return rss_met, cpu_met, line


def print_table(r, info):
    def mib(value):
        return "-" if value is None else "%.2f MiB" % value

    def ms(value):
        return "-" if value is None else "%.2f ms" % value

    rows = [
        ("machine", "%d core(s), %s, Linux %s" % (
            info["nproc"], info["cpu"], info["kernel"])),
        ("date", info["date"]),
        ("Python", "daemon %s (%s), benchmark %s" % (
            info["daemon_python"], info["daemon_python_path"],
            info["python"])),
        ("load average", "%s before, %s after" % (
            " ".join("%.2f" % x for x in r["load_avg_before"]),
            " ".join("%.2f" % x for x in r["load_avg_after"]))),
        ("set-up", "interval %d ms (granted %s), %d app(s), %d hook(s)" % (
            r["interval_ms"], r["granted_interval_ms"], r["apps"],
            r["hooks"])),
        ("measured for", "%.1f s after a %.1f s warm-up" % (
            r["duration_s"], r["warmup_s"])),
        ("daemon CPU", "%.3f%% of one core (%.2f s; schedstat %s; %s "
         "wake-ups/s)" % (
             r["daemon_cpu_pct"], r["daemon_cpu_s"],
             "-" if r["daemon_sched_cpu_pct"] is None
             else "%.3f%%" % r["daemon_sched_cpu_pct"],
             r["wakeups_per_s"])),
        ("hooks CPU (children)", "%.3f%% of one core (%.2f s)" % (
            r["hooks_cpu_pct"], r["hooks_cpu_s"])),
        ("daemon RSS avg / peak", "%s / %s (%d samples)" % (
            mib(r["rss_avg_mib"]), mib(r["rss_peak_mib"]),
            r["rss_samples"])),
        ("daemon VmHWM", "%s (anon %s, file %s at the end; %s thread(s))"
         % (mib(r["vmhwm_mib"]), mib(r["rss_anon_mib"]),
            mib(r["rss_file_mib"]), r["threads"])),
        ("challenges", "%d sent, %d answered healthy, %d unhealthy, %d "
         "missed (whole run: %s missed)" % (
             r["challenges_sent"], r["answered_healthy"],
             r["answered_unhealthy"], r["missed"],
             r.get("missed_whole_run"))),
        ("answer RTT", "p50 %s, p99 %s, max %s" % (
            ms(r["rtt_p50_ms"]), ms(r["rtt_p99_ms"]), ms(r["rtt_max_ms"]))),
        ("app checks answered", "%d" % r["app_checks_answered"]),
        ("daemon exit", "exit %s, status %s" % (
            "received" if r.get("exit_received") else "NOT received",
            r.get("daemon_returncode"))),
    ]
    if r["unhealthy_reasons"]:
        rows.append(("unhealthy because", "; ".join(r["unhealthy_reasons"])))
    support.print_rows(rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure the guestha guest daemon's CPU and memory "
                    "while a simulated host challenges it.")
    parser.add_argument("--interval-ms", type=int, default=1000,
                        help="heartbeat interval the guest asks for "
                             "(default 1000)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds measured (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds between registration and the "
                             "measurement (default 5)")
    parser.add_argument("--apps", type=int, default=1,
                        help="applications registered on the app API "
                             "(default 1)")
    parser.add_argument("--no-hooks", action="store_true",
                        help="no health hook (default: one, exit 0)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the daemon runs under (default "
                             "%(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the daemon's log level (default INFO)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of the table")
    parser.add_argument("--keep", action="store_true",
                        help="leave the working directory (config, log)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.apps < 0:
        parser.error("--duration must be > 0, --warmup and --apps >= 0")
    if not 100 <= args.interval_ms <= 60000:
        parser.error("--interval-ms must be from 100 to 60000")
    # the daemon runs in the working directory: no relative path
    python = (os.path.abspath(args.python) if os.sep in args.python
              else shutil.which(args.python))
    if python is None:
        parser.error("--python: %s not found" % args.python)
    args.python = python
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def _interrupted(signum, frame):
        raise Interrupted()

    # SIGINT too: a shell starts background jobs with it ignored
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    info = machine()
    bench = Bench(args)
    status = 0
    try:
        info["daemon_python_path"] = args.python
        info["daemon_python"] = interpreter_version(args.python)
        log("guest daemon under Python %s; %d app(s), %s hook; interval "
            "%d ms; warm-up %.0f s, measuring %.0f s", info["daemon_python"],
            args.apps, "no" if args.no_hooks else "one", args.interval_ms,
            args.warmup, args.duration)
        bench.setup()
        bench.measure()
    except (KeyboardInterrupt, Interrupted):
        log("interrupted")
        status = 130
    except SetupError as exc:
        log("benchmark failed: %s", exc)
        status = 1
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        log("benchmark failed: %s: %s", type(exc).__name__, exc)
        status = 1
    finally:
        # a second Ctrl-C must not leave the daemon behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.teardown()
    if status != 0 or bench.result.get("daemon_died") or (
            bench.result and not bench.result.get("exit_received")):
        tail = bench.daemon_log_tail()
        if tail:
            log("the daemon's log ends with:\n%s", tail.rstrip())
    bench.remove_dir()
    if status != 0:
        return status
    r = bench.result
    rss_met, cpu_met, line = verdict(r)
    r["rss_target_met"] = rss_met
    r["cpu_target_met"] = cpu_met
    if args.json:
        support.print_json(dict(r, machine=info), sort_keys=True)
    else:
        print_table(r, info)
        print(line)
    if r["daemon_died"]:
        log("FAILED: the daemon died during the measurement")
        return 1
    if r["answered"] == 0:
        log("FAILED: no challenge was answered in the window")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
