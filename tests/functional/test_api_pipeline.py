# SPDX-License-Identifier: Apache-2.0
"""The REST API at the end of the real chain: guest daemons ->
guestha-agent -> RabbitMQ -> guestha-server -> its SQLite ledger <-
guestha-api (a process of its own, noauth), over HTTP.

One compute host (a private libvirt test-driver node file, as in
test_end_to_end.py) with four Nova domains, their project and flavor in
Nova's metadata as Nova writes it:

* ``g1`` (project P1) and ``g2`` (project P2): a guest daemon behind the
  channel; monitored.
* ``g3`` (project P1): the channel, no guest daemon: unregistered.
* ``g4`` (project P1): a flavor that asks for guestha, no virtio-serial
  controller: refused.

g1 hangs: the API shows it faulted, the open fault and the corrective
action the controller recorded (the guest recommends reboot, the operator
allows log); a member of P2 gets 404 for it.  g1 continues: monitored,
the fault closed.
"""

import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid as uuidlib

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import libvirt_domains
from guestha.testing import novaless_servers
from guestha.testing.ports import free_port
from guestha.testing.wait import wait_until
from tests.functional.test_end_to_end import Guest
from tests.functional.test_end_to_end import require_libvirtd

pytestmark = [pytest.mark.functional, pytest.mark.libvirt]

HOST = "ghapi-host"
P1 = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
P2 = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"
ARRIVAL = 30.0

NOVA_METADATA = """\
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>{nova_name}</nova:name>
      <nova:flavor name="m1.guestha">
        <nova:extraSpecs>
          <nova:extraSpec name="guestha:heartbeat">true</nova:extraSpec>
        </nova:extraSpecs>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3">demo</nova:user>
        <nova:project uuid="{project}">demo</nova:project>
      </nova:owner>
    </nova:instance>"""


class APIProcess(object):
    def __init__(self, procs, workdir, ledger_path):
        self.port = free_port()
        self.conf = os.path.join(workdir, "api.conf")
        self.log = os.path.join(workdir, "api.log")
        with open(self.conf, "w") as f:
            f.write("[DEFAULT]\nlog_file = %s\nuse_stderr = false\n"
                    "[server]\nledger_path = %s\n"
                    "[api]\nauth_strategy = noauth\nhost = 127.0.0.1\n"
                    "port = %d\n" % (self.log, ledger_path, self.port))
        self.proc = procs.spawn(
            [child_processes.PYTHON, "-W", "ignore", "-m", "guestha.cmd.api",
             "--config-file", self.conf], self.log + ".stderr")
        self.url = "http://127.0.0.1:%d" % self.port

    def get(self, path, project=P1, roles="member,reader"):
        """``(status, body)`` of a GET."""
        request = urllib.request.Request(self.url + path, headers={
            "X-Project-Id": project, "X-Roles": roles})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def admin(self, path):
        status, body = self.get(path, project=P2, roles="admin")
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def pipeline(rabbitmq):
    require_libvirtd()
    procs = child_processes.Processes()
    workdir = child_processes.short_tempdir("ghapi-")
    vhost = "guestha-api-%s" % uuidlib.uuid4().hex[:12]
    rabbitmq.run("add_vhost", vhost)
    rabbitmq.run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = "rabbit://guest:guest@127.0.0.1:5672/%s" % vhost
    server = None
    try:
        guests = {name: Guest(procs, workdir, workdir, name, HOST)
                  for name in ("g1", "g2", "g3", "g4")}
        for guest in guests.values():
            with open(guest.config) as f:
                ini = f.read()
            with open(guest.config, "w") as f:
                f.write(ini.replace("corrective_action = none",
                                    "corrective_action = reboot"))
        projects = {"g1": P1, "g2": P2, "g3": P1, "g4": P1}
        # no Nova: the projects come from the domains' metadata, and the
        # operator's "log" needs nothing of Nova (tests/functional/
        # novaless_servers.py)
        server = novaless_servers.ServerProcess(workdir, url, "ghapi-ctl",
                                                actions={"allowed_max": "log"})
        server.start()
        for name in ("g1", "g2"):
            guests[name].start()
        node = os.path.join(workdir, "%s.xml" % HOST)
        with open(node, "w") as f:
            f.write("<node>\n")
            for name, guest in guests.items():
                f.write(libvirt_domains.domain_xml(
                    "ghapi-%s" % name, guest.uuid,
                    None if name == "g4" else guest.channel,
                    metadata=NOVA_METADATA.format(
                        nova_name="vm-%s" % name, project=projects[name])))
            f.write("</node>\n")
        agent = agent_harness.AgentProcess(
            procs, workdir, workdir, url, host=HOST,
            uri="test+unix://" + node, name=HOST, debug=None).start()
        api = APIProcess(procs, workdir, server.ledger_path)
        yield {"api": api, "guests": guests, "agent": agent,
               "server": server}
    finally:
        running = [p for p in procs.running()]
        child_processes.terminate_all(running, timeout=15)
        if server is not None:
            server.stop()
        procs.kill_all()
        if server is not None:
            server.kill()
        rabbitmq.run("delete_vhost", vhost, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for(predicate, what, pipeline, timeout=ARRIVAL):
    def logs():
        return "--- agent ---\n%s\n--- server ---\n%s\n--- api ---\n%s" % (
            pipeline["agent"].log_tail(3000), pipeline["server"].tail(3000),
            child_processes.file_tail(pipeline["api"].log))
    return wait_until(predicate, timeout, what, interval=0.2, details=logs)


def test_the_api_shows_what_the_agent_sees(pipeline):
    api, guests = pipeline["api"], pipeline["guests"]
    g1, g2, g3, g4 = (guests[n] for n in ("g1", "g2", "g3", "g4"))
    expected = {g1.uuid: "monitored", g2.uuid: "monitored",
                g3.uuid: "unregistered", g4.uuid: "refused"}

    def states():
        try:
            body = api.admin("/v1/instances")
        except (OSError, AssertionError):
            return None  # not up yet, or the ledger not there yet
        return {i["id"]: i["state"] for i in body["instances"]}

    started = time.monotonic()
    wait_for(lambda: states() == expected,
             "the API to show every instance in its state", pipeline)
    print("agent start -> every state in the API: %.1f s"
          % (time.monotonic() - started))
    by_id = {i["id"]: i for i in api.admin("/v1/instances")["instances"]}
    assert by_id[g1.uuid]["project_id"] == P1
    assert by_id[g1.uuid]["name"] == "vm-g1"
    assert by_id[g1.uuid]["host"] == HOST
    assert by_id[g1.uuid]["interval_ms"] == 500
    assert "virtio-serial" in by_id[g4.uuid]["reason"]

    # a member of P1 sees P1's three, a member of P2 only g2
    status, body = api.get("/v1/instances")
    assert status == 200
    assert sorted(i["id"] for i in body["instances"]) == sorted(
        (g1.uuid, g3.uuid, g4.uuid))
    status, body = api.get("/v1/instances", project=P2)
    assert [i["id"] for i in body["instances"]] == [g2.uuid]

    # g1 hangs: faulted, an open fault, the action recorded
    hung = time.time()
    g1.hang()
    try:
        wait_for(lambda: api.admin("/v1/instances/%s" % g1.uuid)[
            "instance"]["state"] == "faulted", "g1 faulted in the API",
            pipeline)
        print("hang -> faulted in the API: %.1f s (interval 500 ms, "
              "state reports settle 2 s)" % (time.time() - hung))
        faults = wait_for(lambda: api.admin(
            "/v1/faults?open=true&instance_id=%s" % g1.uuid)["faults"],
            "g1's open fault in the API", pipeline)
        fault = faults[0]
        assert fault["kind"] == "missed" and fault["project_id"] == P1
        assert fault["action"] == "reboot" and fault["open"] is True
        actions = wait_for(lambda: api.admin(
            "/v1/actions?fault_id=%s" % fault["id"])["actions"],
            "the corrective action of g1's fault", pipeline)
        assert [(a["action"], a["outcome"]) for a in actions] == [
            ("log", "logged")]
        status, body = api.get("/v1/faults/%s" % fault["id"])
        assert status == 200 and body["fault"]["id"] == fault["id"]
        # not for another project
        status, body = api.get("/v1/faults/%s" % fault["id"], project=P2)
        assert status == 404 and body["error"]["code"] == 404
        status, _ = api.get("/v1/instances/%s" % g1.uuid, project=P2)
        assert status == 404
        assert api.get("/v1/actions", project=P2)[1]["actions"] == []
    finally:
        g1.unhang()
    wait_for(lambda: api.admin("/v1/faults/%s" % fault["id"])["fault"][
        "open"] is False, "g1's fault closed by its recovery", pipeline)
    wait_for(lambda: api.admin("/v1/instances/%s" % g1.uuid)[
        "instance"]["state"] == "monitored", "g1 monitored again",
        pipeline)
    closed = api.admin("/v1/faults/%s" % fault["id"])["fault"]
    assert closed["recovery_id"] and closed["recovered_at"]
