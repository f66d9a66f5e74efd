# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha ...`` against the cloud's real Keystone.

A ``guestha-api`` process with ``auth_strategy = keystone``
(keystonemiddleware's auth_token, validating against the harness's
Keystone with a service user of its own) reads a ledger filled with
:mod:`tests.unit.osc.world`, its two projects being two real Keystone
projects made for this test.  Its endpoint is in Keystone's catalog
(service type ``guestha``), in a region of its own, so the real
``openstack`` command finds it there (``--os-region-name``) the way an
operator's would, and nothing else in the shared cloud sees it.

What the policy allows and nothing more: the admin lists every project's
instances; a member of project 1 lists project 1's only, and asking for
an instance of project 2 gets the same "No instance with ID" as an
instance that does not exist (the API's 404).

Everything made here (projects, users, region, service, endpoint, the
guestha-api process) is removed at the end.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest

from guestha.testing.child_processes import file_tail
from guestha.testing.ports import free_port
from guestha.testing import processes as proc
from tests.support.http import wait_answering
from tests.unit.osc import world
from tools.cloud import harness

BIN = os.path.dirname(sys.executable)
OPENSTACK = os.path.join(BIN, "openstack")
GUESTHA_API = os.path.join(BIN, "guestha-api")
MEMBER_PASSWORD = "guestha-cli-member"


class Keystone(object):
    """What the test made in Keystone, for the teardown."""

    def __init__(self, conn):
        self.ident = conn.identity
        self.made = []  # (delete function, resource), newest last
        self.tag = uuid.uuid4().hex[:8]

    def keep(self, delete, resource):
        self.made.append((delete, resource))
        return resource

    def cleanup(self):
        errors = []
        for delete, resource in reversed(self.made):
            try:
                delete(resource)
            except Exception as exc:  # report all, remove the rest
                errors.append("%s: %s" % (resource, exc))
        assert not errors, errors


@pytest.fixture(scope="module")
def keystone(cloud):
    made = Keystone(cloud.conn)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="module")
def projects(keystone):
    ident = keystone.ident
    roles = {r.name: r for r in ident.roles()}
    assert "member" in roles, sorted(roles)
    found = {}
    for key, name in ((world.P1, "p1"), (world.P2, "p2")):
        found[key] = keystone.keep(ident.delete_project, ident.create_project(
            name="guestha-cli-%s-%s" % (name, keystone.tag),
            domain_id="default"))
    member = keystone.keep(ident.delete_user, ident.create_user(
        name="guestha-cli-member-%s" % keystone.tag,
        password=MEMBER_PASSWORD, domain_id="default",
        default_project_id=found[world.P1].id))
    ident.assign_project_role_to_user(found[world.P1], member,
                                      roles["member"])
    service_project = ident.find_project("service", domain_id="default")
    validator = keystone.keep(ident.delete_user, ident.create_user(
        name="guestha-cli-api-%s" % keystone.tag, password=harness.PASSWORD,
        domain_id="default", default_project_id=service_project.id))
    ident.assign_project_role_to_user(service_project, validator,
                                      roles["service"])
    return {"p1": found[world.P1], "p2": found[world.P2], "member": member,
            "validator": validator}


@pytest.fixture(scope="module")
def api(keystone, projects, tmp_path_factory):
    """guestha-api under Keystone, in the catalog of a region of its
    own; returns that region's id."""
    workdir = tmp_path_factory.mktemp("cli-keystone")
    ledger = str(workdir / "ledger.sqlite")
    world.fill_ledger(ledger, projects={world.P1: projects["p1"].id,
                                        world.P2: projects["p2"].id})
    port = free_port()
    config = workdir / "guestha.conf"
    config.write_text(
        "[server]\nledger_path = %s\n"
        "[api]\nauth_strategy = keystone\nhost = 127.0.0.1\nport = %d\n"
        "max_limit = %d\n"
        "[keystone_authtoken]\nwww_authenticate_uri = %s\nauth_url = %s\n"
        "auth_type = password\nusername = %s\npassword = %s\n"
        "project_name = service\nuser_domain_name = Default\n"
        "project_domain_name = Default\n" % (
            ledger, port, world.PAGE, harness.AUTH_URL, harness.AUTH_URL,
            projects["validator"].name, harness.PASSWORD))
    log = str(workdir / "guestha-api.log")
    with open(log, "w") as out:
        process = proc.spawn([GUESTHA_API, "--config-file", str(config)],
                             stdout=out, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d/" % port
    ident = keystone.ident
    try:
        wait_answering(url, process, details=lambda: file_tail(log, 3000))
        region = keystone.keep(ident.delete_region, ident.create_region(
            id="guestha-cli-%s" % keystone.tag))
        service = keystone.keep(ident.delete_service, ident.create_service(
            name="guestha", type="guestha", enabled=True,
            description="guestha REST API (tests/cloud/test_cli_keystone)"))
        keystone.keep(ident.delete_endpoint, ident.create_endpoint(
            service_id=service.id, interface="public", url=url,
            region_id=region.id))
        yield {"region": region.id, "url": url, "log": log}
    finally:
        proc.stop(process)


def openstack(api, *argv, user="admin", password=harness.PASSWORD,
              project="admin"):
    """The real openstack command with password authentication."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("OS_")}
    environ.update(
        OS_AUTH_URL=harness.AUTH_URL, OS_IDENTITY_API_VERSION="3",
        OS_USERNAME=user, OS_PASSWORD=password, OS_PROJECT_NAME=project,
        OS_USER_DOMAIN_NAME="Default", OS_PROJECT_DOMAIN_NAME="Default",
        OS_REGION_NAME=api["region"], OS_INTERFACE="public")
    return subprocess.run([OPENSTACK] + list(argv), env=environ,
                          capture_output=True, text=True, timeout=120)


def member(api, *argv):
    return openstack(api, *argv, user="guestha-cli-member-%s" % (
        api["tag"]), password=MEMBER_PASSWORD, project=api["p1_name"])


@pytest.fixture(scope="module")
def ctx(api, projects, keystone):
    return dict(api, tag=keystone.tag, p1_name=projects["p1"].name,
                p1=projects["p1"].id, p2=projects["p2"].id)


def rows(result, api):
    if result.returncode != 0:
        with open(api["log"]) as f:
            log = f.read()[-3000:]
        raise AssertionError("openstack failed (%d): %s\nguestha-api log:"
                             "\n%s" % (result.returncode, result.stderr,
                                       log))
    return json.loads(result.stdout)


def test_admin_lists_every_project(ctx):
    listed = rows(openstack(ctx, "guestha", "instance", "list", "-f",
                            "json"), ctx)
    assert sorted(r["ID"] for r in listed) == sorted(
        row[0] for row in world.INSTANCES)
    assert {r["Project ID"] for r in listed} == {ctx["p1"], ctx["p2"]}
    faults = rows(openstack(ctx, "guestha", "fault", "list", "-f",
                            "json"), ctx)
    assert len(faults) == len(world.FAULTS)


def test_member_lists_own_project_only(ctx):
    listed = rows(member(ctx, "guestha", "instance", "list", "-f",
                         "json"), ctx)
    assert sorted(r["ID"] for r in listed) == sorted(
        row[0] for row in world.INSTANCES if row[1] == world.P1)
    assert {r["Project ID"] for r in listed} == {ctx["p1"]}
    # asking for project 2 explicitly gives nothing either
    other = rows(member(ctx, "guestha", "instance", "list", "--project",
                        ctx["p2"], "-f", "json"), ctx)
    assert other == []
    faults = rows(member(ctx, "guestha", "fault", "list", "-f", "json"),
                  ctx)
    assert sorted(f["ID"] for f in faults) == sorted(
        f[0] for f in world.FAULTS
        if world.PROJECT_OF[f[1]] == world.P1)
    actions = rows(member(ctx, "guestha", "action", "list", "-f", "json"),
                   ctx)
    assert {a["Instance ID"] for a in actions} <= {
        row[0] for row in world.INSTANCES if row[1] == world.P1}


def test_member_show_other_project_is_404(ctx):
    own = rows(member(ctx, "guestha", "instance", "show", world.uid(1),
                      "-f", "json"), ctx)
    assert own["project_id"] == ctx["p1"]
    other = world.uid(4)  # project 2's
    result = member(ctx, "guestha", "instance", "show", other)
    assert result.returncode == 1
    assert "No instance with ID %s" % other in result.stderr
    # the admin sees it: it exists
    shown = rows(openstack(ctx, "guestha", "instance", "show", other, "-f",
                           "json"), ctx)
    assert shown["project_id"] == ctx["p2"]


def test_region_without_guestha_names_the_catalog(ctx):
    region = "guestha-cli-nowhere-%s" % ctx["tag"]
    result = openstack(dict(ctx, region=region), "guestha", "instance",
                       "list")
    assert result.returncode == 1
    assert ("No public endpoint (service type 'guestha') in the service "
            "catalog for region %s" % region) in result.stderr
