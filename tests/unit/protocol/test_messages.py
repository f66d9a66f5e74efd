# SPDX-License-Identifier: Apache-2.0
"""Messages of the wire protocol: encoding, decoding and validation."""

import base64
import collections
import itertools
import json

import pytest

from guestha_guest.protocol import errors
from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m
from tests.unit.protocol.channel import Channel

UUID = "0f4c6f7e-3b1a-4c2d-9e8f-0123456789ab"
UUID_2 = "c2d1e0f9-8a7b-4c6d-a5e4-f3a2b1c0d9e8"
SEQ = 4242

ALL_TYPES = sorted(set(m._TYPES.values()), key=lambda cls: cls.TYPE)


def wire(line):
    """The JSON object of an encoded line."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line.decode("ascii"))


def line_of(obj):
    """A line as a peer would send it (no newline: what decode() takes)."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def sender_of(cls):
    return cls.SENDERS[0]


def remote_error(line, sender, code, ref=SEQ):
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(line, sender)
    assert info.value.code == code, info.value
    assert info.value.ref == ref
    return info.value


def as_received(msg, sender):
    """The fields of ``msg`` as its receiver sees them when ``sender`` sent
    it: the host takes no ``from`` from a guest's broadcast."""
    fields = msg.fields()
    if isinstance(msg, m.Broadcast) and sender == m.GUEST:
        fields["from"] = None
    return fields


# -- round trips --------------------------------------------------------------

# Every message type with exact field values, and exactly the JSON object it
# must become on the wire (envelope included).
ROUND_TRIPS = [
    (m.Sync(nonce="3f2a9c01", versions=[1, 2]),
     {"v": 1, "app": "base", "type": "sync", "seq": SEQ,
      "nonce": "3f2a9c01", "versions": [1, 2]}),
    (m.SyncAck(nonce="3f2a9c01", version=1),
     {"v": 1, "app": "base", "type": "sync_ack", "seq": SEQ,
      "nonce": "3f2a9c01", "version": 1}),
    (m.Error(code="unknown_type", message="unknown message 'x'", ref=7,
             versions=[1]),
     {"v": 1, "app": "base", "type": "error", "seq": SEQ,
      "code": "unknown_type", "message": "unknown message 'x'", "ref": 7,
      "versions": [1]}),
    (m.Error(app="heartbeat", code="wrong_echo", message=""),
     {"v": 1, "app": "heartbeat", "type": "error", "seq": SEQ,
      "code": "wrong_echo", "message": ""}),
    (m.Init(name="vnf-app.1", interval_ms=1500, corrective_action="reboot",
            shutdown_timeout_ms=30000, restart_timeout_ms=120000),
     {"v": 1, "app": "heartbeat", "type": "init", "seq": SEQ,
      "name": "vnf-app.1", "interval_ms": 1500,
      "corrective_action": "reboot", "shutdown_timeout_ms": 30000,
      "restart_timeout_ms": 120000}),
    (m.Init(name="g", interval_ms=1),
     {"v": 1, "app": "heartbeat", "type": "init", "seq": SEQ, "name": "g",
      "interval_ms": 1, "corrective_action": "none",
      "shutdown_timeout_ms": 0, "restart_timeout_ms": 0}),
    (m.InitAck(ref=0, interval_ms=1000, instance=UUID),
     {"v": 1, "app": "heartbeat", "type": "init_ack", "seq": SEQ,
      "ref": 0, "interval_ms": 1000, "instance": UUID}),
    (m.InitAck(ref=m.MAX_SEQ, interval_ms=100),
     {"v": 1, "app": "heartbeat", "type": "init_ack", "seq": SEQ,
      "ref": m.MAX_SEQ, "interval_ms": 100}),
    (m.Challenge(challenge="9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d",
                 deadline_ms=1000),
     {"v": 1, "app": "heartbeat", "type": "challenge", "seq": SEQ,
      "challenge": "9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d", "deadline_ms": 1000}),
    (m.ChallengeResponse(ref=17, challenge="9b1d", healthy=False,
                         reason="disk \u00e9 full \U0001F4A5", action="stop"),
     {"v": 1, "app": "heartbeat", "type": "challenge_response", "seq": SEQ,
      "ref": 17, "challenge": "9b1d", "healthy": False,
      "reason": "disk \u00e9 full \U0001F4A5", "action": "stop"}),
    (m.ChallengeResponse(ref=17, challenge="9b1d", healthy=True),
     {"v": 1, "app": "heartbeat", "type": "challenge_response", "seq": SEQ,
      "ref": 17, "challenge": "9b1d", "healthy": True}),
    (m.Exit(reason="shutdown"),
     {"v": 1, "app": "heartbeat", "type": "exit", "seq": SEQ,
      "reason": "shutdown"}),
    (m.Exit(),
     {"v": 1, "app": "heartbeat", "type": "exit", "seq": SEQ}),
    (m.Broadcast(payload=b"\x00\xffhello\n", sender=UUID),
     {"v": 1, "app": "server_group", "type": "broadcast", "seq": SEQ,
      "payload": "AP9oZWxsbwo=", "from": UUID}),
    (m.Broadcast(payload=b""),
     {"v": 1, "app": "server_group", "type": "broadcast", "seq": SEQ,
      "payload": ""}),
    (m.Notification(instance=UUID, state="ACTIVE",
                    event="compute.instance.update"),
     {"v": 1, "app": "server_group", "type": "notification", "seq": SEQ,
      "instance": UUID, "state": "ACTIVE",
      "event": "compute.instance.update"}),
    (m.StatusQuery(),
     {"v": 1, "app": "server_group", "type": "status_query", "seq": SEQ}),
    (m.Status(ref=3, members=[m.Member(UUID, "ACTIVE"),
                              m.Member(UUID_2, "SHUTOFF")],
              group=UUID_2, part=2, parts=3),
     {"v": 1, "app": "server_group", "type": "status", "seq": SEQ, "ref": 3,
      "members": [{"instance": UUID, "state": "ACTIVE"},
                  {"instance": UUID_2, "state": "SHUTOFF"}],
      "group": UUID_2, "part": 2, "parts": 3}),
    (m.Status(ref=3, members=[]),
     {"v": 1, "app": "server_group", "type": "status", "seq": SEQ, "ref": 3,
      "members": [], "part": 1, "parts": 1}),
]


def test_round_trips_cover_every_message_type():
    assert {type(msg) for msg, _ in ROUND_TRIPS} == set(ALL_TYPES)


@pytest.mark.parametrize("msg,expected", ROUND_TRIPS,
                         ids=[type(msg).__name__ for msg, _ in ROUND_TRIPS])
def test_round_trip(msg, expected):
    line = m.encode(msg, SEQ)
    assert wire(line) == expected
    for sender in msg.SENDERS:
        got = m.decode(line.rstrip(b"\n"), sender)
        assert type(got) is type(msg)
        assert got.seq == SEQ
        assert got.fields() == as_received(msg, sender)
        assert getattr(got, "app", got.APP) == expected["app"]
    got = m.decode(line.rstrip(b"\n"), msg.SENDERS[0])
    assert got == msg


def test_round_trip_field_values_are_exact():
    msg = m.ChallengeResponse(ref=5, challenge="tok", healthy=False,
                              reason="r", action="log")
    got = m.decode(m.encode(msg, 6).rstrip(b"\n"), m.GUEST)
    assert (got.ref, got.challenge, got.healthy, got.reason, got.action,
            got.seq) == (5, "tok", False, "r", "log", 6)
    assert got.healthy is False
    bcast = m.decode(m.encode(m.Broadcast(payload=b"\x01\x02", sender=UUID),
                              1).rstrip(b"\n"), m.HOST)
    assert bcast.payload == b"\x01\x02" and type(bcast.payload) is bytes
    assert bcast.sender == UUID == getattr(bcast, "from")


def test_encoding_is_one_compact_ascii_line():
    line = m.encode(m.Exit(reason="caf\u00e9 \U0001F600 \"q\" \\"), 1)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    line.decode("ascii")
    assert b": " not in line and b", " not in line
    assert line.startswith(b'{"v":1,"app":"heartbeat","type":"exit","seq":1,')
    assert wire(line)["reason"] == "caf\u00e9 \U0001F600 \"q\" \\"


def test_encode_uses_the_given_version():
    assert wire(m.encode(m.Sync(nonce="n", versions=[1]), 1, version=7))[
        "v"] == 7


# -- field bounds -------------------------------------------------------------

# A valid set of arguments for each type; the bound tests change one field.
BASE = {
    m.Sync: dict(nonce="n0", versions=[1]),
    m.SyncAck: dict(nonce="n0", version=1),
    m.Error: dict(code="invalid_json", message="bad"),
    m.Init: dict(name="guestha", interval_ms=1000),
    m.InitAck: dict(ref=1, interval_ms=1000),
    m.Challenge: dict(challenge="c0", deadline_ms=1000),
    m.ChallengeResponse: dict(ref=1, challenge="c0", healthy=True),
    m.Exit: dict(),
    m.Broadcast: dict(payload=b"hi"),
    m.Notification: dict(instance=UUID, state="ACTIVE", event="update"),
    m.StatusQuery: dict(),
    m.Status: dict(ref=1, members=[m.Member(UUID, "ACTIVE")]),
}

# C0 control characters: refused in every string.  (DEL, the C1 controls and
# lone surrogates are allowed in text, receivers are tolerant: see text()
# below; clean_text() removes them.)
CONTROL = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f"]
WRONG_TYPES = [True, 1.5, [], {}]


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def token(max_len):
    good = ["a", "Z", "0", "a" * max_len, "A-z_0.9:x"]
    bad = (["", "a" * (max_len + 1), "a b", "a/b", "a\u00e9", "a\n", "\na",
            "a\r\n", "a\x00", "a\x7f", "a\x85"]
           + ["x" + c for c in CONTROL]
           + [5, True, ["a"], {"a": 1}])
    return good, bad


def ints(lo, hi):
    return [lo, hi], [lo - 1, hi + 1, True, False, float(lo), str(lo),
                      [lo], {"v": lo}]


def text(max_len):
    good = ["", " ", "x" * max_len, "\u00e9" * max_len,
            "\U0001F600" * max_len, "quote \" backslash \\ slash /",
            "\u00a0\u00ff\u0100\ufffd",
            # allowed by the specification (text(n): only C0 is refused)
            "del \x7f nel \x85 c1 \x9f", "lone \ud800 surrogate"]
    bad = (["x" * (max_len + 1), "\U0001F600" * (max_len + 1)]
           + ["ok" + c + "ok" for c in CONTROL] + [5, True, ["x"]])
    return good, bad


def uuids():
    good = [UUID, "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff"]
    bad = [UUID.upper(), UUID.replace("-", ""), "{%s}" % UUID,
           "urn:uuid:" + UUID, UUID + "\n", UUID[:-1], UUID + "0",
           UUID[:-1] + "g", " " + UUID, "", 5, True, [UUID]]
    return good, bad


def versions():
    return ([[1], [255], [1] * 16, list(range(1, 17)), [2, 1]],
            [[], [1] * 17, [0], [256], [-1], [True], [1.0], ["1"], [None],
             1, "1", True, {"1": 1}])


def enum(values):
    return list(values), ["", values[0].upper(), values[0] + " ", "halt", 1,
                          True, [values[0]]]


FIELD_CASES = []
#: ``code``: the error a bad value makes
Case = collections.namedtuple("Case", "cls field value ok code")


def cases(cls, field, good_bad, code="invalid_message"):
    good, bad = good_bad
    FIELD_CASES.extend(Case(cls, field, v, True, None) for v in good)
    FIELD_CASES.extend(Case(cls, field, v, False, code) for v in bad)


#: other fields a case needs to be valid apart from the field under test
CASE_CONTEXT = {
    (m.Status, "part"): {"parts": m.MAX_STATUS_PARTS},
}


def case_kwargs(case):
    kwargs = dict(BASE[case.cls])
    kwargs.update(CASE_CONTEXT.get((case.cls, case.field), {}))
    return kwargs


cases(m.Sync, "nonce", token(64))
cases(m.Sync, "versions", versions())
cases(m.SyncAck, "nonce", token(64))
cases(m.SyncAck, "version", ints(1, 255))
cases(m.Error, "code", (["a", "a" * 32, "not_registered", "some_future"],
                        ["", "a" * 33, "A", "a-b", "a1", "a b", "a\n", 5,
                         True]))
cases(m.Error, "message", text(200))
cases(m.Error, "ref", ints(0, m.MAX_SEQ))
cases(m.Error, "versions", versions())
cases(m.Init, "name", token(64))
cases(m.Init, "interval_ms", ints(1, m.MAX_MS))
cases(m.Init, "corrective_action", enum(m.ACTIONS))
cases(m.Init, "shutdown_timeout_ms", ints(0, m.MAX_MS))
cases(m.Init, "restart_timeout_ms", ints(0, m.MAX_MS))
cases(m.InitAck, "ref", ints(0, m.MAX_SEQ))
cases(m.InitAck, "interval_ms", ints(1, m.MAX_MS))
cases(m.InitAck, "instance", uuids())
cases(m.Challenge, "challenge", token(64))
cases(m.Challenge, "deadline_ms", ints(1, m.MAX_MS))
cases(m.ChallengeResponse, "ref", ints(0, m.MAX_SEQ))
cases(m.ChallengeResponse, "challenge", token(64))
cases(m.ChallengeResponse, "healthy",
      ([True, False], [1, 0, "true", "false", [True], {}]))
cases(m.ChallengeResponse, "reason", text(120))
cases(m.ChallengeResponse, "action", enum(m.ACTIONS))
cases(m.Exit, "reason", text(120))
cases(m.Broadcast, "payload", (
    [b"", b"\x00" * m.MAX_PAYLOAD, bytearray(b"x" * m.MAX_PAYLOAD),
     _b64(b"\xff" * m.MAX_PAYLOAD), "", "aGk=", "AA=="],
    ["QQ", "Q", "Q===", "!!!!", "aGk= ", " aGk=", "aGk=\n", "aG\nk=",
     "a\u00e9k=", "aGk=\x00", 5, True, ["aGk="], {}]))
cases(m.Broadcast, "payload", (
    [], [b"\x00" * (m.MAX_PAYLOAD + 1), bytearray(m.MAX_PAYLOAD + 1),
         _b64(b"\xff" * (m.MAX_PAYLOAD + 1)), _b64(b"\x00" * 4000)]),
    code="too_large")
cases(m.Broadcast, "from", uuids())
cases(m.Notification, "instance", uuids())
cases(m.Notification, "state", token(32))
cases(m.Notification, "event", token(64))
MAX_MEMBERS = m.STATUS_MEMBERS_PER_PART * m.MAX_STATUS_PARTS
cases(m.Status, "ref", ints(0, m.MAX_SEQ))
cases(m.Status, "members", (
    [[], [m.Member(UUID, "A")], [{"instance": UUID, "state": "S" * 32}],
     [{"instance": UUID, "state": "A", "extra": 1}],
     [m.Member(UUID, "ACTIVE")] * MAX_MEMBERS],
    [[m.Member(UUID, "ACTIVE")] * (MAX_MEMBERS + 1),
     "x", {"instance": UUID, "state": "A"}, [5], [None], [[UUID, "A"]],
     [{"instance": UUID}], [{"state": "A"}],
     [{"instance": UUID.upper(), "state": "A"}],
     [{"instance": UUID, "state": ""}],
     [{"instance": UUID, "state": "S" * 33}],
     [{"instance": UUID, "state": "A\n"}],
     [{"instance": UUID, "state": 5}],
     [m.Member("not-a-uuid", "ACTIVE")],
     [m.Member(UUID, "bad state")],
     [m.Member(UUID, "")]]))
cases(m.Status, "group", uuids())
cases(m.Status, "part", ints(1, m.MAX_STATUS_PARTS))
cases(m.Status, "parts", ints(1, m.MAX_STATUS_PARTS))


def test_field_cases_cover_every_field():
    declared = {(cls, f.name) for cls in ALL_TYPES for f in cls.FIELDS}
    tested = {(case.cls, case.field) for case in FIELD_CASES}
    assert declared == tested


def _case_id(case):
    value = repr(case.value)
    if len(value) > 24:
        value = value[:20] + "..%d" % len(case.value)
    return "%s.%s-%s-%s" % (case.cls.TYPE, case.field,
                            "ok" if case.ok else "bad", value)


def _wire_value(value):
    """``value`` as a peer puts it on the wire, or None if it cannot be."""
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, list) and any(isinstance(v, m.Member)
                                       for v in value):
        return None
    return value


def _decoded_value(case):
    if case.field == "payload":
        return base64.b64decode(case.value)
    if case.field == "members":
        return [m.Member(d["instance"], d["state"]) for d in case.value]
    return case.value


def _base_wire(cls, kwargs=None):
    msg = cls(**(BASE[cls] if kwargs is None else kwargs))
    return wire(m.encode(msg, SEQ))


@pytest.mark.parametrize("case", FIELD_CASES, ids=_case_id)
def test_field_bounds_on_send(case):
    kwargs = case_kwargs(case)
    kwargs[case.field] = case.value
    if case.ok:
        msg = case.cls(**kwargs)
        value = getattr(msg, case.field)
        if case.field == "payload":
            assert type(value) is bytes
        elif case.field == "members":
            assert all(type(v) is m.Member for v in value)
        else:
            assert value == case.value
    else:
        with pytest.raises(LocalProtocolError) as info:
            case.cls(**kwargs)
        assert info.value.code == case.code
        assert case.field in info.value.message


@pytest.mark.parametrize(
    "case", [c for c in FIELD_CASES if _wire_value(c.value) is not None],
    ids=_case_id)
def test_field_bounds_on_receive(case):
    obj = _base_wire(case.cls, case_kwargs(case))
    obj[case.field] = case.value
    line = line_of(obj)
    if case.ok:
        msg = m.decode(line, sender_of(case.cls))
        assert getattr(msg, case.field) == _decoded_value(case)
        assert msg.seq == SEQ
    else:
        exc = remote_error(line, sender_of(case.cls), case.code)
        assert case.field in exc.message
        assert exc.app == obj["app"]  # the refused line's class


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.TYPE)
def test_required_and_optional_fields(cls):
    for field in cls.FIELDS:
        kwargs = dict(BASE[cls])
        kwargs.pop(field.name, None)
        obj = _base_wire(cls)
        obj.pop(field.name, None)
        null = dict(obj)
        null[field.name] = None
        if field.required:
            with pytest.raises(LocalProtocolError) as info:
                cls(**kwargs)
            assert info.value.code == "invalid_message"
            for variant in (obj, null):
                remote_error(line_of(variant), sender_of(cls),
                             "invalid_message")
        else:
            assert getattr(cls(**kwargs), field.name) == field.default
            for variant in (obj, null):
                msg = m.decode(line_of(variant), sender_of(cls))
                assert getattr(msg, field.name) == field.default


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.TYPE)
def test_none_means_the_default_as_on_the_wire(cls):
    # JSON null for an optional field decodes to its default; so must None
    for field in cls.FIELDS:
        if field.required:
            continue
        kwargs = dict(BASE[cls])
        kwargs[field.name] = None
        msg = cls(**kwargs)
        assert getattr(msg, field.name) == field.default
        assert m.decode(m.encode(msg, 1).rstrip(b"\n"),
                        sender_of(cls)) == msg


def test_unknown_keyword_is_a_programming_error():
    with pytest.raises(TypeError):
        m.Init(name="a", interval_ms=1, nmae="typo")


@pytest.mark.parametrize("sender", [m.HOST, m.GUEST])
def test_payload_boundary_through_a_connection(sender):
    receiver = m.GUEST if sender == m.HOST else m.HOST
    channel = Channel()
    channel.sync()
    ok = m.Broadcast(payload=b"\xa5" * m.MAX_PAYLOAD)
    channel.send(sender, ok)
    with pytest.raises(LocalProtocolError) as info:
        m.Broadcast(payload=b"\xa5" * (m.MAX_PAYLOAD + 1))
    assert info.value.code == "too_large"
    # a peer that does not check: 3051 bytes still fit in a line
    obj = wire(channel.ends[sender].send(ok))
    obj["payload"] = _b64(b"\xa5" * (m.MAX_PAYLOAD + 1))
    too_big = line_of(obj) + b"\n"
    assert len(too_big) <= m.MAX_LINE
    channel.write(sender, too_big)
    channel.pump()
    got = channel.messages(receiver, m.Broadcast)
    assert [b.payload for b in got] == [ok.payload]
    [exc] = channel.errors[receiver]
    assert (exc.code, exc.ref, exc.app) == ("too_large", obj["seq"],
                                            "server_group")
    # the refusal is a server-group error naming the broadcast
    refusal = m.decode(m.encode(exc.to_message(), 1).rstrip(b"\n"), sender)
    assert (refusal.app, refusal.code, refusal.ref) == (
        "server_group", "too_large", obj["seq"])


BAD_FROM = [None, "", "not-a-uuid", UUID.upper(), UUID + "\n", 5, True,
            [UUID], {"a": 1}]


@pytest.mark.parametrize("value", BAD_FROM + [UUID])
def test_the_host_ignores_from_in_a_guests_broadcast(value):
    # never validated, never kept: the host stamps the source itself
    obj = {"v": 1, "app": "server_group", "type": "broadcast", "seq": SEQ,
           "payload": "aGk=", "from": value}
    got = m.decode(line_of(obj), m.GUEST)
    assert (got.payload, got.sender, got.seq) == (b"hi", None, SEQ)
    if value not in (None, UUID):  # the guest receives what a host sends
        remote_error(line_of(obj), m.HOST, "invalid_message")
    else:
        assert m.decode(line_of(obj), m.HOST).sender == value


def test_the_from_of_a_guests_broadcast_is_not_kept_through_a_channel():
    channel = Channel()
    channel.sync()
    channel.send(m.GUEST, m.Broadcast(payload=b"x", sender=UUID))
    channel.pump()
    [got] = channel.messages(m.HOST, m.Broadcast)
    assert got.sender is None and channel.errors[m.HOST] == []


# -- status: fields checked together ------------------------------------------

STATUS_MEMBERS = [m.Member(UUID, "ACTIVE")]


@pytest.mark.parametrize("part,parts,count,ok", [
    (1, 1, 0, True), (1, 1, 2560, True), (1, 2, 40, True), (2, 2, 0, True),
    (64, 64, 40, True), (2, 1, 1, False), (3, 2, 1, False),
    (64, 63, 1, False), (1, 2, 41, False), (64, 64, 41, False)])
def test_status_part_and_parts(part, parts, count, ok):
    kwargs = dict(ref=1, members=STATUS_MEMBERS * count, part=part,
                  parts=parts)
    obj = {"v": 1, "app": "server_group", "type": "status", "seq": SEQ,
           "ref": 1, "members": [mb.to_wire() for mb in kwargs["members"]],
           "part": part, "parts": parts}
    if ok:
        msg = m.Status(**kwargs)
        assert (msg.part, msg.parts, len(msg.members)) == (part, parts, count)
        got = m.decode(line_of(obj), m.HOST)
        assert got == msg
    else:
        with pytest.raises(LocalProtocolError) as info:
            m.Status(**kwargs)
        assert info.value.code == "invalid_message"
        exc = remote_error(line_of(obj), m.HOST, "invalid_message")
        assert exc.app == "server_group"
        assert "part" in exc.message


# -- the envelope -------------------------------------------------------------

def _challenge_obj(**changes):
    obj = {"v": 1, "app": "heartbeat", "type": "challenge", "seq": SEQ,
           "challenge": "c", "deadline_ms": 5}
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not _ABSENT}


_ABSENT = object()


@pytest.mark.parametrize("seq", [0, m.MAX_SEQ])
def test_seq_bounds(seq):
    assert m.decode(line_of(_challenge_obj(seq=seq)), m.HOST).seq == seq


@pytest.mark.parametrize("seq", [-1, m.MAX_SEQ + 1, True, False, 1.0, "1",
                                 None, _ABSENT, [1]])
def test_bad_seq_is_invalid_message_without_ref(seq):
    remote_error(line_of(_challenge_obj(seq=seq)), m.HOST,
                 "invalid_message", ref=None)


@pytest.mark.parametrize("key,value", [
    ("app", None), ("app", 5), ("app", ["heartbeat"]), ("type", None),
    ("type", True), ("app", _ABSENT), ("type", _ABSENT)])
def test_app_and_type_must_be_strings(key, value):
    remote_error(line_of(_challenge_obj(**{key: value})), m.HOST,
                 "invalid_message")


@pytest.mark.parametrize("app,mtype", [
    ("nope", "challenge"), ("heartbeat", "nope"), ("heartbeat", "sync"),
    ("base", "init"), ("server_group", "challenge"), ("nope", "error"),
    ("", ""), ("HEARTBEAT", "challenge"), ("heartbeat", "Challenge"),
    ("x" * 1000, "y" * 1000)])
def test_unknown_app_or_type(app, mtype):
    exc = remote_error(line_of(_challenge_obj(app=app, type=mtype)), m.HOST,
                       "unknown_type")
    assert len(exc.message) < 200
    assert exc.to_message().ref == SEQ


@pytest.mark.parametrize("version", [0, 2, 255, 256, -1, "1", 1.0, True,
                                     None, _ABSENT, [1]])
def test_unsupported_version(version):
    remote_error(line_of(_challenge_obj(v=version)), m.HOST,
                 "unsupported_version")


@pytest.mark.parametrize("version", [1, 2, 255, 0, "2", None, _ABSENT])
@pytest.mark.parametrize("msg", [
    m.Sync(nonce="n", versions=[1, 2]), m.SyncAck(nonce="n", version=1),
    m.Error(code="unsupported_version", message="x", versions=[1]),
    m.Error(app="heartbeat", code="not_registered", message="x"),
    m.Error(app="server_group", code="too_large", message="x")],
    ids=lambda msg: "%s.%s" % (getattr(msg, "app", ""), msg.TYPE))
def test_frozen_types_parse_in_any_version(msg, version):
    obj = wire(m.encode(msg, SEQ))
    if version is _ABSENT:
        del obj["v"]
    else:
        obj["v"] = version
    for sender in (m.HOST, m.GUEST):
        got = m.decode(line_of(obj), sender)
        assert got == msg and got.seq == SEQ
        assert getattr(got, "app", "base") == obj["app"]


def test_the_version_check_comes_before_the_direction_check():
    # a future version's message type may have other senders
    obj = _challenge_obj(v=2)
    remote_error(line_of(obj), m.GUEST, "unsupported_version")


# -- direction ----------------------------------------------------------------

@pytest.mark.parametrize("role", [m.HOST, m.GUEST])
@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda cls: cls.TYPE)
def test_direction_rules(cls, role):
    channel = Channel()
    channel.sync()
    msg = cls(**BASE[cls])
    line = m.encode(msg, SEQ).rstrip(b"\n")
    if role in cls.SENDERS:
        assert channel.ends[role].send(msg)
        assert m.decode(line, role) == msg
    else:
        with pytest.raises(LocalProtocolError) as info:
            channel.ends[role].send(msg)
        assert info.value.code == "unexpected_message"
        remote_error(line, role, "unexpected_message")


def test_direction_of_each_type():
    host_only = {cls.TYPE for cls in ALL_TYPES if cls.SENDERS == (m.HOST,)}
    guest_only = {cls.TYPE for cls in ALL_TYPES
                  if cls.SENDERS == (m.GUEST,)}
    assert host_only == {"init_ack", "challenge", "notification", "status"}
    assert guest_only == {"init", "challenge_response", "exit",
                          "status_query"}


# -- lines that are not messages ----------------------------------------------

NOT_JSON = [
    b"", b"{", b"}", b"nope", b"{'v': 1}", b'{"v":1,}', b'{"v":1} x',
    b'{"v":1}{"v":1}', b"\xff\xfe", b'{"v":"\xc3"}', b"\xef\xbb\xbf{}",
    b'{"v":NaN}', b'{"v":Infinity}', b'{"v":-Infinity}', b'{"v":nan}',
    b'{"v":1,"app":"heartbeat","type":"init","seq":1,"name":"a",'
    b'"interval_ms":NaN}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"a":' + b'{"b":' * 2000 + b"1" + b"}" * 2001,
    b"[" * 4000,
]
NOT_OBJECTS = [b"[]", b"[{}]", b"1", b"-0.5", b'"str"', b"null", b"true",
               b"false", b'[{"v":1}]']


@pytest.mark.parametrize("line", NOT_JSON + NOT_OBJECTS,
                         ids=lambda line: repr(line[:30]))
def test_invalid_json(line):
    for sender in (m.HOST, m.GUEST):
        exc = remote_error(line, sender, "invalid_json", ref=None)
        assert exc.to_message().code == "invalid_json"


def test_deep_nesting_within_a_line_through_a_connection():
    channel = Channel()
    channel.sync()
    nested = b"[" * 2100 + b"]" * 2100 + b"\n"
    assert len(nested) <= m.MAX_LINE
    channel.write(m.HOST, nested)
    channel.send(m.HOST, m.Challenge(challenge="after", deadline_ms=10))
    channel.pump()
    assert [e.code for e in channel.errors[m.GUEST]] == ["invalid_json"]
    assert [c.challenge for c in channel.messages(m.GUEST, m.Challenge)] == [
        "after"]


def test_huge_float_is_invalid_message_not_a_crash():
    obj = _challenge_obj()
    line = line_of(obj).replace(b'"deadline_ms":5', b'"deadline_ms":1e400')
    remote_error(line, m.HOST, "invalid_message")


@pytest.mark.parametrize("msg,expected", ROUND_TRIPS,
                         ids=[type(msg).__name__ for msg, _ in ROUND_TRIPS])
def test_unknown_keys_are_ignored(msg, expected):
    obj = dict(expected, zzz={"a": [1, 2, {"b": None}]}, minor_field=7,
               **{"x-y": "\u00e9"})
    got = m.decode(line_of(obj), sender_of(type(msg)))
    assert got == msg and got.seq == SEQ
    assert not hasattr(got, "zzz")


def test_duplicate_keys_take_the_last():
    line = (b'{"v":1,"app":"heartbeat","type":"challenge","seq":1,'
            b'"challenge":"a","challenge":"b","deadline_ms":5}')
    assert m.decode(line, m.HOST).challenge == "b"


def test_raw_utf8_and_escaped_text_decode_alike():
    raw = ('{"v":1,"app":"heartbeat","type":"exit","seq":1,'
           '"reason":"caf\u00e9 \U0001F600"}').encode("utf-8")
    escaped = (b'{"v":1,"app":"heartbeat","type":"exit","seq":1,'
               b'"reason":"caf\\u00e9 \\ud83d\\ude00"}')
    assert (m.decode(raw, m.GUEST).reason == m.decode(escaped, m.GUEST).reason
            == "caf\u00e9 \U0001F600")


# -- error messages -----------------------------------------------------------

@pytest.mark.parametrize("app", m._APPS)
def test_error_in_every_app(app):
    err = m.Error(app=app, code="unavailable", message="try later", ref=9)
    obj = wire(m.encode(err, SEQ))
    assert (obj["app"], obj["type"]) == (app, "error")
    for sender in (m.HOST, m.GUEST):
        got = m.decode(m.encode(err, SEQ).rstrip(b"\n"), sender)
        assert type(got) is m.Error and got.app == app
        assert (got.code, got.message, got.ref, got.versions) == (
            "unavailable", "try later", 9, None)
        # decoded as the constructor builds it: the same attributes
        assert vars(got) == dict(vars(err), seq=SEQ)


def test_error_every_app_is_registered():
    assert {app for (app, mtype), cls in m._TYPES.items()
            if cls is m.Error} == set(m._APPS)


def test_error_in_an_unknown_app_cannot_be_sent():
    with pytest.raises(LocalProtocolError) as info:
        m.Error(app="nope", code="invalid_json", message="x")
    assert info.value.code == "invalid_message"


def test_error_may_be_sent_while_synchronising():
    channel = Channel()
    for app in m._APPS:
        channel.host.send(m.Error(app=app, code="invalid_json", message="x"))


@pytest.mark.parametrize("code", sorted(errors.ERROR_CODES))
def test_every_error_code_travels(code):
    exc = RemoteProtocolError(code, "what went wrong", ref=3)
    msg = exc.to_message()
    assert (msg.code, msg.message, msg.ref, msg.app) == (
        code, "what went wrong", 3, "base")
    got = m.decode(m.encode(msg, 1).rstrip(b"\n"), m.GUEST)
    assert got.code == code
    assert str(exc) == "%s: what went wrong" % code


@pytest.mark.parametrize("app", m.APPS)
def test_a_remote_error_travels_in_its_class(app):
    msg = RemoteProtocolError("invalid_message", "x", ref=3,
                              app=app).to_message()
    assert (msg.app, msg.code, msg.ref) == (app, "invalid_message", 3)
    got = m.decode(m.encode(msg, 1).rstrip(b"\n"), m.HOST)
    assert (got.app, got.code, got.ref) == (app, "invalid_message", 3)


def test_a_remote_error_needs_a_known_class():
    with pytest.raises(ValueError):
        RemoteProtocolError("invalid_message", "x", app="nope")


# (a line's object, sender, code, app of the refusal)
REFUSALS = [
    ({"v": 1, "app": "server_group", "type": "broadcast", "seq": SEQ,
      "payload": "!!"}, m.GUEST, "invalid_message", "server_group"),
    ({"v": 1, "app": "server_group", "type": "status", "seq": SEQ},
     m.GUEST, "unexpected_message", "server_group"),
    ({"v": 2, "app": "server_group", "type": "status_query", "seq": SEQ},
     m.GUEST, "unsupported_version", "server_group"),
    ({"v": 1, "app": "server_group", "type": "future", "seq": SEQ},
     m.GUEST, "unknown_type", "server_group"),
    ({"v": 1, "app": "heartbeat", "type": "challenge_response", "seq": SEQ,
      "ref": 1, "challenge": "c"}, m.GUEST, "invalid_message", "heartbeat"),
    ({"v": 1, "app": "base", "type": "sync", "seq": SEQ, "nonce": "n"},
     m.HOST, "invalid_message", "base"),
    ({"v": 1, "app": "future", "type": "x", "seq": SEQ}, m.HOST,
     "unknown_type", "base"),
    ({"v": 1, "app": "heartbeat", "type": 5, "seq": SEQ}, m.HOST,
     "invalid_message", "heartbeat"),
    ({"v": 1, "app": ["heartbeat"], "type": "init", "seq": SEQ}, m.HOST,
     "invalid_message", "base"),
]


@pytest.mark.parametrize("obj,sender,code,app", REFUSALS,
                         ids=["%s-%s" % (r[0]["app"], r[2])
                              for r in REFUSALS])
def test_a_refusal_names_the_class_of_the_refused_line(obj, sender, code,
                                                       app):
    exc = remote_error(line_of(obj), sender, code)
    assert exc.app == app
    assert exc.to_message().app == app


def test_a_refusal_without_seq_still_names_a_known_class():
    exc = remote_error(line_of({"v": 1, "app": "server_group",
                                "type": "broadcast", "payload": ""}),
                       m.GUEST, "invalid_message", ref=None)
    assert exc.app == "server_group"


def test_to_message_cuts_long_messages():
    exc = RemoteProtocolError("invalid_message", "x" * 5000)
    assert exc.to_message().message == "x" * 200
    assert exc.to_message().ref is None


def test_error_classes():
    assert issubclass(LocalProtocolError, errors.ProtocolError)
    assert issubclass(RemoteProtocolError, errors.ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not hasattr(LocalProtocolError("invalid_message", "x"),
                       "to_message")
    with pytest.raises(ValueError):
        RemoteProtocolError("no_such_code", "x")


# -- clean_text ---------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("fine", "fine"),
    ("a\nb\tc\x00d\x1f", "a b c d "),
    ("del\x7f nel\x85 c1\x80\x9f", "del  nel  c1  "),
    ("\xa0 \xff \u0100 \ufffd", "\xa0 \xff \u0100 \ufffd"),
    ("caf\u00e9 \U0001F600", "caf\u00e9 \U0001F600"),
    # surrogates: a pair is the character it encodes, a lone one U+FFFD
    ("pair \ud83d\ude00", "pair \U0001F600"),
    ("lone \ud800 high", "lone \ufffd high"),
    ("lone \udc80 low", "lone \ufffd low"),
    ("\ud800", "\ufffd"), ("\udfff", "\ufffd"),
    ("\ud800\ud800\udc00", "\ufffd\U00010000"),
    ("\udc00\ud800", "\ufffd\ufffd"),
    ("\ud800x\udc00", "\ufffdx\ufffd"),
    (b"caf\xc3".decode("utf-8", "surrogateescape"), "caf\ufffd"),
    ("x" * 500, "x" * 120),
    ("\ud83d\ude00" * 200, "\U0001F600" * 120),
    ("", ""),
    (42, "42"),
    (ValueError("boom\nline 2"), "boom line 2"),
])
def test_clean_text(raw, expected):
    assert m.clean_text(raw) == expected


def test_clean_text_output_is_clean_and_survives_the_wire():
    everything = "".join(chr(i) for i in range(0, 0xe000))
    for start in range(0, len(everything), 97):
        reason = m.clean_text(everything[start:])
        assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f
                       or 0xd800 <= ord(ch) <= 0xdfff for ch in reason)
        exit_msg = m.Exit(reason=reason)
        got = m.decode(m.encode(exit_msg, 1).rstrip(b"\n"), m.GUEST)
        assert got.reason == reason


def test_clean_text_max_len():
    assert m.clean_text("abcdef", max_len=3) == "abc"
    assert m.clean_text("\n" * 10, max_len=4) == "    "


def test_clean_text_output_is_always_a_valid_reason():
    everything = "".join(chr(i) for i in range(0, 0x250))
    for start in range(0, len(everything), 100):
        reason = m.clean_text("\ud800\udfff" + everything[start:])
        m.Exit(reason=reason)
        m.ChallengeResponse(ref=1, challenge="c", healthy=True,
                            reason=reason)


# -- misc ---------------------------------------------------------------------

def test_message_equality_ignores_seq_but_not_type():
    a = m.Exit(reason="x")
    b = m.Exit(reason="x")
    b.seq = 99
    assert a == b and hash(a) == hash(b)
    assert a != m.Exit(reason="y")
    assert m.StatusQuery() != m.Exit()
    assert "Exit(reason='x', seq=None)" == repr(a)


def test_member_value_semantics():
    assert m.Member(UUID, "A") == m.Member(UUID, "A")
    assert hash(m.Member(UUID, "A")) == hash(m.Member(UUID, "A"))
    assert m.Member(UUID, "A") != m.Member(UUID, "B")
    assert m.Member(UUID, "A") != (UUID, "A")
    assert repr(m.Member(UUID, "A")) == "Member(%r, 'A')" % UUID


def test_broadcast_sender_alias():
    assert m.Broadcast(payload=b"", sender=UUID).sender == UUID
    assert m.Broadcast(payload=b"", **{"from": UUID}).sender == UUID
    assert m.Broadcast(payload=b"").sender is None


def test_encode_refuses_a_line_over_the_bound():
    # a whole answer of 60 members is valid (Connection.send splits it),
    # but not as one line
    whole = m.Status(ref=1, members=[m.Member(UUID, "S" * 32)] * 60)
    with pytest.raises(LocalProtocolError) as info:
        m.encode(whole, 1)
    assert info.value.code == "line_too_long"


def test_protocol_constants():
    assert m.VERSION == m.SUPPORTED_VERSIONS[-1] == 1
    assert m.PORT_NAME == "org.openstack.guestha.0"
    assert m.MAX_PAYLOAD == 3050
    assert m.MAX_SEQ == 2 ** 32 - 1
    assert m.ACTIONS == ("none", "log", "reboot", "stop")


# -- the line bound -----------------------------------------------------------

def _worst_char():
    """The character whose JSON escape is longest."""
    candidates = ["a", "\"", "\\", "/", "\u00e9", "\u2028", "\ufffd",
                  "\U0001F600", "\U0010FFFF"]
    return max(candidates, key=lambda ch: len(json.dumps(ch)))


def _largest_candidates(cls, field):
    """Values of ``field`` that may make the longest line."""
    check = field.check
    tokens = [ch * n for n in (1, 32, 64, 120, 200) for ch in "Zz"]
    worst = _worst_char()
    texts = [worst * n for n in (1, 32, 64, 120, 200)]
    numbers = [m.MAX_SEQ, m.MAX_MS, 255, 64, 16, 1]  # ties: the larger
    candidates = tokens + texts + numbers + [
        True, False, list(m.ACTIONS), [255] * 16,
        b"\xff" * m.MAX_PAYLOAD, "ffffffff-ffff-ffff-ffff-ffffffffffff",
        [m.Member("ffffffff-ffff-ffff-ffff-ffffffffffff", "S" * 32)]
        * m.STATUS_MEMBERS_PER_PART] + list(m.ACTIONS)
    out = []
    for value in candidates:
        try:
            out.append(check(value))
        except m._Invalid:
            pass
    assert out, (cls, field.name)
    return out


def largest_line(cls):
    """The longest line a message of type ``cls`` can encode to.

    Each field adds to the line independently of the others, so the
    longest value of each field, found one field at a time, gives the
    longest line.
    """
    kwargs = dict(BASE[cls])
    if cls is m.Status:
        # a part of the longest split answer: part may go up to parts
        kwargs["parts"] = m.MAX_STATUS_PARTS
    apps = m._APPS if cls is m.Error else [cls.APP]
    best = None
    for app in apps:
        for field in cls.FIELDS:
            lengths = []
            for value in _largest_candidates(cls, field):
                trial = dict(kwargs)
                trial[field.name] = value
                try:
                    msg = (cls(app=app, **trial) if cls is m.Error
                           else cls(**trial))
                except LocalProtocolError:
                    continue  # valid alone, not with the other fields
                try:
                    lengths.append((len(m.encode(msg, m.MAX_SEQ)), value))
                except LocalProtocolError:
                    raise AssertionError("%s.%s=%r does not fit"
                                         % (cls.TYPE, field.name, value))
            kwargs[field.name] = max(lengths, key=lambda lv: lv[0])[1]
        msg = cls(app=app, **kwargs) if cls is m.Error else cls(**kwargs)
        line = m.encode(msg, m.MAX_SEQ)
        if best is None or len(line) > len(best):
            best = line
    return best


def test_largest_line_of_every_type_fits_and_the_bound_is_tight():
    largest = {cls.TYPE: largest_line(cls) for cls in ALL_TYPES}
    for cls in ALL_TYPES:
        line = largest[cls.TYPE]
        assert len(line) <= m.MAX_LINE, cls.TYPE
        assert type(m.decode(line.rstrip(b"\n"), sender_of(cls))) is cls
    longest = max(len(line) for line in largest.values())
    assert m.MAX_LINE - longest < 64, sorted(
        (len(line), mtype) for mtype, line in largest.items())
    # the worst case is what the constants say it is
    assert max(largest, key=lambda t: len(largest[t])) == "broadcast"
    status = m.decode(largest["status"].rstrip(b"\n"), m.HOST)
    assert len(status.members) == m.STATUS_MEMBERS_PER_PART
    assert (status.part, status.parts) == (m.MAX_STATUS_PARTS,) * 2
    assert status.group is not None
    assert all(len(mb.state) == 32 for mb in status.members)
    bcast = m.decode(largest["broadcast"].rstrip(b"\n"), m.HOST)
    assert len(bcast.payload) == m.MAX_PAYLOAD and bcast.sender


def test_largest_lines_pass_through_a_connection():
    channel = Channel()
    channel.sync()
    for events in channel.events.values():
        del events[:]
    for cls in ALL_TYPES:
        if cls in (m.Sync, m.SyncAck):
            continue  # would restart the handshake
        channel.write(sender_of(cls), largest_line(cls))
    channel.pump()
    assert not channel.errors[m.HOST] and not channel.errors[m.GUEST]
    got = [type(e) for e in itertools.chain(*channel.events.values())]
    # the largest status is part 64 of 64: it waits for its other parts
    assert set(got) == set(ALL_TYPES) - {m.Sync, m.SyncAck, m.Status}
    assert channel.guest._status_parts["parts"] == m.MAX_STATUS_PARTS
