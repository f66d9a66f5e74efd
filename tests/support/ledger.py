# SPDX-License-Identifier: Apache-2.0
"""A real ledger filled the way a controller fills it: events accepted as
from the agents, then the controller's action records, through
:class:`~guestha.server.ledger.Ledger`'s own API, for the tests of what
reads a ledger (the REST API, the CLI)."""

from guestha.server import actions as actions_mod
from guestha.server.ledger import Ledger


def fill_ledger(connection, events, actions=(), server_id="ctl-a",
                now=1_800_000_000.0, accepted_at=None):
    """Accept ``events`` into the ledger at ``connection`` (a path or a
    database URL), then record ``actions``.

    :param actions: keyword arguments of
        :func:`guestha.server.actions.action_record` without ``server``
        (``fault``, ``action``, ``outcome``, ``reason``, ``at``, ...),
        each recorded at its ``at``.
    :param now: the ledger's clock; ``accepted_at``, the time of the
        acceptance (``now`` unless given).
    :raises AssertionError: if the ledger rejects an event.
    """
    ledger = Ledger(connection, server_id, sinks=("log",),
                    clock=lambda: now)
    try:
        ledger.register()
        result = ledger.accept(
            events, now=now if accepted_at is None else accepted_at)
        assert not result.rejected, result.rejected
        for spec in actions:
            ledger.record(actions_mod.action_record(server=server_id, **spec),
                          now=spec["at"])
    finally:
        ledger.close()
