# SPDX-License-Identifier: Apache-2.0
"""The guest's server-group requests on their way to the controller: what
is relayed, and the rate limits, on a fake clock."""

import base64

from guestha.agent import grouprelay
from guestha.agent import instance as im
from guestha_guest import protocol as p

UUID = "0c3b6f0e-9a4d-4c1e-8b2a-5d6e7f809a1b"


def relay(**policy):
    return grouprelay.GroupRelay(UUID, im.Policy(**policy), 0.0)


def test_a_broadcast_is_relayed_with_its_payload():
    out = relay().broadcast(p.Broadcast(payload=b"\x00hello", seq=7), 0.0)
    assert type(out) is grouprelay.Relay
    assert out.method == "relay_broadcast"
    assert out.kwargs == {"instance": UUID, "seq": 7,
                          "payload_b64": base64.b64encode(
                              b"\x00hello").decode()}


def test_a_status_query_is_relayed():
    out = relay().query(p.StatusQuery(seq=9), 0.0)
    assert (out.method, out.kwargs) == ("query_status",
                                        {"instance": UUID, "seq": 9})


def test_broadcasts_beyond_the_rate_are_refused_then_allowed_again():
    r = relay(broadcasts_per_second=2)
    outs = [r.broadcast(p.Broadcast(payload=b"x", seq=n), 0.0)
            for n in range(6)]
    assert [type(o) for o in outs] == [grouprelay.Relay] * 4 + [p.Error] * 2
    error = outs[4]
    assert (error.app, error.code, error.ref) == (
        "server_group", "rate_limited", 4)
    assert "2 broadcasts per second" in error.message
    # half a second later, one more token
    assert type(r.broadcast(p.Broadcast(payload=b"x", seq=6), 0.5)) is \
        grouprelay.Relay
    assert type(r.broadcast(p.Broadcast(payload=b"x", seq=7), 0.5)) is \
        p.Error


def test_status_queries_have_their_own_budget():
    r = relay(status_queries_per_second=1.0, broadcasts_per_second=1)
    assert [type(r.query(p.StatusQuery(seq=n), 0.0)) for n in range(3)] == [
        grouprelay.Relay, grouprelay.Relay, p.Error]
    refused = r.query(p.StatusQuery(seq=3), 0.0)
    assert refused.code == "rate_limited" and refused.ref == 3
    assert "1 status queries per second" in refused.message
    # the broadcasts' budget is untouched
    assert type(r.broadcast(p.Broadcast(payload=b"x", seq=4), 0.0)) is \
        grouprelay.Relay
