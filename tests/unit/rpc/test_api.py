# SPDX-License-Identifier: Apache-2.0
"""Event records and their validation; the shape of the RPC API over
oslo.messaging's in-process ``fake://`` transport (no wire format, no
broker: the functional tests cover those)."""

import datetime
import json
import threading
import uuid

from oslo_config import cfg
import oslo_messaging
import pytest

from guestha import rpc
from guestha.rpc import api

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
FAULT_ID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
# 2024-03-01T12:00:00.123456Z
AT = 1709294400.123456


def fault(**overrides):
    kwargs = dict(instance=INSTANCE, host="compute-1", kind="missed",
                  reason="no answer to challenge 7", action="reboot",
                  detected_at=AT, interval_ms=1000, misses=2)
    kwargs.update(overrides)
    return api.make_fault(**kwargs)


# -- records ------------------------------------------------------------------

def test_fault_record():
    event = fault(details={"state": "monitored"})

    assert str(uuid.UUID(event["id"], version=4)) == event["id"]
    assert event == {
        "version": "1.0", "id": event["id"], "type": "fault",
        "instance": INSTANCE, "host": "compute-1", "kind": "missed",
        "reason": "no answer to challenge 7", "action": "reboot",
        "detected_at": "2024-03-01T12:00:00.123456+00:00",
        "detected_at_ts": AT, "interval_ms": 1000, "misses": 2,
        "details": {"state": "monitored"},
    }
    assert json.loads(json.dumps(event)) == event
    assert datetime.datetime.fromisoformat(
        event["detected_at"]).timestamp() == pytest.approx(AT, abs=1e-6)


def test_every_record_has_its_own_id():
    assert fault()["id"] != fault()["id"]


def test_recovery_record():
    event = api.make_recovery(INSTANCE, "compute-1", FAULT_ID, AT + 5,
                              details={"why": "answered"}, kind="missed")
    assert event["type"] == "recovery"
    assert event["fault_id"] == FAULT_ID
    assert event["kind"] == "missed"
    assert event["recovered_at"] == "2024-03-01T12:00:05.123456+00:00"
    assert event["recovered_at_ts"] == AT + 5
    assert event["details"] == {"why": "answered"}
    assert api.make_recovery(INSTANCE, "h", FAULT_ID, AT)["kind"] is None


def test_state_record():
    event = api.make_state(INSTANCE, "compute-1", "monitored",
                           "guest registered", AT)
    assert (event["type"], event["state"], event["at_ts"]) == (
        "state", "monitored", AT)
    assert event["at"] == "2024-03-01T12:00:00.123456+00:00"


def test_action_none_and_unregistered_interval_are_allowed():
    event = fault(action=None, interval_ms=None, misses=None,
                  kind="channel-lost")
    assert (event["action"], event["interval_ms"], event["misses"]) == (
        None, None, None)


def test_an_upper_case_uuid_is_stored_canonical():
    assert fault(instance=INSTANCE.upper())["instance"] == INSTANCE


def test_a_long_reason_is_cut_not_refused():
    assert len(fault(reason="x" * 5000)["reason"]) == api.MAX_REASON


@pytest.mark.parametrize("overrides, message", [
    ({"kind": "hung"}, "kind must be one of missed, unhealthy"),
    ({"action": "migrate"}, "action must be one of none, log, reboot"),
    ({"instance": "not-a-uuid"}, "instance is not a uuid"),
    ({"instance": "{%s}" % INSTANCE}, "not a canonical uuid"),
    ({"instance": INSTANCE.replace("-", "")}, "not a canonical uuid"),
    ({"instance": None}, "instance must be a uuid string"),
    ({"host": ""}, "host must be a non-empty string"),
    ({"reason": 42}, "reason must be a string or None"),
    ({"detected_at": "now"}, "detected_at must be epoch seconds"),
    ({"detected_at": float("nan")}, "detected_at must be epoch seconds"),
    ({"detected_at": -1}, "detected_at must be epoch seconds"),
    ({"detected_at": True}, "detected_at must be epoch seconds"),
    ({"interval_ms": 1.5}, "interval_ms must be an integer >= 0"),
    ({"misses": -1}, "misses must be an integer >= 0"),
    ({"misses": False}, "misses must be an integer >= 0"),
    ({"details": ["x"]}, "details must be a dict"),
    ({"details": {"t": object()}}, "details must be JSON-serializable"),
])
def test_bad_fault_inputs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{")):
        fault(**overrides)


def test_bad_recovery_and_state_inputs_are_refused():
    with pytest.raises(ValueError, match="fault_id is not a uuid"):
        api.make_recovery(INSTANCE, "h", "fault-7", AT)
    with pytest.raises(ValueError, match="kind must be one of"):
        api.make_recovery(INSTANCE, "h", FAULT_ID, AT, kind="bad")
    with pytest.raises(ValueError, match="state must be a short"):
        api.make_state(INSTANCE, "h", "Monitored!", None, AT)


def test_validate_event_accepts_every_record_after_the_wire():
    for event in (fault(), api.make_recovery(INSTANCE, "h", FAULT_ID, AT),
                  api.make_state(INSTANCE, "h", "exited", None, AT)):
        wire = json.loads(json.dumps(event))
        assert api.validate_event(wire) == event


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(version="2.0"), "unsupported event version"),
    (lambda e: e.update(type="alarm"), "type must be one of"),
    (lambda e: e.pop("misses"), "fault event lacks misses"),
    (lambda e: e.update(id="x"), "id is not a uuid"),
    (lambda e: e.update(kind="hung"), "kind must be one of"),
    (lambda e: e.update(detected_at_ts=None), "detected_at_ts must be"),
    (lambda e: e.update(details=None), "details must be a dict"),
])
def test_validate_event_refuses_malformed_records(change, message):
    event = fault()
    change(event)
    with pytest.raises(ValueError, match=message):
        api.validate_event(event)
    with pytest.raises(ValueError, match="must be a dict"):
        api.validate_event([event])


# -- the API over the fake transport -----------------------------------------

class ControllerEndpoint(object):
    """What a controller implements, as far as these tests need."""

    target = rpc.endpoint_target(rpc.CONTROLLER_NAMESPACE)

    def __init__(self, answer=None):
        self.received = []
        self.answer = answer
        self.got = threading.Event()

    def _note(self, method, **kwargs):
        self.received.append((method, kwargs))
        self.got.set()

    def report_events(self, ctxt, host, events):
        self._note("report_events", host=host, events=events)
        if self.answer is not None:
            return self.answer
        return {"accepted": [e["id"] for e in events]}

    def relay_broadcast(self, ctxt, host, instance, payload_b64, seq):
        self._note("relay_broadcast", host=host, instance=instance,
                   payload_b64=payload_b64, seq=seq)

    def query_status(self, ctxt, host, instance, seq):
        self._note("query_status", host=host, instance=instance, seq=seq)

    def agent_alive(self, ctxt, host, instances):
        self._note("agent_alive", host=host, instances=instances)


class Handler(api.AgentHandler):
    def __init__(self):
        self.calls = []
        self.got = threading.Event()

    def _note(self, method, **kwargs):
        self.calls.append((method, kwargs))
        self.got.set()

    def on_deliver_broadcast(self, **kwargs):
        self._note("broadcast", **kwargs)

    def on_deliver_notification(self, **kwargs):
        self._note("notification", **kwargs)

    def on_deliver_status(self, **kwargs):
        self._note("status", **kwargs)

    def on_deliver_error(self, **kwargs):
        self._note("error", **kwargs)


@pytest.fixture
def transport():
    # The global CONF, as in the services: oslo.messaging reads options on
    # every call that it registers there only.  The URL is passed, so the
    # test leaves no override behind.
    transport = rpc.get_transport(cfg.CONF, url="fake://")
    yield transport
    transport.cleanup()


@pytest.fixture
def controller(transport):
    endpoint = ControllerEndpoint()
    server = oslo_messaging.get_rpc_server(
        transport, rpc.controller_server_target("ctl-1"), [endpoint])
    server.start()
    yield endpoint
    server.stop()
    server.wait()


def wait_for(event, what):
    # the timeout only ends a test that would hang: nothing is timed
    assert event.wait(30), "no %s within 30 s" % what
    event.clear()


def test_report_events_is_a_call_answered_with_the_accepted_ids(
        transport, controller):
    client = api.ControllerAPI(transport, "compute-1", timeout=5)
    events = [fault(), fault(kind="unhealthy")]

    answer = client.report_events(events)

    assert answer == {"accepted": [e["id"] for e in events], "rejected": {}}
    assert controller.received == [
        ("report_events", {"host": "compute-1", "events": events})]


def test_a_malformed_answer_is_an_invalid_answer(transport, controller):
    controller.answer = {"ok": True}
    client = api.ControllerAPI(transport, "compute-1", timeout=5)
    with pytest.raises(api.InvalidAnswer, match="accepted"):
        client.report_events([fault()])


def test_report_events_times_out_without_a_controller(transport):
    client = api.ControllerAPI(transport, "compute-1")
    prepared = []
    prepare = client._client.prepare

    def spy(**kwargs):
        prepared.append(kwargs)
        return prepare(**kwargs)
    client._client.prepare = spy
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.report_events([fault()], timeout=0.2)
    # the call's own timeout, not the client's default (how long the
    # call then takes is oslo.messaging's, not timed here)
    assert prepared == [{"timeout": 0.2}]


def test_agent_casts_reach_the_controller_with_the_host(
        transport, controller):
    client = api.ControllerAPI(transport, "compute-1")
    alive = [{"instance": INSTANCE, "heartbeat": True,
              "server_group_messaging": False}]

    client.relay_broadcast(INSTANCE, "aGVsbG8=", 7)
    wait_for(controller.got, "relay_broadcast")
    client.query_status(INSTANCE, 8)
    wait_for(controller.got, "query_status")
    client.agent_alive(alive)
    wait_for(controller.got, "agent_alive")

    assert controller.received == [
        ("relay_broadcast", {"host": "compute-1", "instance": INSTANCE,
                             "payload_b64": "aGVsbG8=", "seq": 7}),
        ("query_status", {"host": "compute-1", "instance": INSTANCE,
                          "seq": 8}),
        ("agent_alive", {"host": "compute-1", "instances": alive}),
    ]


def test_controller_casts_reach_only_the_agent_of_that_host(transport):
    handlers = {"compute-1": Handler(), "compute-2": Handler()}
    servers = [api.start_agent_server(transport, host, handler)
               for host, handler in handlers.items()]
    try:
        client = api.AgentAPI(transport)
        members = [{"instance": INSTANCE, "state": "ACTIVE"}]
        client.deliver_broadcast("compute-2", [INSTANCE], FAULT_ID, "aGk=")
        wait_for(handlers["compute-2"].got, "broadcast")
        client.deliver_notification("compute-2", [INSTANCE], FAULT_ID,
                                    "PAUSED", "compute.instance.pause.end")
        wait_for(handlers["compute-2"].got, "notification")
        client.deliver_status("compute-2", INSTANCE, 3, members, "group-a")
        wait_for(handlers["compute-2"].got, "status")
        client.deliver_error("compute-2", INSTANCE, 4, "not_in_group",
                             "instance is in no server group")
        wait_for(handlers["compute-2"].got, "error")
    finally:
        for server in servers:
            server.stop()
            server.wait()

    assert handlers["compute-1"].calls == []
    assert handlers["compute-2"].calls == [
        ("broadcast", {"instances": [INSTANCE], "sender": FAULT_ID,
                       "payload_b64": "aGk="}),
        ("notification", {"instances": [INSTANCE], "instance": FAULT_ID,
                          "state": "PAUSED",
                          "event": "compute.instance.pause.end"}),
        ("status", {"instance": INSTANCE, "seq": 3, "members": members,
                    "group": "group-a"}),
        ("error", {"instance": INSTANCE, "seq": 4, "code": "not_in_group",
                   "message": "instance is in no server group"}),
    ]


def test_targets_name_topics_namespaces_and_version():
    target = rpc.agent_target("compute-1")
    assert (target.topic, target.server, target.namespace,
            target.version) == ("guestha-agent", "compute-1",
                                "guestha.agent", "1.0")
    target = rpc.controller_target()
    assert (target.topic, target.server, target.namespace) == (
        "guestha-controller", None, "guestha.controller")
    assert api.AgentEndpoint.target.namespace == rpc.AGENT_NAMESPACE


# -- rolling upgrades ---------------------------------------------------------

def newer(event, version="1.1"):
    """``event`` as an agent of a newer minor version sends it: with a
    field this version does not know."""
    return dict(event, version=version, confidence={"score": 0.9})


def test_a_record_of_a_newer_minor_version_is_accepted_as_is():
    event = newer(fault())
    assert api.validate_event(event) is event
    assert event["confidence"] == {"score": 0.9}  # kept, not checked
    assert api.validate_event(newer(fault(), "1.27"))


@pytest.mark.parametrize("version", ["2.0", "0.9", "1", "1.x", None, 1.1])
def test_a_record_of_another_major_version_is_refused(version):
    with pytest.raises(ValueError, match="unsupported event version"):
        api.validate_event(dict(fault(), version=version))


def test_a_newer_minor_record_still_has_its_known_fields_checked():
    event = newer(fault())
    event["kind"] = "hung"
    with pytest.raises(ValueError, match="kind must be one of"):
        api.validate_event(event)


def test_backport_event_sends_the_caps_version_without_newer_fields():
    event = newer(fault(), "1.3")
    old = api.backport_event(event, "1.0")
    assert old == fault_fields(event) and old["version"] == "1.0"
    plain = fault()
    assert api.backport_event(plain, "1.0") is plain
    with pytest.raises(ValueError):
        api.backport_event(plain, "2.0")


def fault_fields(event):
    keys = set(fault())
    return dict({k: v for k, v in event.items() if k in keys},
                version="1.0")


def test_version_cap_backports_what_report_events_sends(
        transport, controller):
    client = api.ControllerAPI(transport, "compute-1", timeout=5,
                               version_cap="1.0")
    event = newer(fault(), "1.2")
    client.report_events([event])
    (_, kwargs), = controller.received
    assert kwargs["events"] == [fault_fields(event)]


def test_a_version_cap_of_another_major_version_is_refused(transport):
    with pytest.raises(ValueError):
        api.ControllerAPI(transport, "compute-1", version_cap="2.0")
