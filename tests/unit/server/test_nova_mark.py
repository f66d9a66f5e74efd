# SPDX-License-Identifier: Apache-2.0
"""``[actions] nova_mark = error``: a fault the controller only logs sets
the instance's Nova state to ERROR for the VNF manager, capped like a
recovery (issue 12)."""

import pytest

from guestha import records
from guestha.server import actions
from guestha.testing.fake_nova import FakeNova
from guestha.testing.fake_nova import nova_conf

INSTANCE = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
HOST = "compute-1"


@pytest.fixture
def fake_nova():
    with FakeNova() as fake:
        yield fake


def fault(action="reboot", kind="missed"):
    return records.make_fault(INSTANCE, HOST, kind, "no answer", action,
                              1_700_000_000.0, 1000, 3)


def worker_for(fake_nova, ledger, clock, **kw):
    reports = []
    kw.setdefault("allowed_max", "log")
    kw.setdefault("nova_mark", "error")
    worker = actions.ActionWorker(
        actions.NovaActions.from_conf(nova_conf(fake_nova)), ledger,
        reports.append, "ctl-a", clock=clock, **kw)
    return worker, reports


def act(worker, ledger, clock, event):
    ledger.accept([event])
    worker.submit(event)
    worker.run_once(clock.now)


def outcomes(reports):
    return [(r["action"], r["outcome"]) for r in reports]


def test_a_logged_fault_sets_the_nova_state_to_error(fake_nova, ledger,
                                                     clock):
    fake_nova.add_server(INSTANCE)
    worker, reports = worker_for(fake_nova, ledger, clock)
    act(worker, ledger, clock, fault())
    assert fake_nova.actions == [(INSTANCE, "os-resetState",
                                  {"state": "error"})]
    assert fake_nova.servers[INSTANCE]["status"] == "ERROR"
    assert outcomes(reports) == [("log", "logged"),
                                 ("nova-mark-error", "applied")]
    assert reports[1]["fault_id"] == reports[0]["fault_id"]


def test_off_by_default(fake_nova, ledger, clock):
    fake_nova.add_server(INSTANCE)
    worker, reports = worker_for(fake_nova, ledger, clock,
                                 nova_mark="none")
    act(worker, ledger, clock, fault())
    assert fake_nova.actions == []
    assert outcomes(reports) == [("log", "logged")]


def test_not_when_the_controller_recovers_it_itself(fake_nova, ledger,
                                                    clock):
    fake_nova.add_server(INSTANCE)
    worker, reports = worker_for(fake_nova, ledger, clock,
                                 allowed_max="reboot")
    act(worker, ledger, clock, fault())
    assert [a for _i, a, _args in fake_nova.actions] == ["reboot"]


def test_not_when_the_guest_asks_for_nothing(fake_nova, ledger, clock):
    fake_nova.add_server(INSTANCE)
    worker, reports = worker_for(fake_nova, ledger, clock)
    act(worker, ledger, clock, fault(action="none"))
    assert fake_nova.actions == [] and reports == []


def test_capped_with_the_recoveries(fake_nova, ledger, clock):
    fake_nova.add_server(INSTANCE)
    worker, reports = worker_for(fake_nova, ledger, clock, max_actions=1,
                                 window=600)
    first = fault()
    act(worker, ledger, clock, first)
    worker.submit(first)            # the same fault again: marked once
    worker.run_once(clock.now)
    clock.now += 10
    act(worker, ledger, clock, fault())
    assert len(fake_nova.actions) == 1
    assert outcomes(reports)[2:] == [
        ("log", "logged"), ("nova-mark-error", "skipped: already acted"),
        ("log", "logged"), ("nova-mark-error", "refused: cap")]


def test_nova_refusing_is_a_failed_record(fake_nova, ledger, clock):
    # Nova does not know the instance: 404
    worker, reports = worker_for(fake_nova, ledger, clock)
    act(worker, ledger, clock, fault())
    assert outcomes(reports)[-1] == ("nova-mark-error", "failed")
    assert "reset-state error" in reports[-1]["reason"]
