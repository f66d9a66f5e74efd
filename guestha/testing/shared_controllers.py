# SPDX-License-Identifier: Apache-2.0
"""Real parts for ``test_controllers_shared.py``: a MariaDB and a Redis of
the test's own, controllers posing as controller hosts, and agents
reporting a storm of faults.

What runs where
---------------
* **MariaDB**: a ``mariadbd`` of its own (:class:`MariaDB`), its data
  directory in the test's temporary directory, on a free port of
  127.0.0.1, started, stopped and restarted by the test; so the MariaDB
  on 3306 that other tests and people use is never disturbed.  No
  grant tables (``--skip-grant-tables``): it listens on 127.0.0.1 only
  and lives for one test.
* **Redis**: a ``redis-server`` of its own (:class:`Redis`), the tooz
  backend, on a free port, no persistence.
* **Controllers**: ``guestha-server`` processes (:class:`HostServer`,
  built on :class:`guestha.testing.server_harness.ServerProcess`), each in a
  UTS namespace of its own with its own host name (``unshare --uts``), as
  on three controller hosts: a controller's death is noticed by its
  lease running out, not by a pid on the same host.
* **Agents**: :class:`Storm`, threads of the test process, one per
  compute host, each with a :class:`guestha.rpc.api.ControllerAPI` and
  its own instances, reporting faults and recoveries in order, one call
  at a time, resending a batch until it is answered, as the agent's
  reporter does.

Every process goes through :mod:`guestha.testing.processes`, so it dies with
the test.
"""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

from guestha import records
from guestha.rpc import api
from guestha.testing.ports import free_port
from guestha.testing import processes as procs
from guestha.testing import server_harness
from guestha.testing.wait import wait_until


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class MariaDB(object):
    """A mariadbd of the test's own (see the module docstring)."""

    def __init__(self, workdir):
        self.datadir = os.path.join(workdir, "mariadb")
        self.port = free_port()
        self.log = os.path.join(workdir, "mariadb.log")
        self.proc = None

    @staticmethod
    def available():
        return (shutil.which("mariadb-install-db") is not None
                and os.path.exists("/usr/sbin/mariadbd"))

    def install(self):
        os.makedirs(self.datadir)
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=root",
             "--datadir=" + self.datadir, "--skip-test-db",
             "--auth-root-authentication-method=normal"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=120)
        return self

    def start(self, timeout=60.0):
        with open(self.log, "ab") as log:
            self.proc = procs.spawn(
                ["/usr/sbin/mariadbd", "--no-defaults", "--user=root",
                 "--datadir=" + self.datadir, "--port=%d" % self.port,
                 "--bind-address=127.0.0.1", "--skip-grant-tables",
                 "--skip-name-resolve",
                 "--socket=" + os.path.join(self.datadir, "sock"),
                 "--pid-file=" + os.path.join(self.datadir, "pid"),
                 "--innodb-buffer-pool-size=64M", "--max-connections=500"],
                stdout=log, stderr=log)
        wait_until(self._ready, timeout, "mariadbd on port %d" % self.port,
                   interval=0.1)
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            with open(self.log, errors="replace") as f:
                raise AssertionError("mariadbd exited:\n" + f.read()[-3000:])
        if not _port_open(self.port):
            return False
        try:
            self.execute("SELECT 1")
        except Exception:  # not ready yet: any driver error
            return False
        return True

    def stop(self, timeout=60.0):
        """The clean shutdown (SIGTERM), as ``systemctl restart`` does."""
        return procs.stop(self.proc, timeout=timeout)

    def kill(self):
        if self.proc is not None:
            procs.kill(self.proc)

    def execute(self, sql, database=None):
        import pymysql
        conn = pymysql.connect(host="127.0.0.1", port=self.port,
                               user="root", database=database,
                               connect_timeout=2)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def url(self, database):
        return ("mysql+pymysql://root@127.0.0.1:%d/%s?charset=utf8mb4"
                % (self.port, database))


class Redis(object):
    """A redis-server of the test's own."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.proc = None

    @staticmethod
    def available():
        return shutil.which("redis-server") is not None

    def start(self, timeout=30.0):
        with open(os.path.join(self.workdir, "redis.log"), "ab") as log:
            self.proc = procs.spawn(
                ["redis-server", "--port", str(self.port), "--bind",
                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                 self.workdir], stdout=log, stderr=log)
        wait_until(lambda: _port_open(self.port), timeout,
                   "redis-server on port %d" % self.port, interval=0.05)
        return self

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port


def can_unshare_uts():
    try:
        return subprocess.run(["unshare", "--uts", "true"],
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class HostServer(server_harness.ServerProcess):
    """A guestha-server as if alone on controller host ``hostname``."""

    def __init__(self, *args, hostname=None, **kwargs):
        super(HostServer, self).__init__(*args, **kwargs)
        self.hostname = hostname

    def argv(self):
        """The server's command line, in a UTS namespace of its own
        named ``hostname`` if there is one."""
        argv = super(HostServer, self).argv()
        if self.hostname:
            argv = ["unshare", "--uts", "--", "sh", "-c",
                    'hostname "$0" && exec "$@"', self.hostname] + argv
        return argv

    def signal(self, sig=signal.SIGKILL):
        procs.signal_group(self.proc, sig)
        self.proc.wait(30)

    def is_relay(self):
        """Whether its log says it is the relay now."""
        text = self.log_text()
        yes = text.rfind("relays Nova's state changes to the agents: yes")
        no = text.rfind("relays Nova's state changes to the agents: no")
        return yes > no


class Storm(object):
    """Agents reporting faults and recoveries (see the module docstring).

    Each of ``agents`` compute hosts has ``instances`` instances; each
    instance goes through ``cycles`` fault/recovery pairs.  An agent sends
    its events in order, in batches of ``batch``, one call at a time,
    pausing ``pause`` seconds between calls; a batch that fails (timeout,
    the controller's ledger unavailable) is sent again, whole, until it is
    answered.
    """

    def __init__(self, transport, agents=4, instances=8, cycles=40,
                 batch=4, pause=0.02, timeout=5, action=None):
        self.transport = transport
        self.batch = batch
        self.pause = pause
        self.timeout = timeout
        self.sent = {}        # host -> [events], in order
        for n in range(agents):
            host = "compute-%d" % (n + 1)
            vms = [str(uuid.uuid4()) for _ in range(instances)]
            events = []
            now = time.time()
            for cycle in range(cycles):
                for vm in vms:
                    fault = records.make_fault(
                        vm, host, "missed", "cycle %d" % cycle, action,
                        now + cycle, 1000, 3)
                    events.append(fault)
            # recoveries right after their faults, per instance
            ordered = []
            for fault in events:
                ordered.append(fault)
                ordered.append(records.make_recovery(
                    fault["instance"], host, fault["id"],
                    fault["detected_at_ts"] + 0.5, kind="missed"))
            self.sent[host] = ordered
        self.accepted = {host: [] for host in self.sent}
        self.failures = {host: 0 for host in self.sent}
        self.rejected = []
        self._threads = []
        self.errors = []

    @property
    def events(self):
        return [e for events in self.sent.values() for e in events]

    def start(self):
        for host in self.sent:
            thread = threading.Thread(target=self._agent, args=(host,),
                                      name="agent-%s" % host, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _agent(self, host):
        client = api.ControllerAPI(self.transport, host,
                                   timeout=self.timeout)
        queue = list(self.sent[host])
        try:
            while queue:
                batch = queue[:self.batch]
                try:
                    answer = client.report_events(batch)
                except Exception:  # any failed call: send it again
                    self.failures[host] += 1
                    time.sleep(0.2)
                    continue
                accepted = set(answer["accepted"])
                self.rejected.extend(answer["rejected"].items())
                done = [e for e in batch if e["id"] in accepted]
                self.accepted[host].extend(e["id"] for e in done)
                queue = [e for e in queue if e["id"] not in accepted]
                time.sleep(self.pause)
        except BaseException as exc:  # the test reports it
            self.errors.append("%s: %r" % (host, exc))

    def progress(self):
        return sum(len(v) for v in self.accepted.values())

    def total(self):
        return sum(len(v) for v in self.sent.values())

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
