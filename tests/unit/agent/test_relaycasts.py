# SPDX-License-Identifier: Apache-2.0
"""Server-group casts on their own: queued, cast, dropped when too many,
failures counted and logged at most once per interval.  No threads: the
tests call the relay thread's step."""

import logging

import oslo_messaging
import pytest

from guestha.agent import relaycasts
from guestha.agent.relaycasts import RelayCaster
from tests.support.clock import ManualClock
from tests.unit.agent.castrecorder import CastRecorder as FakeAPI


def test_casts_in_order_and_tells_each_one_sent():
    api = FakeAPI()
    sent = []
    relays = RelayCaster(api, on_sent=lambda: sent.append(1))
    relays.cast("agent_alive", instances=["a"])
    relays.cast("query_status", instance="a", members=["b"])

    relays.cast_pending()

    assert api.casts == [("agent_alive", {"instances": ["a"]}),
                         ("query_status", {"instance": "a",
                                           "members": ["b"]})]
    assert relays.sent == 2 and len(sent) == 2


def test_an_unknown_method_is_a_programming_error():
    relays = RelayCaster(FakeAPI())

    with pytest.raises(ValueError, match="not a relay method"):
        relays.cast("report_events", events=[])


def test_a_full_queue_drops_the_oldest():
    api = FakeAPI()
    relays = RelayCaster(api, queue=2)
    for n in range(3):
        relays.cast("relay_broadcast", instance="i%d" % n)

    relays.cast_pending()

    assert [kw["instance"] for _, kw in api.casts] == ["i1", "i2"]
    assert relays.dropped == 1


def test_failures_are_counted_and_logged_once_per_interval(caplog):
    clock = ManualClock(100.0)
    api = FakeAPI()
    api.cast_error = oslo_messaging.MessageDeliveryFailure("broker down")
    sent = []
    relays = RelayCaster(api, log_interval=60.0, clock=clock,
                         on_sent=lambda: sent.append(1))

    with caplog.at_level(logging.WARNING, logger=relaycasts.LOG.name):
        for _ in range(3):
            relays.cast("relay_broadcast", instance="i1")
            relays.cast_pending()
        clock.now += 60.0
        relays.cast("relay_broadcast", instance="i1")
        relays.cast_pending()

    messages = [r.getMessage() for r in caplog.records]
    assert relays.failed == 4 and relays.sent == 0 and not sent
    assert len(messages) == 2
    assert "instance i1: server-group relay_broadcast not sent (0 more" \
        in messages[0]
    assert "(2 more failed since the last such message)" in messages[1]


def test_after_stop_queued_casts_are_not_sent():
    api = FakeAPI()
    relays = RelayCaster(api)
    relays.cast("agent_alive", instances=[])

    relays.signal_stop()
    relays.cast_pending()

    assert api.casts == []
