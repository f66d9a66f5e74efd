# SPDX-License-Identifier: Apache-2.0
"""The per-instance cap of ``[actions]`` holds every path to a recovery:
the action worker's reboots and stops and the Masakari sink's
notifications count in one window (issue 8, the Masakari point)."""

import json
import sqlite3

import pytest

from guestha import records
from guestha.server import actions
from guestha.sinks import base
from guestha.sinks import log as log_sink
from guestha.sinks import masakari as masakari_sink
from tests.unit.server.test_actions import act
from tests.unit.server.test_actions import FakeNovaActions
from tests.unit.server.test_actions import HOST
from tests.unit.server.test_actions import INSTANCE
from tests.unit.server.test_actions import OTHER
from tests.unit.server.test_actions import worker_for


class FakeResponse(object):
    def __init__(self, status=201):
        self.status_code = status
        self.text = ""

    def json(self):
        return {"notification": {"notification_uuid": "n-1"}}


class FakeAdapter(object):
    """What the sink uses of a keystoneauth Adapter."""

    def __init__(self):
        self.posts = []
        self.status = 201

    def post(self, path, json=None, raise_exc=True):
        self.posts.append(json)
        return FakeResponse(self.status)


def unhealthy(instance=INSTANCE, n=0):
    # what a guest gets by answering unhealthy: its own doing
    return records.make_fault(instance, HOST, "unhealthy", "bad %d" % n,
                              "reboot", 1_700_000_000.0 + n, 1000, 0)


@pytest.fixture
def ledger_sinks():
    return ("masakari",)


def masakari_with_cap(ledger, max_actions=3, window=3600):
    sink = masakari_sink.MasakariSink(FakeAdapter(),
                                      ["missed", "unhealthy"])
    sink.name = "masakari"
    base.bind_recovery_cap([sink], actions.ActionCap(ledger, max_actions,
                                                     window))
    return sink


def test_only_sinks_that_lead_to_a_recovery_get_the_cap(ledger):
    cap = actions.ActionCap(ledger, 3, 3600)
    m = masakari_sink.MasakariSink(FakeAdapter(), ["missed"])
    lg = log_sink.LogSink.__new__(log_sink.LogSink)
    base.bind_recovery_cap([m, lg], cap)
    assert m.recovery_cap is cap and lg.recovery_cap is None


def test_masakari_sends_at_most_the_cap_per_window(ledger, clock):
    sink = masakari_with_cap(ledger, max_actions=3, window=3600)
    sent = []
    for n in range(40):  # a guest answering unhealthy again and again
        before = len(sink._adapter.posts)
        sink.send(unhealthy(n=n))
        if len(sink._adapter.posts) > before:
            sent.append(clock.now)
        clock.now += 180  # Masakari's own duplicate window, passed
    # 40 faults in two hours: no window of an hour holds more than three
    for t in sent:
        assert len([s for s in sent if t - 3600 < s <= t]) <= 3
    assert 3 <= len(sent) <= 9 and sink.capped == 40 - len(sent)
    # another instance has its own count
    sink.send(unhealthy(OTHER))
    assert len(sink._adapter.posts) == len(sent) + 1


def test_a_retried_notification_takes_no_second_slot(ledger):
    sink = masakari_with_cap(ledger, max_actions=1)
    event = unhealthy()
    sink._adapter.status = 503
    with pytest.raises(base.SinkUnavailable):
        sink.send(event)
    sink._adapter.status = 201
    sink.send(event)  # the same fault again: not capped
    assert len(sink._adapter.posts) == 2 and sink.capped == 0
    sink.send(unhealthy(n=1))
    assert len(sink._adapter.posts) == 2 and sink.capped == 1


def test_masakari_and_the_action_worker_share_one_cap(ledger, clock):
    nova = FakeNovaActions()
    worker, reports = worker_for(nova, ledger, clock, max_actions=3,
                                 window=3600)
    sink = masakari_with_cap(ledger, max_actions=3, window=3600)
    sink.recovery_cap = worker.cap
    first, second = unhealthy(n=0), unhealthy(n=1)
    sink.send(first)
    sink.send(second)
    act(worker, ledger, clock, first)  # the worker's reboot: the third
    assert nova.calls == [(INSTANCE, "soft")]
    act(worker, ledger, clock, second)
    assert reports.outcomes()[-1][2] == actions.REFUSED_CAP
    sink.send(unhealthy(n=2))
    assert len(sink._adapter.posts) == 2 and sink.capped == 1


def test_a_ledger_error_means_try_again(ledger):
    sink = masakari_with_cap(ledger)

    class Broken(object):
        window = max_actions = 1

        def take(self, *args, **kwargs):
            raise sqlite3.OperationalError("database is locked")
    sink.recovery_cap = Broken()
    with pytest.raises(base.SinkUnavailable):
        sink.send(unhealthy())
    assert sink._adapter.posts == []


def test_without_a_controller_the_sink_is_not_capped():
    sink = masakari_sink.MasakariSink(FakeAdapter(), ["unhealthy"])
    for n in range(5):
        sink.send(unhealthy(n=n))
    assert len(sink._adapter.posts) == 5
    assert json.dumps(sink._adapter.posts[0])  # a plain body
