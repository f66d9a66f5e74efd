# SPDX-License-Identifier: Apache-2.0
"""guestha-api against the real Keystone of the cloud harness.

guestha-api runs as a process with ``[api] auth_strategy = keystone``:
keystonemiddleware's auth_token validates every token with Keystone, as a
service user of its own (role ``service`` in project ``service``).  Users
and projects are made through Keystone's API for the test and deleted
after it: two projects, a member of each (Keystone's ``member`` implies
``reader``), a reader of the first, and the cloud's admin.  The
controllers' database is a SQLite ledger the test fills through the
ledger (state reports, faults, an action record) with instances of both
projects.

What it proves: no token or a bad one is 401; the admin sees both
projects; a member or reader sees their project's instances, faults and
actions and nothing else; another project's instance or fault is 404.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from keystoneauth1.identity import v3
from keystoneauth1 import session as ks_session
import pytest

from guestha import records
from guestha.server import actions as actions_mod
from guestha.server.ledger import Ledger
from guestha.testing.child_processes import file_tail
from guestha.testing.ports import free_port
from tests.support.http import wait_answering
from tools.cloud import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _token(username, password, project_id):
    auth = v3.Password(auth_url=harness.AUTH_URL, username=username,
                       password=password, user_domain_name="Default",
                       project_id=project_id)
    return ks_session.Session(auth=auth).get_token()


class Identity(object):
    """Projects and users made for the test, deleted by :meth:`close`."""

    def __init__(self, conn):
        self.conn = conn
        self.tag = uuid.uuid4().hex[:8]
        self.password = "pw-" + uuid.uuid4().hex
        self.users, self.projects = [], []
        idc = conn.identity
        self.roles = {r.name: r for r in idc.roles()}
        self.service_project = idc.find_project("service")

    def project(self, name):
        project = self.conn.identity.create_project(
            name="guestha-api-%s-%s" % (name, self.tag), domain_id="default")
        self.projects.append(project)
        return project

    def user(self, name, project, role):
        user = self.conn.identity.create_user(
            name="guestha-api-%s-%s" % (name, self.tag),
            password=self.password, domain_id="default",
            default_project_id=project.id)
        self.users.append(user)
        self.conn.identity.assign_project_role_to_user(
            project, user, self.roles[role])
        return user

    def close(self):
        for user in self.users:
            self.conn.identity.delete_user(user, ignore_missing=True)
        for project in self.projects:
            self.conn.identity.delete_project(project, ignore_missing=True)


@pytest.fixture(scope="module")
def world(cloud, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("guestha-api-keystone")
    identity = Identity(cloud.conn)
    proc = None
    try:
        p1, p2 = identity.project("p1"), identity.project("p2")
        member1 = identity.user("member1", p1, "member")
        reader1 = identity.user("reader1", p1, "reader")
        member2 = identity.user("member2", p2, "member")
        service = identity.user("svc", identity.service_project, "service")

        # the controllers' database: instances of both projects
        ledger_path = str(workdir / "ledger.sqlite")
        ledger = Ledger(ledger_path, "ctl-cloud", sinks=())
        ledger.register()
        now = time.time()
        i1, i2 = str(uuid.uuid4()), str(uuid.uuid4())
        f1 = records.make_fault(i1, "compute-1", "missed", "no answer",
                                "reboot", now, 1000, 1)
        f2 = records.make_fault(i2, "compute-1", "unhealthy", "db down", None,
                                now, 1000, 0)
        assert not ledger.accept([
            records.make_state(i1, "compute-1", "faulted", "fault missed open",
                               now, details={"project_id": p1.id}),
            records.make_state(i2, "compute-1", "faulted", None, now,
                               details={"project_id": p2.id}),
            f1, f2]).rejected
        ledger.record(actions_mod.action_record(
            f1, "log", "logged", "the guest recommends reboot, policy "
            "allows at most log", "ctl-cloud", now))
        ledger.close()

        port = free_port()
        conf = workdir / "api.conf"
        conf.write_text(
            "[DEFAULT]\nlog_file = %s\nuse_stderr = false\ndebug = true\n"
            "[server]\nledger_path = %s\n"
            "[api]\nauth_strategy = keystone\nhost = 127.0.0.1\n"
            "port = %d\n"
            "[keystone_authtoken]\nwww_authenticate_uri = %s\n"
            "auth_url = %s\nauth_type = password\nusername = %s\n"
            "password = %s\nproject_name = service\n"
            "user_domain_name = Default\nproject_domain_name = Default\n"
            "region_name = %s\n" % (
                workdir / "api.log", ledger_path, port, harness.AUTH_URL,
                harness.AUTH_URL, service.name, identity.password,
                harness.REGION))
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "guestha.cmd.api",
             "--config-file", str(conf)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(workdir / "api.stderr",
                                                   "wb"))
        url = "http://127.0.0.1:%d" % port
        wait_answering(url + "/", proc, timeout=30, details=lambda: file_tail(
            workdir / "api.stderr", 3000))
        tokens = {
            "admin": _token("admin", harness.PASSWORD,
                            cloud.conn.identity.find_project("admin").id),
            "member1": _token(member1.name, identity.password, p1.id),
            "reader1": _token(reader1.name, identity.password, p1.id),
            "member2": _token(member2.name, identity.password, p2.id),
        }
        yield {"url": url, "tokens": tokens, "p1": p1.id, "p2": p2.id,
               "i1": i1, "i2": i2, "f1": f1["id"], "f2": f2["id"],
               "log": workdir / "api.log"}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        identity.close()


def get(world, path, who=None, token=None):
    headers = {}
    if who is not None:
        headers["X-Auth-Token"] = world["tokens"][who]
    elif token is not None:
        headers["X-Auth-Token"] = token
    request = urllib.request.Request(world["url"] + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def ids(body, key):
    return sorted(item["id"] for item in body[key])


def test_no_token_or_a_bad_one_is_401(world):
    assert get(world, "/")[0] == 200  # the version document needs none
    assert get(world, "/v1/instances")[0] == 401
    assert get(world, "/v1/instances", token="not-a-token")[0] == 401


def test_the_admin_sees_every_project(world):
    status, body = get(world, "/v1/instances", "admin")
    assert status == 200, body
    assert {world["i1"], world["i2"]} <= set(ids(body, "instances"))
    status, body = get(world, "/v1/instances/%s" % world["i2"], "admin")
    assert status == 200 and body["instance"]["project_id"] == world["p2"]


@pytest.mark.parametrize("who", ["member1", "reader1"])
def test_a_project_sees_its_own_and_404_for_the_other(world, who):
    status, body = get(world, "/v1/instances", who)
    assert status == 200, body
    assert ids(body, "instances") == [world["i1"]]
    assert ids(get(world, "/v1/faults", who)[1], "faults") == [world["f1"]]
    actions = get(world, "/v1/actions", who)[1]["actions"]
    assert [a["fault_id"] for a in actions] == [world["f1"]]
    assert get(world, "/v1/instances/%s" % world["i1"], who)[0] == 200
    for path in ("/v1/instances/%s" % world["i2"],
                 "/v1/faults/%s" % world["f2"]):
        status, body = get(world, path, who)
        assert status == 404, body
        assert body["error"]["code"] == 404


def test_the_other_project_sees_only_its_own(world):
    status, body = get(world, "/v1/instances", "member2")
    assert status == 200, body
    assert ids(body, "instances") == [world["i2"]]
    assert get(world, "/v1/instances/%s" % world["i1"], "member2")[0] == 404
    assert get(world, "/v1/actions", "member2")[1]["actions"] == []
