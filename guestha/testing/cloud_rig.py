# SPDX-License-Identifier: Apache-2.0
"""guestha on the real cloud: a real guestha-agent and guestha-server,
Nova servers booted through the API, and the guest driven through qemu-ga.

What runs where
---------------
* **The cloud** (``tools/cloud.sh up``, the ``cloud`` fixture): Keystone,
  Nova with nova-compute on ``qemu:///system``, Glance with the guest image
  (tools/cloud/image.py: the guest daemon installed, recommending a reboot,
  and Debian's qemu-ga), Masakari with a segment holding the compute host.
* **The agent**: ``guestha-agent`` as a compute host runs it
  (:class:`guestha.testing.agent_harness.AgentProcess`): on
  ``qemu:///system``, ``[agent] host`` = the nova-compute host, hot-plug on,
  NO Nova credentials (it reads ``guestha:*`` extra specs from the domain
  XML Nova writes), the cloud's RabbitMQ vhost.
* **The controller**: ``guestha-server`` with Nova credentials (admin of
  the cloud, as the password plugin of keystoneauth), reading Nova's
  versioned notifications on the ``guestha_notifications`` topic that the
  harness's nova.conf lists, the log sink, and for the Masakari scenario
  the masakari sink.
* **Inside a guest**: ``guest-exec`` of qemu-ga through libvirt
  (:func:`guest_sh`), as an operator's tooling reaches a guest without a
  network: ``guestha-daemon-pid``, ``kill -STOP``, ``guestha-app``.

Both guestha processes are started with guestha/testing/processes.py
(their own process groups, killed with the test process however it ends).

The cloud itself is the harness of the checkout (``tools/cloud.sh``,
``tools/cloud/harness.py``, which runs in a virtualenv of its own):
:func:`cloud_sh` runs it, :class:`Cloud` connects to it; the ``cloud``
fixture of ``tests/cloud/conftest.py``, the MTTR benchmark and the demo's
``--cloud`` use them.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import time

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import processes as procs
from guestha.testing import server_harness
from guestha.testing.wait import wait_until
from tools.cloud import harness

URI = "qemu:///system"
#: The installed guest daemon's heartbeat interval (etc/guestha-guest.ini's
#: default).
INTERVAL = 1.0
BOOT_TIMEOUT = 150.0
#: From ACTIVE (a new QEMU process) to the daemon registered: the guest
#: boots under TCG (kernel, busybox init, python).
REGISTER_TIMEOUT = 90.0
#: The nova.conf drop-in and the controller's soft-reboot follow-up.
SOFT_REBOOT_TIMEOUT = 30.0
IMAGE = "guestha-guest"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLOUD_SH = os.path.join(ROOT, "tools", "cloud.sh")


# -- the cloud ----------------------------------------------------------------

def cloud_sh(*args, timeout=900, check=True):
    """``bash tools/cloud.sh ARGS``: its completed process."""
    return subprocess.run(["bash", CLOUD_SH, *args], capture_output=True,
                          text=True, timeout=timeout, check=check)


def cloud_status():
    """``tools/cloud.sh status --json``, parsed."""
    proc = cloud_sh("status", "--json", check=False)
    return json.loads(proc.stdout)


class Cloud:
    """The cloud of tools/cloud.sh as its tests and benchmarks see it: one
    openstacksdk connection (one keystoneauth session, one token) as its
    admin, and its status."""

    def __init__(self, compute):
        import openstack  # in .venv (pinned in upper-constraints.txt)
        self.compute_enabled = compute
        self.conn = openstack.connect(
            auth_url=harness.AUTH_URL, username="admin",
            password=harness.PASSWORD, project_name="admin",
            user_domain_name="Default", project_domain_name="Default",
            region_name=harness.REGION, identity_api_version="3",
            load_yaml_config=False, load_envvars=False)

    def status(self):
        return cloud_status()


def wait_for(predicate, what, timeout=60.0, interval=0.2, diag=None):
    """:func:`guestha.testing.wait.wait_until` with the cloud's pace (a
    poll of Nova's API every 0.2 s) and ``diag``, a callable returning the
    rig's diagnostics (:meth:`GuestHA.diagnostics`), on failure."""
    return wait_until(predicate, timeout, what, interval=interval,
                      details=diag)


# -- inside the guest ---------------------------------------------------------

class GuestExecError(Exception):
    pass


def guest_sh(uuid, command, timeout=30.0):
    """Run ``/bin/sh -c command`` in the guest through qemu-ga's
    guest-exec (libvirt's qemuAgentCommand): ``(exit code, output)``.
    Retries while the guest agent does not answer yet (a guest booting)."""
    import libvirt
    import libvirt_qemu

    deadline = time.monotonic() + timeout
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByUUIDString(uuid)
        errors = []

        def started():
            try:
                return libvirt_qemu.qemuAgentCommand(dom, json.dumps({
                    "execute": "guest-exec", "arguments": {
                        "path": "/bin/sh", "arg": ["-c", command],
                        "capture-output": True}}), 10, 0)
            except libvirt.libvirtError as exc:
                errors[:] = [exc]
                return None

        try:
            reply = wait_until(started, timeout, "guest-exec in %s" % uuid,
                               interval=0.5)
        except AssertionError:
            raise GuestExecError("guest-exec in %s: %s" % (uuid, errors[0]))
        pid = json.loads(reply)["return"]["pid"]

        def exited():
            status = json.loads(libvirt_qemu.qemuAgentCommand(
                dom, json.dumps({"execute": "guest-exec-status",
                                 "arguments": {"pid": pid}}), 10, 0))
            return status["return"] if status["return"].get("exited") else None

        try:
            status = wait_until(exited, max(0.0, deadline - time.monotonic()),
                                "%r to end in %s" % (command, uuid),
                                interval=0.1)
        except AssertionError:
            raise GuestExecError("%r still running in %s after %.0f s"
                                 % (command, uuid, timeout))
        out = (base64.b64decode(status.get("out-data", ""))
               + base64.b64decode(status.get("err-data", "")))
        return status.get("exitcode"), out.decode("utf-8", "replace")
    finally:
        conn.close()


def guest_ok(uuid, command, timeout=30.0):
    rc, out = guest_sh(uuid, command, timeout)
    assert rc == 0, "%r in %s: exit %s: %s" % (command, uuid, rc, out)
    return out


def domain_xml(uuid):
    import libvirt

    conn = libvirt.open(URI)
    try:
        return conn.lookupByUUIDString(uuid).XMLDesc(0)
    finally:
        conn.close()


def has_channel(uuid):
    try:
        return "org.openstack.guestha.0" in domain_xml(uuid)
    except Exception:  # the domain is gone or being redefined
        return False


# -- the guestha processes ----------------------------------------------------

def os_auth(**extra):
    auth = {"auth_type": "password", "auth_url": harness.AUTH_URL,
            "username": "admin", "password": harness.PASSWORD,
            "project_name": "admin", "user_domain_name": "Default",
            "project_domain_name": "Default",
            "region_name": harness.REGION, "timeout": "15"}
    auth.update(extra)
    return auth


class Controller(server_harness.ServerProcess):
    """``guestha-server`` with the cloud's Nova (and Masakari): real
    credentials, not server_harness's stand-in endpoint."""

    def __init__(self, workdir, url, name, masakari=False, max_actions=1,
                 ledger="ledger.sqlite",
                 soft_reboot_timeout=SOFT_REBOOT_TIMEOUT,
                 server_id="ghcloud-ctl", sink_log="events.jsonl"):
        groups = {
            "actions": {"allowed_max": "log" if masakari else "reboot",
                        "max_actions": max_actions, "window": 3600,
                        "soft_reboot_timeout": soft_reboot_timeout},
            "sinks": {"enabled": "log,masakari" if masakari else "log"},
            "server": {"group_refresh_interval": 5},
        }
        super().__init__(workdir, url, server_id, "unused",
                         ledger_path=os.path.join(workdir, ledger),
                         sink_log=os.path.join(workdir, sink_log),
                         name=name, **groups)
        with open(self.conf_path) as f:
            text = f.read()
        # server_harness points [nova] at a stand-in; this one is the catalog's
        text = re.sub(r"\[nova\]\n(.*\n)*?\n",
                      self._section("nova", os_auth()), text)
        if masakari:
            text += self._section("masakari", os_auth())
        with open(self.conf_path, "w") as f:
            f.write(text)

    @staticmethod
    def _section(name, values):
        return "[%s]\n%s\n" % (name, "".join(
            "%s = %s\n" % kv for kv in values.items()))


class GuestHA(object):
    """The agent, the controller, the servers booted, for a session."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.conn = cloud.conn
        self.procs = child_processes.Processes()
        self.workdir = child_processes.short_tempdir("ghcl-")
        self.url = harness.TRANSPORT_URL
        services = list(self.conn.compute.services(binary="nova-compute"))
        assert services, "no nova-compute in the cloud"
        self.host = services[0].host
        #: ``guestha-agent`` on qemu:///system for the compute host
        self.agent = agent_harness.AgentProcess(
            self.procs, self.workdir, self.workdir, self.url,
            host=self.host, uri=URI, agent={"hotplug": "true"})
        self.server = None
        self.servers = []
        self.groups = []
        self.image = self.conn.image.find_image(IMAGE)

    def start(self):
        self.start_server()
        self.agent.start()
        return self

    def start_server(self, masakari=False, max_actions=1, **kwargs):
        """(Re)start the controller; ``kwargs``: :class:`Controller`'s
        (``ledger``, another ledger file: a cap count of its own;
        ``soft_reboot_timeout``)."""
        stop_failed = None
        if self.server is not None:
            try:
                self.server.stop()  # (killed if it does not stop)
            except AssertionError as exc:
                # the next controller still starts, so that the tests
                # after this one find one running
                stop_failed = exc
        self.server = Controller(self.workdir, self.url,
                                 "ctl-masakari" if masakari else "ctl",
                                 masakari=masakari, max_actions=max_actions,
                                 **kwargs)
        self.server.start()
        if stop_failed is not None:
            raise stop_failed
        return self.server

    # -- Nova -----------------------------------------------------------------

    def create(self, name, flavor="guestha.heartbeat", **kwargs):
        flavor = self.conn.compute.find_flavor(flavor)
        server = self.conn.compute.create_server(
            name="ghcl-%s" % name, image_id=self.image.id,
            flavor_id=flavor.id, networks="none", **kwargs)
        self.servers.append(server)
        return server

    def wait_active(self, server, timeout=BOOT_TIMEOUT):
        """Wait until ``server`` is ACTIVE with no task; returns it and
        time.monotonic() of when that was seen."""
        def active():
            s = self.conn.compute.get_server(server)
            assert s.status != "ERROR", s.fault
            return s if s.status == "ACTIVE" and not s.task_state else None

        server = wait_for(active, "server %s ACTIVE" % server.id,
                          timeout=timeout, interval=0.2)
        return server, time.monotonic()

    def wait_status(self, server, status, timeout=BOOT_TIMEOUT):
        def reached():
            s = self.conn.compute.get_server(server)
            return s if s.status == status and not s.task_state else None

        return wait_for(reached, "server %s %s" % (server.id, status),
                        timeout=timeout, interval=0.2)

    def delete(self, server):
        self.conn.compute.delete_server(server, ignore_missing=True)
        if server in self.servers:
            self.servers.remove(server)

    def reboots(self, server):
        """Nova's instance actions of ``server`` that are reboots."""
        return [a for a in self.conn.compute.server_actions(server)
                if a.action == "reboot"]

    # -- what guestha saw -----------------------------------------------------

    def sink(self, uuid, type_=None, since=0.0):
        return [r for r in server_harness.read_jsonl(self.server.sink_log)
                if r.get("instance") == uuid
                and (type_ is None or r.get("type") == type_)
                and (r.get("detected_at_ts") or r.get("at_ts") or 0)
                >= since]

    def faults(self, uuid, since=0.0):
        return self.sink(uuid, "fault", since)

    def wait_monitored(self, uuid, timeout=REGISTER_TIMEOUT,
                       more_answers=1):
        """Wait until the instance is MONITORED, answering healthy, with
        ``more_answers`` answers more than when called; returns its status
        entry."""
        first = self.agent.instance(uuid)
        base = first["counters"]["answers"] if first else 0

        def monitored():
            inst = self.agent.instance(uuid)
            if (inst is None or inst["state"] != "MONITORED"
                    or inst["counters"]["answers"] < base + more_answers
                    or not (inst.get("last_answer") or {}).get("healthy")):
                return None
            return inst

        return wait_for(monitored, "instance %s MONITORED" % uuid,
                        timeout=timeout, interval=0.1,
                        diag=lambda: self.diagnostics(uuid))

    def diagnostics(self, uuid=None):
        parts = []
        if uuid:
            try:
                parts.append("--- agent status ---\n%s"
                             % self.agent.instance(uuid))
            except (AssertionError, OSError) as exc:
                parts.append(str(exc))
            parts.append("--- agent log ---\n%s" % self.agent.lines_of(uuid))
            try:
                parts.append("--- console ---\n%s" % self.conn.compute
                             .get_server_console_output(uuid)["output"]
                             [-1500:])
            except Exception as exc:  # diagnostics only
                parts.append("(no console: %s)" % exc)
        else:
            parts.append("--- agent log ---\n%s" % self.agent.log_tail(3000))
        if self.server is not None:
            parts.append("--- server ---\n%s" % self.server.tail(1500))
        return "\n".join(parts)

    def close(self):
        procs.teardown(
            self.agent.proc and self.agent.stop,
            self.server and self.server.stop,
            self.procs.kill_all,
            self.server and self.server.kill,
            self._delete_all,
            lambda: shutil.rmtree(self.workdir, ignore_errors=True))

    def _delete_all(self):
        for server in list(self.servers):
            self.conn.compute.delete_server(server, ignore_missing=True)
        for server in list(self.servers):
            self.conn.compute.wait_for_delete(server, wait=120)
        self.servers = []
        for group in self.groups:
            self.conn.compute.delete_server_group(group,
                                                  ignore_missing=True)


def nova_client():
    """guestha's Nova client (guestha.nova.NovaClient) configured
    by a ``[nova]`` group as the controllers' guestha.conf has it."""
    import tempfile

    from oslo_config import cfg

    from guestha.conf import nova as nova_conf
    from guestha import nova as nova_mod

    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("[nova]\n" + "".join("%s = %s\n" % kv
                                     for kv in os_auth().items()))
        f.flush()
        conf = cfg.ConfigOpts()
        nova_conf.register_opts(conf)
        conf(["--config-file", f.name], project="guestha",
             default_config_files=[])
    return nova_mod.NovaClient.from_conf(conf)


def rabbit_queues():
    """``{name: (messages, consumers)}`` of the cloud's vhost."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", harness.VHOST, "name",
         "messages", "consumers"], capture_output=True, text=True,
        timeout=60, check=True).stdout
    queues = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            queues[parts[0]] = (int(parts[1]), int(parts[2]))
    return queues
