# SPDX-License-Identifier: Apache-2.0
"""The shape of the RPC API over oslo.messaging's in-process ``fake://``
transport (no wire format, no broker: the functional tests cover those).
The records it carries are tested in tests/unit/test_records.py."""

import threading

from oslo_config import cfg
import oslo_messaging
import pytest

from guestha import rpc
from guestha.rpc import api
from tests.unit.test_records import fault
from tests.unit.test_records import fault_fields
from tests.unit.test_records import FAULT_ID
from tests.unit.test_records import INSTANCE
from tests.unit.test_records import newer


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
