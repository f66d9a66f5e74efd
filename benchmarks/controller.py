# SPDX-License-Identifier: Apache-2.0
"""What one guestha-server process carries, and how fast a server-group
broadcast goes from a guest to a peer guest on another host.

    .venv/bin/python benchmarks/controller.py
    .venv/bin/python benchmarks/controller.py --only reports --clients 8
    .venv/bin/python benchmarks/controller.py --only broadcast --broadcasts 500
    .venv/bin/python benchmarks/controller.py --only reports \
        --store mariadb --controllers 1,3 --clients 12
    .venv/bin/python benchmarks/controller.py --only reports --batches 1 \
        --profile

A benchmark, not a test: real processes against real RabbitMQ and libvirtd,
measured.  Everything runs on a fresh RabbitMQ vhost and in a temporary
directory, both removed at the end, also after an error, Ctrl-C or
SIGTERM (the child processes are stopped, then killed).

1. Fault reports (``--only reports``)
-------------------------------------
One ``guestha-server`` (``python -m guestha.cmd.server``, started afresh
for each batch size: new ledger, new sink file) with the log sink (the
default: JSON lines, fsync per batch), its ledger (SQLite, WAL,
synchronous=FULL) and the Nova stand-in (guestha/testing/fake_nova.py; faults
recommending no action never ask it anything).  ``--clients`` client
processes (this script, ``client`` subcommand) stand for compute agents:
each has its own transport and :class:`guestha.rpc.api.ControllerAPI`
with its own host name, and calls ``report_events`` in a loop, one call
at a time and each batch waiting for its answer, as the agent's reporter
does, with ``--batches`` events per call (the agent's default
``[reporting] report_batch`` is 100).  The events are real fault records
(:func:`guestha.records.make_fault`, kind ``missed``, a new instance each,
no recommended action).

Each client makes one warm-up call, then all send for ``--duration``
seconds from the same instant.  The benchmark then waits until every
accepted event is a line in the log sink's file and prints:

* events/s end to end: the events accepted in the window, divided by the
  time from the start to the ``logged_at`` of the last of them in the
  sink's file (so it counts the whole chain: client, RabbitMQ, server,
  ledger, sink);
* accepted/s: what the clients had answered within the window;
* the latency of the ``report_events`` calls (p50/p99);
* the server's CPU (``/proc/<pid>/stat``, user+system over the same
  span, in % of one core) and RSS (VmRSS at the end, VmHWM);
* RabbitMQ's CPU over the span (beam.smp; the broker is shared with
  whatever else uses it).

On a shared database (``--store mariadb``): a ``mariadbd`` of the
benchmark's own (guestha/testing/shared_controllers.py: its data directory in
the temporary directory, a free port; the MariaDB other people use is not
touched), a fresh database per run migrated to the newest revision, and a
``redis-server`` of its own as the tooz backend; ``--controllers 1,3`` runs
each batch size with one, then three ``guestha-server`` processes on that
database (the clients' calls spread over them by RabbitMQ).  With three, the
events/s are those of the three together, the CPU their sum. ``--store sqlite``
(the default) with several controllers: one SQLite file, shared, as on one
host.

2. Broadcast latency (``--only broadcast``)
-------------------------------------------
Two compute hosts, ``ghcb-host-a`` and ``ghcb-host-b``: two
``guestha-agent`` processes (hot-plug off), each with a libvirt of its own:
libvirtd's test driver loading a node file per host
(``test+unix:///<dir>/ghcb-host-a.xml``), which gives each connection a
private copy of its domains (``ghcb-*``).  So each agent sees only its
host's domains, and no other agent on the machine (tests or benchmarks on
the shared ``test+unix:///default``) sees them; the domains go away with
the agents' connections.  One ``guestha-server`` and the Nova stand-in
with two server groups, all members with a flavor that has
``guestha:server_group_messaging=true``:

* a group of 2: a sender on host A, a receiver on host B;
* a group of 20: a sender on host A, a receiver on host B, and 18 more
  members, 9 per host.

The senders and receivers are real guest daemons (``python -m
guestha_guest --port unix-listen:PATH``) with their application API; the
18 others are simulated guests (guestha_guest/testing/guestfarm.py, one
process, real protocol, heartbeat only: they take their share of the
fan-out and ignore it).  The applications are
:class:`guestha_guest.client.GuestHAClient` connections to the daemons'
app sockets: on the sender's guest, one broadcasting ``--broadcasts``
payloads of ``--payload`` bytes, each carrying its sequence number and
the sender's clock, ``--rate`` per second (the agent allows 10 per second
and instance); on the receiver's guest, one subscribed to broadcasts (in a
thread), noting when each arrives.  Both run in this process, so they
share a clock.  After warm-up broadcasts (until one arrives, then 5 more),
it prints p50/p99/max of the time from ``broadcast()`` to its arrival at
the receiving application: guest daemon -> agent A -> RabbitMQ -> server
(membership, flavor and host from its caches) -> RabbitMQ -> agent B ->
guest daemon -> application; and how many were lost.

Output: a table per part and, last, one line of JSON with every figure.
"""

import argparse
import base64
import collections
import datetime
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import support  # noqa: E402
from benchmarks.support import cpu_seconds  # noqa: E402
from benchmarks.support import percentile  # noqa: E402
from guestha.testing.wait import wait_until  # noqa: E402

# oslo.service, imported with oslo.messaging, announces eventlet's end
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

PYTHON = sys.executable
BROKER = "127.0.0.1:5672"
BROKER_USER = "guest"
BROKER_PASSWORD = "guest"
HOST_A = "ghcb-host-a"
HOST_B = "ghcb-host-b"
PREFIX = "ghcb-"
MESSAGING = {"guestha:heartbeat": "true",
             "guestha:server_group_messaging": "true"}


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


# -- /proc --------------------------------------------------------------------

def memory_mib(pid):
    """``(VmRSS, VmHWM)`` of ``pid`` in MiB."""
    values = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0]) / 1024.0
    return values.get("VmRSS"), values.get("VmHWM")


def broker_errors(directory):
    """How many times the processes of this run logged that RabbitMQ was
    unreachable (the broker is shared: a test elsewhere may stop it, and
    a measurement across such an outage is not one)."""
    count = 0
    for name in os.listdir(directory):
        if name.endswith((".log", ".stderr")):
            with open(os.path.join(directory, name), errors="replace") as f:
                count += sum(1 for line in f
                             if "AMQP server on" in line
                             and "is unreachable" in line)
    return count


def broker_pid():
    out = subprocess.run(["pgrep", "-x", "beam.smp"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.split()
    return int(out[0]) if out else None


def machine():
    return dict(support.machine(),
                loadavg_before=[round(x, 2) for x in os.getloadavg()])


# -- the environment ----------------------------------------------------------

class Environment(object):
    """The vhost, the directory and the processes of one run; :meth:`close`
    removes them all."""

    def __init__(self, keep=False):
        from guestha.testing import agent_harness
        from guestha.testing import child_processes
        from guestha.testing import libvirt_domains
        self.agent_harness = agent_harness
        self.child_processes = child_processes
        self.libvirt_domains = libvirt_domains
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix=PREFIX, dir="/tmp")
        self.procs = child_processes.Processes()
        self.servers = []
        self.nova = None
        self.vhost = None
        self.url = None
        self.mariadb = None
        self.redis = None

    def rabbitmqctl(self, *args, check=True):
        result = subprocess.run(
            ["rabbitmqctl", "-q"] + list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError("rabbitmqctl %s: %s" % (" ".join(args),
                                                       result.stdout))
        return result

    def start(self):
        from guestha.testing.fake_nova import FakeNova
        self.vhost = "%sbench-%s" % (PREFIX, uuid.uuid4().hex[:12])
        self.rabbitmqctl("add_vhost", self.vhost)
        self.rabbitmqctl("set_permissions", "-p", self.vhost, BROKER_USER,
                         ".*", ".*", ".*")
        self.url = "rabbit://%s:%s@%s/%s" % (BROKER_USER, BROKER_PASSWORD,
                                             BROKER, self.vhost)
        self.nova = FakeNova().start()
        return self

    def server(self, server_id, **groups):
        from guestha.testing import server_harness
        server = server_harness.ServerProcess(self.dir, self.url, server_id,
                                              self.nova.endpoint, **groups)
        self.servers.append(server)
        return server.start()

    def shared_store(self, name):
        """A fresh, migrated MariaDB database and the tooz backend: the
        config groups for a controller."""
        from guestha.db import api as db_api
        from guestha.db import migration
        from guestha.testing import shared_controllers
        if self.mariadb is None:
            self.mariadb = shared_controllers.MariaDB(
                self.dir).install().start()
            self.redis = shared_controllers.Redis(self.dir).start()
        self.mariadb.execute("CREATE DATABASE %s CHARACTER SET utf8mb4"
                             % name)
        url = self.mariadb.url(name)
        engine = db_api.create_engine(url)
        try:
            migration.upgrade(engine)
        finally:
            engine.dispose()
        return {"database": {"connection": url},
                "coordination": {"backend_url": self.redis.url}}

    def stop_server(self, server):
        try:
            server.stop()
        finally:
            server.kill()

    def close(self):
        errors = []
        for step in (self._stop_children, self._stop_servers,
                     self._stop_nova, self._delete_vhost, self._stop_stores,
                     self._remove_dir):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest
                errors.append("%s: %s" % (step.__name__, exc))
        for error in errors:
            print("cleanup: %s" % error, file=sys.stderr)

    def _stop_children(self):
        self.child_processes.terminate_all(self.procs.running(),
                                           timeout=15)
        self.procs.kill_all()

    def _stop_servers(self):
        for server in self.servers:
            server.kill()

    def _stop_nova(self):
        if self.nova is not None:
            self.nova.stop()

    def _stop_stores(self):
        for part in (self.mariadb, self.redis):
            if part is not None:
                part.stop()

    def _delete_vhost(self):
        if self.vhost is not None:
            self.rabbitmqctl("delete_vhost", self.vhost, check=False)

    def _remove_dir(self):
        if self.keep:
            print("kept %s" % self.dir, file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- 1. fault reports ---------------------------------------------------------

def client_main(args):
    """One stand-in agent: warm up, say ready, wait for ``go``, then
    report_events in a loop until the end of the window; prints its
    figures as JSON."""
    from oslo_config import cfg

    from guestha import records
    from guestha import rpc
    from guestha.rpc import api

    transport = rpc.get_transport(cfg.CONF, url=args.url)
    client = api.ControllerAPI(transport, args.host, timeout=120)
    template = records.make_fault(str(uuid.uuid4()), args.host, "missed",
                                  "no answer to challenge", None, time.time(),
                                  1000, 1)

    def events(n, details=None):
        out = []
        for _ in range(n):
            event = dict(template, id=str(uuid.uuid4()),
                         instance=str(uuid.uuid4()))
            if details is not None:
                event["details"] = details
            out.append(event)
        return out

    client.report_events(events(1, {"warmup": True}))
    print("ready", flush=True)
    # the go: a file with the start (epoch) and the end (monotonic: one
    # clock for every process of the machine)
    while not os.path.exists(args.go):
        time.sleep(0.01)
    with open(args.go) as f:
        start_wall, end_mono = (float(x) for x in f.read().split())
    wait = start_wall - time.time()
    if wait > 0:
        time.sleep(wait)
    accepted = calls = failed = 0
    latencies = []
    batch = None
    while time.monotonic() < end_mono:
        if batch is None:
            batch = events(args.batch)
        t = time.monotonic()
        try:
            answer = client.report_events(batch)
        except rpc.TRANSIENT_ERRORS as exc:
            # as the agent's reporter: the same batch again, a little later
            failed += 1
            print("report_events failed: %s" % exc, file=sys.stderr)
            time.sleep(0.2)
            continue
        latencies.append(time.monotonic() - t)
        calls += 1
        accepted += len(answer["accepted"])
        batch = None
    transport.cleanup()
    print(json.dumps({"accepted": accepted, "calls": calls,
                      "failed": failed, "latencies": latencies}), flush=True)
    return 0


def _read_line(proc, timeout, what, log=None):
    try:
        return _read_line_or_fail(proc, timeout, what)
    except RuntimeError as exc:
        if log is None:
            raise
        with open(log, errors="replace") as f:
            raise RuntimeError("%s; its log ends:\n%s"
                               % (exc, f.read()[-3000:])) from None


def _read_line_or_fail(proc, timeout, what):
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or (proc.poll() is not None and not sel.select(0)):
                raise RuntimeError("no %s from a client" % what)
            if sel.select(min(left, 0.5)):
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    raise RuntimeError("a client exited before its %s"
                                       % what)
                buf += data
    finally:
        sel.close()
    return buf.decode()


def _sink_lines(path, offset, records):
    """Read the sink's new complete lines into ``records``; returns the
    new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        if line:
            records.append(json.loads(line))
    return offset + end


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def py_spy():
    """py-spy, on the PATH or next to this Python (a virtualenv's bin)."""
    beside = os.path.join(os.path.dirname(PYTHON), "py-spy")
    return shutil.which("py-spy") or (beside if os.path.exists(beside)
                                      else None)


def profile_summary(path, top=20):
    """The frames most often on the stack of the GIL's holder in a py-spy
    raw profile: ``[(share, "function file")]``, inclusive."""
    import re
    frame_re = re.compile(r"(\S+) \((.*?)(?::\d+)?\)$")
    total = 0
    inclusive = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            count = int(count)
            total += count
            seen = set()
            for frame in stack.split(";"):
                match = frame_re.match(frame)
                if match is None or "threading.py" in frame:
                    continue
                where = match.group(2).split("site-packages/")[-1]
                key = "%s %s" % (match.group(1),
                                 where.replace(REPO + "/", ""))
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
    return [(round(100.0 * n / total, 1), key)
            for key, n in inclusive.most_common(top)] if total else []


def run_reports(env, batch, clients, duration, executor_threads=None,
                controllers=1, store="sqlite", profile=False):
    extra = {}
    if executor_threads:
        extra["DEFAULT"] = {"executor_thread_pool_size": executor_threads}
    run = "%s-c%d-b%d" % (store, controllers, batch)
    if store == "mariadb":
        extra.update(env.shared_store("ghcb_%s" % run.replace("-", "_")))
    servers = [env.server("ghcb-ctl-%s-%d" % (run, n),
                          ledger_path=os.path.join(env.dir,
                                                   "ledger-%s.sqlite" % run),
                          sink_log=os.path.join(env.dir, "events-%s-%d.jsonl"
                                                % (run, n)),
                          **extra)
               for n in range(controllers)]
    procs = []
    go = os.path.join(env.dir, "go-%s" % run)
    trouble = broker_errors(env.dir)
    logs = [os.path.join(env.dir, "client-%s-%d.log" % (run, i))
            for i in range(clients)]
    try:
        for i in range(clients):
            procs.append(env.procs.spawn(
                [PYTHON, "-W", "ignore", os.path.abspath(__file__), "client",
                 "--url", env.url, "--host", "ghcb-agent-%d" % i,
                 "--batch", str(batch), "--go", go], logs[i],
                stdout=subprocess.PIPE))
        for proc, log in zip(procs, logs):
            if _read_line(proc, 60, "ready", log).strip() != "ready":
                raise RuntimeError("a client did not get ready")
        broker = broker_pid()
        start_wall = time.time() + 0.5
        start_mono = time.monotonic() + 0.5
        with open(go + ".tmp", "w") as f:
            f.write("%.6f %.6f\n" % (start_wall, start_mono + duration))
        os.replace(go + ".tmp", go)
        time.sleep(max(0.0, start_mono - time.monotonic()))
        spy = None
        if profile:
            # the first controller, sampled while it holds the GIL: where
            # its CPU goes (py-spy, if installed)
            spy = subprocess.Popen(
                [py_spy(), "record", "--gil",
                 "--nonblocking", "-r", "250", "-d", str(int(duration)),
                 "--format", "raw", "-o",
                 os.path.join(env.dir, "profile-%s.raw" % run), "-p",
                 str(servers[0].proc.pid)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        cpu0 = sum(cpu_seconds(s.proc.pid) for s in servers)
        broker0 = cpu_seconds(broker) if broker else None
        t0 = time.monotonic()
        results = [json.loads(_read_line(proc, duration + 300, "result",
                                         log))
                   for proc, log in zip(procs, logs)]
        accepted = sum(r["accepted"] for r in results)
        records, offsets = [], [0] * len(servers)

        def complete():
            for n, server in enumerate(servers):
                offsets[n] = _sink_lines(server.sink_log, offsets[n],
                                         records)
            return len(records) >= accepted + clients

        wait_until(complete, 300, "%d events in the log sink" % accepted,
                   interval=0.02)
        t1 = time.monotonic()
        cpu1 = sum(cpu_seconds(s.proc.pid) for s in servers)
        broker1 = cpu_seconds(broker) if broker else None
        rss, hwm = memory_mib(servers[0].proc.pid)
        if spy is not None:
            spy.wait(60)
    finally:
        env.child_processes.terminate_all(procs, timeout=10)
        for server in servers:
            env.stop_server(server)
    measured = [r for r in records
                if not r.get("details", {}).get("warmup")]
    ids = {r["id"] for r in measured}
    last = max(_epoch(r["logged_at"]) for r in measured)
    span = last - start_wall
    latencies = sorted(x for r in results for x in r["latencies"])
    profiled = os.path.join(env.dir, "profile-%s.raw" % run)
    return {
        "profile": (profile_summary(profiled)
                    if profile and os.path.exists(profiled) else None),
        "store": store, "controllers": controllers,
        "batch": batch, "clients": clients, "window_s": duration,
        "events": len(measured), "duplicates": len(measured) - len(ids),
        "events_per_s": round(len(ids) / span, 1),
        "accepted_per_s": round(accepted / duration, 1),
        "calls": len(latencies),
        "failed_calls": sum(r["failed"] for r in results),
        "call_p50_ms": round(1000 * percentile(latencies, 50), 2),
        "call_p99_ms": round(1000 * percentile(latencies, 99), 2),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "server_rss_mib": round(rss, 1), "server_hwm_mib": round(hwm, 1),
        "broker_cpu_pct": (None if broker is None else round(
            100 * (broker1 - broker0) / (t1 - t0), 1)),
        "broker_unreachable": broker_errors(env.dir) - trouble,
    }


# -- 2. broadcast latency -----------------------------------------------------

GUEST_INI = """\
[guestha]
name = {name}
interval_ms = 1000
corrective_action = none
log_level = WARNING

[health]
hook_dir = {dir}/{name}-hooks

[app_api]
enabled = true
socket = {app_socket}
mode = 0600
"""


class Member(object):
    def __init__(self, env, name, host, real):
        self.name = name
        self.host = host
        self.real = real
        self.uuid = str(uuid.uuid4())
        self.channel = os.path.join(env.dir, "%s.sock" % name)
        self.app_socket = os.path.join(env.dir, "%s-app.sock" % name)
        self.proc = None

    def start_daemon(self, env):
        config = os.path.join(env.dir, "%s.ini" % self.name)
        os.makedirs(os.path.join(env.dir, "%s-hooks" % self.name),
                    exist_ok=True)
        with open(config, "w") as f:
            f.write(GUEST_INI.format(name=self.name, dir=env.dir,
                                     app_socket=self.app_socket))
        self.proc = env.procs.spawn(
            [PYTHON, "-m", "guestha_guest", "--config", config, "--port",
             "unix-listen:%s" % self.channel],
            os.path.join(env.dir, "%s.log" % self.name))


def start_hosts(env, members):
    """The node files, the guests (daemons and a farm) and the agents."""
    from guestha.agent import status as agent_status

    for member in members:
        if member.real:
            member.start_daemon(env)
    farmed = [m for m in members if not m.real]
    if farmed:
        paths = os.path.join(env.dir, "farm-paths.txt")
        with open(paths, "w") as f:
            f.write("".join(m.channel + "\n" for m in farmed))
        farm = env.procs.spawn(
            [PYTHON, "-m", "guestha_guest.testing.guestfarm",
             "--paths-file", paths, "--interval-ms", "1000"],
            os.path.join(env.dir, "farm.log"), stdout=subprocess.PIPE)
        if _read_line(farm, 30, "ready").strip() != "ready":
            raise RuntimeError("the guest farm did not start")
    wait_until(lambda: all(os.path.exists(m.channel) and os.path.exists(
        m.app_socket) for m in members if m.real), 30,
        "the guest daemons to listen", interval=0.05)

    agents = {}
    for host in (HOST_A, HOST_B):
        uri = env.libvirt_domains.write_node(
            os.path.join(env.dir, "%s.xml" % host),
            [(PREFIX + m.name, m.uuid, m.channel) for m in members
             if m.host == host])
        config = os.path.join(env.dir, "%s.conf" % host)
        with open(config, "w") as f:
            f.write(env.agent_harness.agent_conf(
                env.url, host, os.path.join(env.dir, "state-" + host),
                os.path.join(env.dir, "hotplug-" + host),
                os.path.join(env.dir, host + ".sock"), uri=uri,
                log_file=os.path.join(env.dir, host + ".log"),
                alive_interval=5))
        agents[host] = env.procs.spawn(
            [PYTHON, "-W", "ignore", "-m", "guestha.cmd.agent",
             "--config-file", config],
            os.path.join(env.dir, "%s.stderr" % host))

    def monitored():
        for host, proc in agents.items():
            if proc.poll() is not None:
                raise RuntimeError("the agent of %s exited" % host)
            try:
                status = agent_status.fetch(
                    os.path.join(env.dir, "%s.sock" % host), timeout=10)
            except (OSError, ValueError):
                return False
            states = {i["instance"]: i["state"]
                      for i in status["instances"]}
            if any(states.get(m.uuid) != "MONITORED" for m in members
                   if m.host == host):
                return False
        return True

    wait_until(monitored, 90, "every member to be MONITORED", interval=0.2)
    return agents


class Receiver(object):
    """The receiving application: subscribed to broadcasts, in a thread,
    noting the arrival time of each payload's sequence number."""

    def __init__(self, app_socket):
        from guestha_guest.client import GuestHAClient
        self.client = GuestHAClient(app_socket, timeout=10)
        self.client.connect()
        self.client.subscribe("broadcast")
        self.arrivals = {}
        self.foreign = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            event = self.client.next_event(timeout=0.2)
            now = time.monotonic()
            if event is None or event.get("op") != "broadcast":
                continue
            try:
                body = json.loads(base64.b64decode(event["payload"]).rstrip(
                    b" "))
                self.arrivals[body["seq"]] = (now, body["t"])
            except (ValueError, KeyError, TypeError):
                self.foreign += 1

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def _payload(seq, size):
    body = json.dumps({"seq": seq, "t": time.monotonic()}).encode()
    return body + b" " * max(0, size - len(body))


def _ranges(numbers):
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in out)


def measure_broadcasts(sender, receiver, count, rate, size):
    from guestha_guest.client import GuestHAClient

    recv = Receiver(receiver.app_socket)
    try:
        with GuestHAClient(sender.app_socket, timeout=10) as app:
            # warm-up: until one arrives (routes, caches, connections),
            # then a few more; negative sequence numbers
            seq = -1
            deadline = time.monotonic() + 60
            while not recv.arrivals:
                if time.monotonic() > deadline:
                    raise RuntimeError("no broadcast reached %s within 60 s"
                                       % receiver.name)
                app.broadcast(_payload(seq, size))
                seq -= 1
                time.sleep(0.3)
            for _ in range(5):
                app.broadcast(_payload(seq, size))
                seq -= 1
                time.sleep(1.0 / rate)
            period = 1.0 / rate
            next_at = time.monotonic()
            refused = 0
            for seq in range(count):
                next_at += period
                try:
                    app.broadcast(_payload(seq, size))
                except Exception as exc:  # noqa: BLE001 - counted
                    refused += 1
                    print("broadcast %d refused: %s" % (seq, exc),
                          file=sys.stderr)
                time.sleep(max(0.0, next_at - time.monotonic()))
            # stragglers
            wait_deadline = time.monotonic() + 5
            while (time.monotonic() < wait_deadline and
                   sum(1 for s in recv.arrivals if s >= 0) < count):
                time.sleep(0.05)
            # refusals that came after the daemon's ok (the host's)
            later = collections.Counter()
            while True:
                event = app.next_event(timeout=0)
                if event is None:
                    break
                if event.get("op") == "error":
                    later[event.get("code")] += 1
    finally:
        recv.close()
    latencies = sorted(arrived - sent for s, (arrived, sent)
                       in recv.arrivals.items() if s >= 0)
    lost = sorted(set(range(count)) - set(recv.arrivals))

    def ms(seconds):
        return None if seconds is None else round(1000 * seconds, 2)

    return {
        "broadcasts": count, "received": len(latencies),
        "lost": count - len(latencies), "refused": refused,
        "refused_by_host": dict(later),
        "lost_seqs": _ranges(lost),
        # (seq, ms) in order of sending, for a look at the tail
        "samples": [(seq, ms(arrived - sent)) for seq, (arrived, sent)
                    in sorted(recv.arrivals.items()) if seq >= 0],
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "mean_ms": ms(sum(latencies) / len(latencies) if latencies
                      else None),
    }


def run_broadcast(env, count, rate, size):
    group2 = [Member(env, "g2-sender", HOST_A, True),
              Member(env, "g2-receiver", HOST_B, True)]
    group20 = [Member(env, "g20-sender", HOST_A, True),
               Member(env, "g20-receiver", HOST_B, True)]
    group20 += [Member(env, "g20-farm-%02d" % i, (HOST_A, HOST_B)[i % 2],
                       False) for i in range(18)]
    members = group2 + group20
    for member in members:
        env.nova.add_server(member.uuid, flavor_extra_specs=MESSAGING,
                            host=member.host, name=member.name)
    env.nova.add_server_group(str(uuid.uuid4()), "ghcb-2",
                              members=[m.uuid for m in group2])
    env.nova.add_server_group(str(uuid.uuid4()), "ghcb-20",
                              members=[m.uuid for m in group20])
    server = env.server("ghcb-ctl-bcast",
                        server={"broadcasts_per_second": "50"})
    start_hosts(env, members)
    results = {}
    for name, group in (("2", group2), ("20", group20)):
        trouble = broker_errors(env.dir)
        results[name] = measure_broadcasts(group[0], group[1], count, rate,
                                           size)
        results[name]["members"] = len(group)
        results[name]["broker_unreachable"] = (broker_errors(env.dir)
                                               - trouble)
    results["server_rss_mib"] = round(memory_mib(server.proc.pid)[0], 1)
    return results


# -- main ---------------------------------------------------------------------

def _print_report(r):
    print("%4d %6d %10.0f %11.0f %8d %6.1f ms %6.1f ms %7.0f%% "
          "%4.0f MiB %8s" % (
              r["controllers"], r["batch"], r["events_per_s"],
              r["accepted_per_s"], r["events"], r["call_p50_ms"],
              r["call_p99_ms"], r["server_cpu_pct"], r["server_rss_mib"],
              "-" if r["broker_cpu_pct"] is None
              else "%.0f%%" % r["broker_cpu_pct"]))
    if r["duplicates"]:
        print("       (%d duplicate lines at the sink)" % r["duplicates"])
    if r["broker_unreachable"] or r["failed_calls"]:
        print("       NOT VALID: RabbitMQ was unreachable during the run "
              "(%d log lines, %d failed calls)"
              % (r["broker_unreachable"], r["failed_calls"]))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) a stand-in agent")
    client.add_argument("--url", required=True)
    client.add_argument("--host", required=True)
    client.add_argument("--batch", type=int, required=True)
    client.add_argument("--go", required=True)
    parser.add_argument("--only", choices=("reports", "broadcast"),
                        help="run one part only")
    parser.add_argument("--clients", type=int, default=4,
                        help="stand-in agents reporting at once (4)")
    parser.add_argument("--batches", default="1,10,100",
                        help="events per report_events call, one run each "
                             "(1,10,100)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds each reporting run sends for (10)")
    parser.add_argument("--store", choices=("sqlite", "mariadb"),
                        default="sqlite",
                        help="where the controllers keep the ledger: "
                             "sqlite (a file, the default) or mariadb (a "
                             "mariadbd of the benchmark's own, with tooz on "
                             "a redis-server of its own)")
    parser.add_argument("--controllers", default="1",
                        help="guestha-server processes sharing the ledger, "
                             "one run each (1; e.g. 1,3)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the (first) controller with py-spy "
                             "during each run and print where its CPU "
                             "goes (pip install py-spy)")
    parser.add_argument("--executor-threads", type=int,
                        help="the server's [DEFAULT] "
                             "executor_thread_pool_size (oslo.messaging's "
                             "default: 64)")
    parser.add_argument("--broadcasts", type=int, default=200,
                        help="broadcasts measured per group (200)")
    parser.add_argument("--rate", type=float, default=8.0,
                        help="broadcasts per second (8; the agent allows "
                             "10 per instance)")
    parser.add_argument("--payload", type=int, default=200,
                        help="bytes per broadcast payload (200; at most "
                             "3050)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    if args.command == "client":
        return client_main(args)
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy: pip install py-spy")

    signal.signal(signal.SIGTERM, _on_signal)
    out = {"machine": machine(), "argv": sys.argv[1:]}
    env = Environment(keep=args.keep)
    try:
        env.start()
        print("machine: %(nproc)d cpu(s), %(cpu)s, Python %(python)s, "
              "Linux %(kernel)s; load average before %(loadavg_before)s"
              % out["machine"])
        print("run in %s, vhost %s" % (env.dir, env.vhost))
        if args.only in (None, "reports"):
            print("\nfault reports through guestha-server, ledger in %s "
                  "(%d client processes, %g s each):"
                  % (args.store, args.clients, args.duration))
            print("%4s %6s %10s %11s %8s %9s %9s %8s %8s %9s" % (
                "ctls", "batch", "events/s", "accepted/s", "events",
                "call p50", "call p99", "srv CPU", "srv RSS", "rabbit"))
            out["reports"] = []
            for controllers in [int(c) for c in
                                args.controllers.split(",")]:
                for batch in [int(b) for b in args.batches.split(",")]:
                    r = run_reports(env, batch, args.clients, args.duration,
                                    args.executor_threads, controllers,
                                    args.store, args.profile)
                    out["reports"].append(r)
                    _print_report(r)
                    for share, frame in r["profile"] or ():
                        print("       %5.1f%%  %s" % (share, frame))
        if args.only in (None, "broadcast"):
            print("\nbroadcast latency, application to peer application on "
                  "the other host (%d broadcasts of %d bytes, %g/s):" % (
                      args.broadcasts, args.payload, args.rate))
            out["broadcast"] = run_broadcast(env, args.broadcasts, args.rate,
                                             args.payload)
            print("%8s %9s %9s %9s %9s %9s" % (
                "members", "p50", "p99", "max", "mean", "lost"))
            for name in ("2", "20"):
                r = out["broadcast"][name]
                print("%8d %9s %9s %9s %9s %5d/%d" % ((r["members"],) + tuple(
                    "-" if r[k] is None else "%.1f ms" % r[k]
                    for k in ("p50_ms", "p99_ms", "max_ms", "mean_ms"))
                    + (r["lost"], r["broadcasts"])))
                if r["refused_by_host"]:
                    print("         refused by the host: %s"
                          % r["refused_by_host"])
                if r["broker_unreachable"]:
                    print("         NOT VALID: RabbitMQ was unreachable "
                          "during the run (%d log lines)"
                          % r["broker_unreachable"])
    except (KeyboardInterrupt, Interrupted) as exc:
        print("interrupted (%s): cleaning up" % (exc or "Ctrl-C"),
              file=sys.stderr)
        return 130
    finally:
        env.close()
    out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print("load average after: %s" % out["machine"]["loadavg_after"])
    support.print_json(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
