# SPDX-License-Identifier: Apache-2.0
"""A farm of simulated guests: one loop, many channels, for tests and
benchmarks at a scale where a guest daemon process per instance would be
too heavy.

    python -m guestha_guest.testing.guestfarm --paths-file PATHS \
        [--interval-ms 1000] [--owner TEXT]

For every path (one a line in ``PATHS``) the farm listens on a UNIX socket,
as QEMU does for a ``<channel type='unix'><source mode='bind'/>``, and plays
the guest daemon behind it: the real :class:`guestha_guest.protocol.
session.GuestSession`, always healthy, answering each challenge as soon as
it is read.  All channels share one ``selectors`` loop, so a farm costs
one core at most and several farms (``benchmarks/agent_scale.py --farms``)
can share the load.

Like QEMU, a listener serves one host client at a time (a second one is
refused), and a guest starts afresh (new connection, unregistered) whenever
the host connects.  Unlike QEMU, a guest sees the host go away (QEMU keeps
the guest side of the port open); that only matters to a run that
restarts the agent, and then the new agent's sync is answered either way.

With ``--owner`` (``owner=``) a farm serves only the agent whose command
line contains that string and holds every other client unanswered (see
:meth:`Farm.park`): on libvirt's shared test driver, agents of concurrent
functional tests see a benchmark's domains too.

Two ways to run it:

* a process of its own (the benchmarks): ``main`` prints ``ready`` on
  stdout once every socket listens; on SIGTERM or SIGINT it prints one
  line of JSON with its counters (:meth:`Farm.report`) and exits;
* a thread of the caller (the functional tests)::

      farm = Farm(paths, interval_ms=200).start()
      ... farm.guests[i].path, farm.report(), farm.error ...
      farm.stop()

Standard library only, Python 3.8+, like the rest of the guest package.
"""

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol.session import BadLine
from guestha_guest.protocol.session import GuestSession
from guestha_guest.protocol.session import Send

# how often guests' own timers (init retry, host silence, sync retry) are
# looked at; they are all seconds long, so a sweep beats a heap here
SWEEP_INTERVAL = 0.5


def _healthy(now):
    return True, None, None


class Guest(object):
    """One simulated guest behind one listening socket."""

    __slots__ = ("farm", "path", "listener", "sock", "session", "out",
                 "writing")

    def __init__(self, farm, path, init):
        self.farm = farm
        self.path = path
        self.listener = None
        self.sock = None
        self.session = GuestSession(init, _healthy)
        self.out = bytearray()     # bytes the socket did not take yet
        self.writing = False

    def listen(self, sel):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, self.accept)

    # -- the socket -------------------------------------------------------

    def accept(self, mask, now):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        if not self.farm.owns(sock):
            self.farm.park(sock)
            return
        if self.sock is not None:
            sock.close()  # one host client at a time, as QEMU
            return
        self.sock = sock
        self.farm.sel.register(sock, selectors.EVENT_READ, self.ready)
        self.farm.stats["connects"] += 1
        self.apply(self.session.connect(now))

    def ready(self, mask, now):
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if not mask & selectors.EVENT_READ or self.sock is None:
            return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            outputs = self.session.receive(data, now)
        except p.LocalProtocolError:
            self.farm.stats["overflows"] += 1
            self.close()
            return
        self.apply(outputs)

    def close(self):
        if self.sock is not None:
            self.farm.sel.unregister(self.sock)
            self.sock.close()
            self.farm.stats["disconnects"] += 1
        self.sock = None
        self.writing = False
        del self.out[:]
        self.session.disconnect()

    def write(self, data):
        if self.sock is None:
            return
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            self.out += data[n:]
            self.farm.sel.modify(self.sock, selectors.EVENT_READ
                                 | selectors.EVENT_WRITE, self.ready)
            self.writing = True

    def flush(self):
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.out[:n]
        if not self.out and self.writing:
            self.farm.sel.modify(self.sock, selectors.EVENT_READ, self.ready)
            self.writing = False

    # -- the protocol -----------------------------------------------------

    def apply(self, outputs):
        stats = self.farm.stats
        for out in outputs:
            kind = type(out)
            if kind is Send:
                if out.sync:
                    stats["syncs"] += 1
                self.write(out.data)
            elif kind is hb.ChallengeAnswered:
                stats["answers"] += 1
            elif kind is hb.Acknowledged:
                stats["registrations"] += 1
            elif kind is hb.HostError:
                stats["host_errors"] += 1
            elif kind is BadLine:
                stats["protocol_errors"] += 1
            # anything else (server-group traffic, base errors, the end of
            # the stream) does not concern a heartbeat-only guest

    def tick(self, now):
        self.apply(self.session.tick(now))


class Farm(object):
    """The guests of one process and their loop.

    :param owner: if set, only a client process whose command line
        contains this string (the benchmark's agent: its config file path)
        is served; see :meth:`park`.
    """

    def __init__(self, paths, interval_ms=1000, name="guestfarm",
                 owner=None, clock=time.monotonic):
        self.sel = selectors.DefaultSelector()
        self.clock = clock
        self.owner = owner
        self._owners = {}  # pid -> whether its command line matches
        self.parked = set()
        self.stats = dict.fromkeys(
            ("connects", "disconnects", "registrations", "answers",
             "syncs", "host_errors", "protocol_errors", "overflows",
             "foreign"), 0)
        init = p.Init(name=name, interval_ms=interval_ms,
                      corrective_action="none")
        self.guests = [Guest(self, path, init) for path in paths]
        self.running = True
        #: what ended the loop of :meth:`start`'s thread, if it failed
        self.error = None
        self._thread = None

    def owns(self, sock):
        """Whether the client on ``sock`` is the agent we serve."""
        if self.owner is None:
            return True
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        mine = self._owners.get(pid)
        if mine is None:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(
                        "utf-8", "replace")
            except OSError:
                cmdline = ""
            mine = self._owners[pid] = self.owner in cmdline
        return mine

    def park(self, sock):
        """Hold a foreign client's connection without answering it.

        libvirt's shared test driver shows our domains to every agent that
        watches it (functional tests running at the same time): such an
        agent connects to our channels too.  Served, it would take the
        channel from ours; refused (closed), it would reconnect at once,
        over and over.  Held unanswered, it waits in SYNCING and retries
        its sync with back-off, as it would with a QEMU channel whose one
        client slot is taken.  What it sends is read and dropped; its end
        of stream frees the socket.
        """
        self.stats["foreign"] += 1
        self.parked.add(sock)
        self.sel.register(sock, selectors.EVENT_READ, lambda mask, now,
                          s=sock: self._drain_parked(s))

    def _drain_parked(self, sock):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(sock)
            self.parked.discard(sock)
            sock.close()

    def listen(self):
        for guest in self.guests:
            guest.listen(self.sel)

    def run(self):
        clock = self.clock
        next_sweep = clock() + SWEEP_INTERVAL
        while self.running:
            events = self.sel.select(max(0.0, next_sweep - clock()))
            now = clock()
            for key, mask in events:
                key.data(mask, now)
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL
                for guest in self.guests:
                    guest.tick(now)

    def start(self):
        """Listen, then run the loop in a daemon thread; returns self."""
        self.listen()
        self._thread = threading.Thread(target=self._run_in_thread,
                                        daemon=True, name="guest-farm")
        self._thread.start()
        return self

    def _run_in_thread(self):
        try:
            self.run()
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            self.error = exc
            raise

    def stop(self, timeout=5.0):
        """End :meth:`start`'s loop and :meth:`close` the farm."""
        self.running = False
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self):
        for sock in self.parked:
            sock.close()
        for guest in self.guests:
            guest.close()
            if guest.listener is not None:
                guest.listener.close()
                try:
                    os.unlink(guest.path)
                except OSError:
                    pass
        self.sel.close()

    def report(self):
        return dict(self.stats, guests=len(self.guests), connected=sum(
            1 for g in self.guests if g.sock is not None),
            parked=len(self.parked))


def _raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit("guestfarm: %d file descriptors needed, the hard limit "
                 "is %d (ulimit -Hn)" % (needed, hard))
    # all we may: foreign clients (see Farm.park) take descriptors too
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths-file", required=True,
                        help="the channel socket paths, one a line")
    parser.add_argument("--interval-ms", type=int, default=1000,
                        help="the interval each guest asks for")
    parser.add_argument("--name", default="ghbench",
                        help="the guest daemon name sent in init")
    parser.add_argument("--owner",
                        help="serve only clients whose command line "
                             "contains this (hold others unanswered)")
    args = parser.parse_args(argv)
    with open(args.paths_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    # a listener and a connection per guest, and some to spare
    _raise_fd_limit(2 * len(paths) + 64)

    farm = Farm(paths, args.interval_ms, args.name, owner=args.owner)

    def _stop(signum, frame):
        farm.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    farm.listen()
    print("ready", flush=True)
    try:
        farm.run()
    finally:
        report = farm.report()
        farm.close()
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
