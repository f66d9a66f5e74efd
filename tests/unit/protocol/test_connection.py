# SPDX-License-Identifier: Apache-2.0
"""The base layer: framing, resynchronisation, version negotiation."""

import json
import random
import uuid

import pytest

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m
from tests.unit.protocol.channel import Channel

BOUND = 64 * 1024 + m.MAX_LINE  # default max_buffer plus one line


def challenge(token="c0", deadline_ms=1000):
    return m.Challenge(challenge=token, deadline_ms=deadline_ms)


def ready_channel(seed=0, **kwargs):
    channel = Channel(seed=seed, **kwargs)
    channel.sync()
    for side in channel.events:
        del channel.events[side][:]
    return channel


def drain(conn):
    """Events and RemoteProtocolErrors until NEED_DATA."""
    events, errors = [], []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            errors.append(exc)
            continue
        if event is c.NEED_DATA:
            return events, errors
        events.append(event)


def members(n, state="ACTIVE"):
    return [m.Member(str(uuid.UUID(int=i + 1)), state) for i in range(n)]


# -- the handshake ------------------------------------------------------------

def test_host_syncs_first():
    channel = Channel()
    channel.start_sync(m.HOST)
    channel.pump()
    assert channel.host.state == c.READY
    assert channel.guest.state == c.SYNCING  # it has not synchronised itself
    [synced] = channel.events[m.HOST]
    assert isinstance(synced, c.Synced) and synced.version == 1
    [sync] = channel.events[m.GUEST]
    assert isinstance(sync, m.Sync) and sync.versions == [1]
    assert synced.nonce == sync.nonce
    channel.start_sync(m.GUEST)
    channel.pump()
    assert channel.guest.state == c.READY
    assert channel.host.discarded == channel.guest.discarded == 0


def test_guest_syncs_first():
    channel = Channel()
    channel.start_sync(m.GUEST)
    channel.pump()
    assert (channel.guest.state, channel.host.state) == (c.READY, c.SYNCING)
    assert [type(e) for e in channel.events[m.GUEST]] == [c.Synced]
    assert [type(e) for e in channel.events[m.HOST]] == [m.Sync]


def test_simultaneous_sync():
    channel = Channel()
    channel.start_sync(m.HOST)
    channel.start_sync(m.GUEST)
    channel.pump()
    for side in (m.HOST, m.GUEST):
        assert channel.ends[side].state == c.READY
        assert sorted(type(e).__name__ for e in channel.events[side]) == [
            "Sync", "Synced"]
        assert channel.ends[side].discarded == 0
    channel.send(m.HOST, challenge("after"))
    channel.pump()
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("after")]


def test_start_sync_makes_a_fresh_nonce_each_time():
    conn = c.Connection(m.GUEST, rng=random.Random(1))
    first = json.loads(conn.start_sync())
    second = json.loads(conn.start_sync())
    assert first["type"] == second["type"] == "sync"
    assert first["nonce"] != second["nonce"]
    assert first["versions"] == list(m.SUPPORTED_VERSIONS)
    assert json.loads(conn.start_sync(nonce="given"))["nonce"] == "given"


def test_nonces_come_from_the_system_by_default():
    a = json.loads(c.Connection(m.HOST).start_sync())["nonce"]
    b = json.loads(c.Connection(m.HOST).start_sync())["nonce"]
    assert a != b


def test_resync_from_ready():
    channel = ready_channel()
    channel.start_sync(m.GUEST)
    assert channel.guest.state == c.SYNCING
    with pytest.raises(LocalProtocolError):
        channel.guest.send(m.Exit())
    channel.pump()
    assert channel.guest.state == c.READY
    assert [type(e) for e in channel.events[m.GUEST]] == [c.Synced]


def test_role_must_be_host_or_guest():
    with pytest.raises(ValueError):
        c.Connection("peer")


def test_max_buffer_is_at_least_one_line():
    assert c.Connection(m.HOST, max_buffer=0).max_buffer == m.MAX_LINE
    assert c.Connection(m.HOST).max_buffer == 64 * 1024


# -- version negotiation ------------------------------------------------------

def _peer_sync(versions, seq=77, v=1):
    return m.encode(m.Sync(nonce="peer", versions=versions), seq, version=v)


@pytest.mark.parametrize("offered", [[1], [1, 2], [2, 1], [1, 255],
                                     [1] * 16, list(range(1, 17))])
def test_version_negotiation_picks_the_highest_common(offered):
    conn = c.Connection(m.HOST, rng=random.Random(0))
    conn.receive_data(_peer_sync(offered, v=max(offered)))
    sync = conn.next_event()
    answer = json.loads(conn.answer_sync(sync))
    assert (answer["type"], answer["nonce"], answer["version"]) == (
        "sync_ack", "peer", 1)
    assert conn.version == 1


@pytest.mark.parametrize("offered", [[2], [2, 3], [255], [3] * 16])
def test_version_negotiation_without_a_common_version(offered):
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    conn.receive_data(_peer_sync(offered, v=offered[0]))
    sync = conn.next_event()
    answer = m.decode(conn.answer_sync(sync).rstrip(b"\n"), m.GUEST)
    assert type(answer) is m.Error
    assert (answer.code, answer.ref, answer.versions) == (
        "unsupported_version", 77, list(m.SUPPORTED_VERSIONS))
    assert conn.version == 1


def test_a_sync_ack_in_an_unsupported_version_does_not_synchronise():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    conn.start_sync(nonce="ours")
    conn.receive_data(m.encode(m.SyncAck(nonce="ours", version=2), 1,
                               version=2))
    assert conn.next_event() is c.NEED_DATA
    assert (conn.state, conn.discarded) == (c.SYNCING, 1)
    conn.receive_data(m.encode(m.SyncAck(nonce="ours", version=1), 2))
    synced = conn.next_event()
    assert isinstance(synced, c.Synced) and synced.version == 1
    assert "Synced(version=1)" == repr(synced)


@pytest.mark.parametrize("offered", [[1], [2]])
def test_the_answer_to_a_sync_starts_with_an_empty_line(offered):
    conn = c.Connection(m.HOST, rng=random.Random(0))
    conn.receive_data(_peer_sync(offered))
    data = conn.answer_sync(conn.next_event())
    assert data.startswith(b"\n{") and data.count(b"\n") == 2
    assert json.loads(data)["type"] == ("sync_ack" if offered == [1]
                                        else "error")


def test_a_refused_sync_is_delivered_with_the_peers_versions(monkeypatch):
    # A peer that speaks only version 2 refuses our sync; we learn why
    # instead of retrying in the dark.
    channel = Channel(answer_syncs=False)
    channel.start_sync(m.GUEST)
    channel.pump()
    [sync] = channel.events[m.HOST]
    with monkeypatch.context() as patch:
        patch.setattr(m, "SUPPORTED_VERSIONS", (2,))
        refusal = channel.host.answer_sync(sync)
    channel.write(m.HOST, refusal)
    channel.pump()
    [error] = channel.events[m.GUEST]
    assert type(error) is m.Error and error.app == "base"
    assert (error.code, error.ref, error.versions) == (
        "unsupported_version", sync.seq, [2])
    assert channel.guest.state == c.SYNCING  # not synchronised, but told
    assert channel.guest.discarded == 0


def _sync_seq(conn, nonce):
    return json.loads(conn.start_sync(nonce=nonce))["seq"]


@pytest.mark.parametrize("app,ref", [
    ("base", "older sync"), ("base", None), ("base", "other"),
    ("heartbeat", "our sync"), ("server_group", "our sync")])
def test_other_errors_are_dropped_while_synchronising(app, ref):
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    older = _sync_seq(conn, "first")
    ours = _sync_seq(conn, "second")
    ref = {"older sync": older, "our sync": ours, "other": ours + 7}.get(ref)
    conn.receive_data(m.encode(m.Error(app=app, code="invalid_message",
                                       message="x", ref=ref), 1))
    assert drain(conn) == ([], [])
    assert (conn.state, conn.discarded) == (c.SYNCING, 1)


def test_an_error_about_an_old_sync_is_an_ordinary_message_once_ready():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    seq = _sync_seq(conn, "n")
    conn.receive_data(m.encode(m.SyncAck(nonce="n", version=1), 1))
    refusal = m.Error(code="unsupported_version", message="x", ref=seq)
    conn.receive_data(m.encode(refusal, 2))
    events, errors = drain(conn)
    assert [type(e) for e in events] == [c.Synced, m.Error]
    assert events[1] == refusal and conn.state == c.READY


def test_a_sync_in_a_later_envelope_version_is_answered():
    conn = c.Connection(m.HOST, rng=random.Random(0))
    conn.receive_data(_peer_sync([1, 2], v=2))
    sync = conn.next_event()
    assert isinstance(sync, m.Sync)
    assert json.loads(conn.answer_sync(sync))["version"] == 1


# -- the transition table -----------------------------------------------------

# What each row must do, written out independently of the table.  A row added
# to connection._TRANSITIONS without an entry here fails.
EXPECTED = {
    (c.SYNCING, "sync_ack_ours"): (c.READY, "synced"),
    (c.SYNCING, "sync_ack_stale"): (c.SYNCING, "drop"),
    (c.SYNCING, "sync"): (c.SYNCING, "deliver"),
    (c.SYNCING, "sync_refused"): (c.SYNCING, "deliver"),
    (c.SYNCING, "status_part"): (c.SYNCING, "drop"),
    (c.SYNCING, "message"): (c.SYNCING, "drop"),
    (c.SYNCING, "bad_line"): (c.SYNCING, "drop"),
    (c.SYNCING, "start_sync"): (c.SYNCING, "sync"),
    (c.SYNCING, "end"): (c.CLOSED, "closed"),
    (c.READY, "sync_ack_stale"): (c.READY, "drop"),
    (c.READY, "sync"): (c.READY, "deliver"),
    (c.READY, "status_part"): (c.READY, "gather"),
    (c.READY, "message"): (c.READY, "deliver"),
    (c.READY, "bad_line"): (c.READY, "raise"),
    (c.READY, "start_sync"): (c.SYNCING, "sync"),
    (c.READY, "end"): (c.CLOSED, "closed"),
    (c.CLOSED, "end"): (c.CLOSED, "none"),
    (c.CLOSED, "start_sync"): (c.CLOSED, "refuse"),
}

#: the seq of guest_in()'s sync: the first line of a Connection whose rng is
#: random.Random(3)
SYNC_SEQ = random.Random(3).getrandbits(31)

#: a status answer in two parts, as the host sends it
STATUS_PARTS = [m.encode(m.Status(ref=1, members=members(4)[:2], part=1,
                                  parts=2), 16),
                m.encode(m.Status(ref=1, members=members(4)[2:], part=2,
                                  parts=2), 17)]

LINES = {
    "sync_ack_ours": m.encode(m.SyncAck(nonce="ours", version=1), 11),
    "sync_ack_stale": m.encode(m.SyncAck(nonce="old", version=1), 12),
    "sync": m.encode(m.Sync(nonce="theirs", versions=[1]), 13),
    "sync_refused": m.encode(m.Error(
        code="unsupported_version", message="no common version",
        ref=SYNC_SEQ, versions=[2]), 15, version=2),
    "status_part": STATUS_PARTS[0],
    "message": m.encode(challenge("tok"), 14),
    "bad_line": b"{not json\n",
}


def _feed(line):
    def feed(conn):
        conn.receive_data(line)
        return conn.next_event()
    return feed


def _end(conn):
    if conn.state != c.CLOSED:  # (the end is fed once)
        conn.receive_data(b"")
    return conn.next_event()


#: input -> what makes it happen to a connection; returns the result
INPUTS = {kind: _feed(line) for kind, line in LINES.items()}
INPUTS["start_sync"] = lambda conn: conn.start_sync(nonce="again")
INPUTS["end"] = _end


def guest_in(state):
    conn = c.Connection(m.GUEST, rng=random.Random(3))
    assert json.loads(conn.start_sync(nonce="ours"))["seq"] == SYNC_SEQ
    if state == c.READY:
        conn.receive_data(LINES["sync_ack_ours"])
        assert isinstance(conn.next_event(), c.Synced)
    if state == c.CLOSED:
        conn.receive_data(b"")
        assert isinstance(conn.next_event(), c.ConnectionClosed)
    assert conn.state == state
    return conn


def test_every_row_of_the_table_has_a_test():
    assert set(EXPECTED) == set(c._TRANSITIONS)


@pytest.mark.parametrize("key", sorted(c._TRANSITIONS),
                         ids=lambda key: "%s-%s" % key)
def test_transition(key):
    state, kind = key
    next_state, outcome = EXPECTED[key]
    assert c._TRANSITIONS[key] == (next_state, outcome)
    conn = guest_in(state)
    discarded = conn.discarded
    if outcome in ("raise", "refuse"):
        error = RemoteProtocolError if outcome == "raise" else \
            LocalProtocolError
        with pytest.raises(error) as info:
            INPUTS[kind](conn)
        assert info.value.code == ("invalid_json" if outcome == "raise"
                                   else "unexpected_message")
        assert conn.next_event() is c.NEED_DATA
    else:
        event = INPUTS[kind](conn)
        if outcome == "synced":
            assert isinstance(event, c.Synced)
            assert (event.version, event.nonce) == (1, "ours")
        elif outcome == "drop":
            assert event is c.NEED_DATA
            discarded += 1
        elif outcome == "gather":
            assert event is c.NEED_DATA  # the first part is kept
            conn.receive_data(STATUS_PARTS[1])
            whole = conn.next_event()
            assert isinstance(whole, m.Status) and whole.parts == 1
            assert whole.members == members(4)
        elif outcome == "sync":
            line = json.loads(event)
            assert (line["type"], line["nonce"]) == ("sync", "again")
        elif outcome == "closed":
            assert isinstance(event, c.ConnectionClosed)
        elif outcome == "none":
            assert event is c.NEED_DATA
        else:
            assert isinstance(event, m.Message)
            line = LINES[kind]
            assert event == m.decode(line.rstrip(b"\n"), m.HOST)
            assert event.seq == json.loads(line)["seq"]
            assert conn.next_event() is c.NEED_DATA
    assert conn.state == next_state
    assert conn.discarded == discarded


@pytest.mark.parametrize("state", [c.SYNCING, c.READY])
def test_start_sync_from_any_state(state):
    conn = guest_in(state)
    line = json.loads(conn.start_sync(nonce="again"))
    assert (conn.state, line["nonce"]) == (c.SYNCING, "again")
    conn.receive_data(m.encode(m.SyncAck(nonce="again", version=1), 1))
    assert isinstance(conn.next_event(), c.Synced)


@pytest.mark.parametrize("state", [c.SYNCING, c.READY])
def test_end_of_stream_from_any_state(state):
    conn = guest_in(state)
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), c.ConnectionClosed)
    assert conn.state == c.CLOSED


def test_a_sync_ack_once_ready_is_stale_even_with_the_old_nonce():
    conn = guest_in(c.READY)
    conn.receive_data(LINES["sync_ack_ours"])
    assert conn.next_event() is c.NEED_DATA
    assert (conn.state, conn.discarded) == (c.READY, 1)


def test_stale_sync_ack_for_an_earlier_sync_is_dropped():
    conn = c.Connection(m.GUEST, rng=random.Random(3))
    conn.start_sync(nonce="first")
    conn.start_sync(nonce="second")
    conn.receive_data(m.encode(m.SyncAck(nonce="first", version=1), 1))
    conn.receive_data(m.encode(challenge("between"), 2))
    assert conn.next_event() is c.NEED_DATA
    assert (conn.state, conn.discarded) == (c.SYNCING, 2)
    conn.receive_data(m.encode(m.SyncAck(nonce="second", version=1), 3))
    conn.receive_data(m.encode(challenge("current"), 4))
    assert isinstance(conn.next_event(), c.Synced)
    assert conn.next_event() == challenge("current")


# -- stale bytes --------------------------------------------------------------

def qemu_backlog(size=3700):
    """What a previous agent left in QEMU's buffer for a guest that was not
    reading: whole challenge lines, then the head of one more line (the
    write that hit EAGAIN).  Returns (bytes, number of whole lines)."""
    out = bytearray()
    lines = 0
    seq = 1000
    while True:
        line = m.encode(challenge("%032x" % seq, 1000), seq)
        if len(out) + len(line) > size:
            return bytes(out + line[:len(line) // 2]), lines
        out += line
        lines += 1
        seq += 1


def test_stale_backlog_read_before_the_sync_is_dropped():
    backlog, whole = qemu_backlog()
    assert 3600 <= len(backlog) <= 3800 and whole >= 30
    channel = Channel()
    channel.write(m.HOST, backlog)
    channel.pump()
    assert channel.events[m.GUEST] == []
    assert channel.errors[m.GUEST] == []
    assert channel.guest.discarded == whole
    channel.sync()
    assert channel.guest.discarded == whole
    channel.send(m.HOST, challenge("fresh"))
    channel.pump()
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("fresh")]


def test_stale_backlog_arriving_after_the_guest_synced():
    # The guest opens the port and syncs at once; QEMU then hands it the
    # backlog, and the new agent's sync lands right behind the partial
    # line.  The LF that leads every sync ends that line, so both sides are
    # synchronised at the first attempt.
    backlog, whole = qemu_backlog()
    channel = Channel()
    channel.start_sync(m.GUEST)
    channel.write(m.HOST, backlog)
    channel.start_sync(m.HOST)
    channel.pump()
    assert channel.host.state == channel.guest.state == c.READY
    assert channel.guest.discarded == whole + 1  # the lines, the torn one
    assert channel.errors[m.GUEST] == []
    assert channel.messages(m.GUEST, m.Challenge) == []
    channel.send(m.HOST, challenge("fresh"))
    channel.pump()
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("fresh")]


def test_a_stale_partial_line_does_not_cost_a_sync_attempt():
    # Nothing but the answer to our sync follows the partial line (it came
    # after we started the sync, so start_sync could not drop it); the LF
    # that leads the answer ends it, so the sync_ack is not glued to it.
    backlog, whole = qemu_backlog()
    conn = c.Connection(m.GUEST, rng=random.Random(5))
    peer = c.Connection(m.HOST, rng=random.Random(6))
    peer.receive_data(conn.start_sync())
    sync = peer.next_event()
    conn.receive_data(backlog)
    conn.receive_data(peer.answer_sync(sync))
    events, errors = drain(conn)
    assert errors == []
    assert [type(e) for e in events] == [c.Synced]
    assert conn.state == c.READY
    assert conn.discarded == whole + 1  # the lines, the torn one


@pytest.mark.parametrize("state", [c.SYNCING, c.READY])
def test_the_sync_line_ends_a_torn_line_at_the_peer(state):
    # our previous incarnation died in the middle of a line
    channel = Channel()
    if state == c.READY:
        channel.sync()
    channel.write(m.HOST, m.encode(challenge("torn"), 1)[:40])
    channel.pump()
    assert channel.guest.buffered == 40
    data = channel.start_sync(m.HOST)
    assert data.startswith(b"\n{") and data.count(b"\n") == 2
    discarded = channel.guest.discarded
    channel.pump()
    assert channel.host.state == c.READY  # at the first attempt
    assert isinstance(channel.events[m.GUEST][-1], m.Sync)
    if state == c.READY:
        assert [e.code for e in channel.errors[m.GUEST]] == ["invalid_json"]
    else:
        assert channel.guest.discarded == discarded + 1


def test_start_sync_forgets_a_partial_line():
    conn = c.Connection(m.GUEST, rng=random.Random(1))
    conn.receive_data(b'{"v":1,"app":"heartbeat","type":"chall')
    conn.start_sync(nonce="n")
    assert conn.buffered == 0
    conn.receive_data(m.encode(m.SyncAck(nonce="n", version=1), 1))
    assert isinstance(conn.next_event(), c.Synced)


def test_start_sync_forgets_an_overlong_line_being_skipped():
    conn = c.Connection(m.GUEST, rng=random.Random(1))
    conn.receive_data(b"x" * (m.MAX_LINE + 10))
    conn.start_sync(nonce="n")
    conn.receive_data(m.encode(m.SyncAck(nonce="n", version=1), 1))
    events, errors = drain(conn)
    assert [type(e) for e in events] == [c.Synced]
    assert conn.discarded == 1  # the overlong line


def test_lines_queued_before_a_resync_are_stale():
    channel = ready_channel()
    channel.guest.receive_data(m.encode(challenge("old"), 1))
    channel.start_sync(m.GUEST)
    channel.pump()
    assert channel.messages(m.GUEST, m.Challenge) == []
    assert channel.guest.state == c.READY


# -- bad lines while READY ----------------------------------------------------

def _obj_line(**obj):
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# (line, code, ref, app of the refusal: the line's class when it is known)
BAD_LINES = [
    (b"garbage\n", "invalid_json", None, "base"),
    (b"[1,2]\n", "invalid_json", None, "base"),
    (b'{"v":1,"app":"heartbeat","type":"challenge","seq":5,'
     b'"challenge":"c","deadline_ms":NaN}\n', "invalid_json", None, "base"),
    (b"\xff\xfe\n", "invalid_json", None, "base"),
    (b"[" * 3000 + b"]" * 1000 + b"\n", "invalid_json", None, "base"),
    (_obj_line(v=1, app="heartbeat", type="nope", seq=5), "unknown_type", 5,
     "heartbeat"),
    (_obj_line(v=1, app="nope", type="challenge", seq=6), "unknown_type", 6,
     "base"),
    (_obj_line(v=1, app="heartbeat", type="init", seq=7, name="x",
               interval_ms=5), "unexpected_message", 7, "heartbeat"),
    (_obj_line(v=1, app="heartbeat", type="challenge", seq=8,
               challenge="c", deadline_ms=0), "invalid_message", 8,
     "heartbeat"),
    (_obj_line(v=1, app="heartbeat", type="challenge", seq=9,
               challenge="c"), "invalid_message", 9, "heartbeat"),
    (_obj_line(v=1, app="heartbeat", type="challenge", seq=-1,
               challenge="c", deadline_ms=5), "invalid_message", None,
     "heartbeat"),
    (_obj_line(v=2, app="heartbeat", type="challenge", seq=10,
               challenge="c", deadline_ms=5), "unsupported_version", 10,
     "heartbeat"),
    (_obj_line(v=1, app="server_group", type="broadcast", seq=11,
               payload="!"), "invalid_message", 11, "server_group"),
    (_obj_line(v=1, app="base", type="sync", seq=12, nonce="n",
               versions=[]), "invalid_message", 12, "base"),
    (b"x" * m.MAX_LINE + b"\n", "line_too_long", None, "base"),
]


@pytest.mark.parametrize("line,code,ref,app", BAD_LINES,
                         ids=[code for _, code, _, _ in BAD_LINES])
def test_bad_line_while_ready_raises_and_the_connection_stays_usable(
        line, code, ref, app):
    channel = ready_channel()
    channel.write(m.HOST, line)
    channel.send(m.HOST, challenge("next"))
    channel.pump()
    [exc] = channel.errors[m.GUEST]
    assert (exc.code, exc.ref, exc.app) == (code, ref, app)
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("next")]
    assert channel.guest.state == c.READY
    # the error can be answered and reaches the peer intact
    channel.send(m.GUEST, exc.to_message())
    channel.pump()
    [error] = channel.messages(m.HOST, m.Error)
    assert (error.code, error.ref, error.app) == (code, ref, app)
    assert channel.errors[m.HOST] == []


def test_to_message_is_sendable_while_synchronising():
    conn = c.Connection(m.HOST, rng=random.Random(0))
    exc = RemoteProtocolError("invalid_json", "not JSON", ref=3)
    assert json.loads(conn.send(exc.to_message()))["code"] == "invalid_json"


def test_bad_lines_while_synchronising_are_counted_not_raised():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    for line, _, _, _ in BAD_LINES:
        conn.receive_data(line)
    events, errors = drain(conn)
    assert (events, errors) == ([], [])
    assert conn.discarded == len(BAD_LINES)


# -- line length --------------------------------------------------------------

def padded_line(total, token="padded", seq=1):
    """A valid challenge line of exactly ``total`` bytes, newline included;
    the padding is an unknown key, which receivers ignore."""
    obj = {"v": 1, "app": "heartbeat", "type": "challenge", "seq": seq,
           "challenge": token, "deadline_ms": 1000, "pad": ""}
    bare = len(json.dumps(obj, separators=(",", ":"))) + 1
    obj["pad"] = "p" * (total - bare)
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    assert len(line) == total
    return line


@pytest.mark.parametrize("chunk", [None, 1, 100, m.MAX_LINE - 1])
def test_a_line_of_exactly_max_line_passes(chunk):
    channel = ready_channel()
    channel.write(m.HOST, padded_line(m.MAX_LINE))
    channel.pump(chunk=chunk)
    assert channel.errors[m.GUEST] == []
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("padded",
                                                                1000)]


@pytest.mark.parametrize("chunk", [None, 1, 100, m.MAX_LINE,
                                   m.MAX_LINE + 1])
def test_one_byte_more_is_line_too_long(chunk):
    channel = ready_channel()
    channel.write(m.HOST, padded_line(m.MAX_LINE + 1))
    channel.write(m.HOST, padded_line(200, token="after"))
    channel.pump(chunk=chunk)
    assert [e.code for e in channel.errors[m.GUEST]] == ["line_too_long"]
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("after")]


def test_carriage_returns_count_toward_the_line_length():
    channel = ready_channel()
    line = padded_line(m.MAX_LINE)
    channel.write(m.HOST, line[:-1] + b"\r\n")
    channel.pump()
    assert [e.code for e in channel.errors[m.GUEST]] == ["line_too_long"]


@pytest.mark.parametrize("chunk", [1, 7, 64 * 1024])
def test_a_megabyte_line_is_one_error_and_is_never_buffered(chunk):
    conn = ready_channel().guest
    data = b"{" + b"x" * (1 << 20) + b"\n" + m.encode(challenge("next"), 2)
    errors, events, high = [], [], 0
    for start in range(0, len(data), chunk):
        conn.receive_data(data[start:start + chunk])
        high = max(high, conn.buffered)
        more, errs = drain(conn)
        events += more
        errors += errs
    assert [e.code for e in errors] == ["line_too_long"]
    assert events == [challenge("next")]
    assert high <= m.MAX_LINE + conn.max_buffer
    assert conn.buffered == 0


def test_overlong_line_while_synchronising_is_dropped():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    for _ in range(3):
        conn.receive_data(b"x" * 60000)
    conn.receive_data(b"x" * 100 + b"\n")
    assert drain(conn) == ([], [])
    assert conn.discarded == 1


def test_two_overlong_lines_are_two_errors():
    channel = ready_channel()
    channel.write(m.HOST, b"a" * 9000 + b"\n" + b"b" * 5000 + b"\n")
    channel.send(m.HOST, challenge("ok"))
    channel.pump(chunk=3000)
    assert [e.code for e in channel.errors[m.GUEST]] == ["line_too_long"] * 2
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("ok")]


# -- the receive buffer -------------------------------------------------------

def test_buffer_bound_counts_a_partial_line():
    conn = c.Connection(m.GUEST, max_buffer=0, rng=random.Random(0))
    bound = conn.max_buffer + m.MAX_LINE
    conn.receive_data(b"x" * (m.MAX_LINE - 1))  # the head of a line
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\n" * (bound - conn.buffered + 1))
    # a caller that reads at most max_buffer bytes and drains in between
    # never hits the bound
    line = m.encode(challenge(), 1)
    data = b"\n" + line * ((conn.max_buffer - 1) // len(line))
    assert len(data) <= conn.max_buffer
    conn.receive_data(data)
    assert conn.buffered <= bound
    drain(conn)
    assert conn.buffered == 0


def test_feeding_without_draining_hits_the_bound():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    line = m.encode(challenge(), 1)
    with pytest.raises(LocalProtocolError) as info:
        while True:
            before = conn.buffered
            conn.receive_data(line * 10)
            assert conn.buffered <= BOUND
    assert info.value.code == "unexpected_message"
    assert conn.buffered == before  # the refused chunk was not taken
    assert before > BOUND - len(line) * 10
    drain(conn)
    assert conn.buffered == 0
    conn.receive_data(line * 10)


@pytest.mark.parametrize("max_buffer", [0, 10000, 64 * 1024])
def test_buffered_never_exceeds_the_bound(max_buffer):
    rng = random.Random(max_buffer)
    conn = c.Connection(m.GUEST, max_buffer=max_buffer, rng=rng)
    bound = conn.max_buffer + m.MAX_LINE
    good = m.encode(challenge(), 1)
    pieces = [good, b"\n", b"x" * 5000, b"y" * 4000, good[:50], b"\r\n",
              b"z" * (m.MAX_LINE - 1)]
    stream = b"".join(rng.choice(pieces) for _ in range(400))
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, conn.max_buffer)
        conn.receive_data(stream[pos:pos + size])
        pos += size
        assert conn.buffered <= bound
        drain(conn)
        assert conn.buffered < m.MAX_LINE


# -- empty lines, CRLF, end of stream -----------------------------------------

def test_crlf_and_empty_lines():
    channel = ready_channel()
    line = m.encode(challenge("crlf"), 1)
    channel.write(m.HOST, b"\n\r\n  \n\t\n" + line[:-1] + b"\r\n" + b"\n\n")
    channel.write(m.HOST, b"   " + m.encode(challenge("spaced"), 2))
    channel.pump(chunk=3)
    assert channel.errors[m.GUEST] == []
    assert channel.messages(m.GUEST, m.Challenge) == [challenge("crlf"),
                                                      challenge("spaced")]
    assert channel.guest.discarded == 0


def test_empty_lines_are_keepalives_not_stale_lines():
    conn = c.Connection(m.GUEST, rng=random.Random(0))
    conn.receive_data(b"\n" * 1000 + b"\r\n" * 1000)
    assert drain(conn) == ([], [])
    assert conn.discarded == 0


def test_end_of_stream():
    channel = ready_channel()
    conn = channel.guest
    conn.receive_data(m.encode(challenge("last"), 1) + b'{"partial')
    conn.receive_data(b"")
    assert conn.next_event() == challenge("last")
    assert isinstance(conn.next_event(), c.ConnectionClosed)
    assert conn.state == c.CLOSED
    for _ in range(3):
        assert conn.next_event() is c.NEED_DATA
    assert repr(c.ConnectionClosed()) == "ConnectionClosed()"
    assert repr(c.NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("data", [b"more", b""])
def test_receive_after_end_of_stream_is_a_local_error(data):
    conn = c.Connection(m.GUEST)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(data)


def test_nothing_may_be_sent_once_closed():
    conn = ready_channel().guest
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), c.ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        conn.send(m.Exit())
    with pytest.raises(LocalProtocolError):
        conn.send(m.Error(code="invalid_json", message="x"))
    with pytest.raises(LocalProtocolError):
        conn.start_sync()


# -- what may be sent when ----------------------------------------------------

@pytest.mark.parametrize("msg", [
    m.Init(name="g", interval_ms=1000), m.Exit(), m.StatusQuery(),
    m.Broadcast(payload=b"x"),
    m.ChallengeResponse(ref=1, challenge="c", healthy=True)],
    ids=lambda msg: msg.TYPE)
def test_application_messages_wait_for_the_sync(msg):
    channel = Channel()
    with pytest.raises(LocalProtocolError) as info:
        channel.guest.send(msg)
    assert info.value.code == "unexpected_message"
    # answering the peer's sync does not synchronise us
    channel.start_sync(m.HOST)
    channel.pump()
    assert channel.guest.state == c.SYNCING
    with pytest.raises(LocalProtocolError):
        channel.guest.send(msg)
    channel.start_sync(m.GUEST)
    channel.pump()
    channel.send(m.GUEST, msg)
    channel.pump()
    assert channel.messages(m.HOST, type(msg)) == [msg]


def test_base_messages_may_be_sent_while_synchronising():
    conn = c.Connection(m.HOST, rng=random.Random(0))
    conn.send(m.Sync(nonce="n", versions=[1]))
    conn.send(m.SyncAck(nonce="n", version=1))
    conn.send(m.Error(code="invalid_json", message="x"))


def test_a_side_may_not_send_the_other_sides_messages():
    channel = ready_channel()
    with pytest.raises(LocalProtocolError):
        channel.guest.send(challenge())
    with pytest.raises(LocalProtocolError):
        channel.host.send(m.Init(name="g", interval_ms=1))


# -- status parts -------------------------------------------------------------

def _status_lines(channel, msg):
    data = channel.host.send(msg)
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


@pytest.mark.parametrize("count,parts", [
    (0, 1), (1, 1), (40, 1), (41, 2), (80, 2), (100, 3),
    (2559, 64), (2560, 64)])
def test_status_is_split_and_reassembled(count, parts):
    channel = ready_channel()
    msg = m.Status(ref=9, members=members(count, "S" * 32),
                   group=str(uuid.UUID(int=0xabc)))
    lines = _status_lines(channel, msg)
    assert len(lines) == parts
    seqs = []
    for i, line in enumerate(lines, 1):
        assert len(line) <= m.MAX_LINE
        obj = json.loads(line)
        assert (obj["part"], obj["parts"], obj["ref"]) == (i, parts, 9)
        assert len(obj["members"]) <= m.STATUS_MEMBERS_PER_PART
        seqs.append(obj["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + parts))
    assert msg.seq == seqs[-1]
    for line in lines:
        channel.write(m.HOST, line)
    channel.pump(chunk=1000)
    [got] = channel.messages(m.GUEST, m.Status)
    assert got.members == msg.members  # all of them, in order
    assert (got.ref, got.group, got.part, got.parts, got.seq) == (
        9, msg.group, 1, 1, seqs[-1])
    assert channel.errors[m.GUEST] == []


def test_status_with_too_many_members_cannot_be_built():
    with pytest.raises(LocalProtocolError):
        m.Status(ref=1, members=members(2561))


def test_a_missing_part_means_no_status():
    channel = ready_channel()
    lines = _status_lines(channel, m.Status(ref=1, members=members(100)))
    channel.write(m.HOST, lines[0] + lines[2])
    channel.pump()
    assert channel.messages(m.GUEST, m.Status) == []
    # the next complete answer is delivered whole and alone
    again = m.Status(ref=2, members=members(100))
    channel.send(m.HOST, again)
    channel.pump()
    assert channel.messages(m.GUEST, m.Status) == [again]


def test_a_duplicated_part_does_not_complete_a_status():
    channel = ready_channel()
    lines = _status_lines(channel, m.Status(ref=1, members=members(100)))
    channel.write(m.HOST, lines[0] + lines[1] + lines[1])
    channel.pump()
    assert channel.messages(m.GUEST, m.Status) == []
    channel.write(m.HOST, lines[2])
    channel.pump()
    [got] = channel.messages(m.GUEST, m.Status)
    assert got.members == members(100)


def test_interleaved_status_answers_never_mix():
    channel = ready_channel()
    a = _status_lines(channel, m.Status(ref=1, members=members(100, "A")))
    b = _status_lines(channel, m.Status(ref=2, members=members(100, "B")))
    for la, lb in zip(a, b):
        channel.write(m.HOST, la + lb)
    channel.pump()
    # one answer is assembled at a time: each part of the other starts
    # afresh, so neither completes and nothing mixed is delivered
    assert channel.messages(m.GUEST, m.Status) == []
    channel.write(m.HOST, b"".join(a[:1] + b))
    channel.pump()
    [got] = channel.messages(m.GUEST, m.Status)
    assert got.ref == 2 and {mb.state for mb in got.members} == {"B"}


def test_a_single_line_status_does_not_disturb_an_assembly():
    channel = ready_channel()
    a = _status_lines(channel, m.Status(ref=1, members=members(100, "A")))
    single = m.Status(ref=2, members=members(3, "B"))
    channel.write(m.HOST, a[0])
    channel.send(m.HOST, single)
    channel.write(m.HOST, a[1] + a[2])
    channel.pump()
    got = channel.messages(m.GUEST, m.Status)
    assert [s.ref for s in got] == [2, 1]
    assert got[1].members == members(100, "A")


def test_a_resync_drops_a_half_assembled_status():
    channel = ready_channel()
    lines = _status_lines(channel, m.Status(ref=1, members=members(100)))
    channel.write(m.HOST, lines[0] + lines[1])
    channel.pump()
    channel.start_sync(m.GUEST)
    channel.pump()
    channel.write(m.HOST, lines[2])
    channel.pump()
    assert channel.messages(m.GUEST, m.Status) == []


def _status_obj(seq, count, part, parts, state="A"):
    return {"v": 1, "app": "server_group", "type": "status", "seq": seq,
            "ref": 1, "members": [mb.to_wire() for mb in members(count,
                                                                 state)],
            "part": part, "parts": parts}


def test_a_part_numbered_beyond_its_count_is_refused():
    channel = ready_channel()
    channel.write(m.HOST, _obj_line(**_status_obj(5, 2, part=5, parts=2)))
    channel.write(m.HOST, _obj_line(**_status_obj(6, 2, part=2, parts=1)))
    channel.write(m.HOST, _obj_line(**_status_obj(7, 2, part=1, parts=2)))
    channel.pump()
    assert [(e.code, e.ref, e.app) for e in channel.errors[m.GUEST]] == [
        ("invalid_message", 5, "server_group"),
        ("invalid_message", 6, "server_group")]
    assert channel.messages(m.GUEST, m.Status) == []  # part 1 waits
    channel.write(m.HOST, _obj_line(**_status_obj(8, 2, part=2, parts=2)))
    channel.pump()
    [got] = channel.messages(m.GUEST, m.Status)
    assert got.members == members(2, "A") * 2 and got.seq == 8


def test_a_part_of_a_split_answer_may_hold_at_most_40_members():
    # 64 parts of 41 members each would fit in lines and make 2624 members
    channel = ready_channel()
    for part in range(1, m.MAX_STATUS_PARTS + 1):
        channel.write(m.HOST, _obj_line(**_status_obj(
            part, 41, part=part, parts=m.MAX_STATUS_PARTS)))
    channel.send(m.HOST, challenge("still-usable"))
    channel.pump(chunk=4096)
    assert [e.code for e in channel.errors[m.GUEST]] == [
        "invalid_message"] * m.MAX_STATUS_PARTS
    assert {e.app for e in channel.errors[m.GUEST]} == {"server_group"}
    assert channel.messages(m.GUEST, m.Status) == []
    assert channel.messages(m.GUEST, m.Challenge) == [
        challenge("still-usable")]
    with pytest.raises(LocalProtocolError) as info:
        m.Status(ref=1, members=members(41), part=1, parts=2)
    assert info.value.code == "invalid_message"


def test_a_single_line_answer_may_hold_what_fits_in_the_line():
    # A sender never puts more than 40 members in a line, but a single-line
    # answer is complete in itself: more are accepted if they fit.
    count = 60
    line = _obj_line(**_status_obj(3, count, part=1, parts=1))
    assert len(line) <= m.MAX_LINE
    channel = ready_channel()
    channel.write(m.HOST, line)
    channel.pump()
    assert channel.errors[m.GUEST] == []
    [got] = channel.messages(m.GUEST, m.Status)
    assert got.members == members(count, "A")


# -- sequence numbers ---------------------------------------------------------

def test_sequence_numbers_increase_by_one_per_line():
    channel = ready_channel()
    host = channel.host
    seqs = []
    for i in range(5):
        msg = challenge("c%d" % i)
        obj = json.loads(host.send(msg))
        assert obj["seq"] == msg.seq
        seqs.append(msg.seq)
    status = m.Status(ref=1, members=members(100))
    host.send(status)  # three lines
    after = challenge("after")
    host.send(after)
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert status.seq == seqs[-1] + 3
    assert after.seq == status.seq + 1


def test_initial_sequence_number_is_random_and_leaves_room():
    firsts = set()
    for seed in range(20):
        conn = c.Connection(m.HOST, rng=random.Random(seed))
        conn.start_sync()
        msg = m.Sync(nonce="n", versions=[1])
        conn.send(msg)
        assert 0 <= msg.seq < 2 ** 31 + 1
        firsts.add(msg.seq)
    assert len(firsts) == 20


def test_sequence_numbers_wrap_at_two_to_the_32():
    channel = ready_channel()
    host = channel.host
    host._seq = m.MAX_SEQ - 1
    sent = [challenge("w%d" % i) for i in range(4)]
    for msg in sent:
        channel.send(m.HOST, msg)
    assert [msg.seq for msg in sent] == [m.MAX_SEQ - 1, m.MAX_SEQ, 0, 1]
    channel.pump()
    got = channel.messages(m.GUEST, m.Challenge)
    assert got == sent and [g.seq for g in got] == [m.MAX_SEQ - 1,
                                                    m.MAX_SEQ, 0, 1]


def test_status_parts_wrap_too():
    channel = ready_channel()
    channel.host._seq = m.MAX_SEQ
    status = m.Status(ref=1, members=members(100))
    seqs = [json.loads(line)["seq"]
            for line in _status_lines(channel, status)]
    assert seqs == [m.MAX_SEQ, 0, 1]
    assert status.seq == 1
