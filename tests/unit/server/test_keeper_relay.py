# SPDX-License-Identifier: Apache-2.0
"""The relay is tried every second, not every third of the lease: when
the relay dies, a state change goes untold at most ``[coordination]
lock_timeout`` + 1 s (issue 11, doc/source/server.rst)."""

import threading

from guestha.server import keeper as keeper_mod
from tests.support.clock import ManualClock


class Coordination(object):
    backend = "fake"

    def __init__(self):
        self.holder = "ctl-dead"
        self.tries = []

    def elect(self):
        self.tries.append(self.holder)
        return self.holder is None, self.holder

    def takeover(self, claim):
        return []


class Ledger(object):
    server_id = "ctl-a"
    failures = 0
    uncertain = 0
    order_lock = threading.Lock()

    def __init__(self):
        self.renewals = 0

    def flush(self):
        return 0

    def take_handed(self):
        return []

    def renew(self):
        self.renewals += 1

    def claim_orphans(self):
        return []

    def prune(self, before):
        return 0


class Deliveries(object):
    def redispatch(self, work):
        return len(work)


def test_the_relay_lock_is_tried_every_second():
    clock = ManualClock(0.0)
    ledger, coordination = Ledger(), Coordination()
    keeper = keeper_mod.LedgerKeeper(ledger, Deliveries(), 86400, 30.0,
                                     clock=clock, coordination=coordination)
    keeper.upkeep(clock())
    assert len(coordination.tries) == 1 and not keeper.is_relay()
    coordination.holder = None   # the relay died, its lock expired
    clock.advance(keeper_mod.RELAY_INTERVAL)
    keeper.upkeep(clock())
    assert keeper.is_relay()
    # tried every second, although the lease is renewed every 10 s
    for _ in range(8):
        clock.advance(keeper_mod.RELAY_INTERVAL)
        keeper.upkeep(clock())
    assert len(coordination.tries) == 10
    assert ledger.renewals == 1
