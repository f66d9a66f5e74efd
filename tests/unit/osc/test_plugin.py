# SPDX-License-Identifier: Apache-2.0
"""The plugin as python-openstackclient loads it: its entry points, its
global options and make_client, through the real ``openstack`` shell run
in this process against the API on a real HTTP server."""

import json
import logging
import os

from openstackclient import shell
from osc_lib import clientmanager
import pytest

from guestha.osc import plugin
from tests.unit.osc import world as data


@pytest.fixture
def openstack(monkeypatch, capsys):
    """Run ``openstack ARGS`` in this process; returns (exit code,
    stdout, stderr)."""
    for name in list(os.environ):
        if name.startswith("OS_"):
            monkeypatch.delenv(name)

    def run(*argv):
        # one openstack process makes one guestha client, cached in a
        # descriptor of the ClientManager class: forget the last one
        vars(clientmanager.ClientManager)[plugin.API_NAME]._handle = None
        capsys.readouterr()
        # the shell sets up logging for a process of its own: give the
        # next tests the root logger as it was
        root = logging.getLogger()
        level, handlers = root.level, root.handlers[:]
        try:
            code = shell.main(["--os-auth-type", "none"] + list(argv))
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_commands_registered(openstack):
    code, out, _err = openstack("command", "list", "--group", "guestha",
                                "-f", "json")
    assert code == 0
    commands = {c for group in json.loads(out)
                for c in group["Commands"]}
    assert commands == {"guestha instance list", "guestha instance show",
                        "guestha fault list", "guestha fault show",
                        "guestha action list"}


def test_url_option(openstack, api_url):
    code, out, err = openstack("--os-guestha-url", api_url, "guestha",
                               "instance", "list", "-f", "json")
    assert code == 0, err
    assert sorted(r["ID"] for r in json.loads(out)) == sorted(
        row[0] for row in data.INSTANCES)


def test_url_and_noauth_identity_from_env(openstack, api_url, monkeypatch):
    monkeypatch.setenv("OS_GUESTHA_URL", api_url)
    monkeypatch.setenv("OS_GUESTHA_ROLES", "member")
    monkeypatch.setenv("OS_GUESTHA_PROJECT_ID", data.P2)
    code, out, err = openstack("guestha", "instance", "list", "-f", "value",
                               "-c", "ID")
    assert code == 0, err
    assert sorted(out.split()) == [data.uid(4), data.uid(5)]
    code, out, err = openstack("guestha", "instance", "show",
                               data.uid(1))
    assert code == 1
    assert "No instance with ID %s" % data.uid(1) in err


def test_unsupported_api_version(openstack, api_url):
    code, _out, err = openstack("--os-guestha-url", api_url,
                                "--os-guestha-api-version", "2",
                                "guestha", "fault", "list")
    # the openstack shell itself refuses a version that API_VERSIONS
    # lacks: it loads no command group openstack.guestha.v2
    assert code == 2
    assert "guestha API version 2 is not in supported versions: 1" in err


def test_no_url_no_catalog(openstack):
    code, _out, err = openstack("guestha", "action", "list")
    assert code == 1
    assert "give --os-guestha-url" in err


def test_module_attributes():
    # what python-openstackclient reads of a plugin module
    assert plugin.API_NAME == "guestha"
    assert plugin.API_VERSION_OPTION == "os_guestha_api_version"
    assert set(plugin.API_VERSIONS) == {"1"}


def test_noauth_endpoint_option(openstack, api_url):
    # keystoneauth's "none" plugin has an endpoint of its own: used when
    # no --os-guestha-url is given
    code, out, err = openstack("--os-endpoint", api_url, "guestha",
                               "fault", "list", "-f", "value", "-c", "ID")
    assert code == 0, err
    assert sorted(out.split()) == sorted(f[0] for f in data.FAULTS)
