# SPDX-License-Identifier: Apache-2.0
"""The cheaper general code of every heartbeat round, against what it
short-cuts: Connection.receive_data queues a line that lies whole in one
chunk without copying it through the partial-line buffer, and decode
tests the bracket count before calling _too_deep."""

import random

from guestha_guest.protocol import connection as c
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
    except m.RemoteProtocolError as exc:
        assert exc.code == "invalid_json"
    else:
        raise AssertionError("not refused")
    assert m._too_deep(deep)
    shallow = b"[" * m.MAX_DEPTH + b"]" * m.MAX_DEPTH
    assert not m._too_deep(shallow)
