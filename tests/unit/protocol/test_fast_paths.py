# SPDX-License-Identifier: Apache-2.0
"""The cheaper general code of every heartbeat round, against what it
short-cuts: Connection.receive_data queues a line that lies whole in one
chunk without copying it through the partial-line buffer, and decode
tests the bracket count before calling _too_deep; Connection.receive_line
takes a read of one whole line without the buffer, giving what
receive_data and next_event give."""

import random

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError
from guestha_guest.protocol import messages as m


def _lines(chunks, kind=bytes):
    conn = c.Connection(m.HOST)
    for chunk in chunks:
        conn.receive_data(kind(chunk))
    queued = list(conn._lines)
    return queued, conn.buffered, bytes(conn._partial), conn._skipping


def _expected(stream):
    # the stream cut at its newlines: the whole lines, and the rest
    *whole, rest = stream.split(b"\n")
    lines = [c._TOO_LONG if len(line) >= m.MAX_LINE else line
             for line in whole]
    return lines, rest


def test_lines_are_the_same_however_the_stream_is_cut():
    rng = random.Random(4)
    pieces = [b"", b"{}", b'{"a":1}', b"x" * 100, b"y" * (m.MAX_LINE - 1),
              b"z" * 300]
    for _ in range(300):
        stream = b"".join(rng.choice(pieces) + b"\n"
                          for _ in range(rng.randint(1, 6)))
        stream += rng.choice([b"", b"tail"])
        cuts = sorted(rng.sample(range(1, len(stream)),
                                 min(rng.randint(0, 5), len(stream) - 1)))
        chunks = [stream[i:j] for i, j in zip([0] + cuts,
                                              cuts + [len(stream)])]
        lines, rest = _expected(stream)
        for kind in (bytes, bytearray, memoryview):
            queued, buffered, partial, skipping = _lines(chunks, kind)
            assert all(type(q) is bytes or q is c._TOO_LONG
                       for q in queued)
            if any(len(line) >= m.MAX_LINE for line in
                   stream.split(b"\n")[:-1]):
                continue  # (a too-long line's tail: checked below)
            assert queued == lines
            assert partial == rest
            assert buffered == sum(len(q) for q in queued) + len(rest)
            assert not skipping


def test_a_too_long_line_cut_anywhere_is_reported_once():
    long = b"x" * (m.MAX_LINE + 10)
    stream = b"{}\n" + long + b"\n{}\n"
    for cut in range(1, len(stream)):
        queued, buffered, partial, skipping = _lines(
            [stream[:cut], stream[cut:]])
        assert queued == [b"{}", c._TOO_LONG, b"{}"], cut
        assert partial == b"" and not skipping
        assert buffered == 4


def test_decode_refuses_deep_nesting_as_before():
    deep = b'{"v":1,"x":' + b"[" * (m.MAX_DEPTH + 1) + b"]" * (
        m.MAX_DEPTH + 1) + b"}"
    try:
        m.decode(deep, m.GUEST)
    except RemoteProtocolError as exc:
        assert exc.code == "invalid_json"
    else:
        raise AssertionError("not refused")
    assert m._too_deep(deep)
    shallow = b"[" * m.MAX_DEPTH + b"]" * m.MAX_DEPTH
    assert not m._too_deep(shallow)


# -- Connection.receive_line: one whole line, nothing buffered ----------------

def _host(state, seed=5):
    """A host connection in ``state`` (SYNCING or READY), made the same
    way every time for the same seed."""
    conn = c.Connection(m.HOST, rng=random.Random(seed))
    conn.start_sync(nonce="ours")
    if state == c.READY:
        conn.receive_data(m.encode(m.SyncAck(nonce="ours", version=1), 9))
        assert isinstance(conn.next_event(), c.Synced)
    return conn


def _outcome(conn, first=None):
    # the events, errors and counters of draining conn after ``first``
    events, errors = [] if first in (None, c.NEED_DATA) else [first], []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            errors.append((exc.code, str(exc)))
            continue
        if event is c.NEED_DATA:
            break
        events.append(event)
    return ([(type(e).__name__, sorted(vars(e).items())) for e in events],
            errors, conn.state, conn.discarded, conn.buffered)


_RESPONSE = m.encode(m.ChallengeResponse(ref=3, challenge="ab12",
                                         healthy=True), 21)
_ONE_LINE_READS = [
    _RESPONSE, b"\n", b"  \n", b"{not json\n", b'"a string"\n',
    m.encode(m.Init(name="g", interval_ms=1000), 22),
    m.encode(m.Exit(), 23), b" " + _RESPONSE,
    b"x" * (m.MAX_LINE - 1) + b"\n",
]
_OTHER_READS = [
    b"", _RESPONSE[:-1], _RESPONSE + _RESPONSE, _RESPONSE + b"{",
    b"x" * m.MAX_LINE + b"\n", b"\n\n",
]


def _read_the_usual_way(conn, data):
    errors = []
    try:
        conn.receive_data(data)
    except LocalProtocolError as exc:
        errors.append(exc.code)
    return _outcome(conn), errors


def _read_with_the_shortcut(conn, data):
    try:
        first = conn.receive_line(data)
    except RemoteProtocolError as exc:
        outcome = _outcome(conn)
        return (outcome[0], [(exc.code, str(exc))] + outcome[1],
                *outcome[2:]), []
    if first is None:
        return _read_the_usual_way(conn, data)
    return _outcome(conn, first), []


def test_a_one_line_read_gives_what_receive_data_and_next_event_give():
    for state in (c.SYNCING, c.READY):
        for data in _ONE_LINE_READS + _OTHER_READS:
            for before in (b"", b'{"v":1', b"\n"):
                usual, short = _host(state), _host(state)
                for conn in (usual, short):
                    conn.receive_data(before) if before else None
                    _outcome(conn)
                assert (_read_with_the_shortcut(short, data)
                        == _read_the_usual_way(usual, data)), (state, data,
                                                               before)


def test_receive_line_takes_only_a_whole_line_with_nothing_buffered():
    conn = _host(c.READY)
    for data in _OTHER_READS:
        assert conn.receive_line(data) is None, data
    assert conn.buffered == 0
    for data in _ONE_LINE_READS:
        try:
            assert conn.receive_line(data) is not None, data
        except RemoteProtocolError:
            assert not data.startswith(b'{"v"')  # (a bad line, READY)
    conn.receive_data(b'{"v":1')  # a partial line is buffered
    assert conn.receive_line(_RESPONSE) is None
    assert conn.buffered == len(b'{"v":1')
