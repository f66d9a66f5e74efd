# SPDX-License-Identifier: Apache-2.0
"""Drive a real guestha-agent for the functional tests of
``tests/functional/test_agent.py``.

What runs where
---------------
* **The agent**: ``python -m guestha.cmd.agent --config-file X`` in a child
  process (:class:`AgentProcess`), with a configuration file written per
  test: the broker vhost of the test, ``[libvirt] connection_uri`` =
  libvirtd's shared test driver, no hot-plug (there is no Nova), state,
  sockets and status socket in the test's directories.  Its status is read
  as ``guestha-agent --status --json`` reads it
  (:func:`guestha.agent.status.fetch`).
* **The controller**: ``tests/functional/controller_stub.py`` in a child
  process (:class:`ControllerStub`); it appends every ``report_events``
  event to a JSON-lines file, which :meth:`ControllerStub.events` reads.
* **Guests**: real guest daemons (:class:`GuestProcess`,
  ``python -m guestha_guest --port unix-listen:PATH``), playing QEMU's side
  of each channel on a UNIX socket; :class:`GuestFarm`, one thread serving
  many such sockets with the protocol module's guest state machine (for
  scale, where 50 daemon processes would be too heavy); and a hostile guest,
  ``python -m tests.functional.agentctl flood PATH`` (:func:`flood`).
* **Domains**: ``test+unix:///default``, libvirt's test driver served by
  libvirtd: one state shared by every connection, with lifecycle events
  across connections.  :class:`Domains` defines domains whose guestha
  channel points at a guest's socket and changes their state with plain
  libvirt calls, as Nova would; the agent learns of it through events.

The test driver's state is shared with whatever else uses libvirtd, and
an agent serves every domain it sees: :func:`foreign_agents` finds other
agents on it (they would connect to these tests' channels too).

Every child process is registered with a :class:`Processes`, whose
:meth:`~Processes.kill_all` (a fixture's teardown) kills whatever is left,
stopped processes too, even after a failure.  They are started by
``tools/proc.py``: each in a process group of its own (a stop reaches
what it started) and killed with the test process, however that ends.
"""

import errno
import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid as uuidlib

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import messages
from guestha_guest.protocol.session import BadLine
from guestha_guest.protocol.session import GuestSession
from guestha_guest.protocol.session import Send
from tests.support.wait import wait_until
from tools import proc as procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PYTHON = sys.executable
STUB = os.path.join(ROOT, "tests", "functional", "controller_stub.py")
#: libvirtd's test driver: one state for all connections (see above).
URI = "test+unix:///default"
#: Names of the domains these tests define; anything else in the shared
#: test driver (the built-in "test" domain, other suites' domains) is not
#: theirs to touch.
DOMAIN_PREFIX = "ghft-"


def short_tempdir(prefix="ghft-"):
    """A directory for UNIX sockets: pytest's tmp_path can be longer than
    the 107 bytes a socket address allows."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def file_tail(path, chars=4000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError as exc:
        return "(cannot read %s: %s)" % (path, exc)


# -- child processes ----------------------------------------------------------

class Processes(object):
    """Every child process of a test, so that teardown can end them all."""

    def __init__(self):
        self._procs = []

    def spawn(self, argv, log_path, **kwargs):
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        env.update(kwargs.pop("env", {}))
        with open(log_path, "ab") as log:
            proc = procs.spawn(
                argv, stdout=kwargs.pop("stdout", log), stderr=log, cwd=ROOT,
                env=env, **kwargs)
        self._procs.append(proc)
        return proc

    def running(self):
        return [proc for proc in self._procs if proc.poll() is None]

    def kill_all(self):
        """SIGKILL every process (and its group) still there."""
        for proc in self._procs:
            procs.signal_group(proc, signal.SIGKILL)
        for proc in self._procs:
            procs.kill(proc)
        self._procs = []


def terminate(proc, timeout=15.0):
    """SIGTERM (the clean stop), then SIGKILL; returns the exit code."""
    return terminate_all([proc], timeout)[0]


def terminate_all(processes, timeout=15.0):
    """:func:`terminate` several processes at once (their clean stops
    take seconds each); returns their exit codes."""
    return procs.stop_all(processes, timeout)


def foreign_agents(exclude=()):
    """Other guestha agents that watch the shared test driver, as
    ``[(pid, config files)]``.

    An agent monitors every domain of its libvirt connection, so an agent
    of another test run or of a benchmark on ``test+unix:///default``
    connects to this test's channel sockets too, and a guest (like QEMU)
    serves one host at a time: whichever agent connects first has it.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = [a.decode("utf-8", "replace")
                        for a in f.read().split(b"\0") if a]
            cwd = os.readlink("/proc/%s/cwd" % name)
        except OSError:
            continue  # gone, or not ours to look at
        if "--status" in argv:
            continue
        # by its configuration, not its command (an agent may run under a
        # profiler): any process configured for the test driver
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1])
                   if a == "--config-file"]
        configs += [a.split("=", 1)[1] for a in argv
                    if a.startswith("--config-file=")]
        for config in configs:
            try:
                with open(os.path.join(cwd, config)) as f:
                    text = f.read()
                watches = URI in text and "[agent]" in text
            except OSError:
                watches = True  # cannot tell: assume the worst
            if watches:
                found.append((int(name), configs))
                break
    return found


# -- the controller stub ------------------------------------------------------

class ControllerStub(object):
    """``controller_stub.py`` on the test's vhost; records what reached it.
    """

    def __init__(self, procs, url, workdir):
        self.procs = procs
        self.url = url
        self.out = os.path.join(workdir, "controller-events.jsonl")
        self.casts_path = os.path.join(workdir, "controller-casts.jsonl")
        self.log = os.path.join(workdir, "controller.log")
        self.proc = None

    def start(self, timeout=60.0):
        self.proc = self.procs.spawn(
            [PYTHON, "-W", "ignore", STUB, "--url", self.url, "--out",
             self.out, "--casts", self.casts_path], self.log,
            stdout=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        seen = b""
        deadline = time.monotonic() + timeout
        try:
            while b"ready\n" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError("controller stub did not start:\n"
                                         + file_tail(self.log))
                if sel.select(min(left, 0.5)):
                    seen += os.read(self.proc.stdout.fileno(), 4096)
        finally:
            sel.close()
        return self

    def stop(self):
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    @staticmethod
    def _read_lines(path):
        if not os.path.exists(path):
            return []
        with open(path) as f:
            text = f.read()
        records = []
        for line in text.split("\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # the empty tail, or a line being written
        return records

    def records(self):
        """``[{"dup": bool, "event": {...}}, ...]``, in arrival order."""
        return self._read_lines(self.out)

    def events(self, instance=None, type_=None):
        """Events received (duplicates included), optionally of one
        instance and one type (``"fault"``, ``"recovery"``, ``"state"``);
        without a type, faults and recoveries only (the agent also reports
        each instance's state: :mod:`guestha.agent.statereport`)."""
        return [r["event"] for r in self.records()
                if (instance is None or r["event"]["instance"] == instance)
                and (r["event"]["type"] == type_ if type_ is not None
                     else r["event"]["type"] != "state")]

    def faults(self, instances=None):
        return [e for e in self.events(type_="fault")
                if instances is None or e["instance"] in instances]

    def casts(self, method=None):
        return [c for c in self._read_lines(self.casts_path)
                if method is None or c["method"] == method]


# -- the agent ----------------------------------------------------------------

def agent_conf(transport_url, host, state_dir, socket_dir, status_socket,
               uri=None, log_file=None, min_interval_ms=100,
               channel_lost_grace=3.0, reconcile_interval=60.0,
               alive_interval=1.0, debug=None, **groups):
    """The text of a test agent's configuration: quick retries and
    reconnects, thresholds of 1, no hot-plug; logs to ``log_file``, else
    to stderr, with debug logs if ``debug`` (default: the environment's
    ``GUESTHA_TEST_DEBUG``, else false).  ``groups``: more options,
    ``agent={"hotplug": "true"}`` style, over the defaults."""
    if debug is None:
        debug = os.environ.get("GUESTHA_TEST_DEBUG", "false")
    sections = {
        "DEFAULT": {"transport_url": transport_url, "debug": debug},
        "agent": {"host": host, "state_dir": state_dir,
                  "socket_dir": socket_dir, "status_socket": status_socket,
                  "hotplug": "false", "min_interval_ms": min_interval_ms,
                  "max_interval_ms": 60000, "miss_threshold": 1,
                  "unhealthy_threshold": 1, "confirm_timeout": 2.0,
                  "channel_lost_grace": channel_lost_grace,
                  "sync_retry_min": 0.5, "sync_retry_max": 2},
        "libvirt": {"connection_uri": uri or URI,
                    "reconnect_interval": 1.0,
                    "reconcile_interval": reconcile_interval},
        "reporting": {"alive_interval": alive_interval,
                      "report_timeout": 5, "retry_backoff_min": 0.2,
                      "retry_backoff_max": 2},
        # reconnect after a broker outage within about a second, not 30
        "oslo_messaging_rabbit": {"rabbit_retry_interval": 1,
                                  "rabbit_retry_backoff": 1,
                                  "rabbit_interval_max": 2},
    }
    if log_file is None:
        sections["DEFAULT"]["use_stderr"] = "true"
    else:
        sections["DEFAULT"].update(log_file=log_file, use_stderr="false")
    for name, values in groups.items():
        sections.setdefault(name, {}).update(values)
    return "".join(
        "[%s]\n%s\n" % (name, "".join("%s = %s\n" % kv
                                      for kv in values.items()))
        for name, values in sections.items())


_RECONCILED_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) \d+ INFO "
    r"guestha\.agent\.virt .*reconciled (\d+) active domain\(s\) with "
    r"libvirt in ([\d.]+) ms")


class AgentProcess(object):
    """``guestha-agent`` in a child process, configured for one test."""

    def __init__(self, procs, workdir, sockdir, transport_url, host=None,
                 min_interval_ms=100, channel_lost_grace=3.0,
                 reconcile_interval=60.0, alive_interval=1.0):
        self.procs = procs
        self.host = host or "ghft-host-%s" % uuidlib.uuid4().hex[:8]
        self.state_dir = os.path.join(workdir, "agent-state")
        self.status_socket = os.path.join(sockdir, "agent.sock")
        self.config = os.path.join(workdir, "agent.conf")
        self.log = os.path.join(workdir, "agent.log")
        with open(self.config, "w") as f:
            f.write(agent_conf(
                transport_url, self.host, self.state_dir,
                os.path.join(sockdir, "channels"), self.status_socket,
                min_interval_ms=min_interval_ms,
                channel_lost_grace=channel_lost_grace,
                reconcile_interval=reconcile_interval,
                alive_interval=alive_interval, debug="true"))
        self.proc = None
        self.started_at = None  # time.time() of the latest start

    def start(self, timeout=60.0):
        """Start the agent and wait until it answers on its status socket
        with libvirt connected."""
        self._log_offset = (os.path.getsize(self.log)
                            if os.path.exists(self.log) else 0)
        self.started_at = time.time()
        self.proc = self.procs.spawn(
            [PYTHON, "-W", "ignore", "-m", "guestha.cmd.agent",
             "--config-file", self.config], self.log)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("the agent exited (%s):\n%s" % (
                    self.proc.returncode, file_tail(self.log)))
            status = self.try_status()
            return status is not None and status["libvirt_connected"]

        wait_until(ready, timeout, "the agent to start", interval=0.05)
        return self

    def stop(self, timeout=15.0):
        """SIGTERM, the agent's clean stop; returns its exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout)
        self.proc = None
        return code

    def status(self):
        from guestha.agent import status
        return status.fetch(self.status_socket, timeout=10.0)

    def try_status(self):
        try:
            return self.status()
        except (OSError, ValueError):
            return None

    def instance(self, uuid, status=None):
        """One instance's status entry, or None if the agent has none."""
        status = status or self.status()
        for inst in status["instances"]:
            if inst["instance"] == uuid:
                return inst
        return None

    def instances(self, uuids, status=None):
        """``{uuid: entry or None}`` for the given instances."""
        status = status or self.status()
        by_uuid = {i["instance"]: i for i in status["instances"]}
        return {u: by_uuid.get(u) for u in uuids}

    def wait_state(self, uuids, state="MONITORED", timeout=20.0,
                   min_answers=0):
        """Wait until every instance is in ``state`` (with at least
        ``min_answers`` answers counted); returns their entries."""
        uuids = [uuids] if isinstance(uuids, str) else list(uuids)

        def reached():
            entries = self.instances(uuids)
            if all(e is not None and e["state"] == state
                   and e["counters"]["answers"] >= min_answers
                   for e in entries.values()):
                return entries
            return None

        try:
            return wait_until(reached, timeout, "%d instance(s) to be %s"
                              % (len(uuids), state), interval=0.05)
        except AssertionError as exc:
            entries = self.instances(uuids)
            raise AssertionError("%s; now: %s" % (exc, json.dumps(
                {u: e and (e["state"], e["note"], e["counters"])
                 for u, e in entries.items()})))

    def first_reconcile(self):
        """The first reconcile logged since the latest start, as
        ``(started, ended, domains)``: times as time.time(), to the
        millisecond; or None if there was none yet."""
        with open(self.log, errors="replace") as f:
            f.seek(self._log_offset)
            for line in f:
                match = _RECONCILED_RE.match(line)
                if match:
                    ended = time.mktime(time.strptime(
                        match.group(1), "%Y-%m-%d %H:%M:%S")) + int(
                            match.group(2)) / 1000.0
                    started = ended - float(match.group(4)) / 1000.0
                    return started, ended, int(match.group(3))
        return None

    def logged(self, text):
        """Whether the agent logged ``text`` since its latest start."""
        with open(self.log, errors="replace") as f:
            f.seek(self._log_offset)
            return any(text in line for line in f)

    def log_tail(self, chars=6000):
        return file_tail(self.log, chars)


# -- guest daemons ------------------------------------------------------------

GUEST_INI = """\
[guestha]
name = {name}
interval_ms = {interval_ms}
corrective_action = {action}
log_level = INFO

[health]
hook_dir = {hook_dir}
hook_timeout_ms = 1000

[app_api]
enabled = false
"""

#: A health hook: unhealthy, with the first line of ``<hook>.reason`` as
#: its reason, while that file exists.
HOOK = """\
#!/bin/sh
reason="$0.reason"
if [ -e "$reason" ]; then
    cat "$reason"
    exit 1
fi
exit 0
"""


class GuestProcess(object):
    """A real guest daemon serving one channel socket, as QEMU would."""

    def __init__(self, procs, workdir, sockdir, name, interval_ms=200,
                 action="reboot"):
        self.procs = procs
        self.name = name
        self.channel = os.path.join(sockdir, "%s.sock" % name)
        self.hook_dir = os.path.join(workdir, "%s-hooks" % name)
        self.config = os.path.join(workdir, "%s.ini" % name)
        self.log = os.path.join(workdir, "%s.log" % name)
        os.makedirs(self.hook_dir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(GUEST_INI.format(name=name, interval_ms=interval_ms,
                                     action=action, hook_dir=self.hook_dir))
        self.proc = None

    def start(self, wait=True):
        self.proc = self.procs.spawn(
            [PYTHON, "-m", "guestha_guest", "--config", self.config,
             "--port", "unix-listen:%s" % self.channel], self.log)
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout=15.0):
        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("guest daemon %s exited:\n%s"
                                     % (self.name, file_tail(self.log)))
            return os.path.exists(self.channel)
        wait_until(listening, timeout,
                   "guest daemon %s to listen" % self.name)

    def stop(self, timeout=10.0):
        """SIGTERM: the daemon says exit and stops."""
        code = terminate(self.proc, timeout)
        return code

    def kill(self):
        procs.kill(self.proc)

    def hang(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def unhang(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def add_hook(self, name="10-check"):
        path = os.path.join(self.hook_dir, name)
        with open(path, "w") as f:
            f.write(HOOK)
        os.chmod(path, 0o755)
        return path

    @staticmethod
    def set_unhealthy(hook_path, reason):
        tmp = hook_path + ".reason.tmp"
        with open(tmp, "w") as f:
            f.write(reason + "\n")
        os.replace(tmp, hook_path + ".reason")

    @staticmethod
    def set_healthy(hook_path):
        try:
            os.unlink(hook_path + ".reason")
        except FileNotFoundError:
            pass


def libvirtd_pid():
    """The pid of the running libvirtd, or None."""
    out = subprocess.run(["pgrep", "-x", "libvirtd"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.split()
    return int(out[0]) if out else None


# -- domains in libvirtd's test driver ----------------------------------------

DOMAIN_XML = """\
<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <controller type='virtio-serial'/>
    <channel type='unix'>
      <source mode='bind' path='{path}'/>
      <target type='virtio' name='{port}'/>
    </channel>
  </devices>
</domain>
"""


def domain_xml(name, uuid, channel_path):
    """A test-driver domain whose guestha channel is served at
    ``channel_path``."""
    return DOMAIN_XML.format(name=name, uuid=uuid, path=channel_path,
                             port=p.PORT_NAME)


def write_node(path, domains):
    """A test-driver node file with running domains ``[(name, uuid,
    channel socket path)]``; returns the libvirtd URI that loads it: each
    connection to it gets a private copy of these domains (one per
    simulated compute host)."""
    with open(path, "w") as f:
        f.write("<node>\n")
        for name, uuid, channel in domains:
            f.write(domain_xml(name, uuid, channel))
        f.write("</node>\n")
    return "test+unix://" + path


class Domains(object):
    """Test-driver domains of one test: defined, started, paused, resumed,
    destroyed from the test process's own libvirt connection."""

    def __init__(self):
        import libvirt
        self._libvirt = libvirt
        self.conn = libvirt.open(URI)
        self._mine = {}  # uuid -> virDomain

    def define(self, channel_path, start=True):
        """A new domain (``ghft-<random>``, a random uuid4) whose guestha
        channel is served at ``channel_path``; returns its uuid."""
        uuid = str(uuidlib.uuid4())
        name = "%s%s" % (DOMAIN_PREFIX, uuid[:13])
        dom = self.conn.defineXML(domain_xml(name, uuid, channel_path))
        self._mine[uuid] = dom
        if start:
            dom.create()
        return uuid

    def suspend(self, uuid):
        self._mine[uuid].suspend()

    def resume(self, uuid):
        self._mine[uuid].resume()

    def destroy(self, uuid):
        self._mine[uuid].destroy()

    def state(self, uuid):
        return self._mine[uuid].state()[0]

    def others(self):
        """How many active domains of the shared driver are not this
        test's (the built-in "test" domain, other suites' domains); None
        if libvirtd does not answer."""
        try:
            doms = self.conn.listAllDomains(
                self._libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except self._libvirt.libvirtError:
            return None
        return len([d for d in doms if d.UUIDString() not in self._mine])

    def remove(self, uuid):
        dom = self._mine.pop(uuid)
        try:
            if dom.isActive():
                dom.destroy()
        except self._libvirt.libvirtError:
            pass
        try:
            dom.undefine()
        except self._libvirt.libvirtError:
            pass

    def close(self):
        """Destroy and undefine every domain of this test."""
        for uuid in list(self._mine):
            self.remove(uuid)
        try:
            self.conn.close()
        except self._libvirt.libvirtError:
            pass


# -- the guest farm: many protocol-level guests in one thread -----------------

class _FarmGuest(object):
    """One listening channel socket and, while the host is connected, the
    protocol's guest side (a GuestSession), as the daemon runs it: sync on
    connect, answer the host's syncs, register, answer every challenge
    healthy."""

    def __init__(self, path, name, interval_ms):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.sock = None
        self.session = GuestSession(
            p.Init(name=name, interval_ms=interval_ms,
                   corrective_action="none"),
            lambda now: (True, None, None))
        self.answers = 0
        self.registrations = 0
        self.protocol_errors = 0

    def accept(self, sel, now):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.sock is not None:
            sock.close()  # one host at a time, as QEMU
            return
        sock.setblocking(False)
        self.sock = sock
        sel.register(sock, selectors.EVENT_READ, ("data", self))
        self.apply(self.session.connect(now), now)

    def write(self, data):
        if self.sock is None:
            return
        try:
            self.sock.send(data)
        except (BlockingIOError, OSError):
            pass  # dropped, as the daemon's port would; sync recovers

    def readable(self, sel, now):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(sel)
            return
        self.apply(self.session.receive(data, now), now)

    def apply(self, outputs, now):
        for out in outputs:
            if isinstance(out, Send):
                self.write(out.data)
            elif isinstance(out, hb.Acknowledged):
                self.registrations += 1
            elif isinstance(out, hb.ChallengeAnswered):
                self.answers += 1
            elif isinstance(out, BadLine):
                self.protocol_errors += 1

    def tick(self, now):
        self.apply(self.session.tick(now), now)

    def next_timer(self):
        return self.session.next_timer()

    def close(self, sel):
        if self.sock is not None:
            sel.unregister(self.sock)
            self.sock.close()
        self.sock = None
        self.session.disconnect()


class GuestFarm(object):
    """Guests for ``paths`` (one channel socket each), served by one
    thread of the test process."""

    def __init__(self, paths, interval_ms=200):
        self.guests = [_FarmGuest(path, "farm-%d" % i, interval_ms)
                       for i, path in enumerate(paths)]
        self._sel = selectors.DefaultSelector()
        for guest in self.guests:
            self._sel.register(guest.listener, selectors.EVENT_READ,
                               ("accept", guest))
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="guest-farm")
        self.error = None

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        try:
            while not self._stopping:
                now = time.monotonic()
                timers = [g.next_timer() for g in self.guests]
                timers = [t for t in timers if t is not None]
                wait = 0.1 if not timers else max(
                    0.0, min(0.1, min(timers) - now))
                for key, _mask in self._sel.select(wait):
                    kind, guest = key.data
                    if kind == "accept":
                        guest.accept(self._sel, time.monotonic())
                    else:
                        guest.readable(self._sel, time.monotonic())
                now = time.monotonic()
                for guest in self.guests:
                    guest.tick(now)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            raise

    def stop(self):
        self._stopping = True
        self._thread.join(5)
        for guest in self.guests:
            guest.close(self._sel)
            guest.listener.close()
            try:
                os.unlink(guest.path)
            except OSError:
                pass
        self._sel.close()


# -- the hostile guest --------------------------------------------------------

def junk_chunk(rng):
    """About 64 KiB of what a hostile guest sends: invalid JSON, over-long
    lines, random bytes, and valid messages that are wrong here."""
    parts = []
    while sum(len(x) for x in parts) < 64 * 1024:
        pick = rng.randrange(8)
        if pick == 0:
            parts.append(b"{not json at all\n")
        elif pick == 1:
            parts.append(b"x" * (2 * p.MAX_LINE) + b"\n")
        elif pick == 2:
            parts.append(bytes(rng.getrandbits(8) for _ in range(512))
                         + b"\n")
        elif pick == 3:
            # a well-formed answer to a challenge never sent
            parts.append(messages.encode(p.ChallengeResponse(
                ref=rng.randrange(1, 2 ** 31), challenge="f" * 32,
                healthy=True), rng.randrange(1, 2 ** 31)))
        elif pick == 4:
            parts.append(b'{"v":99,"app":"heartbeat","type":"init",'
                         b'"seq":1}\n')
        elif pick == 5:
            parts.append(b'{"v":1,"app":"heartbeat","type":"challenge",'
                         b'"seq":2,"challenge":"abc","deadline_ms":1}\n')
        elif pick == 6:
            parts.append(b'{"v":1,"app":"nonsense","type":"x","seq":3}\n')
        else:
            parts.append(b"[1,2,3]\n")
    return b"".join(parts)


def flood(path, seconds=600.0):
    """Serve the channel socket ``path`` as a hostile guest would: answer
    the host's syncs (so the host parses what follows), then send junk as
    fast as the socket takes it; after a reset, wait for the next
    connection and start over."""
    rng = random.Random(7)
    chunk = junk_chunk(rng)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener.bind(path)
    listener.listen(4)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        listener.settimeout(1.0)
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            continue
        conn = p.Connection(p.GUEST)
        try:
            # answer the host's first sync before any junk, so that the
            # host turns READY and parses the junk rather than dropping it
            _wait_for_sync(conn, sock)
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        view, offset = memoryview(chunk), 0
        try:
            while time.monotonic() < end:
                for _key, mask in sel.select(1.0):
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionResetError("host closed")
                        _answer_syncs(conn, sock, data)
                    if mask & selectors.EVENT_WRITE:
                        try:
                            offset += sock.send(view[offset:])
                        except BlockingIOError:
                            pass
                        if offset >= len(chunk):
                            offset = 0
        except OSError as exc:
            if exc.errno not in (None, errno.EPIPE, errno.ECONNRESET):
                raise
        finally:
            sel.close()
            sock.close()


def _wait_for_sync(conn, sock, timeout=5.0):
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("host closed")
        if _answer_syncs(conn, sock, data):
            return
    raise socket.timeout("no sync from the host")


def _answer_syncs(conn, sock, data):
    """Answer every sync in ``data``; True if there was one."""
    try:
        conn.receive_data(data)
    except p.LocalProtocolError:
        return False
    answered = False
    while True:
        try:
            event = conn.next_event()
        except p.RemoteProtocolError:
            continue
        if event is p.NEED_DATA:
            return answered
        if isinstance(event, p.Sync):
            timeout = sock.gettimeout()
            sock.settimeout(5.0)
            try:
                sock.sendall(conn.answer_sync(event))
            finally:
                sock.settimeout(timeout)
            answered = True


class HostileGuest(object):
    """:func:`flood` in a child process (its own core, not the test's
    GIL)."""

    def __init__(self, procs, workdir, sockdir):
        self.procs = procs
        self.channel = os.path.join(sockdir, "hostile.sock")
        self.log = os.path.join(workdir, "hostile.log")
        self.proc = None

    def start(self):
        self.proc = self.procs.spawn(
            [PYTHON, "-m", "tests.functional.agentctl", "flood",
             self.channel], self.log)
        wait_until(lambda: os.path.exists(self.channel), 15,
                   "the hostile guest to listen")
        return self

    def stop(self):
        terminate(self.proc, 5)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "flood":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        flood(argv[1])
        return 0
    print(textwrap.dedent("""\
        usage: python -m tests.functional.agentctl flood PATH
          serve PATH as a hostile guest channel (see flood())"""),
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
