# SPDX-License-Identifier: Apache-2.0
"""The controller's server-group messages as the loop's records: one per
local instance, built into the protocol message the guest gets; what the
protocol refuses is dropped before it reaches the loop."""

import base64

from guestha.agent.deliveries import Deliver
from guestha.agent.deliveries import GroupDeliveries
from guestha_guest import protocol as p

A = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
B = "8e2a1b6f-3c4d-4e5f-9a71-8293a4b5c6d7"
GROUP = "9f3b2c70-4d5e-4f60-8a71-93a4b5c6d7e8"


def deliveries():
    posted = []
    return GroupDeliveries(posted.append), posted


def test_a_broadcast_is_one_record_per_local_instance():
    d, posted = deliveries()
    d.on_deliver_broadcast([A, B], B, base64.b64encode(b"hi").decode())
    assert [type(r) for r in posted] == [Deliver, Deliver]
    assert [r.instance for r in posted] == [A, B]
    for r in posted:
        assert isinstance(r.message, p.Broadcast)
        assert r.message.payload == b"hi" and r.message.sender == B


def test_status_and_error_answer_the_guest_s_query():
    d, posted = deliveries()
    d.on_deliver_status(A, 7, [{"instance": B, "state": "active"}], GROUP)
    d.on_deliver_error(A, 8, "no_group", "x" * 300)
    status, error = [r.message for r in posted]
    assert isinstance(status, p.Status) and status.ref == 7
    assert [(m.instance, m.state) for m in status.members] == [
        (B, "active")]
    # the controller's text is cut to what the protocol carries
    assert isinstance(error, p.Error) and error.ref == 8
    assert error.app == "server_group" and len(error.message) == 200


def test_what_the_protocol_refuses_never_reaches_the_loop():
    d, posted = deliveries()
    d.on_deliver_status(A, 7, [{"instance": "not-a-uuid", "state": "x"}],
                        GROUP)
    d.on_deliver_error(A, "seven", "no_group", "bad ref")
    assert posted == []


def test_a_broadcast_whose_payload_is_not_base64_is_dropped(caplog):
    d, posted = deliveries()
    # raised in oslo.messaging's thread before: now a warning, nothing
    # posted, and the next message still goes through
    d.on_deliver_broadcast([A, B], B, "not base64!")
    d.on_deliver_broadcast([A], B, "aGk")  # padding missing
    assert posted == []
    assert "not base64" in caplog.text
    d.on_deliver_broadcast([A], B, base64.b64encode(b"ok").decode())
    assert [r.message.payload for r in posted] == [b"ok"]
