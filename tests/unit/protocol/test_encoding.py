# SPDX-License-Identifier: Apache-2.0
"""What the protocol layer does at less cost than the obvious code, against
the obvious code: ``encode`` writes each field itself (``messages._wire``)
where ``json.dumps`` of a dict would do, ``decode`` parses with one shared
JSON decoder, ``Connection.receive_data`` queues the lines of a chunk in
one pass, and the heartbeat round's shortcuts (``host_challenge``, the
challenge's line, the plain ``challenge_response``) give what the general
code gives.  They must write the same bytes and accept and refuse the same
lines.
"""

import base64
import itertools
import json
import random

import pytest

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m

TOKEN = "0123456789abcdef0123456789abcdef"
UUID = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


def line_of(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def general_decode(line, sender, monkeypatch):
    """decode() without the heartbeat round's shortcut."""
    with monkeypatch.context() as patch:
        patch.setattr(m, "_round_response", lambda obj: None)
        return outcome(line, sender)


def outcome(line, sender):
    try:
        msg = m.decode(line, sender)
    except RemoteProtocolError as exc:
        return ("error", exc.code, str(exc), exc.ref, exc.app)
    return ("message", type(msg), msg.seq, vars(msg))


def response(**changes):
    obj = {"v": 1, "app": "heartbeat", "type": "challenge_response",
           "seq": 17, "ref": 42, "challenge": TOKEN, "healthy": True}
    for key, value in changes.items():
        if value is KeyError:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


# every field of a challenge_response, each with values the general path
# accepts and values it refuses (or ignores)
VARIANTS = {
    "v": [1, 2, 0, True, 1.0, "1", None, KeyError],
    "app": ["heartbeat", "base", "server_group", 1, None],
    "seq": [0, 17, m.MAX_SEQ, m.MAX_SEQ + 1, -1, True, 1.5, "3", None,
            KeyError],
    "ref": [0, 42, m.MAX_SEQ, m.MAX_SEQ + 1, -1, False, 2.0, "42", None,
            KeyError],
    "challenge": [TOKEN, "a", "x" * 64, "x" * 65, "", "ab\n", "a b",
                  "a.b:c-d_e", "\u00e9", 5, None, KeyError],
    "healthy": [True, False, 1, 0, "true", None, KeyError],
    "reason": ["ok", "", "r" * 120, "r" * 121, "bad\x01", "\u00e9t\u00e9",
               7, None, KeyError],
    "action": ["none", "log", "reboot", "stop", "explode", "", 3, [],
               None, KeyError],
    "extra": [KeyError, "ignored", {"a": 1}],
}


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_round_response_decodes_as_the_general_path(field, monkeypatch):
    for value, sender in itertools.product(VARIANTS[field],
                                           (m.GUEST, m.HOST)):
        line = line_of(response(**{field: value}))
        fast = outcome(line, sender)
        assert fast == general_decode(line, sender, monkeypatch), (
            field, value, sender)


def test_round_response_random_combinations(monkeypatch):
    rng = random.Random(7)
    fields = sorted(VARIANTS)
    for _ in range(3000):
        changes = {f: rng.choice(VARIANTS[f])
                   for f in rng.sample(fields, rng.randint(1, 4))}
        line = line_of(response(**changes))
        assert outcome(line, m.GUEST) == general_decode(
            line, m.GUEST, monkeypatch), changes


def test_host_challenge_is_a_challenge():
    msg = m.host_challenge(TOKEN, 1000)
    assert msg == m.Challenge(challenge=TOKEN, deadline_ms=1000)
    assert vars(msg) == vars(m.Challenge(challenge=TOKEN, deadline_ms=1000))


@pytest.mark.parametrize("token", ["\u00e9\u2028\"\\", "\ud83d\ude00" * 64,
                                   "x" * 65, "x" * 4300])
def test_challenge_line_of_unchecked_values(token):
    # only host_challenge makes such a challenge; encode() still writes
    # what the general path writes (escapes included) or refuses the same
    msg = m.host_challenge(token, 1000)
    try:
        expected = general_encode(msg, 3, 1)
    except Exception as exc:  # noqa: BLE001
        expected = type(exc)
    try:
        got = m.encode(msg, 3, 1)
    except Exception as exc:  # noqa: BLE001
        got = type(exc)
    if isinstance(expected, bytes) and len(expected) > m.MAX_LINE:
        assert got is m.LocalProtocolError
    else:
        assert got == expected


def reference_loads(line):
    """What decode() parsed lines with before the shared decoder."""
    return json.loads(line.decode("utf-8"),
                      parse_constant=m._reject_constant)


@pytest.mark.parametrize("line", [
    b'{"a":1}', b'{"a":1} ', b' {"a":1}', b'{"a":1}x', b'{"a":1}{}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'[1,2]', b'"s"',
    b'12', b'', b'{', b'{"a":1,}', b'\xef\xbb\xbf{"a":1}', b'{"a":"\\ud800"}',
    b'{"a":' * m.MAX_DEPTH + b'1' + b'}' * m.MAX_DEPTH, b'{"a":1e400}',
    b'null',
    b'{"a":1,"a":2}', b'\xff',
])
def test_json_parsing_is_unchanged(line):
    try:
        parsed = reference_loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        with pytest.raises(RemoteProtocolError) as info:
            m.decode(line, m.GUEST)
        assert (info.value.code, info.value.message) == (
            "invalid_json", "not JSON: %s" % exc)
        return
    # parsed: refused later (not an object, not a message), never as
    # invalid JSON
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(line, m.GUEST)
    assert info.value.code != "invalid_json" or (
        not isinstance(parsed, dict)
        and info.value.message == "not a JSON object")


def general_encode(msg, seq, version):
    """The line as json.dumps writes the envelope and the fields."""
    obj = {"v": version, "app": getattr(msg, "app", msg.APP),
           "type": msg.TYPE, "seq": seq}
    for field in msg.FIELDS:
        value = getattr(msg, field.name)
        if value is None:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, list) and value and isinstance(
                value[0], m.Member):
            value = [member.to_wire() for member in value]
        obj[field.name] = value
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
            .encode("ascii") + b"\n")


MESSAGES = [
    m.Challenge(challenge=TOKEN, deadline_ms=1000),
    m.Challenge(challenge="a.b:c-d_e", deadline_ms=m.MAX_MS),
    m.ChallengeResponse(ref=0, challenge=TOKEN, healthy=True),
    m.ChallengeResponse(ref=m.MAX_SEQ, challenge="x", healthy=False,
                        reason="\u00e9t\u00e9 \"quoted\" \\ \U0001f600",
                        action="reboot"),
    m.Init(name="web-1", interval_ms=1000),
    m.InitAck(ref=5, interval_ms=100, instance=UUID),
    m.Exit(reason="shutdown"), m.Exit(),
    m.Sync(nonce="abc", versions=[1, 2, 255]),
    m.SyncAck(nonce="abc", version=1),
    m.Error(code="x", message="\u2028 line \u00ff", ref=3, versions=[1]),
    m.Error(app="server_group", code="rate_limited", message=""),
    m.Broadcast(payload=b"\x00\xff" * 100),
    m.Broadcast(payload=b"hi", sender=UUID),
    m.Notification(instance=UUID, state="active", event="e.end"),
    m.StatusQuery(),
    m.Status(ref=1, members=[m.Member(UUID, "active")] * 3, group=UUID),
    m.Status(ref=1, members=[]),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda msg: msg.TYPE)
@pytest.mark.parametrize("seq,version", [(0, 1), (m.MAX_SEQ, 1), (7, 255)])
def test_encoding_writes_what_json_dumps_writes(msg, seq, version):
    assert m.encode(msg, seq, version) == general_encode(msg, seq, version)


def test_encoding_of_an_envelope_out_of_the_ordinary():
    msg = m.Challenge(challenge=TOKEN, deadline_ms=1000)
    assert m.encode(msg, True, 1) == general_encode(msg, True, 1)
    msg.app = "not\"an app"  # (no such message is ever made)
    assert m.encode(msg, 9, 1) == general_encode(msg, 9, 1)


def test_encoding_refuses_a_line_too_long():
    msg = m.Challenge(challenge=TOKEN, deadline_ms=1000)
    msg.challenge = "x" * m.MAX_LINE  # unchecked: only encode() refuses
    with pytest.raises(m.LocalProtocolError):
        m.encode(msg, 1, 1)


def feed_events(conn, chunks):
    events = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                events.append(("error", exc.code))
                continue
            if event is c.NEED_DATA:
                break
            events.append(repr(event))
    return events


def ready_guest_side():
    """A guest-side connection that is READY (it synced with a host)."""
    host = c.Connection(m.HOST, rng=random.Random(1))
    guest = c.Connection(m.GUEST, rng=random.Random(2))
    host.receive_data(guest.start_sync())
    guest.receive_data(host.start_sync())
    from_guest = host.next_event()
    from_host = guest.next_event()
    guest.receive_data(host.answer_sync(from_guest))
    host.receive_data(guest.answer_sync(from_host))
    assert isinstance(guest.next_event(), c.Synced)
    assert isinstance(host.next_event(), c.Synced)
    return host, guest


def test_one_line_chunks_queue_as_split_ones():
    lines = [m.encode(m.Challenge(challenge=TOKEN, deadline_ms=1000), 5, 1),
             b"\n", b"  \n", b"x" * (m.MAX_LINE - 1) + b"\n",
             b"x" * m.MAX_LINE + b"\n", b"y" * (m.MAX_LINE + 5) + b"\n",
             b"not json\n",
             m.encode(m.InitAck(ref=1, interval_ms=1000), 6, 1)]
    whole = b"".join(lines)
    for chunks in (lines,                                 # one line each
                   [whole],                               # all at once
                   [whole[i:i + 7] for i in range(0, len(whole), 7)],
                   [bytearray(line) for line in lines]):  # not bytes
        _host, guest = ready_guest_side()
        _host2, reference = ready_guest_side()
        got = feed_events(guest, chunks)
        # the reference is fed byte by byte: never a whole line at once
        expected = feed_events(reference, [whole[i:i + 1]
                                           for i in range(len(whole))])
        assert got == expected
        assert guest.buffered == reference.buffered == 0


def test_one_line_chunk_after_a_partial_line():
    _host, guest = ready_guest_side()
    line = m.encode(m.Challenge(challenge=TOKEN, deadline_ms=1000), 5, 1)
    guest.receive_data(line[:10])
    assert guest.next_event() is c.NEED_DATA
    guest.receive_data(line[10:])
    event = guest.next_event()
    assert isinstance(event, m.Challenge) and event.challenge == TOKEN


def test_messages_are_delivered_when_ready_and_dropped_while_syncing():
    host, guest = ready_guest_side()
    line = host.send(m.Challenge(challenge=TOKEN, deadline_ms=1000))
    guest.receive_data(line)
    event = guest.next_event()
    assert isinstance(event, m.Challenge) and guest.state == c.READY
    guest.start_sync()
    discarded = guest.discarded
    guest.receive_data(line)
    assert guest.next_event() is c.NEED_DATA
    assert guest.discarded == discarded + 1 and guest.state == c.SYNCING
