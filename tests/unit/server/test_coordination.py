# SPDX-License-Identifier: Apache-2.0
"""The relay of Nova's state changes: one holder of the tooz lock among
the controllers (tooz's file driver stands for Redis or MySQL here), and
the lease-based relay without a backend."""

from guestha.server import coordination
from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock


def relays(tmp_path, *names):
    url = "file://%s" % (tmp_path / "tooz")
    made = [coordination.ToozRelay(url, name, lock_timeout=5)
            for name in names]
    for relay in made:
        relay.start()
    return made


def test_one_controller_holds_the_relay_lock(tmp_path):
    a, b, c = relays(tmp_path, "ctl-a", "ctl-b", "ctl-c")
    try:
        assert [r.elect()[0] for r in (a, b, c)] == [True, False, False]
        # again: the holder keeps it, the others still do not get it
        assert [r.elect()[0] for r in (b, a, c)] == [False, True, False]
        # the holder goes: the next to try takes it
        a.stop()
        assert b.elect() == (True, "ctl-b")
        assert c.elect()[0] is False
    finally:
        for relay in (b, c):
            relay.stop()


def test_take_over_runs_in_one_controller_at_a_time(tmp_path):
    a, b = relays(tmp_path, "ctl-a", "ctl-b")
    try:
        inner = []

        def claim_in_b():
            # while a claims, b finds the take-over lock held: skips
            inner.append(b.takeover(lambda: ["b-work"]))
            return ["a-work"]

        assert a.takeover(claim_in_b) == ["a-work"]
        assert inner == [[]]
        assert b.takeover(lambda: ["b-work"]) == ["b-work"]
    finally:
        a.stop()
        b.stop()


def test_without_a_backend_the_smallest_live_server_id_relays(tmp_path):
    clock = ManualClock()
    path = str(tmp_path / "ledger.sqlite")
    ledgers = [Ledger(path, name, clock=clock, hostname="host-%s" % name)
               for name in ("ctl-b", "ctl-a")]
    for ledger in ledgers:
        ledger.register()
    b, a = (coordination.LeaseRelay(ledger) for ledger in ledgers)
    assert a.elect() == (True, "ctl-a")
    assert b.elect() == (False, "ctl-a")
    ledgers[1].unregister()
    assert b.elect() == (True, "ctl-b")


class UnreachableLock(object):
    def acquire(self, blocking=True):
        from tooz import coordination as tooz_coordination
        raise tooz_coordination.ToozConnectionError("redis: refused")


class UnreachableCoordinator(object):
    def start(self, start_heart=False):
        pass

    def get_lock(self, name):
        return UnreachableLock()

    def stop(self):
        pass


def test_a_controller_that_cannot_reach_the_backend_does_not_relay():
    relay = coordination.ToozRelay("redis://nowhere", "ctl-a",
                                   coordinator=UnreachableCoordinator())
    relay.start()
    assert relay.elect() == (False, "another")
    # the database still decides who takes what: the claim goes on
    assert relay.takeover(lambda: ["work"]) == ["work"]
