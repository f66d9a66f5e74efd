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
def wall():
    """The clock of the ledgers a test makes itself (:func:`path`)."""
    return ManualClock()


@pytest.fixture
def path(tmp_path):
    """Where a test's own ledgers (several controllers on one file) live."""
    return str(tmp_path / "ledger.sqlite")


@pytest.fixture
def ledger_sinks():
    return ("log",)


@pytest.fixture
def ledger(tmp_path, clock, ledger_sinks):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"), "ctl-a",
                    sinks=ledger_sinks, clock=clock)
    ledger.register()
    return ledger
