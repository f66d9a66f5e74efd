# SPDX-License-Identifier: Apache-2.0
"""Points of the specification settled after an independent implementation
asked about them (issue 8): each test pins the behaviour the text now
states (doc/source/protocol.rst)."""

import base64
import json

import pytest

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m
from tests.unit.protocol.channel import Channel

SEQ = 4242


def line_of(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def refusal(line, sender=m.HOST):
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(line, sender)
    return info.value


def _challenge(**changes):
    obj = {"v": 1, "app": "heartbeat", "type": "challenge", "seq": SEQ,
           "challenge": "c", "deadline_ms": 5}
    obj.update(changes)
    return obj


# -- 1. an error is never answered, valid or not ------------------------------

@pytest.mark.parametrize("obj", [
    {"v": 1, "app": "base", "type": "error", "seq": SEQ},  # no code
    {"v": 1, "app": "heartbeat", "type": "error", "seq": SEQ, "code": "X",
     "message": "bad code"},
    {"v": 1, "app": "server_group", "type": "error", "seq": SEQ,
     "code": "rate_limited", "message": "x", "ref": -1},
    {"v": 1, "app": "martian", "type": "error", "seq": SEQ, "code": "a",
     "message": ""},  # an unknown class: unknown_type
    {"app": "base", "type": "error", "seq": "seventeen"},  # bad seq
    {"v": 1, "app": 7, "type": "error", "seq": SEQ},
], ids=lambda obj: str(obj.get("app")))
def test_an_invalid_error_is_refused_but_not_answerable(obj):
    for sender in (m.HOST, m.GUEST):
        exc = refusal(line_of(obj), sender)
        assert exc.answerable is False


@pytest.mark.parametrize("line", [
    b"not json", b'["error"]', line_of(_challenge(deadline_ms=0)),
    line_of({"v": 1, "app": "heartbeat", "type": "errors", "seq": SEQ}),
])
def test_other_bad_lines_are_answerable(line):
    assert refusal(line).answerable is True


def test_two_peers_that_refuse_each_others_errors_do_not_ping_pong():
    # each side answers every answerable refusal at once, as a careless
    # implementation would; an invalid error gets no answer, so it ends
    channel = Channel()
    channel.sync()
    bad = line_of({"v": 1, "app": "base", "type": "error", "seq": 1,
                   "code": "NOT A CODE", "message": "x"}) + b"\n"
    channel.write(m.HOST, bad)
    for _ in range(5):
        channel.pump()
        for side in (m.HOST, m.GUEST):
            while channel.errors[side]:
                exc = channel.errors[side].pop()
                if exc.answerable:
                    channel.send(side, exc.to_message())
    assert channel.queued == {m.HOST: bytearray(), m.GUEST: bytearray()}


# -- 3. a missing v -----------------------------------------------------------

@pytest.mark.parametrize("version", ["absent", None])
def test_a_missing_v_is_unsupported_version(version):
    obj = _challenge()
    if version == "absent":
        del obj["v"]
    else:
        obj["v"] = version
    exc = refusal(line_of(obj))
    assert (exc.code, exc.ref, exc.app) == (
        "unsupported_version", SEQ, "heartbeat")


# -- 4. nesting depth ---------------------------------------------------------

def _nested(depth):
    # the top-level object is depth 1
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return line_of(_challenge()).replace(b'"seq"', b'"zzz":' + inner
                                         + b',"seq"')


def test_max_depth_is_enough_for_every_message_and_every_implementation():
    assert m.MAX_DEPTH == 32


def test_nesting_up_to_max_depth_is_accepted():
    assert m.decode(_nested(m.MAX_DEPTH), m.HOST).challenge == "c"


def test_deeper_nesting_is_invalid_json_without_running_the_parser(
        monkeypatch):
    class NoParser(object):
        def scan_once(self, *args):
            raise AssertionError("the JSON parser ran")
        decode = scan_once
    monkeypatch.setattr(m, "_DECODER", NoParser())
    for line in (_nested(m.MAX_DEPTH + 1), b"[" * 4000,
                 b'{"a":' + b'{"b":' * 40 + b"1" + b"}" * 41):
        exc = refusal(line)
        assert (exc.code, exc.ref, exc.app) == ("invalid_json", None,
                                                "base")
        assert "deeper than 32" in exc.message


def test_brackets_inside_strings_do_not_count():
    text = "[[{{" * 30 + '\\"]' + "[" * 40
    msg = m.decode(line_of(_challenge(zzz=text, yyy=["[" * 50])), m.HOST)
    assert msg.challenge == "c"


def test_a_too_deep_line_through_a_connection_is_one_refusal():
    channel = Channel()
    channel.sync()
    channel.write(m.HOST, b"[" * 2100 + b"]" * 2100 + b"\n")
    channel.send(m.HOST, m.Challenge(challenge="after", deadline_ms=10))
    channel.pump()
    assert [e.code for e in channel.errors[m.GUEST]] == ["invalid_json"]
    assert [x.challenge for x in channel.messages(m.GUEST, m.Challenge)] == [
        "after"]


# -- 5. too_large before invalid_message for a broadcast payload --------------

def _broadcast(payload):
    return line_of({"v": 1, "app": "server_group", "type": "broadcast",
                    "seq": SEQ, "payload": payload})


@pytest.mark.parametrize("payload,code", [
    ("!" * (m.MAX_PAYLOAD_B64 + 4), "too_large"),  # malformed and too long
    ("A" * (m.MAX_PAYLOAD_B64 + 1), "too_large"),  # not even a length of 4
    ("!" * m.MAX_PAYLOAD_B64, "invalid_message"),  # malformed, short enough
    (base64.b64encode(b"x" * (m.MAX_PAYLOAD + 1)).decode(), "too_large"),
    (5, "invalid_message"),
])
def test_broadcast_payload_precedence(payload, code):
    for sender in (m.HOST, m.GUEST):
        exc = refusal(_broadcast(payload), sender)
        assert (exc.code, exc.app, exc.ref) == (code, "server_group", SEQ)


def test_the_longest_payload_string_is_the_encoding_of_max_payload():
    assert m.MAX_PAYLOAD_B64 == len(base64.b64encode(b"x" * m.MAX_PAYLOAD))
    got = m.decode(_broadcast(base64.b64encode(b"x" * m.MAX_PAYLOAD)
                              .decode()), m.GUEST)
    assert got.payload == b"x" * m.MAX_PAYLOAD


# -- -0 -----------------------------------------------------------------------

def test_minus_zero_is_the_integer_zero():
    line = line_of(_challenge()).replace(b'"seq":4242', b'"seq":-0')
    assert m.decode(line, m.HOST).seq == 0
    for bad in (b'"seq":-0.0', b'"seq":0e0', b'"seq":-0e1'):
        line = line_of(_challenge()).replace(b'"seq":4242', bad)
        assert refusal(line).code == "invalid_message"


# -- sequence numbers ---------------------------------------------------------

def test_empty_lines_carry_no_seq_and_every_message_line_takes_one():
    conn = c.Connection(m.GUEST)
    sync = conn.start_sync()
    assert sync.startswith(b"\n")  # the empty line: no seq of its own
    first = json.loads(sync.strip())["seq"]
    conn.receive_data(line_of({"v": 1, "app": "base", "type": "sync_ack",
                               "seq": 9, "nonce": conn._nonce,
                               "version": 1}) + b"\n")
    assert isinstance(conn.next_event(), c.Synced)
    one = m.Exit(reason="a")
    conn.send(one)  # written or dropped later: the seq is spent either way
    two = m.Exit(reason="b")
    conn.send(two)
    assert (one.seq, two.seq) == (first + 1, first + 2)


# -- an overlong line and a synchronisation -----------------------------------

def test_a_sync_ends_the_skipping_of_an_overlong_line():
    conn = c.Connection(m.GUEST)
    channel_ready(conn)
    conn.receive_data(b"x" * (m.MAX_LINE + 10))  # reported, now skipping
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code == "line_too_long"
    conn.start_sync()
    # the rest of the overlong line is now a fragment: a bad line, dropped
    # silently while synchronising, not a second line_too_long
    conn.receive_data(b"yyyy\n")
    assert conn.next_event() is c.NEED_DATA
    assert conn.discarded == 1


def test_line_too_long_is_judged_in_the_state_it_is_processed_in():
    conn = c.Connection(m.GUEST)
    channel_ready(conn)
    conn.receive_data(b"x" * (m.MAX_LINE + 10))  # received while READY
    conn.start_sync()  # ... processed while SYNCING: dropped, no refusal
    assert conn.next_event() is c.NEED_DATA
    assert conn.discarded == 1


def channel_ready(conn):
    conn.start_sync()
    conn.receive_data(line_of({"v": 1, "app": "base", "type": "sync_ack",
                               "seq": 9, "nonce": conn._nonce,
                               "version": 1}) + b"\n")
    assert isinstance(conn.next_event(), c.Synced)
    assert conn.state == c.READY


def _depth(value):
    if isinstance(value, dict):
        return 1 + max([_depth(v) for v in value.values()] or [0])
    if isinstance(value, list):
        return 1 + max([_depth(v) for v in value] or [0])
    return 0


def test_the_depth_scan_agrees_with_a_parser():
    import random
    rng = random.Random(8)
    texts = ['"', "\\", "[", "]", "{", "}", '\\"]', "\u00e9", "x"]

    def build(depth):
        if depth == 0 or rng.random() < 0.1:
            return "".join(rng.choice(texts) for _ in range(rng.randint(
                0, 4)))
        # one child goes deep, its siblings stay shallow
        kids = [build(depth - 1)] + [build(rng.randint(0, 2))
                                     for _ in range(rng.randint(0, 2))]
        rng.shuffle(kids)
        if rng.random() < 0.5:
            return kids
        return {"k%d%s" % (i, rng.choice(texts)): k
                for i, k in enumerate(kids)}
    seen = set()
    for _ in range(300):
        obj = {"a": build(rng.randint(25, 40))}
        line = json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()
        deep = _depth(obj) > m.MAX_DEPTH
        assert m._too_deep(line) == deep, line
        seen.add((deep, line.count(b"[") + line.count(b"{") > m.MAX_DEPTH))
    assert seen == {(True, True), (False, True), (False, False)}
