# SPDX-License-Identifier: Apache-2.0
"""The ledger keeper after a database outage: the other controllers'
leases look expired when the database is back, although they live; the
keeper takes nothing over until they had a lease's time to renew."""

from guestha.server.ledger import Ledger
from guestha.server import service
from tests.unit.server.test_ledger import Clock
from tests.unit.server.test_ledger import state


class Deliveries(object):
    def __init__(self):
        self.work = []

    def redispatch(self, work):
        self.work.extend(work)
        return len(work)


def test_no_take_over_for_a_lease_after_the_database_failed(tmp_path):
    wall = Clock()
    path = str(tmp_path / "ledger.sqlite")
    mine = Ledger(path, "ctl-a", sinks=("log",), lease=30.0, clock=wall,
                  hostname="host-a")
    peer = Ledger(path, "ctl-b", sinks=("log",), lease=30.0, clock=wall,
                  hostname="host-b")
    mine.register()
    peer.register()
    peer.accept([state()])
    deliveries = Deliveries()
    keeper = service.LedgerKeeper(mine, deliveries, 86400, 30.0,
                                  clock=lambda: wall.now)
    # the database was away for longer than the lease: when it is back,
    # ctl-b's heartbeat is old, though ctl-b lives and will renew
    for _ in range(4):  # every upkeep during the outage fails
        keeper.database_failed(wall.now)
        wall.now += 10
    mine.renew()
    assert keeper.take_over(wall.now) == 0
    assert deliveries.work == []
    wall.now += 10
    peer.renew()
    wall.now += 25  # a lease after the failure: ctl-b renewed meanwhile
    assert keeper.take_over(wall.now) == 0
    # ctl-b really dies: its lease runs out, and its work is taken
    wall.now += 31
    mine.renew()
    assert keeper.take_over(wall.now) == 1
