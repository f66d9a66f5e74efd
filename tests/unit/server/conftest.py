# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the controller's unit tests: a hand-moved clock and a
SQLite ledger on it.  A module changes the ledger's sinks by defining its
own ``ledger_sinks`` fixture."""

import pytest

from guestha.server.ledger import Ledger
from tests.support.clock import ManualClock


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def ledger_sinks():
    return ("log",)


@pytest.fixture
def ledger(tmp_path, clock, ledger_sinks):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"), "ctl-a",
                    sinks=ledger_sinks, clock=clock)
    ledger.register()
    return ledger
