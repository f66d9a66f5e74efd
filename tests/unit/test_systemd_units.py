# SPDX-License-Identifier: Apache-2.0
"""The systemd units in etc/systemd/ and the package metadata.

* The agent starts after libvirt, monolithic (libvirtd) or modular
  (virtqemud, the default on current distributions).
* The controller runs as the dedicated user guestha, which install.rst
  tells the operator to create, and owns its state and log directories
  without a recursive chown of /var/lib/guestha, where the agent keeps the
  channel directory QEMU's user writes to.
* No unit or metadata points at a documentation URL that does not exist.
"""

import configparser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "etc", "systemd")
NAMES = ("guestha-agent.service", "guestha-server.service",
         "guestha-guest.service", "guestha-api.service")


def unit(name):
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    with open(os.path.join(UNITS, name)) as f:
        parser.read_file(f)
    return parser


def test_agent_after_libvirt_monolithic_and_modular():
    after = unit("guestha-agent.service").get("Unit", "After").split()
    assert "libvirtd.service" in after
    assert "virtqemud.service" in after


def test_api_runs_as_guestha():
    service = unit("guestha-api.service")["Service"]
    assert (service.get("User"), service.get("Group")) == ("guestha",
                                                           "guestha")
    assert service.get("ExecStart").split()[1:] == [
        "--config-file", "/etc/guestha/guestha.conf"]
    assert service.get("StateDirectory") is None


def test_server_runs_as_guestha():
    service = unit("guestha-server.service")["Service"]
    assert service.get("User") == "guestha"
    assert service.get("Group") == "guestha"
    assert service.get("LogsDirectory") == "guestha"
    # the ledger's directory, given to guestha as root ("+"), not
    # recursively
    assert service.get("ExecStartPre").split() == [
        "+/usr/bin/install", "-d", "-o", "guestha", "-g", "guestha",
        "-m", "0755", "/var/lib/guestha"]


@pytest.mark.parametrize("name", ["guestha-agent.service",
                                  "guestha-server.service"])
def test_no_state_directory_chowns_the_shared_directory(name):
    # StateDirectory=guestha chowns /var/lib/guestha recursively to the
    # unit's user: root for the agent, guestha for the server; on one host
    # each would take the other's files, and QEMU's channel directory.
    assert unit(name)["Service"].get("StateDirectory") is None


def test_install_guide_creates_the_user():
    with open(os.path.join(ROOT, "doc", "source", "install.rst")) as f:
        text = f.read()
    assert re.search(r"useradd --system .*guestha", text.replace(
        "\\\n", " "))


@pytest.mark.parametrize("name", NAMES)
def test_no_documentation_url_that_does_not_exist(name):
    parsed = unit(name)
    assert not parsed.has_option("Unit", "Documentation")
    with open(os.path.join(UNITS, name)) as f:
        assert "docs.openstack.org/guestha" not in f.read()


def test_setup_cfg_has_no_dead_home_page():
    setup = configparser.ConfigParser(interpolation=None)
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert not setup.has_option("metadata", "home_page")
    assert setup.get("metadata", "license") == "Apache-2.0"
