# SPDX-License-Identifier: Apache-2.0
"""Drive a real guestha-agent, its controller and its guests for the
functional tests (``tests/functional/test_agent.py`` and the suites that
start an agent).

What runs where
---------------
* **The agent**: ``python -m guestha.cmd.agent --config-file X`` in a child
  process (:class:`AgentProcess`), with a configuration file written per
  test (:func:`agent_conf`): the broker vhost of the test, ``[libvirt]
  connection_uri`` = libvirtd's shared test driver unless a test passes its
  own node file, no hot-plug (there is no Nova), state, sockets and status
  socket in the test's directories.  Its status is read as
  ``guestha-agent --status --json`` reads it
  (:func:`guestha.agent.status.fetch`).
* **The controller**: ``guestha/testing/controller_stub.py`` in a child
  process (:class:`ControllerStub`); it appends every ``report_events``
  event to a JSON-lines file, which :meth:`ControllerStub.events` reads.
* **Guests**: real guest daemons (:class:`GuestProcess`,
  ``python -m guestha_guest --port unix-listen:PATH``), playing QEMU's side
  of each channel on a UNIX socket.

Next to this module: ``child_processes.py`` (child processes, and their
end in a teardown), ``libvirt_domains.py`` (libvirtd's test driver:
domains, node files, other agents on it).  Elsewhere:
:mod:`guestha_guest.testing.guestfarm` (many protocol-level guests in one
loop, for scale) and ``tests/functional/hostile_guest.py`` (junk on a
channel).
"""

import json
import os
import re
import selectors
import signal
import subprocess
import time
import uuid as uuidlib

from guestha.testing.child_processes import file_tail
from guestha.testing.child_processes import PYTHON
from guestha.testing.child_processes import terminate
from guestha.testing.libvirt_domains import URI
from guestha.testing import processes as procs
from guestha.testing.wait import wait_until

#: The controller stub, run as ``python -m STUB``.
STUB = "guestha.testing.controller_stub"


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
            [PYTHON, "-W", "ignore", "-m", STUB, "--url", self.url, "--out",
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
    """``guestha-agent`` in a child process, configured for one test.

    :param uri: the libvirt URI it watches (default: the shared test
        driver, :data:`guestha.testing.libvirt_domains.URI`), e.g. a
        node file of :func:`guestha.testing.libvirt_domains.write_node`.
    :param name: names its files in ``workdir`` and ``sockdir``, for
        several agents (one per simulated host) in one directory.
    :param debug: its debug logs (None: :func:`agent_conf`'s default).
    :param groups: more options for :func:`agent_conf`, e.g.
        ``agent={"hotplug": "true"}``.
    """

    def __init__(self, procs, workdir, sockdir, transport_url, host=None,
                 min_interval_ms=100, channel_lost_grace=3.0,
                 reconcile_interval=60.0, alive_interval=1.0, uri=None,
                 name="agent", debug="true", **groups):
        self.procs = procs
        self.host = host or "ghft-host-%s" % uuidlib.uuid4().hex[:8]
        self.state_dir = os.path.join(workdir, "%s-state" % name)
        self.status_socket = os.path.join(sockdir, "%s.sock" % name)
        self.config = os.path.join(workdir, "%s.conf" % name)
        self.log = os.path.join(workdir, "%s.log" % name)
        channels = "channels" if name == "agent" else "%s-channels" % name
        #: where its channel sockets go (hot-plugged ones too)
        self.socket_dir = os.path.join(sockdir, channels)
        with open(self.config, "w") as f:
            f.write(agent_conf(
                transport_url, self.host, self.state_dir, self.socket_dir,
                self.status_socket, uri=uri, min_interval_ms=min_interval_ms,
                channel_lost_grace=channel_lost_grace,
                reconcile_interval=reconcile_interval,
                alive_interval=alive_interval, debug=debug, **groups))
        self.proc = None
        self.started_at = None  # time.time() of the latest start
        #: time.monotonic() when the latest start was seen ready
        self.ready_at = None

    def start(self, timeout=60.0):
        """Start the agent and wait until it answers on its status socket
        with libvirt connected (:attr:`ready_at`)."""
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

        wait_until(ready, timeout, "the agent to start", interval=0.05,
                   details=self.log_tail)
        self.ready_at = time.monotonic()
        return self

    def stop(self, timeout=15.0):
        """SIGTERM, the agent's clean stop; returns its exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout)
        self.proc = None
        return code

    def kill(self):
        """SIGKILL: no goodbye (:attr:`proc` stays, to be looked at)."""
        if self.proc is not None:
            procs.kill(self.proc)

    def status(self):
        """What ``guestha-agent --status --json`` prints.

        :raises AssertionError: if it exited.
        :raises OSError: if its status socket does not answer.
        """
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("the agent of %s exited (%s):\n%s" % (
                self.host, self.proc.returncode, self.log_tail()))
        from guestha.agent import status
        return status.fetch(self.status_socket, timeout=10.0)

    def try_status(self):
        try:
            return self.status()
        except (OSError, ValueError):
            return None

    def states(self):
        """``{uuid: state}`` of every instance it monitors; empty while
        its status socket does not answer.

        :raises AssertionError: if it exited.
        """
        status = self.try_status()
        if status is None:
            return {}
        return {i["instance"]: i["state"] for i in status["instances"]}

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

    def log_count(self, pattern):
        """How many lines of its log (every run) match ``pattern``."""
        regex = re.compile(pattern)
        try:
            with open(self.log, errors="replace") as f:
                return sum(1 for line in f if regex.search(line))
        except OSError:
            return 0

    def registrations(self, uuid):
        """How often the guest of ``uuid`` registered (every run)."""
        return self.log_count(r"instance %s: guest .* registered"
                              % re.escape(uuid))

    def hotplugs(self, uuid):
        """How often it hot-plugged the channel of ``uuid`` (every run)."""
        return self.log_count(r"instance %s: guestha channel hot-plugged "
                              r"at \S+ in \d+ ms" % re.escape(uuid))

    def lines_of(self, uuid, chars=4000):
        """The end of its log lines about ``uuid``."""
        try:
            with open(self.log, errors="replace") as f:
                return "".join(line for line in f if uuid in line)[-chars:]
        except OSError as exc:
            return "(%s)" % exc


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
