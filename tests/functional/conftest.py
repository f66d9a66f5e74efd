# SPDX-License-Identifier: Apache-2.0
"""Fixtures for functional tests: real processes against real services.

RabbitMQ
--------
``rabbitmq`` (session) makes sure the local broker runs, starting it with
``rabbitmq-server -detached`` if needed, and gives a small ``rabbitmqctl``
wrapper (``stop_app``/``start_app`` for outage tests).  ``rabbit_vhost``
(per test) creates a fresh vhost, yields its transport URL and deletes it
afterwards: queues outlive their consumers, and a test must never receive
an earlier run's messages.

Where ``rabbitmqctl`` is not installed the tests are skipped, except in CI
(``CI`` set in the environment), where a missing broker is a failure.

Leftovers
---------
``_no_leftovers`` (session, automatic) first removes what an earlier run
that was killed left behind: harness processes whose owner is gone
(``guestha/testing/processes.py``) and the test VMs and work directories of
processes that are gone (``guestha/testing/guest_vms.py``), so that they cannot
hold QEMU's one client slot of a channel or the shared libvirt state in this
run.
"""

import os
import shutil
import subprocess
import time
import uuid

import pytest

from guestha.testing import processes as proc

BROKER_HOST = "127.0.0.1:5672"
BROKER_USER = "guest"
BROKER_PASSWORD = "guest"
START_TIMEOUT = 90.0


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


class RabbitCtl(object):
    """``rabbitmqctl`` for the local node."""

    def run(self, *args, timeout=60, check=True):
        result = subprocess.run(
            ["rabbitmqctl", "-q"] + list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError("rabbitmqctl %s failed (%d): %s" % (
                " ".join(args), result.returncode, result.stdout.strip()))
        return result

    def app_running(self):
        try:
            return self.run("list_vhosts", timeout=30,
                            check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def node_running(self):
        try:
            return self.run("ping", timeout=30, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_running(self):
        """Start whatever is not running: the node, or only the app (left
        stopped by an interrupted outage test)."""
        if self.app_running():
            return
        if self.node_running():
            self.start_app()
            return
        subprocess.run(["rabbitmq-server", "-detached"],
                       stdin=subprocess.DEVNULL, check=True)
        deadline = time.monotonic() + START_TIMEOUT
        # await_startup fails (rc 69) until the node has registered, so a
        # single call is not enough.
        while True:
            try:
                if self.run("await_startup", timeout=30,
                            check=False).returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ did not start within %.0f s"
                                   % START_TIMEOUT)
            time.sleep(1)
        if not self.app_running():
            raise RuntimeError("RabbitMQ started but does not answer")

    def stop_app(self):
        """Stop the broker application (connections drop, the port
        closes); the Erlang node keeps running."""
        self.run("stop_app")

    def start_app(self):
        self.run("start_app")
        deadline = time.monotonic() + START_TIMEOUT
        while not self.app_running():
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ app did not come back")
            time.sleep(0.5)


def _remove_leftovers():
    removed = ["process %s" % line for line in proc.reap_orphans()]
    if os.geteuid() == 0 and os.path.exists(LIBVIRT_SOCKET):
        try:
            from guestha.testing import guest_vms as vm
            removed += vm.cleanup_leftovers()
        except Exception as exc:  # noqa: BLE001 - libvirtError, ImportError
            # libvirtd down or no libvirt-python: the VM tests say so
            removed.append("(VM leftovers not checked: %s)" % exc)
    return removed


LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers():
    """Remove what a killed earlier run left (see the module docstring)."""
    removed = _remove_leftovers()
    if removed:
        print("\nremoved leftovers of earlier runs: %s" % "; ".join(removed))
    yield


@pytest.fixture(scope="session")
def rabbitmq():
    """A running local RabbitMQ, as a :class:`RabbitCtl`."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl not found: RabbitMQ is not installed"
        if _in_ci():
            pytest.fail(message + " (in CI the broker is required)")
        pytest.skip(message)
    ctl = RabbitCtl()
    ctl.ensure_running()
    return ctl


@pytest.fixture
def rabbit_vhost(rabbitmq):
    """The transport URL of a fresh vhost, deleted after the test."""
    vhost = "guestha-test-%s" % uuid.uuid4().hex[:12]
    rabbitmq.run("add_vhost", vhost)
    try:
        rabbitmq.run("set_permissions", "-p", vhost, BROKER_USER,
                     ".*", ".*", ".*")
        yield "rabbit://%s:%s@%s/%s" % (BROKER_USER, BROKER_PASSWORD,
                                        BROKER_HOST, vhost)
    finally:
        if not rabbitmq.app_running():
            rabbitmq.start_app()
        rabbitmq.run("delete_vhost", vhost, check=False)
