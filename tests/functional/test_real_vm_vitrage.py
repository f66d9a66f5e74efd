# SPDX-License-Identifier: Apache-2.0
"""A real VM's fault reaches a real Vitrage: guest daemon in a QEMU guest ->
guestha-agent -> RabbitMQ -> guestha-server -> the log sink AND the vitrage
sink -> Vitrage 15.0.1's event API -> the guestha datasource -> an alarm on
the instance's nova.instance vertex; the recovery clears it.

The rig is test_real_vm.py's (one VM, a real agent on qemu:///system, a
real guestha-server, the Nova stand-in), with the controller's sinks set
to ``log,vitrage`` and the VM's uuid known to Vitrage's static datasource
(as Nova's datasource would know it in a cloud).  Vitrage is
test_vitrage.py's standalone one.
"""

import time
import uuid

import pytest

from tests.functional import test_real_vm as real_vm
from tests.functional import test_vitrage as vitrage_tests
from tests.functional import vitrage_standalone as standalone

pytestmark = [pytest.mark.functional, pytest.mark.libvirt, pytest.mark.vm,
              pytest.mark.vitrage]

HOST = "ghrv-host"  # the rig's agent host
INSTANCE = str(uuid.uuid4())

# test_vitrage's fixtures, for this module's own Vitrage
vitrage_vhost = vitrage_tests.vitrage_vhost
progress = vitrage_tests.progress


@pytest.fixture(scope="module")
def vitrage(vitrage_vhost, tmp_path_factory, progress):
    try:
        python = standalone.ensure_installed()
    except (standalone.VitrageError, OSError) as exc:
        real_vm._skip_or_fail("cannot install Vitrage: %s" % exc)
    service = standalone.VitrageStandalone(
        str(tmp_path_factory.mktemp("vitrage")), vitrage_vhost, [INSTANCE],
        host=HOST, python=python)
    service.configure()
    service.create_database()
    service.start()
    try:
        service.wait_ready()
        service.client = standalone.admin_client(service.url)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def rig(rabbitmq, vitrage):
    real_vm.require_qemu()
    try:
        real_vm.vmlib.build_assets()
    except real_vm.vmlib.VMError as exc:
        real_vm._skip_or_fail(str(exc))
    real_vm.vmlib.cleanup_leftovers(real_vm.URI)
    rig = real_vm.Rig(
        rabbitmq, instance_uuid=INSTANCE,
        sinks={"enabled": "log,vitrage"},
        vitrage={"auth_type": "none", "endpoint_override": vitrage.url})
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


def test_a_hung_guest_is_an_alarm_in_vitrage_and_its_recovery_clears_it(
        rig, vitrage):
    assert vitrage_tests.guestha_alarms(vitrage) == {}
    since = time.time()
    stopped_at = time.monotonic()
    rig.vm.control("signal", sig="STOP")
    try:
        fault = real_vm.wait_for(lambda: rig.faults(since),
                                 "the fault in the log sink", rig=rig)[0]
        took, alarms = vitrage_tests.wait_for(
            vitrage, lambda a: vitrage_tests.only(a, INSTANCE, fault["id"]),
            "the alarm in Vitrage", timeout=60.0)
        to_alarm = time.monotonic() - stopped_at
    finally:
        rig.vm.control("signal", sig="CONT")
    alarm = alarms[INSTANCE][fault["id"]]
    assert alarm["name"] == "guestha heartbeat missed"
    assert alarm["severity"] == "CRITICAL"
    assert alarm["compute_host"] == HOST
    assert alarm["vitrage_resource_type"] == "nova.instance"
    # on THE instance's vertex
    topology = vitrage.client.topology.get(all_tenants=True)
    by_id = {n["vitrage_id"]: n for n in topology["nodes"]}
    assert by_id[alarm["vitrage_resource_id"]]["id"] == INSTANCE

    real_vm.wait_for(lambda: rig.recoveries(fault["id"]),
                     "the recovery in the log sink", rig=rig)
    vitrage_tests.wait_for(vitrage, lambda a: INSTANCE not in a,
                           "the alarm cleared in Vitrage", timeout=60.0)
    print("\nSIGSTOP in the VM -> alarm in Vitrage: %.2f s" % to_alarm)
