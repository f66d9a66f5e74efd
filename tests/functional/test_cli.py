# SPDX-License-Identifier: Apache-2.0
"""The real ``openstack`` command (python-openstackclient, .venv/bin)
with guestha's plugin, against a real ``guestha-api`` process
(``auth_strategy = noauth``, pages of 2) reading a ledger that a
controller's Ledger filled (:mod:`tests.unit.osc.world`): what an
operator types and reads, exit codes and error messages included."""

import json
import os
import subprocess
import sys

import pytest

from guestha.testing.ports import free_port
from guestha.testing import processes as proc
from tests.support.http import wait_answering
from tests.unit.osc import world

pytestmark = pytest.mark.functional

BIN = os.path.dirname(sys.executable)
OPENSTACK = os.path.join(BIN, "openstack")
GUESTHA_API = os.path.join(BIN, "guestha-api")
ALL = sorted(row[0] for row in world.INSTANCES)


def _tail(log):
    with open(log) as f:
        return f.read()[-3000:]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli")
    ledger = str(workdir / "ledger.sqlite")
    world.fill_ledger(ledger)
    port = free_port()
    config = workdir / "guestha.conf"
    config.write_text(
        "[server]\nledger_path = %s\n"
        "[api]\nauth_strategy = noauth\nhost = 127.0.0.1\nport = %d\n"
        "max_limit = %d\n" % (ledger, port, world.PAGE))
    log = str(workdir / "guestha-api.log")
    with open(log, "w") as out:
        process = proc.spawn([GUESTHA_API, "--config-file", str(config)],
                             stdout=out, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d/" % port
    try:
        wait_answering(url, process, details=lambda: _tail(log))
        yield url
    finally:
        proc.stop(process)


def openstack(*argv, **env):
    """Run ``openstack --os-auth-type none ARGV`` with no OS_* variables
    but ``env``; returns the CompletedProcess."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("OS_")}
    environ.update(env)
    return subprocess.run(
        [OPENSTACK, "--os-auth-type", "none"] + list(argv), env=environ,
        capture_output=True, text=True, timeout=120)


def ok_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_instance_list_json_follows_pages(api_url):
    rows = ok_json(openstack("--os-guestha-url", api_url, "guestha",
                             "instance", "list", "-f", "json"))
    # 5 instances, pages of 2: three requests
    assert sorted(r["ID"] for r in rows) == ALL
    by_id = {r["ID"]: r for r in rows}
    for instance, project, host, state, _reason, _ms in world.INSTANCES:
        assert by_id[instance]["Project ID"] == project
        assert by_id[instance]["Host"] == host
        assert by_id[instance]["State"] == state
    assert by_id[world.uid(2)]["Open Faults"] == 1


def test_instance_list_table_with_env_url(api_url):
    result = openstack("guestha", "instance", "list", "--state", "faulted",
                       OS_GUESTHA_URL=api_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [c.strip() for c in lines[1].strip("|").split("|")] == [
        "ID", "Project ID", "Host", "State", "Open Faults", "Updated At"]
    assert len(lines) == 5  # rule, heading, rule, one row, rule
    assert world.uid(2) in lines[3] and "faulted" in lines[3]


def test_member_sees_own_project_only(api_url):
    env = {"OS_GUESTHA_URL": api_url, "OS_GUESTHA_ROLES": "member",
           "OS_GUESTHA_PROJECT_ID": world.P2}
    rows = ok_json(openstack("guestha", "instance", "list", "-f", "json",
                             **env))
    assert sorted(r["ID"] for r in rows) == [world.uid(4), world.uid(5)]
    result = openstack("guestha", "instance", "show", world.uid(1), **env)
    assert result.returncode == 1
    assert "No instance with ID %s" % world.uid(1) in result.stderr


def test_instance_show_and_fault_commands(api_url):
    url = ("--os-guestha-url", api_url)
    shown = ok_json(openstack(*url, "guestha", "instance", "show",
                              world.uid(3), "-f", "json"))
    assert shown["state"] == "unregistered"
    assert shown["project_id"] == world.P1
    faults = ok_json(openstack(*url, "guestha", "fault", "list", "--open",
                               "-f", "json"))
    assert sorted(r["ID"] for r in faults) == [world.uid(102),
                                               world.uid(103)]
    fault = ok_json(openstack(*url, "guestha", "fault", "show",
                              world.uid(101), "-f", "json"))
    assert fault["open"] is False and fault["kind"] == "unhealthy"
    assert fault["recovered_at"]
    actions = ok_json(openstack(*url, "guestha", "action", "list",
                                "--instance", world.uid(2), "-f", "json"))
    assert [(a["Fault ID"], a["Outcome"]) for a in actions] == [
        (world.uid(102), "refused: cap")]


def test_value_output(api_url):
    result = openstack("--os-guestha-url", api_url, "guestha", "fault",
                       "list", "--closed", "-f", "value", "-c", "ID",
                       "-c", "Kind")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "%s unhealthy\n" % world.uid(101)


def test_errors():
    port = free_port()
    url = "http://127.0.0.1:%d/" % port
    result = openstack("--os-guestha-url", url, "guestha", "instance",
                       "list")
    assert result.returncode == 1
    assert ("Could not connect to the guestha API at %sv1/instances" % url
            in result.stderr)
    assert "Connection refused" in result.stderr
    result = openstack("guestha", "fault", "list")
    assert result.returncode == 1
    assert "give --os-guestha-url" in result.stderr
