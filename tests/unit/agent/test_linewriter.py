# SPDX-License-Identifier: Apache-2.0
"""Whole lines to a socket that takes only so much: queued, bounded,
dropped, trimmed, never torn."""

from guestha.agent import linewriter


class Sock(object):
    """A socket that takes ``room`` bytes, then raises BlockingIOError."""

    def __init__(self, room):
        self.room = room
        self.sent = bytearray()
        self.error = None

    def send(self, data):
        if self.error is not None:
            raise self.error
        n = min(self.room, len(data))
        if n == 0:
            raise BlockingIOError()
        self.sent += bytes(data[:n])
        self.room -= n
        return n


def writer(room, bound=100):
    watched = []
    counters = {"dropped_lines": 0}
    w = linewriter.LineWriter(Sock(room), bound, counters, watched.append)
    return w, watched, counters


def test_what_the_socket_takes_is_written_at_once():
    w, watched, counters = writer(100)
    assert w.write(b"one\n") and w.write(b"two\n")
    assert w.sock.sent == b"one\ntwo\n" and not w.out and watched == []


def test_the_rest_of_a_line_is_queued_and_flushed_in_order():
    w, watched, counters = writer(3)
    assert w.write(b"hello\n")
    assert (bytes(w.sock.sent), bytes(w.out), watched) == (
        b"hel", b"lo\n", [True])
    assert w.write(b"next\n")  # behind it, whole
    w.sock.room = 5
    w.flush()
    assert bytes(w.sock.sent) == b"hello\nne" and watched == [True]
    w.sock.room = 100
    w.flush()
    assert bytes(w.sock.sent) == b"hello\nnext\n"
    assert not w.out and watched == [True, False]


def test_a_droppable_line_is_dropped_not_queued():
    w, watched, counters = writer(0)
    assert not w.write(b"challenge\n", droppable=True)
    assert counters["dropped_lines"] == 1 and not w.out and watched == []
    w.sock.room = 2
    assert w.write(b"init_ack\n")        # begun: the rest follows
    assert not w.write(b"challenge\n", True)  # behind a queue: dropped
    assert counters["dropped_lines"] == 2


def test_the_bound_drops_whole_lines_but_never_the_rest_of_one():
    w, watched, counters = writer(1, bound=10)
    assert w.write(b"x" * 30 + b"\n")  # begun: queued beyond the bound
    assert len(w.out) == 30
    assert not w.write(b"more\n")
    assert counters["dropped_lines"] == 1
    w2, _, counters2 = writer(0, bound=10)
    assert not w2.write(b"y" * 20 + b"\n")  # nothing begun: dropped
    assert counters2["dropped_lines"] == 1


def test_trim_keeps_the_line_in_flight():
    w, watched, counters = writer(2)
    w.write(b"abcd\n")
    w.write(b"efgh\n")
    assert bytes(w.out) == b"cd\nefgh\n"
    w.trim()
    assert bytes(w.out) == b"cd\n"


def test_a_closed_socket_loses_what_was_queued():
    w, watched, counters = writer(1)
    w.write(b"ab\n")
    w.sock.error = BrokenPipeError()
    assert w.write(b"cd\n")  # queued behind the rest, whole
    assert bytes(w.out) == b"b\ncd\n"
    w.flush()
    assert not w.out and watched == [True, False]
    w2, _, _ = writer(5)
    w2.sock.error = ConnectionResetError()
    assert not w2.write(b"ef\n")


def test_the_closed_writer_writes_nothing():
    c = linewriter.CLOSED
    assert not c.write(b"x\n") and not c.write(b"x\n", True)
    c.flush()
    c.trim()
    assert len(c.out) == 0
