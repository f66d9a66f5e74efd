# SPDX-License-Identifier: Apache-2.0
"""The controller's RPC endpoint and its delivery plumbing: the answer to
report_events comes from the ledger, new events reach the sinks and the
action worker once, and the sinks' results go back to the ledger."""

import sqlite3

from oslo_config import cfg
import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
import pytest

from guestha import records
from guestha import rpc
from guestha.rpc import api
from guestha.server.deliveries import Deliveries
from guestha.server import endpoint as endpoint_mod
from guestha.server.keeper import LedgerKeeper
from guestha.server import ledger as ledger_mod
from guestha.server.ledger import Ledger
from guestha.sinks import base as sinks_base
from tests.support.clock import ManualClock

INSTANCE = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
HOST = "compute-1"


def fault(action="reboot"):
    return records.make_fault(INSTANCE, HOST, "missed", "no answer", action,
                              1_700_000_000.0, 1000, 1)


def recovery(of):
    return records.make_recovery(INSTANCE, HOST, of["id"], 1_700_000_001.0)


class Recorder(list):
    def __call__(self, event):
        self.append(event)

    def submit(self, event):
        self.append(event)


class FakeGroups(object):
    def __init__(self):
        self.calls = []

    def relay_broadcast(self, *args):
        self.calls.append(("relay_broadcast",) + args)

    def query_status(self, *args):
        self.calls.append(("query_status",) + args)

    def on_agent_alive(self, *args):
        self.calls.append(("agent_alive",) + args)


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"), "ctl-a",
                    sinks=("log",))
    ledger.register()
    return ledger


@pytest.fixture
def parts(ledger):
    # the real way in to the sinks and the action worker, fakes behind it
    dispatched, acted, groups = Recorder(), Recorder(), FakeGroups()
    deliveries = Deliveries(ledger, dispatched, acted)
    endpoint = endpoint_mod.ControllerEndpoint(ledger, deliveries.dispatch,
                                               groups)
    return endpoint, dispatched, acted, groups


def test_report_events_answers_after_storing(parts, ledger):
    endpoint, dispatched, acted, _ = parts
    f = fault()
    r = recovery(f)
    answer = endpoint.report_events({}, HOST, [f, r])
    assert answer == {"accepted": [f["id"], r["id"]], "rejected": {}}
    assert ledger.owner(f["id"]) == "ctl-a"
    assert [e["id"] for e in dispatched] == [f["id"], r["id"]]
    assert [e["id"] for e in acted] == [f["id"]]


def test_resent_events_are_accepted_but_not_handed_on(parts):
    endpoint, dispatched, acted, _ = parts
    events = [fault(), fault()]
    endpoint.report_events({}, HOST, events)
    extra = fault()
    answer = endpoint.report_events({}, HOST, events + [extra])
    assert answer["accepted"] == [e["id"] for e in events + [extra]]
    assert [e["id"] for e in dispatched] == [e["id"]
                                             for e in events + [extra]]
    assert len(acted) == 3


def test_rejected_events(parts):
    endpoint, dispatched, _, _ = parts
    good, bad = fault(), dict(fault(), type="nonsense")
    answer = endpoint.report_events({}, HOST, [good, bad])
    assert answer["accepted"] == [good["id"]]
    assert list(answer["rejected"]) == [bad["id"]]
    assert [e["id"] for e in dispatched] == [good["id"]]


def test_events_not_a_list(parts):
    endpoint, _, _, _ = parts
    assert endpoint.report_events({}, HOST, "junk") == {"accepted": [],
                                                        "rejected": {}}


def test_ledger_failure_is_an_expected_error(parts, ledger):
    endpoint, dispatched, _, _ = parts

    def broken(events):
        raise sqlite3.OperationalError("database is locked")

    ledger.accept = broken
    with pytest.raises(oslo_messaging.ExpectedException) as info:
        endpoint.report_events({}, HOST, [fault()])
    assert isinstance(info.value.exc_info[1],
                      endpoint_mod.LedgerUnavailable)
    assert dispatched == []


def test_casts_go_to_the_groups(parts):
    endpoint, _, _, groups = parts
    endpoint.relay_broadcast({}, HOST, INSTANCE.upper(), "eA==", 3)
    endpoint.relay_broadcast({}, HOST, "not-a-uuid", "eA==", 4)
    endpoint.query_status({}, HOST, INSTANCE, 5)
    endpoint.query_status({}, HOST, None, 6)
    endpoint.agent_alive({}, HOST, [{"instance": INSTANCE}])
    endpoint.agent_alive({}, HOST, "junk")
    assert groups.calls == [
        ("relay_broadcast", HOST, INSTANCE, "eA==", 3),
        ("query_status", HOST, INSTANCE, 5),
        ("agent_alive", HOST, [{"instance": INSTANCE}])]


# -- through oslo.messaging (fake driver, one process) ------------------------

def test_report_events_through_the_rpc_api(parts):
    endpoint, dispatched, _, _ = parts
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url="fake://")
    server = oslo_messaging.get_rpc_server(
        transport, rpc.controller_server_target("ctl-a"), [endpoint],
        access_policy=rpc_dispatcher.DefaultRPCAccessPolicy)
    server.start()
    try:
        client = api.ControllerAPI(transport, HOST, timeout=10)
        f = fault()
        answer = client.report_events([f])
        assert answer == {"accepted": [f["id"]], "rejected": {}}
        assert client.report_events([f]) == answer
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
    assert [e["id"] for e in dispatched] == [f["id"]]


# -- deliveries: the sink dispatcher's results go to the ledger ---------------

class ListSink(sinks_base.FaultSink):
    def __init__(self, name, fail=False):
        self.name = name
        self.fail = fail
        self.got = []

    def send(self, event):
        if self.fail:
            raise sinks_base.SinkRejected(sink=self.name, reason="no")
        self.got.append(event["id"])


def test_deliveries_mark_the_ledger(tmp_path):
    good, bad = ListSink("good"), ListSink("bad", fail=True)
    ledger = Ledger(str(tmp_path / "l.sqlite"), "ctl-a",
                    sinks=("good", "bad"))
    ledger.register()
    acted = Recorder()
    deliveries = Deliveries(ledger, None, acted)
    dispatcher = sinks_base.SinkDispatcher(
        [good, bad], clock=ManualClock(100.0), on_result=deliveries.on_result)
    deliveries.dispatcher = dispatcher
    f = fault()
    ledger.accept([f])
    deliveries.dispatch(f)
    assert [e["id"] for e in acted] == [f["id"]]  # a new fault, once
    del acted[:]
    dispatcher.step("good")
    dispatcher.step("bad")
    ledger.flush()
    assert good.got == [f["id"]]
    assert ledger.counts() == {"done": 1, "dropped": 1, "pending": 1}
    # what is still pending (the action) is dispatched again to it alone
    work = ledger.pending()
    assert [t for _, t in work] == [[ledger_mod.ACTIONS]]
    deliveries.redispatch(work)
    assert [e["id"] for e in acted] == [f["id"]]
    assert good.got == [f["id"]]


def test_action_records_are_stored_once_and_sent(tmp_path):
    sink = ListSink("good")
    ledger = Ledger(str(tmp_path / "l.sqlite"), "ctl-a", sinks=("good",))
    ledger.register()
    deliveries = Deliveries(ledger, None, None)
    dispatcher = sinks_base.SinkDispatcher(
        [sink], clock=ManualClock(100.0), on_result=deliveries.on_result)
    deliveries.dispatcher = dispatcher
    record = {"type": "action", "id": "5d0c6a40-0000-4000-8000-00000000000a",
              "instance": INSTANCE, "host": HOST}
    deliveries.report_action(record)
    deliveries.report_action(record)
    while dispatcher.step("good") is not None:
        pass
    assert sink.got == [record["id"]]


# -- the ledger keeper -------------------------------------------------------

def test_keeper_relay_is_the_smallest_live_server(tmp_path):
    path = str(tmp_path / "l.sqlite")
    a = Ledger(path, "ctl-a")
    b = Ledger(path, "ctl-b")
    b.register()
    keeper_b = LedgerKeeper(b, None, 86400, 30)
    keeper_b.update_relay()
    assert keeper_b.is_relay()
    a.register()
    keeper_b.update_relay()
    assert not keeper_b.is_relay()
    a.unregister()
    keeper_b.update_relay()
    assert keeper_b.is_relay()


def test_keeper_thread_flushes_and_takes_over(tmp_path):
    import threading

    path = str(tmp_path / "l.sqlite")
    dead = Ledger(path, "ctl-a", sinks=("log",))
    dead.register()
    orphan = fault(action=None)
    dead.accept([orphan])
    dead.unregister()
    live = Ledger(path, "ctl-b", sinks=("log",))
    live.register()
    # another instance: one of the orphan's would follow it (handed over)
    mine = records.make_fault("2a6e1c44-93d1-4b0e-a0a8-5f7c2d9e1b30",
                              "compute-1", "missed", "no answer", None,
                              1_700_000_000.0, 1000, 1)
    live.accept([mine])
    live.mark_later(mine["id"], "log", ledger_mod.DONE)
    redispatched = Recorder()
    done = threading.Event()

    def dispatch(event, targets=None):
        redispatched.append((event["id"], targets))
        done.set()
    deliveries = Deliveries(live, None, None)
    deliveries.dispatch = dispatch
    keeper = LedgerKeeper(live, deliveries, 86400, lease=3.0)
    keeper.start()
    try:
        # the timeout only ends a test that would hang: nothing is timed
        assert done.wait(30)
    finally:
        keeper.stop()
    assert [(i, sorted(t)) for i, t in redispatched] == [
        (orphan["id"], [ledger_mod.ACTIONS, "log"])]
    assert live.owner(orphan["id"]) == "ctl-b"
    assert live.counts() == {"done": 1, "pending": 3}
