# SPDX-License-Identifier: Apache-2.0
"""The cloud harness itself (tools/cloud.sh): its services answer as a real
cloud does, through their public APIs and one openstacksdk session.

Runs only with GUESTHA_CLOUD_TESTS=1 (see conftest.py).  The scenarios of
guestha against the real cloud build on the ``cloud`` fixture.
"""

import subprocess
import time
import uuid

import pytest

from guestha.testing.wait import wait_until
from tests.cloud import conftest
from tools.cloud import harness

BOOT_TIMEOUT_S = 120
DAEMON_TIMEOUT_S = 90


def test_token_issue(cloud):
    token = cloud.conn.session.get_token()
    assert token and len(token) > 100  # a fernet token
    assert cloud.conn.session.get_project_id()


def test_catalog_has_every_service(cloud):
    access = cloud.conn.session.auth.get_access(cloud.conn.session)
    types = {entry["type"] for entry in access.service_catalog.catalog}
    assert {"identity", "compute", "placement", "image",
            "instance-ha", "network"} <= types


def test_placement_answers(cloud):
    resp = cloud.conn.placement.get("/resource_providers")
    assert resp.status_code == 200
    providers = resp.json()["resource_providers"]
    if cloud.compute_enabled:
        assert len(providers) == 1  # the one compute host


def test_network_stand_in_knows_no_port(cloud):
    assert list(cloud.conn.network.ports()) == []
    assert list(cloud.conn.network.networks()) == []


def test_guest_image_listed(cloud):
    image = cloud.conn.image.find_image("guestha-guest")
    assert image is not None and image.status == "active"
    # (openstacksdk makes Glance's well-known properties attributes)
    assert image.hw_qemu_guest_agent == "yes"
    kernel = cloud.conn.image.get_image(image.kernel_id)
    ramdisk = cloud.conn.image.get_image(image.ramdisk_id)
    assert (kernel.disk_format, ramdisk.disk_format) == ("aki", "ari")
    assert "console=ttyS0" in image.os_command_line


def test_flavor_carries_the_guestha_extra_spec(cloud):
    flavor = cloud.conn.compute.find_flavor("guestha.heartbeat")
    specs = cloud.conn.compute.fetch_flavor_extra_specs(flavor).extra_specs
    assert specs == {"guestha:heartbeat": "true"}
    plain = cloud.conn.compute.find_flavor("guestha.plain")
    assert cloud.conn.compute.fetch_flavor_extra_specs(
        plain).extra_specs == {}


def test_masakari_api_answers(cloud):
    segments = list(cloud.conn.instance_ha.segments())
    if cloud.compute_enabled:
        segment = next(s for s in segments if s.name == harness.SEGMENT)
        hosts = list(cloud.conn.instance_ha.hosts(segment.uuid))
        assert len(hosts) == 1


def test_nova_publishes_versioned_notifications(cloud):
    """A flavor change makes nova-api publish flavor.* versioned
    notifications: the queue of the harness's one topic,
    guestha_notifications.info, exists in its vhost afterwards."""
    name = "guestha-test-%s" % uuid.uuid4().hex[:8]
    flavor = cloud.conn.compute.create_flavor(name=name, ram=64, vcpus=1,
                                              disk=0)
    cloud.conn.compute.delete_flavor(flavor)
    queues = []

    def queue_there():
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", harness.VHOST,
             "name"], capture_output=True, text=True, timeout=60).stdout
        queues[:] = out.split()
        return "guestha_notifications.info" in queues

    wait_until(queue_there, 30, "the guestha_notifications.info queue in %s"
               % harness.VHOST, interval=1, details=lambda: str(queues))


def _wait_server(conn, server, status, timeout):
    def reached():
        found = conn.compute.get_server(server)
        assert found.status != "ERROR", found.fault
        return found if found.status == status else None

    return wait_until(reached, timeout, "server %s %s" % (server.id, status),
                      interval=1)


def test_server_boots_with_the_extra_spec_in_its_domain(cloud):
    """A server of the guestha.heartbeat flavor and the guestha-guest image
    boots to ACTIVE with no network; the domain Nova writes carries the
    flavor's extra spec, the virtio-serial controller of
    hw_qemu_guest_agent, and the installed guest daemon starts."""
    if not cloud.compute_enabled:
        pytest.skip("the cloud runs without nova-compute "
                    "(GUESTHA_CLOUD_COMPUTE=0)")
    import libvirt

    conn = cloud.conn
    image = conn.image.find_image("guestha-guest")
    flavor = conn.compute.find_flavor("guestha.heartbeat")
    started = time.monotonic()
    server = conn.compute.create_server(
        name="guestha-harness-%s" % uuid.uuid4().hex[:8],
        image_id=image.id, flavor_id=flavor.id, networks="none")
    try:
        server = _wait_server(conn, server, "ACTIVE", BOOT_TIMEOUT_S)
        active_s = time.monotonic() - started
        virt = libvirt.open("qemu:///system")
        try:
            dom = virt.lookupByUUIDString(server.id)
            xml = dom.XMLDesc(0)
        finally:
            virt.close()
        assert ('<nova:extraSpec name="guestha:heartbeat">true'
                '</nova:extraSpec>') in xml
        assert "<nova:extraSpecs>" in xml
        assert "type='virtio-serial'" in xml
        assert "org.qemu.guest_agent.0" in xml
        # the daemon installed in the image starts (its log goes to the
        # serial console, which Nova keeps)
        console = []

        def daemon_started():
            console[:] = [conn.compute.get_server_console_output(
                server)["output"]]
            return "guestha_guest: guestha-guest" in console[0]

        wait_until(daemon_started, DAEMON_TIMEOUT_S,
                   "the guest daemon to start (console)", interval=2,
                   details=lambda: console[0][-2000:])
        console = console[0]
        assert "started: port /dev/virtio-ports/org.openstack.guestha.0" \
            in console
        print("server ACTIVE after %.1f s" % active_s)
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=BOOT_TIMEOUT_S)


def test_down_leaves_nothing_and_up_again(cloud):
    """down: no process, database, vhost or Nova domain is left; up again
    afterwards (the session's later tests use the cloud)."""
    conftest.cloud_sh("down")
    st = conftest.cloud_status()
    assert st["processes"] == 0
    assert st["databases"] == []
    assert not any(s["running"] for s in st["services"].values())
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts", "name"],
                            capture_output=True, text=True,
                            timeout=60).stdout.split()
    assert harness.VHOST not in vhosts
    virsh = subprocess.run(["virsh", "-c", "qemu:///system", "list",
                            "--all", "--name"], capture_output=True,
                           text=True, timeout=60)
    for name in virsh.stdout.split():
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml",
                              name], capture_output=True, text=True,
                             timeout=60).stdout
        assert harness.STATE not in xml, name
    args = ["up"] + ([] if cloud.compute_enabled else ["--no-compute"])
    conftest.cloud_sh(*args)
    assert conftest.cloud_status()["services"]["nova-api"]["answering"]
