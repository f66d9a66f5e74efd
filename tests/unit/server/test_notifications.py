# SPDX-License-Identifier: Apache-2.0
"""Parsing Nova's versioned notifications, from real samples (copied into
samples/: see its README), and feeding the server-group directory."""

import copy
import json
import os

import oslo_messaging
import pytest

from guestha.server import notifications
from guestha.server.notifications import GroupChange
from guestha.server.notifications import InstanceChange

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "samples")


def sample(name):
    with open(os.path.join(SAMPLES, name)) as f:
        return json.load(f)


def wire(name):
    """The notification as the listener gets it: decoded from the AMQP
    body exactly as it crossed the broker."""
    body = sample(name)["wire_body"]
    assert body["oslo.version"] == "2.0"
    message = json.loads(body["oslo.message"])
    return message["event_type"], message["payload"]


class FakeGroups(object):
    def __init__(self):
        self.calls = []

    def on_instance_change(self, instance, state, event, host=None,
                           old_state=None, change_id=None, at=None):
        self.calls.append(("change", instance, state, event, host,
                           old_state))
        self.keys = (change_id, at)

    def update_group(self, group, members):
        self.calls.append(("group", group, members))

    def forget_instance(self, instance):
        self.calls.append(("forget", instance))

    def request_refresh(self):
        self.calls.append(("refresh",))


# -- parsing ------------------------------------------------------------------

def test_instance_update_from_the_wire():
    change = notifications.parse(*wire("nova-instance.update.wire.json"))
    assert isinstance(change, InstanceChange)
    assert change.event == "instance.update"
    assert change.instance == "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0001"
    assert change.state == "active"
    assert change.old_state == "active"
    assert change.task_state == "powering-off"
    assert change.host == "compute-1"


def test_power_off_end_from_the_wire():
    change = notifications.parse(
        *wire("nova-instance.power_off.end.wire.json"))
    assert change.event == "instance.power_off.end"
    assert change.instance == "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0001"
    assert change.state == "stopped"
    assert change.old_state is None
    assert change.host == "compute-1"


def test_documented_samples():
    doc = sample("nova-doc-instance-update.json")
    change = notifications.parse(doc["event_type"], doc["payload"])
    assert (change.instance, change.state, change.old_state,
            change.host) == ("178b0921-8f85-4257-88b6-2e743b5a975c",
                             "active", "building", "compute")
    doc = sample("nova-doc-instance-power_off-end.json")
    change = notifications.parse(doc["event_type"], doc["payload"])
    assert (change.event, change.state) == ("instance.power_off.end",
                                            "stopped")


def test_server_group_add_member():
    doc = sample("nova-doc-server_group-add_member.json")
    change = notifications.parse(doc["event_type"], doc["payload"])
    assert isinstance(change, GroupChange)
    assert change.group == "788608ec-ebdc-45c5-bc7f-e5f24ab92c80"
    assert change.members == ["54238a20-f9be-47a7-897e-d7cb0e4c03d0"]


def test_server_group_delete_has_no_members():
    doc = sample("nova-doc-server_group-add_member.json")
    change = notifications.parse("server_group.delete", doc["payload"])
    assert change.members is None


@pytest.mark.parametrize("event_type", [
    "instance.power_off.start", "instance.exists", "compute.exception",
    "aggregate.create.end", "instance.update.start", "flavor.create"])
def test_events_not_used(event_type):
    payload = sample("nova-doc-instance-power_off-end.json")["payload"]
    assert notifications.parse(event_type, payload) is None


@pytest.mark.parametrize("event_type", [
    "instance.power_on.end", "instance.pause.end", "instance.unpause.end",
    "instance.suspend.end", "instance.resume.end", "instance.reboot.end",
    "instance.shutdown.end", "instance.delete.end",
    "instance.live_migration_post.end", "instance.evacuate"])
def test_instance_events_used(event_type):
    payload = sample("nova-doc-instance-power_off-end.json")["payload"]
    assert isinstance(notifications.parse(event_type, payload),
                      InstanceChange)


@pytest.mark.parametrize("payload", [
    None, "text", {}, {"nova_object.data": "x"},
    {"nova_object.data": {"uuid": 5, "state": "active"}},
    {"nova_object.data": {"uuid": "u"}}])
def test_malformed_payloads_are_skipped(payload):
    assert notifications.parse("instance.update", payload) is None


@pytest.mark.parametrize("event_type,passes", [
    ("instance.update", True), ("instance.power_off.end", True),
    ("server_group.add_member", True), ("aggregate.create.end", False),
    ("compute.exception", False)])
def test_filter_rule(event_type, passes):
    rule = notifications.NotificationEndpoint.filter_rule
    assert rule.match({}, "nova-compute:c", event_type, {}, {}) is passes


# -- the endpoint -------------------------------------------------------------

def endpoint_info(endpoint, event_type, payload):
    return endpoint.info({}, "nova-compute:compute-1", event_type, payload,
                         {"message_id": "m", "timestamp": "t"})


def test_endpoint_feeds_state_changes():
    groups = FakeGroups()
    endpoint = notifications.NotificationEndpoint(groups)
    result = endpoint_info(endpoint,
                           *wire("nova-instance.power_off.end.wire.json"))
    assert result == oslo_messaging.NotificationResult.HANDLED
    assert groups.calls == [
        ("change", "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0001", "stopped",
         "instance.power_off.end", "compute-1", None)]


def test_endpoint_delete_forgets_and_refreshes():
    groups = FakeGroups()
    endpoint = notifications.NotificationEndpoint(groups)
    event_type, payload = wire("nova-instance.power_off.end.wire.json")
    payload = copy.deepcopy(payload)
    payload["nova_object.data"]["state"] = "deleted"
    endpoint_info(endpoint, "instance.delete.end", payload)
    assert groups.calls == [
        ("change", "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0001", "deleted",
         "instance.delete.end", "compute-1", None),
        ("forget", "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0001"),
        ("refresh",)]


def test_endpoint_group_change():
    groups = FakeGroups()
    endpoint = notifications.NotificationEndpoint(groups)
    doc = sample("nova-doc-server_group-add_member.json")
    endpoint_info(endpoint, doc["event_type"], doc["payload"])
    assert groups.calls == [
        ("group", "788608ec-ebdc-45c5-bc7f-e5f24ab92c80",
         ["54238a20-f9be-47a7-897e-d7cb0e4c03d0"]),
        ("refresh",)]


def test_endpoint_survives_a_handler_error(caplog):
    class Broken(FakeGroups):
        def on_instance_change(self, *args, **kwargs):
            raise RuntimeError("boom")

    endpoint = notifications.NotificationEndpoint(Broken())
    endpoint_info(endpoint, *wire("nova-instance.power_off.end.wire.json"))
    assert "boom" in caplog.text


# -- the listeners and their queues -------------------------------------------

def test_drain_endpoint_takes_every_priority():
    from oslo_messaging.notify import dispatcher

    drain = notifications.DrainEndpoint()
    for priority in dispatcher.PRIORITIES:
        assert getattr(drain, priority)(
            {}, "nova-compute:c1", "instance.update", {}, {}) == \
            oslo_messaging.NotificationResult.HANDLED
    assert drain.drained == len(dispatcher.PRIORITIES)


def _conf(**server):
    from oslo_config import cfg

    from guestha.conf import server as server_conf

    conf = cfg.ConfigOpts()
    server_conf.register_opts(conf)
    conf([], project="guestha-tests", default_config_files=[],
         default_config_dirs=[])
    for name, value in server.items():
        conf.set_override(name, value, "server")
    return conf


@pytest.mark.parametrize("drain", [True, False])
def test_get_listener_pool_and_drain(drain, monkeypatch):
    made = []

    def fake_listener(transport, targets, endpoints, **kwargs):
        made.append(([(t.topic, t.exchange) for t in targets],
                     [type(e).__name__ for e in endpoints],
                     kwargs.get("pool"), kwargs.get("allow_requeue")))
        return "listener-%d" % len(made)

    monkeypatch.setattr(oslo_messaging, "get_notification_listener",
                        fake_listener)
    conf = _conf(drain_notification_queues=drain)

    listeners = notifications.get_listener(conf, "transport", FakeGroups(),
                                           pool="p-a")

    ours = [("guestha_notifications", "nova")]
    expected = [(ours, ["NotificationEndpoint"], "p-a", False)]
    if drain:
        # no pool: the default queues <topic>.<priority>, shared
        expected.append((ours, ["DrainEndpoint"], None, False))
    assert made == expected
    assert listeners.listeners == ["listener-%d" % (n + 1)
                                   for n in range(len(expected))]


def test_listeners_start_stop_and_wait_together():
    class Listener(object):
        def __init__(self):
            self.calls = []

        def start(self):
            self.calls.append("start")

        def stop(self):
            self.calls.append("stop")

        def wait(self):
            self.calls.append("wait")

    parts = [Listener(), Listener()]
    listeners = notifications.Listeners(parts)
    listeners.start()
    listeners.stop()
    listeners.wait()
    assert [p.calls for p in parts] == [["start", "stop", "wait"]] * 2
