# SPDX-License-Identifier: Apache-2.0
"""Fault detection latency on a real VM: guestha, and Masakari's
introspective instance monitor for comparison.

    .venv/bin/python benchmarks/detection_latency.py

A benchmark, not a test: it runs the real processes and prints what it
measured (a table, then one line of JSON).  Needs root, libvirtd with QEMU
on ``qemu:///system`` (``tools/libvirt-setup.sh``), the test VM's assets
(``tools/build-vm-assets.sh``) and RabbitMQ (``guest``/``guest`` on
127.0.0.1:5672); for the Masakari part, masakari-monitors in its own
virtualenv (``--masakari-venv``, default ``.venv-masakari``)::

    python3 -m venv .venv-masakari
    .venv-masakari/bin/pip install masakari-monitors==22.0.0 \\
        libvirt-python==12.8.0

**guestha** (``--only guestha``).  One tiny VM (guestha/testing/guest_vms.py,
QEMU TCG) runs this checkout's guest daemon; a real ``guestha-agent`` watches
it on ``qemu:///system`` (``[agent] min_interval_ms = 100``, ``fault_limit =
1000`` so that the flapping guard does not hold back the samples' recoveries,
``miss_threshold`` and everything else that bears on detection at the
defaults) and reports over
RabbitMQ (a vhost of its own) to a real ``guestha-server`` with the ``log``
sink and no Nova (guestha/testing/novaless_servers.py).  For every interval of
``--intervals`` the guest daemon is restarted with that interval (configuration
rewritten, ``daemon_stop`` + ``daemon_start`` through the test control
channel), then ``--samples`` times: wait until the last fault has recovered and
the instance is MONITORED and answering healthy, wait a uniformly random time
in [0, interval), freeze the daemon (SIGSTOP through the control channel), wait
for the ``missed`` fault in the sink, thaw it (SIGCONT) and wait for the
recovery.

**Masakari** (``--only masakari``).  ``--masakari-vms`` tiny VMs with the
qemu guest agent channel (the guest runs the host's ``qemu-ga``), each
watched by its own real ``masakari-introspectiveinstancemonitor``
(masakari-monitors 22.0.0) at its default settings
(``guest_monitoring_interval`` 10 s, ``guest_monitoring_timeout`` 2 s,
``guest_monitoring_failure_threshold`` 3); only
``qemu_guest_agent_sock_path`` is set, to the socket of that monitor's VM.
The monitor sends its notification through openstacksdk with Keystone
password auth; a local HTTP stand-in plays Keystone v3 (version document,
token with a catalog holding an ``instance-ha`` endpoint) and
masakari-api (``POST .../notifications``, answered 202), and records the
arrival time of each notification.  Per VM, ``--masakari-samples`` /
``--masakari-vms`` times: wait a uniformly random time in [0, 10 s),
freeze qemu-ga in the guest (SIGSTOP), wait for the notification of that
instance, thaw, restart the domain (destroy + start) and wait until the
monitor is back to healthy.  The restart is needed: the monitor sends one
notification per instance until libvirt reports the domain STARTED (its
journal's ``sent_notification`` is reset only then, by
``qemu_utils.resetJournal``), as after the restart Masakari's recovery
would make.  Healthy: a successful ping moves the monitor's state from
discovery to healthy, and only failures are logged (at debug), so the
benchmark waits for 2 x interval + timeout + 3 s in which the monitor's
log shows no failed ping of the instance.

**Timing.**  Everything is on the host's clock (``time.time()``):

* The freeze moment: the control program in the guest answers the
  SIGSTOP request with the guest's wall-clock times at which it read the
  request (``t_rx``) and right after ``kill()`` (``t_sig``).  With the
  host's send (``t1``) and receive (``t4``) times, the guest clock's
  offset is ``((t_rx - t1) + (t_sig - t4)) / 2`` (NTP's four timestamps,
  from that same exchange, so the TCG guest clock's drift does not
  matter) and the freeze is ``t_sig - offset`` on the host clock, within
  +- half the exchange's round trip net of the guest's processing
  (reported as the timing uncertainty).
* guestha's arrival: the sink record's ``logged_at`` (written by
  guestha-server when it wrote the record, on this host).  The file is
  polled every 5 ms; the poll's own arrival time is kept as a check.
  ``detected_at`` (the agent's time of the decision) splits the latency
  into detection and delivery.
* Masakari's arrival: the stand-in's ``time.time()`` once the POST's
  body has been read.

Everything is removed at the end, also after an error, Ctrl-C or SIGTERM:
the VMs (their domains are named ``ghtest-<pid>-...``), the processes,
the vhost and the temporary directories.  Domains of other processes are
never touched.

Other agents on ``qemu:///system`` (real-VM tests running meanwhile)
connect to every domain with a guestha channel, and QEMU serves one client
per channel.  So that neither takes the other's VM: the VM starts paused
(an agent does not connect to a paused domain), its channel socket is
moved into this run's directory, and the VM resumed; other agents find no
socket.  This run's agent runs in a mount namespace of its own
(``unshare -m``) with a tmpfs on ``/tmp`` (where the other runs' VMs keep
their sockets) and the moved socket bound back at the path of the domain
XML.  The Masakari VMs have no guestha channel.
"""

import argparse
import datetime
import http.server
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid as uuidlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import support  # noqa: E402
from benchmarks.support import percentile  # noqa: E402
from benchmarks.support import rabbitmqctl  # noqa: E402
from guestha.agent import status as agent_status  # noqa: E402
from guestha.testing import guest_vms as vmlib  # noqa: E402
from guestha.testing import novaless_servers  # noqa: E402
from guestha.testing import processes as procs  # noqa: E402
from guestha.testing.wait import wait_until  # noqa: E402

URI = vmlib.URI
BROKER = "127.0.0.1:5672"
PYTHON = sys.executable
BOOT_TIMEOUT = 180.0
#: Masakari's defaults (masakarimonitors/conf/introspectiveinstancemonitor)
MK_INTERVAL = 10
MK_TIMEOUT = 2
MK_THRESHOLD = 3


class Interrupted(Exception):
    pass


def log(fmt, *args):
    support.log(fmt, *args, stamp=True)


def iso_ts(text):
    return datetime.datetime.fromisoformat(text).timestamp()


def timed_signal(vm, cmd, sig):
    """Send ``sig`` through the control channel (``cmd`` ``signal`` or
    ``qga_signal``): ``(freeze time on the host clock, uncertainty s)``."""
    t1 = time.time()
    answer = vm.control(cmd, sig=sig)
    t4 = time.time()
    t_rx, t_sig = answer["t_rx"], answer["t_sig"]
    offset = ((t_rx - t1) + (t_sig - t4)) / 2.0
    delay = (t4 - t1) - (t_sig - t_rx)
    return t_sig - offset, max(0.0, delay) / 2.0, t1, t4


def _continue_quietly(vm, cmd):
    try:
        vm.control(cmd, sig="CONT", timeout=5)
    except vmlib.VMError:
        pass


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# -- guestha ------------------------------------------------------------------

AGENT_CONF = """\
[DEFAULT]
transport_url = {url}
debug = false
log_file = {dir}/agent.log
use_stderr = false

[agent]
host = ghlat-host
state_dir = {dir}/agent-state
socket_dir = {dir}/agent-channels
status_socket = {dir}/agent.sock
hotplug = false
min_interval_ms = 100
# every sample opens a fault: the flapping guard (3 within 600 s by
# default) would hold back the recovery of the third, which each sample
# waits for
fault_limit = 1000

[libvirt]
connection_uri = {uri}
"""

#: The agent's mount namespace: a tmpfs on /tmp (other runs' VM sockets
#: vanish), this VM's moved channel socket bound back at its XML path.
# $1 the VM's socket directory, $2 where its socket was moved, $3 the
# checkout, $4 an empty directory outside /tmp: the checkout is bound there
# before the tmpfs hides /tmp and bound back after, so that a checkout
# under /tmp stays importable (issue 8)
AGENT_SHELL = ('mkdir -p "$4" && mount --bind "$3" "$4" && '
               'mount -t tmpfs -o size=4m ghlat /tmp && mkdir -p "$1" "$3" && '
               'mount --bind "$2" "$1" && mount --bind "$4" "$3" && '
               'shift 4 && exec "$@"')


class SinkTail(object):
    """New complete lines of the log sink's file."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


class GuesthaRig(object):

    def __init__(self, args, cleanups):
        self.args = args
        self.cleanups = cleanups
        self.workdir = tempfile.mkdtemp(prefix="ghlat-%d-" % os.getpid(),
                                        dir="/var/tmp")
        cleanups.append(lambda: shutil.rmtree(self.workdir,
                                              ignore_errors=True))
        self.hidden = os.path.join(self.workdir, "chan")
        os.makedirs(self.hidden)
        self.vm = None
        self.agent = None
        self.records = []
        self.open_faults = {}
        self.spurious = []

    def start(self, interval_ms):
        vhost = "guestha-lat-%s" % os.urandom(6).hex()
        rabbitmqctl("add_vhost", vhost)
        self.cleanups.append(lambda: rabbitmqctl("delete_vhost", vhost,
                                                 check=False))
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*",
                    ".*")
        url = "rabbit://guest:guest@%s/%s" % (BROKER, vhost)

        self.vm = vm = vmlib.GuestVM("lat", interval_ms=interval_ms)
        self.cleanups.append(vm.close)
        self.server = novaless_servers.ServerProcess(
            self.workdir, url, "ghlat-ctl")
        self.cleanups.append(self._stop_server)
        self.server.start()
        self.sink = SinkTail(self.server.sink_log)

        # paused: no agent connects to a paused domain; move the socket
        libvirt = vmlib._libvirt()
        vm.define()
        vm.domain().createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        wait_until(lambda: os.path.exists(vm.channel_path), 30,
                   "QEMU to create the channel socket", interval=0.05)
        os.rename(vm.channel_path, os.path.join(self.hidden,
                                                "guestha.sock"))
        vm.resume()

        conf = os.path.join(self.workdir, "agent.conf")
        with open(conf, "w") as f:
            f.write(AGENT_CONF.format(url=url, dir=self.workdir, uri=URI))
        env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
        with open(os.path.join(self.workdir, "agent.stderr"), "ab") as err:
            # guestha/testing/processes.py: a process group of its own (the
            # shell and the agent it runs), killed with the benchmark
            self.agent = procs.spawn(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 AGENT_SHELL, "sh", vm.workdir, self.hidden, REPO,
                 os.path.join(self.workdir, "repo"), PYTHON, "-W",
                 "ignore", "-m", "guestha.cmd.agent", "--config-file",
                 conf], stdout=err, stderr=err, cwd=REPO, env=env)
        self.cleanups.append(self._stop_agent)
        self.status_socket = os.path.join(self.workdir, "agent.sock")
        vm.wait_booted(BOOT_TIMEOUT)
        self.wait_ready(interval_ms, timeout=BOOT_TIMEOUT)

    def _stop_agent(self):
        if self.agent is not None:
            procs.stop(self.agent, 15)

    def _stop_server(self):
        try:
            self.server.stop(timeout=15)
        except Exception:  # noqa: BLE001 - then kill it
            self.server.kill()

    def instance(self):
        if self.agent.poll() is not None:
            raise RuntimeError("the agent exited (%s): see %s"
                               % (self.agent.returncode, self.workdir))
        try:
            doc = agent_status.fetch(self.status_socket, timeout=5.0)
        except (OSError, ValueError):
            return None
        for inst in doc.get("instances", []):
            if inst["instance"] == self.vm.uuid:
                return inst
        return None

    def poll_sink(self):
        """Read new sink records of the VM; keep the open faults."""
        new = [r for r in self.sink.read()
               if r.get("instance") == self.vm.uuid]
        for record in new:
            if record.get("type") == "fault":
                self.open_faults[record["id"]] = record
            elif record.get("type") == "recovery":
                self.open_faults.pop(record.get("fault_id"), None)
        self.records.extend(new)
        return new

    def wait_ready(self, interval_ms, timeout=30.0, answers=2):
        """No open fault; MONITORED at ``interval_ms``, ``answers`` more
        healthy answers than now."""
        wait_until(lambda: not self.poll_sink() and not self.open_faults,
                   timeout, "the open faults to recover", interval=0.02)
        first = self.instance()
        base = first["counters"]["answers"] if first else 0

        def ready():
            inst = self.instance()
            return (inst is not None and inst["state"] == "MONITORED"
                    and inst["interval_ms"] == interval_ms
                    and inst["fault"] is None
                    and inst["counters"]["answers"] >= base + answers
                    and (inst["last_answer"] or {}).get("healthy"))

        wait_until(ready, timeout, "the instance to be MONITORED at %d ms"
                   % interval_ms, interval=max(0.1, interval_ms / 1000.0))

    def set_interval(self, interval_ms):
        self.vm.write_guest_config(interval_ms=interval_ms)
        self.vm.control("daemon_stop", timeout=30)
        self.vm.control("daemon_start")
        self.wait_ready(interval_ms, timeout=60.0, answers=3)
        time.sleep(2.0)
        self.poll_sink()

    def sample(self, interval_ms):
        """One freeze: a dict of figures, or None (a spurious fault came
        first: recorded, the sample is taken again)."""
        interval = interval_ms / 1000.0
        self.wait_ready(interval_ms)
        time.sleep(random.uniform(0.0, interval))
        early = [r for r in self.poll_sink() if r.get("type") == "fault"]
        if early or self.open_faults:
            self.spurious.extend(early)
            return None
        freeze, err, t1, t4 = timed_signal(self.vm, "signal", "STOP")
        try:
            def fault():
                for record in self.poll_sink():
                    if record.get("type") == "fault":
                        return record, time.time()
                return None

            record, polled = wait_until(fault, 2 * interval + 30.0,
                                        "the fault in the sink", 0.005)
        finally:
            _continue_quietly(self.vm, "signal")
        if record.get("detected_at_ts", t1) < t1:
            self.spurious.append(record)
            return None
        logged = iso_ts(record["logged_at"])
        wait_until(lambda: self.poll_sink() is not None
                   and record["id"] not in self.open_faults, 30.0,
                   "the recovery in the sink", 0.02)
        return {"latency": logged - freeze, "uncertainty": err,
                "detection": record["detected_at_ts"] - freeze,
                "delivery": logged - record["detected_at_ts"],
                "polled": polled - freeze, "kind": record.get("kind"),
                "misses": record.get("misses")}


def run_guestha(args, cleanups, results):
    intervals = [int(x) for x in args.intervals.split(",")]
    rig = GuesthaRig(args, cleanups)
    log("guestha: booting the VM, starting the server and the agent")
    rig.start(intervals[0])
    for interval_ms in intervals:
        log("guestha: interval %d ms", interval_ms)
        rig.set_interval(interval_ms)
        rig.spurious = []
        samples = []
        load_before = loadavg()
        while len(samples) < args.samples:
            figures = rig.sample(interval_ms)
            if figures is not None:
                samples.append(figures)
                if len(samples) % 10 == 0:
                    log("  %d/%d, last %.0f ms", len(samples),
                        args.samples, figures["latency"] * 1000)
            if len(rig.spurious) > args.samples:
                raise RuntimeError("more false alarms than samples at "
                                   "%d ms" % interval_ms)
        results.append(summarise(
            "guestha", interval_ms, samples,
            bound=2 * interval_ms / 1000.0 + 0.1,
            extra={"false_alarms": len(rig.spurious),
                   "loadavg_before": load_before,
                   "loadavg_after": loadavg()}))


# -- Masakari -----------------------------------------------------------------

class StandIn(object):
    """Keystone v3 and masakari-api, as much as the monitor uses."""

    PROJECT = "5a8c5b4f4ea54bd2a0b3e8f8c3d5e6a7"

    def __init__(self):
        self.lock = threading.Lock()
        self.notifications = []
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self):
                with outer.lock:
                    outer.requests.append(("GET", self.path))
                path = self.path.rstrip("/")
                if path == "/identity/v3":
                    self._reply(200, {"version": outer.keystone_version()})
                elif path == "/identity":
                    self._reply(300, {"versions": {"values": [
                        outer.keystone_version()]}})
                elif path == "/instance-ha":
                    self._reply(200, {"versions": [outer.masakari_version()]})
                elif path.startswith("/instance-ha/v1"):
                    self._reply(200, {"version": outer.masakari_version()})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self):
                body = self._body()
                arrived = time.time()
                with outer.lock:
                    outer.requests.append(("POST", self.path))
                if self.path.rstrip("/") == "/identity/v3/auth/tokens":
                    self._reply(201, outer.token(), [
                        ("X-Subject-Token", uuidlib.uuid4().hex)])
                elif self.path.rstrip("/").endswith("/notifications"):
                    note = body.get("notification", {})
                    with outer.lock:
                        outer.notifications.append((arrived, note))
                    reply = dict(note, notification_uuid=str(
                        uuidlib.uuid4()), status="new", id=len(
                        outer.notifications),
                        source_host_uuid=str(uuidlib.uuid4()))
                    self._reply(202, {"notification": reply})
                else:
                    self._reply(404, {"error": "not found"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.server.daemon_threads = True
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def keystone_version(self):
        return {"id": "v3.14", "status": "stable",
                "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self",
                           "href": self.base + "/identity/v3/"}],
                "media-types": [{"base": "application/json", "type":
                                 "application/vnd.openstack.identity-v3"
                                 "+json"}]}

    def masakari_version(self):
        return {"id": "v1.0", "status": "CURRENT", "version": "1.2",
                "min_version": "1.0", "updated": "2016-07-01T11:33:21Z",
                "links": [{"rel": "self",
                           "href": self.base + "/instance-ha/v1/"}]}

    def token(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        fmt = "%Y-%m-%dT%H:%M:%S.000000Z"
        domain = {"id": "default", "name": "Default"}
        url = "%s/instance-ha/v1/%s" % (self.base, self.PROJECT)
        return {"token": {
            "methods": ["password"], "audit_ids": [uuidlib.uuid4().hex],
            "issued_at": now.strftime(fmt),
            "expires_at": (now + datetime.timedelta(hours=2)).strftime(fmt),
            "user": {"id": "0d1c6e2a4b3f4e5d8c7b6a5f4e3d2c1b",
                     "name": "masakari", "domain": domain},
            "project": {"id": self.PROJECT, "name": "service",
                        "domain": domain},
            "roles": [{"id": "1", "name": "admin"}],
            "catalog": [{"type": "instance-ha", "name": "masakari",
                         "id": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
                         "endpoints": [
                             {"id": "e%d" % i, "interface": iface,
                              "region": "RegionOne",
                              "region_id": "RegionOne", "url": url}
                             for i, iface in enumerate(
                                 ("public", "internal", "admin"))]}]}}

    def notifications_of(self, instance_uuid, since):
        with self.lock:
            return [(t, n) for t, n in self.notifications
                    if t >= since and n.get("payload", {}).get(
                        "instance_uuid") == instance_uuid]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


MONITOR_CONF = """\
[DEFAULT]
debug = true
log_file = {log}
use_stderr = false

[libvirt]
connection_uri = {uri}

[introspectiveinstancemonitor]
qemu_guest_agent_sock_path = {sock}

[api]
auth_type = password
auth_url = {auth_url}
username = masakari
password = masakari
project_name = service
user_domain_name = Default
project_domain_name = Default
"""


class MasakariVM(object):
    """One VM with qemu-ga and its own monitor."""

    NOT_RESPONDING = "qemu-ga_guest-ping is not responding"

    def __init__(self, index, workdir, standin, monitor_bin, cleanups):
        self.index = index
        self.standin = standin
        self.vm = vmlib.GuestVM("mk%d" % index, with_channel=False,
                                with_qemu_ga=True, qemu_ga_first=True)
        cleanups.append(self.vm.close)
        self.log_path = os.path.join(workdir, "monitor-%d.log" % index)
        self.conf = os.path.join(workdir, "monitor-%d.conf" % index)
        with open(self.conf, "w") as f:
            f.write(MONITOR_CONF.format(
                log=self.log_path, uri=URI,
                sock=re.escape(self.vm.qemu_ga_path),
                auth_url=standin.base + "/identity/v3"))
        self.monitor_bin = monitor_bin
        self.workdir = workdir
        self.proc = None
        self.samples = []
        self.error = None
        cleanups.append(self.stop_monitor)

    def start_monitor(self):
        with open(self.log_path + ".stderr", "ab") as err:
            self.proc = procs.spawn(
                [self.monitor_bin, "--config-file", self.conf],
                stdout=err, stderr=err, cwd=self.workdir)

    def stop_monitor(self):
        if self.proc is not None:
            procs.stop(self.proc, 15)

    def failures_since(self, since):
        """Wall times of the failed pings logged after ``since``."""
        out = []
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if (self.NOT_RESPONDING in line
                            and self.vm.uuid in line):
                        stamp = time.mktime(time.strptime(
                            line[:19], "%Y-%m-%d %H:%M:%S"))
                        stamp += float("0" + line[19:23])
                        if stamp >= since:
                            out.append(stamp)
        except OSError:
            pass
        return out

    def wait_healthy(self, since, stop):
        """At least two ping cycles with no failure logged in the last
        3 s: the monitor is back in 'healthy' (reported -> discovery ->
        healthy takes two successful pings)."""
        quiet_from = since
        while not stop.is_set():
            deadline = quiet_from + 2 * MK_INTERVAL + MK_TIMEOUT + 3
            if time.time() >= deadline:
                failures = self.failures_since(quiet_from)
                if not failures:
                    return
                quiet_from = failures[-1] + MK_TIMEOUT
            stop.wait(0.5)
        raise Interrupted()

    def booted(self):
        self.vm.wait_booted(BOOT_TIMEOUT)
        wait_until(lambda: self.vm.control("qga_pid")["pid"], 60,
                   "qemu-ga in %s" % self.vm.name, interval=0.5)

    def run(self, count, stop):
        try:
            self.booted()
            self.wait_healthy(time.time(), stop)
            while len(self.samples) < count and not stop.is_set():
                stop.wait(random.uniform(0.0, MK_INTERVAL))
                if stop.is_set():
                    break
                freeze, err, t1, t4 = timed_signal(self.vm, "qga_signal",
                                                   "STOP")
                try:
                    def notified(since=t1):
                        if stop.is_set():
                            raise Interrupted()
                        return self.standin.notifications_of(self.vm.uuid,
                                                             since)
                    arrived, note = wait_until(
                        notified, 6 * MK_INTERVAL * (MK_THRESHOLD + 2),
                        "the notification of %s" % self.vm.name, 0.05)[0]
                finally:
                    _continue_quietly(self.vm, "qga_signal")
                self.samples.append({
                    "latency": arrived - freeze, "uncertainty": err,
                    "failed_pings": len(self.failures_since(t1))})
                log("  masakari %s: %d/%d, %.1f s", self.vm.label,
                    len(self.samples), count, arrived - freeze)
                # The monitor notifies once per instance until libvirt
                # reports the domain STARTED (qemu_utils.resetJournal):
                # restart it, as Masakari's recovery would.
                self.vm.destroy()
                self.vm.start()
                self.booted()
                self.wait_healthy(time.time(), stop)
        except Interrupted:
            pass
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            self.error = "%s: %s" % (type(exc).__name__, exc)
            stop.set()


def run_masakari(args, cleanups, results):
    monitor_bin = os.path.join(args.masakari_venv, "bin",
                               "masakari-introspectiveinstancemonitor")
    if not os.path.exists(monitor_bin):
        raise RuntimeError("%s not found: install masakari-monitors "
                           "there (see --help)" % monitor_bin)
    workdir = tempfile.mkdtemp(prefix="ghlat-%d-mk-" % os.getpid(),
                               dir="/var/tmp")
    cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    standin = StandIn()
    cleanups.append(standin.stop)
    nvms = max(1, min(args.masakari_vms, args.masakari_samples))
    counts = [args.masakari_samples // nvms
              + (1 if i < args.masakari_samples % nvms else 0)
              for i in range(nvms)]
    vms = [MasakariVM(i + 1, workdir, standin, monitor_bin, cleanups)
           for i in range(nvms)]
    log("masakari: %d VMs, %s samples each", nvms, counts)
    for m in vms:
        m.vm.start()
        m.start_monitor()
    stop = threading.Event()
    cleanups.append(stop.set)
    load_before = loadavg()
    threads = [threading.Thread(target=m.run, args=(n, stop), daemon=True)
               for m, n in zip(vms, counts)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    errors = ["%s: %s" % (m.vm.name, m.error) for m in vms if m.error]
    samples = [s for m in vms for s in m.samples]
    for m in vms:
        if m.proc.poll() is not None:
            errors.append("monitor %d exited (%s)" % (m.index,
                                                      m.proc.returncode))
    extra = {"vms": nvms, "loadavg_before": load_before,
             "loadavg_after": loadavg(),
             "failed_pings_per_detection": sorted(
                 set(s["failed_pings"] for s in samples)),
             "notifications": len(standin.notifications),
             "settings": {"guest_monitoring_interval": MK_INTERVAL,
                          "guest_monitoring_timeout": MK_TIMEOUT,
                          "guest_monitoring_failure_threshold":
                              MK_THRESHOLD}}
    if errors:
        extra["errors"] = errors
        log("masakari: errors: %s", errors)
    if samples:
        results.append(summarise("masakari-introspective", MK_INTERVAL *
                                 1000, samples, bound=None, extra=extra))
    elif errors:
        raise RuntimeError("masakari: no sample: %s" % errors)


# -- output -------------------------------------------------------------------

def summarise(method, interval_ms, samples, bound, extra):
    lat = [s["latency"] for s in samples]
    out = {"method": method, "interval_ms": interval_ms,
           "samples": len(lat), "p50_s": percentile(lat, 50),
           "p99_s": percentile(lat, 99), "max_s": max(lat),
           "min_s": min(lat), "bound_s": bound,
           "exceeded": (sum(1 for x in lat if x > bound)
                        if bound is not None else None),
           "max_uncertainty_s": max(s["uncertainty"] for s in samples),
           "latencies_s": [round(x, 4) for x in lat],
           "uncertainties_s": [round(s["uncertainty"], 4)
                               for s in samples]}
    for key in ("detection", "delivery", "polled"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[key + "_p50_s"] = percentile(values, 50)
            out[key + "_p99_s"] = percentile(values, 99)
    out.update(extra)
    return out


def print_table(results):
    def ms(v):
        return "-" if v is None else "%.0f" % (v * 1000)

    print()
    print("%-24s %9s %7s %9s %9s %9s %16s" % (
        "method", "interval", "samples", "p50 ms", "p99 ms", "max ms",
        "bound/exceeded"))
    for r in results:
        bound = ("%s ms / %d" % (ms(r["bound_s"]), r["exceeded"])
                 if r["bound_s"] is not None else "-")
        print("%-24s %6d ms %7d %9s %9s %9s %16s" % (
            r["method"], r["interval_ms"], r["samples"], ms(r["p50_s"]),
            ms(r["p99_s"]), ms(r["max_s"]), bound))
    for r in results:
        if "detection_p50_s" in r:
            print("  guestha %d ms: freeze->agent decision p50 %s p99 %s ms;"
                  " decision->sink p50 %s p99 %s ms; false alarms %d;"
                  " timing +-%s ms" % (
                      r["interval_ms"], ms(r["detection_p50_s"]),
                      ms(r["detection_p99_s"]), ms(r["delivery_p50_s"]),
                      ms(r["delivery_p99_s"]), r["false_alarms"],
                      ms(r["max_uncertainty_s"])))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--samples", type=int, default=50,
                        help="guestha freezes per interval (50)")
    parser.add_argument("--intervals", default="100,400,1000",
                        help="guestha intervals in ms (100,400,1000)")
    parser.add_argument("--masakari-samples", type=int, default=50,
                        help="Masakari freezes in all (50)")
    parser.add_argument("--masakari-vms", type=int, default=5,
                        help="VMs measured at once for Masakari (5)")
    parser.add_argument("--masakari-venv",
                        default=os.path.join(REPO, ".venv-masakari"))
    parser.add_argument("--only", choices=("guestha", "masakari"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (libvirtd's QEMU runs as root)")
    vmlib.build_assets()

    def interrupted(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, interrupted)
    cleanups = []
    results = []
    status = 0
    started = time.time()
    try:
        if args.only in (None, "guestha"):
            run_guestha(args, cleanups, results)
        if args.only in (None, "masakari"):
            # the guestha rig is removed first: its VM would load the CPU
            _run_cleanups(cleanups)
            run_masakari(args, cleanups, results)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except Exception as exc:  # noqa: BLE001 - report, clean up
        log("failed: %s: %s", type(exc).__name__, exc)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _run_cleanups(cleanups)
    if results:
        print_table(results)
        print(json.dumps({"benchmark": "detection_latency",
                          "argv": sys.argv[1:], "cpus": os.cpu_count(),
                          "accel": "tcg", "started": started,
                          "duration_s": time.time() - started,
                          "loadavg_end": loadavg(), "results": results}))
    return status


def _run_cleanups(cleanups):
    while cleanups:
        action = cleanups.pop()
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - best effort
            log("cleanup: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":
    sys.exit(main())
