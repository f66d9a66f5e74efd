# SPDX-License-Identifier: Apache-2.0
"""Hot-plugging the guestha channel, on its own: each answer the loop can
get, and a connection lost midway (asked again after the reconnect,
nothing posted); on a fake libvirt connection."""

import libvirt
import pytest

from guestha.agent.channelattach import ChannelAttacher
from guestha.agent.channelattach import NO_CONTROLLER_MESSAGE
from guestha.agent import domain
from guestha.agent.domainreader import DomainReader
from guestha.agent import events as ev
from tests.support.clock import ManualClock
from tests.unit.agent import libvirtfakes
from tests.unit.agent.libvirtfakes import FakeConn
from tests.unit.agent.libvirtfakes import FakeDomain
from tests.unit.agent.test_domain import CONTROLLER
from tests.unit.agent.test_domain import QGA_CHANNEL

A = "aaaaaaaa-0000-4000-8000-000000000001"


@pytest.fixture
def plug(tmp_path):
    """``plug(dom)``: the attacher for a connection to ``dom``; returns
    what was posted, the attacher's answer and the socket path."""
    def plug(dom, conn_fail=None):
        posted = []
        conn = FakeConn(dom)
        conn.fail.update(conn_fail or {})
        link = libvirtfakes.link_to(conn, posted.append)
        clock = ManualClock(50.0)
        reader = DomainReader(link, posted.append, clock=clock)
        attacher = ChannelAttacher(link, reader, posted.append, clock=clock)
        path = str(tmp_path / "channels" / ("%s.sock" % A))
        again = attacher.attach(A, path)
        return posted, again, path
    return plug


def results(posted):
    return [(r.outcome, r.message) for r in posted
            if isinstance(r, ev.HotplugResult)]


def test_attaches_the_channel_and_posts_the_domain_with_it(plug):
    dom = FakeDomain(A, devices=CONTROLLER + QGA_CHANNEL)

    posted, again, path = plug(dom)

    assert not again
    [(xml, flags)] = dom.attached
    assert xml == domain.channel_xml(path)
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
    result, update = posted
    assert (result.outcome, result.channel_path) == ("attached", path)
    assert update.event == "hotplug" and update.info.channel_path == path


def test_a_domain_that_has_the_channel_is_not_attached_again(plug):
    dom = FakeDomain(A)

    posted, again, _ = plug(dom)

    assert not dom.attached
    assert results(posted) == [
        ("attached", "the domain already has the channel")]
    assert isinstance(posted[1], ev.DomainUpdate)


def test_no_controller_says_how_to_fix_it(plug):
    dom = FakeDomain(A, devices="")

    posted, again, _ = plug(dom)

    assert not dom.attached
    assert results(posted) == [("no_controller", NO_CONTROLLER_MESSAGE)]


@pytest.mark.parametrize("state, fail, message", [
    (libvirt.VIR_DOMAIN_SHUTOFF, {}, "the domain is not running"),
    (libvirt.VIR_DOMAIN_RUNNING, {"state": libvirtfakes.gone()},
     "the domain no longer exists"),
])
def test_a_domain_not_there_to_attach_to(plug, state, fail, message):
    dom = FakeDomain(A, devices=CONTROLLER, state=state)
    dom.fail.update(fail)

    posted, again, _ = plug(dom)

    assert results(posted) == [("error", message)]


def test_libvirt_refusing_the_attach_is_an_error(plug):
    dom = FakeDomain(A, devices=CONTROLLER)
    dom.fail["attachDeviceFlags"] = libvirtfakes.error(
        libvirt.VIR_ERR_OPERATION_FAILED, "no free port")

    posted, again, _ = plug(dom)

    assert not again
    assert results(posted) == [
        ("error", "libvirt could not attach the channel: no free port")]


@pytest.mark.parametrize("where", ["XMLDesc", "attachDeviceFlags"])
def test_a_connection_lost_midway_asks_again_and_posts_nothing(plug, where):
    dom = FakeDomain(A, devices=CONTROLLER)
    dom.fail[where] = libvirtfakes.broken()

    posted, again, _ = plug(dom)

    assert again and posted == []
