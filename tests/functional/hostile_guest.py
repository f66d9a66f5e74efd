# SPDX-License-Identifier: Apache-2.0
"""A hostile guest: junk on the channel as fast as the host reads it.

``python -m tests.functional.hostile_guest flood PATH`` serves PATH as
such a guest (:func:`flood`); :class:`HostileGuest` runs it in a child
process of a test.
"""

import errno
import os
import random
import selectors
import signal
import socket
import sys
import textwrap
import time

from guestha.testing.child_processes import PYTHON
from guestha.testing.child_processes import terminate
from guestha.testing.wait import wait_until
from guestha_guest import protocol as p
from guestha_guest.protocol import messages


def junk_chunk(rng):
    """About 64 KiB of what a hostile guest sends: invalid JSON, over-long
    lines, random bytes, and valid messages that are wrong here."""
    parts = []
    while sum(len(x) for x in parts) < 64 * 1024:
        pick = rng.randrange(8)
        if pick == 0:
            parts.append(b"{not json at all\n")
        elif pick == 1:
            parts.append(b"x" * (2 * p.MAX_LINE) + b"\n")
        elif pick == 2:
            parts.append(bytes(rng.getrandbits(8) for _ in range(512))
                         + b"\n")
        elif pick == 3:
            # a well-formed answer to a challenge never sent
            parts.append(messages.encode(p.ChallengeResponse(
                ref=rng.randrange(1, 2 ** 31), challenge="f" * 32,
                healthy=True), rng.randrange(1, 2 ** 31)))
        elif pick == 4:
            parts.append(b'{"v":99,"app":"heartbeat","type":"init",'
                         b'"seq":1}\n')
        elif pick == 5:
            parts.append(b'{"v":1,"app":"heartbeat","type":"challenge",'
                         b'"seq":2,"challenge":"abc","deadline_ms":1}\n')
        elif pick == 6:
            parts.append(b'{"v":1,"app":"nonsense","type":"x","seq":3}\n')
        else:
            parts.append(b"[1,2,3]\n")
    return b"".join(parts)


def flood(path, seconds=600.0):
    """Serve the channel socket ``path`` as a hostile guest would: answer
    the host's syncs (so the host parses what follows), then send junk as
    fast as the socket takes it; after a reset, wait for the next
    connection and start over."""
    rng = random.Random(7)
    chunk = junk_chunk(rng)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener.bind(path)
    listener.listen(4)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        listener.settimeout(1.0)
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            continue
        conn = p.Connection(p.GUEST)
        try:
            # answer the host's first sync before any junk, so that the
            # host turns READY and parses the junk rather than dropping it
            _wait_for_sync(conn, sock)
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        view, offset = memoryview(chunk), 0
        try:
            while time.monotonic() < end:
                for _key, mask in sel.select(1.0):
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionResetError("host closed")
                        _answer_syncs(conn, sock, data)
                    if mask & selectors.EVENT_WRITE:
                        try:
                            offset += sock.send(view[offset:])
                        except BlockingIOError:
                            pass
                        if offset >= len(chunk):
                            offset = 0
        except OSError as exc:
            if exc.errno not in (None, errno.EPIPE, errno.ECONNRESET):
                raise
        finally:
            sel.close()
            sock.close()


def _wait_for_sync(conn, sock, timeout=5.0):
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("host closed")
        if _answer_syncs(conn, sock, data):
            return
    raise socket.timeout("no sync from the host")


def _answer_syncs(conn, sock, data):
    """Answer every sync in ``data``; True if there was one."""
    try:
        conn.receive_data(data)
    except p.LocalProtocolError:
        return False
    answered = False
    while True:
        try:
            event = conn.next_event()
        except p.RemoteProtocolError:
            continue
        if event is p.NEED_DATA:
            return answered
        if isinstance(event, p.Sync):
            timeout = sock.gettimeout()
            sock.settimeout(5.0)
            try:
                sock.sendall(conn.answer_sync(event))
            finally:
                sock.settimeout(timeout)
            answered = True


class HostileGuest(object):
    """:func:`flood` in a child process (its own core, not the test's
    GIL)."""

    def __init__(self, procs, workdir, sockdir):
        self.procs = procs
        self.channel = os.path.join(sockdir, "hostile.sock")
        self.log = os.path.join(workdir, "hostile.log")
        self.proc = None

    def start(self):
        self.proc = self.procs.spawn(
            [PYTHON, "-m", "tests.functional.hostile_guest", "flood",
             self.channel], self.log)
        wait_until(lambda: os.path.exists(self.channel), 15,
                   "the hostile guest to listen")
        return self

    def stop(self):
        terminate(self.proc, 5)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "flood":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        flood(argv[1])
        return 0
    print(textwrap.dedent("""\
        usage: python -m tests.functional.hostile_guest flood PATH
          serve PATH as a hostile guest channel (see flood())"""),
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
