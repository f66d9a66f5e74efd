# SPDX-License-Identifier: Apache-2.0
"""The least CPU a compute agent written in Python can spend on the
heartbeat rounds on this machine: the yardstick for
``benchmarks/agent_scale.py``'s figure.

    .venv/bin/python benchmarks/agent_floor.py --instances 1000

The agent's target (under 5% of one core at 1,000 instances, 1 s
interval) is a figure of the machine as much as of the agent: the agent
ran 4.8% of a core on one benchmark machine and 12-15% on another.
This benchmark measures, on the machine at hand, a loop that does only
what no agent can skip, so that the agent's figure can be read against it.

1. A guest farm (``python -m guestha_guest.testing.guestfarm``, as
   ``agent_scale.py`` uses: the real guest-side protocol, answering every
   challenge at once) listens on ``--instances`` sockets.
2. Each channel is connected, synchronised and registered with the
   protocol's real host session (``HostSession``), at the farm's
   interval.
3. Then, for ``--duration`` seconds, the *floor loop* takes the channels
   over, with the agent's batching (one ``epoll`` wait, then
   ``--batch-ms`` for more to gather; default 4% of the interval, the
   agent's ``BATCH_SHARE``):

   * per challenge: a heap pop, a 128-bit token (one ``getrandom``), the
     line from a template, one ``send``, and its deadline pushed on a
     second heap;
   * per answer: one ``recv``, the JSON scan, the echo compared with the
     challenge, and the next challenge pushed one interval after this one
     was due.

   Nothing else: no rate limits, no validation beyond the echo, no
   partial lines, no fault tracking, no status, no other thread.  It
   trusts the guest, so it is not a design to follow: it is what the
   system calls, the JSON scan and the heaps cost by themselves.

It prints its loop's CPU (``time.thread_time`` over the measured
seconds, as % of one core), the answers a second and the missed
challenges (a missed one makes the run invalid: exit status 2), as a table
and then one line of JSON.  ``agent_scale.py``'s "I/O loop thread"
figure divided by this one is what the agent's design costs on top of
the floor, on any machine.  Run it alone: it measures CPU.
"""

import heapq
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import support  # noqa: E402
from guestha.agent import loop as agent_loop  # noqa: E402
from guestha.testing import processes as procs  # noqa: E402
from guestha.testing.wait import wait_until  # noqa: E402
from guestha_guest.protocol import heartbeat as hb  # noqa: E402
from guestha_guest.protocol.session import HostSession  # noqa: E402
from guestha_guest.protocol.session import Send  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The challenge line, as the protocol's encoder writes it (the test
#: compares them).
CHALLENGE = ('{"v":1,"app":"heartbeat","type":"challenge","seq":%d,'
             '"challenge":"%s","deadline_ms":%d}\n')


class Channel(object):
    """One registered channel, as the floor loop keeps it."""

    __slots__ = ("sock", "seq", "due", "outstanding", "deadline")

    def __init__(self, sock, session):
        beat = session.heartbeat
        self.sock = sock
        self.seq = session.conn._seq  # the next sequence number to send
        challenge = beat._outstanding
        if challenge is None:  # IDLE: the next challenge's time
            self.due, self.outstanding, self.deadline = beat._timer, None, None
        else:  # CHALLENGED: (seq, token) of the challenge out, its deadline
            self.due = beat._cadence_from
            self.outstanding = (challenge.seq, challenge.challenge)
            self.deadline = beat._timer


def register(paths, timeout=60.0, clock=time.monotonic):
    """Connect to every path and bring it to a registered heartbeat with
    the real host session; returns the :class:`Channel` list."""
    rng = random.SystemRandom()
    poller = select.epoll()
    sessions = {}
    try:
        for k, path in enumerate(paths):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.setblocking(False)
            session = HostSession(
                instance="5b0e7d9e-3c1a-4b6f-8e2d-%012d" % k,
                min_interval_ms=1, rng=rng)
            _write(sock, session.connect(clock(), heartbeat=True))
            poller.register(sock.fileno(), select.EPOLLIN)
            sessions[sock.fileno()] = (sock, session)

        def registered():
            for fd, _mask in poller.poll(0.01):
                sock, session = sessions[fd]
                _write(sock, session.receive(sock.recv(65536), clock()))
            now = clock()
            for sock, session in sessions.values():
                _write(sock, session.tick(now))
            return all(s.heartbeat.state in (hb.IDLE, hb.CHALLENGED)
                       for _, s in sessions.values())

        wait_until(registered, timeout=timeout, interval=0,
                   what="every channel registered")
    finally:
        poller.close()
    return [Channel(sock, session) for sock, session in sessions.values()]


def _write(sock, outputs):
    for out in outputs:
        if type(out) is Send:
            sock.sendall(out.data)


def run_floor(channels, duration, interval, batch, clock=time.monotonic):
    """The floor loop over ``channels`` for ``duration`` seconds; returns
    ``(cpu_seconds, wall_seconds, answers, missed)``."""
    poller = select.epoll()
    by_fd = {}
    for ch in channels:
        poller.register(ch.sock.fileno(), select.EPOLLIN)
        by_fd[ch.sock.fileno()] = ch
    timers = [(ch.due, k, ch) for k, ch in enumerate(channels)
              if ch.outstanding is None]
    deadlines = [(ch.deadline, k, ch, ch.outstanding[0])
                 for k, ch in enumerate(channels)
                 if ch.outstanding is not None]
    heapq.heapify(timers)
    heapq.heapify(deadlines)
    n = len(channels)
    scan = json.JSONDecoder().scan_once
    deadline_ms = int(round(interval * 1000))
    heappush, heappop, urandom = heapq.heappush, heapq.heappop, os.urandom
    answers = missed = 0
    busy_since = None
    cpu0, start = time.thread_time(), clock()
    stop = start + duration
    try:
        while True:
            now = clock()
            if now >= stop:
                break
            # the agent's batching: after a wake-up that found work, let
            # more gather (not past a deadline), then one look
            if busy_since is not None:
                wake = busy_since + batch
                if deadlines and deadlines[0][0] < wake:
                    wake = deadlines[0][0]
                if wake > now:
                    time.sleep(wake - now)
                wait = 0.0
            else:
                first = min(timers[0][0], stop) if timers else stop
                if deadlines and deadlines[0][0] < first:
                    first = deadlines[0][0]
                wait = max(0.0, first - now)
            ready = poller.poll(wait)
            now = clock()
            busy_since = now if ready or (
                timers and timers[0][0] <= now) else None
            for fd, _mask in ready:
                ch = by_fd[fd]
                data = ch.sock.recv(16384)
                out = ch.outstanding
                try:
                    obj = scan(data.decode(), 0)[0]
                except (ValueError, StopIteration, UnicodeDecodeError):
                    continue
                if (out is not None and type(obj) is dict
                        and obj.get("ref") == out[0]
                        and obj.get("challenge") == out[1]):
                    ch.outstanding = None
                    answers += 1
                    ch.due += interval
                    heappush(timers, (ch.due, n, ch))
                    n += 1
            while timers and timers[0][0] <= now:
                due, _n, ch = heappop(timers)
                token = urandom(16).hex()
                seq = ch.seq
                ch.seq = (seq + 1) & 0xFFFFFFFF
                ch.sock.send((CHALLENGE % (seq, token, deadline_ms)
                              ).encode())
                ch.outstanding = (seq, token)
                heappush(deadlines, (clock() + interval, n, ch, seq))
                n += 1
            while deadlines and deadlines[0][0] <= now:
                when, _n, ch, seq = heappop(deadlines)
                out = ch.outstanding
                if out is not None and out[0] == seq:  # not answered
                    missed += 1
                    ch.outstanding = None
                    ch.due += interval
                    heappush(timers, (ch.due, n, ch))
                    n += 1
    finally:
        poller.close()
    return time.thread_time() - cpu0, clock() - start, answers, missed


def start_farm(paths_file, interval_ms, log):
    """The guest farm process, listening."""
    farm = procs.spawn([sys.executable, "-m",
                        "guestha_guest.testing.guestfarm",
                        "--paths-file", paths_file,
                        "--interval-ms", str(interval_ms)],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    line = farm.stdout.readline()
    if line.strip() != b"ready":
        procs.kill(farm)
        raise RuntimeError("the guest farm did not start (see %s)"
                           % log.name)
    return farm


def main(argv=None):
    parser = support.argument_parser(__doc__)
    parser.add_argument("--instances", type=int, default=1000,
                        help="channels (default 1000)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds measured (default 60)")
    parser.add_argument("--interval-ms", type=int, default=1000,
                        help="the interval the guests ask for "
                             "(default 1000)")
    parser.add_argument("--batch-ms", type=float, default=None,
                        help="the batching delay (default %g%% of the "
                             "interval, as the agent)"
                        % (agent_loop.BATCH_SHARE * 100))
    args = parser.parse_args(argv)
    if args.instances < 1 or args.duration <= 0 or args.interval_ms < 1:
        parser.error("--instances, --duration and --interval-ms must be "
                     "positive")
    interval = args.interval_ms / 1000.0
    batch = (interval * agent_loop.BATCH_SHARE if args.batch_ms is None
             else args.batch_ms / 1000.0)
    if batch < 0:
        parser.error("--batch-ms must not be negative")
    with tempfile.TemporaryDirectory(prefix="ghfloor-") as tmp:
        paths = [os.path.join(tmp, "c%d.sock" % k)
                 for k in range(args.instances)]
        paths_file = os.path.join(tmp, "paths")
        with open(paths_file, "w") as f:
            f.write("\n".join(paths) + "\n")
        with open(os.path.join(tmp, "farm.log"), "w") as log:
            farm = start_farm(paths_file, args.interval_ms, log)
            try:
                support.log("registering %d channels", args.instances)
                channels = register(paths)
                support.log("measuring for %g s", args.duration)
                cpu, wall, answers, missed = run_floor(
                    channels, args.duration, interval, batch)
                for ch in channels:
                    ch.sock.close()
            finally:
                procs.stop(farm)
    pct = 100.0 * cpu / wall
    support.print_rows([
        ("instances", "%d (interval %d ms, batch %.0f ms)"
         % (args.instances, args.interval_ms, batch * 1000)),
        ("measured for", "%.1f s" % wall),
        ("answers/s", "%.1f (expected %.1f)"
         % (answers / wall, args.instances / interval)),
        ("missed challenges", "%d" % missed),
        ("floor loop CPU", "%.2f %% of one core" % pct),
    ])
    support.print_json({"instances": args.instances,
                        "interval_ms": args.interval_ms,
                        "batch_ms": round(batch * 1000, 1),
                        "duration_s": round(wall, 1),
                        "answers_per_s": round(answers / wall, 1),
                        "missed": missed,
                        "floor_cpu_pct": round(pct, 2),
                        "machine": support.machine()})
    return 0 if missed == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
