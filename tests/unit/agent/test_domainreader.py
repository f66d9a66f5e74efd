# SPDX-License-Identifier: Apache-2.0
"""What the watcher posts of the domains, on its own: after each kind of
event, at a reconcile and for a state query, with the races libvirt
allows (a domain gone or stopped by the time it is read) and a connection
lost midway; on a fake libvirt connection and a manual clock."""

import random

import libvirt
import pytest

from guestha.agent.domainreader import DomainReader
from guestha.agent import events as ev
from tests.support.clock import ManualClock
from tests.unit.agent import libvirtfakes
from tests.unit.agent.libvirtfakes import FakeConn
from tests.unit.agent.libvirtfakes import FakeDomain

A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "aaaaaaaa-0000-4000-8000-000000000002"
C = "aaaaaaaa-0000-4000-8000-000000000003"


def reader_for(*domains, **kwargs):
    posted = []
    conn = FakeConn(*domains)
    link = libvirtfakes.link_to(conn, posted.append)
    reader = DomainReader(link, posted.append, clock=ManualClock(50.0),
                          **kwargs)
    return reader, conn, posted, link


def lifecycle(reader, conn, dom, event, detail=0):
    callback = dict((e, cb) for e, cb, _ in reader.callbacks())[
        libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE]
    callback(conn, dom, event, detail, None)


def test_an_event_posts_the_domain_as_it_is_now():
    dom = FakeDomain(A)
    reader, conn, posted, link = reader_for(dom)

    lifecycle(reader, conn, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED)
    assert posted == []            # noted only
    reader.handle_pending()

    [update] = posted
    assert isinstance(update, ev.DomainUpdate) and update.at == 50.0
    assert update.info.uuid == A and update.info.state == ev.RUNNING
    assert update.info.channel_path is not None


def test_a_stop_is_gone_even_if_the_domain_runs_again():
    dom = FakeDomain(A)           # running again by the time it is read
    reader, conn, posted, link = reader_for(dom)

    lifecycle(reader, conn, dom, libvirt.VIR_DOMAIN_EVENT_STOPPED)
    reader.handle_pending()

    assert [type(r) for r in posted] == [ev.DomainGone]


def test_a_start_read_after_the_domain_stopped_again_is_gone():
    dom = FakeDomain(A, state=libvirt.VIR_DOMAIN_SHUTOFF)
    reader, conn, posted, link = reader_for(dom)

    lifecycle(reader, conn, dom, libvirt.VIR_DOMAIN_EVENT_STARTED)
    reader.handle_pending()

    assert [type(r) for r in posted] == [ev.DomainGone]


def test_a_device_event_of_a_domain_gone_posts_nothing():
    dom = FakeDomain(A)
    dom.fail["state"] = libvirtfakes.gone()
    reader, conn, posted, link = reader_for(dom)
    callbacks = dict((e, cb) for e, cb, _ in reader.callbacks())

    callbacks[libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED](
        conn, dom, "channel1", None)
    reader.handle_pending()

    assert posted == []


def test_pending_events_stop_at_a_lost_connection_and_are_forgotten():
    doms = [FakeDomain(A), FakeDomain(B)]
    doms[0].fail["state"] = libvirtfakes.broken()
    reader, conn, posted, link = reader_for(*doms)
    for dom in doms:
        lifecycle(reader, conn, dom, libvirt.VIR_DOMAIN_EVENT_RESUMED)

    reader.handle_pending()

    assert posted == []            # B not read on a lost connection
    lifecycle(reader, conn, doms[1], libvirt.VIR_DOMAIN_EVENT_RESUMED)
    reader.forget_pending()
    link.lost = None
    reader.handle_pending()
    assert posted == []


def test_reconcile_posts_each_active_domain_then_the_list():
    doms = [FakeDomain(A), FakeDomain(B), FakeDomain(C)]
    doms[1].fail["state"] = libvirtfakes.gone()   # gone since the listing
    doms[2].fail["XMLDesc"] = libvirtfakes.error(
        libvirt.VIR_ERR_OPERATION_FAILED)         # active but unreadable
    reader, _, posted, link = reader_for(
        *doms, reconcile_interval=60.0, rng=random.Random(1))

    reader.reconcile(after_connect=True)

    assert [(type(r), getattr(r, "event", None)) for r in posted] == [
        (ev.DomainUpdate, "reconcile"), (ev.Reconciled, None)]
    assert posted[0].info.uuid == A
    assert posted[1].uuids == frozenset({A, C})
    assert reader.last_reconcile[0] == 2
    assert 50.0 + 54.0 <= reader.next_reconcile <= 50.0 + 66.0
    assert not reader.reconcile_due(reader.next_reconcile - 0.001)
    assert reader.reconcile_due(reader.next_reconcile)


def test_a_reconcile_parses_again_only_what_changed(monkeypatch):
    from guestha.agent import domainreader
    parsed = []
    real_parse = domainreader.parse

    def counting_parse(uuid, xml, state, reason):
        parsed.append(uuid)
        return real_parse(uuid, xml, state, reason)
    monkeypatch.setattr(domainreader, "parse", counting_parse)
    doms = [FakeDomain(A), FakeDomain(B)]
    reader, conn, posted, link = reader_for(*doms)

    reader.reconcile(after_connect=True)
    first = {r.info.uuid: r.info for r in posted[:2]}
    assert sorted(parsed) == [A, B]
    del posted[:]
    doms[1].devices = libvirtfakes.CONTROLLER  # B's channel was removed
    reader.reconcile(after_connect=False)

    assert sorted(parsed) == [A, B, B]  # A's XML and state are the same
    again = {r.info.uuid: r.info for r in posted[:2]}
    assert again[A] is first[A]
    assert again[B].channel_path is None
    assert first[B].channel_path is not None


def test_a_reconcile_cut_by_a_lost_connection_posts_no_list():
    doms = [FakeDomain(A), FakeDomain(B)]
    doms[1].fail["state"] = libvirtfakes.broken()
    reader, _, posted, link = reader_for(*doms)

    reader.reconcile(after_connect=False)

    # a partial list would make the loop drop instances
    assert not any(isinstance(r, ev.Reconciled) for r in posted)
    assert not link.usable


@pytest.mark.parametrize("state, expected", [
    (libvirt.VIR_DOMAIN_RUNNING, ev.RUNNING),
    (libvirt.VIR_DOMAIN_PAUSED, ev.PAUSED),
])
def test_a_state_query_is_answered_with_its_token(state, expected):
    reader, _, posted, link = reader_for(FakeDomain(A, state=state))

    reader.state(A, token=7)

    assert posted == [ev.DomainState(A, expected, 7, 50.0)]


def test_a_state_query_of_a_domain_gone_says_none():
    reader, _, posted, link = reader_for()

    reader.state(A, token=8)

    assert posted == [ev.DomainState(A, None, 8, 50.0)]


def test_a_state_query_libvirt_fails_goes_unanswered():
    reader, conn, posted, link = reader_for(FakeDomain(A))
    conn.fail["lookupByUUIDString"] = libvirtfakes.broken()

    reader.state(A, token=9)

    assert posted == [] and not link.usable
