# SPDX-License-Identifier: Apache-2.0
"""The notifications sink: versioned guestha.instance.fault and
guestha.instance.recovery notifications (issue 12)."""

import datetime
import uuid

from oslo_config import cfg
import oslo_messaging
import pytest

from guestha.conf import opts
from guestha import nova as nova_mod
from guestha import records
from guestha.sinks import base
from guestha.sinks import notifications as notif
from guestha.testing import fake_nova

INSTANCE = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
PROJECT = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0)


class Transport(object):
    """What the sink uses of an oslo.messaging transport."""

    def __init__(self):
        self.sent = []
        self.fail = None
        self.closed = False

    def _send_notification(self, target, ctxt, message, version, retry):
        if self.fail is not None:
            raise self.fail
        self.sent.append((target.topic, message, version, retry))

    def cleanup(self):
        self.closed = True


def fault():
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind="missed", reason="hung",
        action="reboot", detected_at=1.7e9, interval_ms=1000, misses=2)


def recovery(of):
    return records.make_recovery(
        instance=INSTANCE, host="compute-1", fault_id=of["id"],
        recovered_at=1.7e9 + 5, kind="missed", reason="answers again")


def sink(projects=None, topics=("notifications",)):
    transport = Transport()
    return notif.NotificationsSink(transport, topics, "guestha-server:c1",
                                   projects=projects,
                                   clock=lambda: NOW), transport


def test_a_fault_is_published_with_the_documented_payload():
    s, transport = sink(projects=lambda i: PROJECT,
                        topics=["notifications", "versioned_notifications"])
    event = fault()
    s.send(event)
    assert [t for t, _m, _v, _r in transport.sent] == [
        "notifications.info", "versioned_notifications.info"]
    _topic, message, version, retry = transport.sent[0]
    assert version == 2.0 and retry == notif.PUBLISH_RETRY
    assert message["event_type"] == "guestha.instance.fault"
    assert message["priority"] == "INFO"
    assert message["publisher_id"] == "guestha-server:c1"
    assert message["timestamp"] == str(NOW)
    assert message["message_id"] == str(uuid.uuid5(uuid.UUID(event["id"]),
                                                   "notification"))
    assert message["payload"] == {
        "guestha_object.name": "InstanceFaultPayload",
        "guestha_object.namespace": "guestha",
        "guestha_object.version": "1.0",
        "guestha_object.data": {
            "instance_id": INSTANCE, "project_id": PROJECT,
            "host": "compute-1", "fault_id": event["id"],
            "event_id": event["id"], "kind": "missed", "reason": "hung",
            "action": "reboot", "detected_at": event["detected_at"],
            "recovered_at": None, "interval_ms": 1000, "misses": 2}}


def test_a_recovery_names_its_fault():
    s, transport = sink()
    f = fault()
    r = recovery(f)
    s.send(r)
    message = transport.sent[0][1]
    assert message["event_type"] == "guestha.instance.recovery"
    data = message["payload"]["guestha_object.data"]
    assert message["payload"]["guestha_object.name"] == \
        "InstanceRecoveryPayload"
    assert data["fault_id"] == f["id"] and data["event_id"] == r["id"]
    assert data["recovered_at"] == r["recovered_at"]
    assert data["detected_at"] is None and data["action"] is None
    assert data["project_id"] is None  # no lookup configured


def test_only_faults_and_recoveries():
    s, _ = sink()
    assert s.accepts(fault())
    assert not s.accepts({"type": "action", "id": str(uuid.uuid4())})
    assert not s.accepts({"type": "state", "id": str(uuid.uuid4())})


def test_a_broker_outage_is_retried_by_the_dispatcher():
    s, transport = sink()
    transport.fail = oslo_messaging.MessageDeliveryFailure("no broker")
    with pytest.raises(base.SinkUnavailable):
        s.send(fault())


def test_the_project_is_looked_up_once_and_a_failure_sends_null():
    calls = []

    def projects(instance):
        calls.append(instance)
        if len(calls) == 1:
            raise nova_mod.NovaUnavailable("down")
        return PROJECT
    s, transport = sink(projects=projects)
    s.send(fault())
    s.send(fault())
    s.send(fault())
    got = [m["payload"]["guestha_object.data"]["project_id"]
           for _t, m, _v, _r in transport.sent]
    assert got == [None, PROJECT, PROJECT]
    assert len(calls) == 2  # the failure is not cached, the answer is


def test_nova_gives_the_project():
    nova = fake_nova.FakeNova().start()
    try:
        nova.add_server(INSTANCE, project_id=PROJECT)
        client = nova_mod.NovaClient.from_conf(fake_nova.nova_conf(nova))
        assert client.server(INSTANCE)["project_id"] == PROJECT
    finally:
        nova.stop()


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="guestha-test", default_config_files=[],
         default_config_dirs=[])
    conf.set_override("transport_url", "fake:/", group="notifications_sink")
    conf.set_override("server_id", "ctl-7", group="server")
    conf.set_override("enabled", ["notifications"], group="sinks")
    return conf


def test_loaded_by_name_from_the_configuration(conf):
    [s] = base.load_sinks(conf)
    try:
        assert isinstance(s, notif.NotificationsSink)
        assert s.name == "notifications"
        assert s.topics == ["notifications"]
        assert s.publisher_id == "guestha-server:ctl-7"
        assert s._projects is None  # [nova] has no auth_type
    finally:
        s.close()


def test_no_topics_is_a_configuration_error(conf):
    conf.set_override("topics", [], group="notifications_sink")
    with pytest.raises(base.SinkConfigError):
        base.load_sinks(conf)
