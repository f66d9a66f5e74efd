# SPDX-License-Identifier: Apache-2.0
"""The ledger keeper after a database outage: the other controllers'
leases look expired when the database is back, although they live; the
keeper takes nothing over until they had a lease's time to renew."""

import pytest

from guestha.server import keeper as keeper_mod
from guestha.server import ledger as ledger_mod
from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock
from tests.unit.server.test_ledger import state


class Deliveries(object):
    def __init__(self):
        self.work = []

    def redispatch(self, work):
        self.work.extend(work)
        return len(work)


def test_no_take_over_for_a_lease_after_the_database_failed(tmp_path):
    wall = ManualClock()
    path = str(tmp_path / "ledger.sqlite")
    mine = Ledger(path, "ctl-a", sinks=("log",), lease=30.0, clock=wall,
                  hostname="host-a")
    peer = Ledger(path, "ctl-b", sinks=("log",), lease=30.0, clock=wall,
                  hostname="host-b")
    mine.register()
    peer.register()
    peer.accept([state()])
    deliveries = Deliveries()
    keeper = keeper_mod.LedgerKeeper(mine, deliveries, 86400, 30.0,
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


def test_after_a_database_failure_pending_actions_go_to_the_worker_again(
        tmp_path):
    from oslo_db import exception as db_exc

    from guestha.server.ledger import ACTIONS
    from tests.unit.server.test_ledger import fault

    wall = ManualClock()
    ledger = Ledger(str(tmp_path / "ledger.sqlite"), "ctl-a",
                    sinks=("log",), clock=wall, hostname="host-a")
    ledger.register()
    f, s = fault(), state()
    ledger.accept([f, s])
    deliveries = Deliveries()
    keeper = keeper_mod.LedgerKeeper(ledger, deliveries, 86400, 30.0,
                                     clock=lambda: wall.now)
    assert keeper.watch_failures(wall.now) is False

    # the worker's read fails while the database restarts: it drops the
    # fault it was deciding on (its thread logs and goes on)
    def away(conn):
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    with pytest.raises(ledger_mod.DB_ERRORS):
        ledger._read(away)
    assert keeper.watch_failures(wall.now) is True
    # the database is back: the fault's action, and only that, again
    assert keeper.resubmit_actions() == 1
    assert deliveries.work == [(f, [ACTIONS])]
    assert keeper.watch_failures(wall.now) is False
