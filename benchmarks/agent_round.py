# SPDX-License-Identifier: Apache-2.0
"""The agent's CPU per heartbeat round, in one process: no libvirt, no
RabbitMQ, no loop.

``--instances`` agent Instances (``guestha.agent.instance``) are brought
to MONITORED against in-process guests (``GuestSession``, the guest
daemon's protocol) over socketpairs.  Then, ``--rounds`` times, each
instance's timer fires (the challenge goes out), its guest answers, and
the instance reads the answer.  Only the instance's two calls are timed
(``time.thread_time``: CPU time, the ``send`` and ``recv`` included), and
the report gives the median over the rounds of the CPU per instance
round: the figure ``benchmarks/agent_scale.py`` cannot show without its
noise, for comparing two trees (the script imports the tree it lies in:
copy it into the other tree and run each copy).

It is the round with warm caches: the agent at 1,000 instances spends
more per round, because each batched wake-up finds its caches cold (see
doc/source/benchmarks.rst).

Usage::

    .venv/bin/python benchmarks/agent_round.py --instances 200 --rounds 60
"""

import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import support  # noqa: E402
from guestha.agent import events as ev  # noqa: E402
from guestha.agent import instance as im  # noqa: E402
from guestha_guest import protocol as p  # noqa: E402
from guestha_guest.protocol.session import GuestSession  # noqa: E402
from guestha_guest.protocol.session import Send  # noqa: E402


class _Env(im.Env):
    """What an Instance asks of the loop, with nothing behind it: a fault,
    a report or a confirmation would be a broken run."""

    host = "compute-bench"

    def __init__(self, now):
        self.now = now
        self.opened = []  # the guest's end of each channel opened

    def schedule(self, instance, when, urgent=False):
        pass  # the benchmark fires each timer itself

    def open_channel(self, path):
        host_end, guest_end = socket.socketpair()
        host_end.setblocking(False)
        guest_end.setblocking(False)
        self.opened.append(guest_end)
        return host_end

    def watch(self, instance, sock):
        pass

    def unwatch(self, sock):
        pass

    def watch_writable(self, instance, sock, writable):
        pass

    def hotplug(self, instance):
        raise AssertionError("no hot-plug here")

    def confirm_running(self, instance, token):
        raise AssertionError("a fault was suspected: the run is broken")

    def report(self, event):
        raise AssertionError("a %s was reported: the run is broken"
                             % event.get("type"))

    def relay(self, method, **kwargs):
        raise AssertionError("nothing is relayed here")

    def faults_changed(self):
        pass

    def wallclock(self):
        return 1.7e9 + self.now


def _guest_answers(sock, session, now):
    # the guest's side, untimed: everything it reads, answered
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        for out in session.receive(data, now):
            if type(out) is Send:
                sock.sendall(out.data)


def _fire(instance, now):
    if instance.wake_at is not None and instance.wake_at <= now:
        instance.wake_at = None
        instance.tick(now)


def monitored(count, interval_ms=1000):
    """``count`` (instance, guest socket, guest session) triples, every
    instance MONITORED, and the env."""
    env = _Env(1000.0)
    policy = im.Policy(min_interval_ms=100)
    rigs = []
    for k in range(count):
        uuid = "5b0e7d9e-3c1a-4b6f-8e2d-%012d" % k
        instance = im.Instance(uuid, env, policy, env.now)
        instance.domain(ev.DomainInfo(uuid, "bench-%d" % k, ev.RUNNING,
                                      "/bench/%d.sock" % k, True, {}),
                        env.now)
        opened = len(env.opened)
        while len(env.opened) == opened:  # the first connect is a timer
            env.now += 0.01
            _fire(instance, env.now)
        guest = GuestSession(p.Init(name="bench", interval_ms=interval_ms),
                             lambda now: (True, None, None))
        sock = env.opened[-1]
        for out in guest.connect(env.now):
            sock.sendall(out.data)
        rigs.append((instance, sock, guest))
    for _ in range(int(2 * interval_ms / 10) + 10):  # sync, register
        env.now += 0.01
        for instance, sock, guest in rigs:
            _guest_answers(sock, guest, env.now)
            instance.readable(env.now)
            _fire(instance, env.now)
            _guest_answers(sock, guest, env.now)
            instance.readable(env.now)
    states = [i.state for i, _, _ in rigs]
    if states.count(im.MONITORED) != count:
        raise RuntimeError("not all MONITORED: %s" % sorted(set(states)))
    return env, rigs


def measure(env, rigs, rounds, interval_ms=1000):
    """Per round, the CPU of the instances' timers and reads (seconds
    each, summed over the instances); checks that every challenge was
    answered."""
    clock = time.thread_time
    answers = sum(i.counters["answers"] for i, _, _ in rigs)
    samples = []
    for _ in range(rounds):
        env.now += interval_ms / 1000.0
        now = env.now
        timers = reads = 0.0
        for instance, sock, guest in rigs:
            t0 = clock()
            instance.wake_at = None
            instance.tick(now)
            t1 = clock()
            _guest_answers(sock, guest, now)
            t2 = clock()
            instance.readable(now)
            t3 = clock()
            timers += t1 - t0
            reads += t3 - t2
        samples.append((timers, reads))
    answered = sum(i.counters["answers"] for i, _, _ in rigs) - answers
    if answered != rounds * len(rigs):
        raise RuntimeError("%d of %d challenges answered"
                           % (answered, rounds * len(rigs)))
    return samples


def close(env, rigs):
    """Close both ends of every channel."""
    for instance, sock, _ in rigs:
        if instance.sock is not None:
            instance.sock.close()
        sock.close()
    for sock in env.opened:
        sock.close()


def main(argv=None):
    parser = support.argument_parser(__doc__)
    parser.add_argument("--instances", type=int, default=200,
                        help="instances (default 200)")
    parser.add_argument("--rounds", type=int, default=60,
                        help="rounds measured (default 60)")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.rounds < 1:
        parser.error("--instances and --rounds must be at least 1")
    support.log("bringing %d instances to MONITORED", args.instances)
    env, rigs = monitored(args.instances)
    support.log("measuring %d rounds", args.rounds)
    samples = measure(env, rigs, args.rounds)
    close(env, rigs)
    n = args.instances
    per_round = [(t + r) / n * 1e6 for t, r in samples]
    timer = statistics.median(t / n * 1e6 for t, _ in samples)
    read = statistics.median(r / n * 1e6 for _, r in samples)
    total = statistics.median(per_round)
    support.print_rows([
        ("instances", "%d, %d rounds" % (n, args.rounds)),
        ("CPU per instance round", "%.1f us (median; %.1f-%.1f)"
         % (total, min(per_round), max(per_round))),
        ("  the timer (challenge out)", "%.1f us" % timer),
        ("  the read (answer in)", "%.1f us" % read),
    ])
    support.print_json({"instances": n, "rounds": args.rounds,
                        "round_us": round(total, 2),
                        "timer_us": round(timer, 2),
                        "read_us": round(read, 2),
                        "machine": support.machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
