# SPDX-License-Identifier: Apache-2.0
"""Whole lines to a channel's socket, never torn.

The protocol forbids tearing a line: a guest that reads half a line and
then a ``sync`` would parse garbage.  A :class:`LineWriter` writes what the
non-blocking socket takes and keeps the rest of the line, and of the lines
written after it, until the socket is writable again (the loop says so,
:meth:`LineWriter.flush`), up to ``output_buffer_bytes``.  Beyond that, or
for a *droppable* line (a challenge, sent again next interval) that cannot
go out at once, the whole line is dropped and counted
(``dropped_lines``): a guest that does not read costs the agent no more
than the bound.  A resync makes whatever is queued stale:
:meth:`LineWriter.trim` keeps only the line in flight.

:data:`CLOSED` stands for the writer of a channel that is not connected:
it writes nothing.
"""


class LineWriter(object):
    """The writing side of one connected, non-blocking socket.

    :param sock: the socket.
    :param bound: the most bytes to queue (``[agent] output_buffer_bytes``).
    :param counters: the instance's counters (``dropped_lines``).
    :param watch_writable: called with True when there is something queued
        (the loop then calls :meth:`flush` when the socket is writable),
        False when there is nothing any more.
    """

    def __init__(self, sock, bound, counters, watch_writable):
        self.sock = sock
        self.bound = bound
        self.counters = counters
        self.watch_writable = watch_writable
        self.out = bytearray()
        self.watched = False

    def write(self, data, droppable=False):
        """Write the whole lines ``data``: True if written or queued."""
        out = self.out
        if out:
            if droppable or len(out) + len(data) > self.bound:
                # nobody reads in the guest: drop the whole line
                self.counters["dropped_lines"] += 1
                return False
            out += data
            return True
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            return False  # closed: the read side tells the loss
        if n == len(data):
            return True
        if n == 0 and (droppable or len(data) > self.bound):
            self.counters["dropped_lines"] += 1
            return False
        # the rest of a line the guest has begun to receive must follow
        # whatever the bound (it is at most one message's lines)
        out += memoryview(data)[n:]
        if not self.watched:
            self.watched = True
            self.watch_writable(True)
        return True

    def flush(self):
        """The socket can take more of what is queued."""
        out = self.out
        if not out:
            self._stop_watching()
            return
        try:
            n = self.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            out.clear()  # closed: the read side tells the loss
            n = 0
        del out[:n]
        if not out:
            self._stop_watching()

    def trim(self):
        """Keep the line in flight (its start may be written), drop the
        lines queued after it."""
        nl = self.out.find(b"\n")
        if nl >= 0:
            del self.out[nl + 1:]

    def _stop_watching(self):
        if self.watched:
            self.watched = False
            self.watch_writable(False)


class _Closed(object):
    """The writer of a channel that is not connected."""

    out = b""

    def write(self, data, droppable=False):
        return False

    def flush(self):
        pass

    def trim(self):
        pass


#: The writer of every channel that is not connected.
CLOSED = _Closed()
