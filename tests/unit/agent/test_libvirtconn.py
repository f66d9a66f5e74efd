# SPDX-License-Identifier: Apache-2.0
"""The libvirt watcher's connection on its own: opened and set up, not
reported down more than once, noticed lost, dropped; on a fake libvirt
connection and a manual clock."""

import logging

import libvirt

from guestha.agent import events as ev
from guestha.agent.libvirtconn import LibvirtConnection
from tests.support.clock import ManualClock
from tests.unit.agent import libvirtfakes
from tests.unit.agent.libvirtfakes import FakeConn

URI = "test:///unit"
LIFECYCLE = libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
REBOOT = libvirt.VIR_DOMAIN_EVENT_ID_REBOOT


def opener(*answers):
    """``libvirt.open`` giving ``answers`` in turn (errors raised)."""
    answers = list(answers)

    def open_(uri):
        assert uri == URI
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    return open_


def test_connects_with_keepalive_close_callback_and_the_callbacks():
    posted = []
    clock = ManualClock(10.0)
    conn = FakeConn()
    conn.fail[REBOOT] = libvirtfakes.error(libvirt.VIR_ERR_NO_SUPPORT)
    link = LibvirtConnection(URI, posted.append, keepalive_interval=5,
                             keepalive_count=3, clock=clock,
                             open=opener(conn))

    assert link.connect(10.0, [(LIFECYCLE, print, None),
                               (REBOOT, print, "reboot"),
                               (None, print, "unknown")])

    assert link.usable and link.conn is conn
    assert conn.keepalive == (5, 3)
    assert conn.close_callback == link.on_close
    # the optional one this libvirt refused, and the unknown one, left out
    assert [e for e, _ in conn.callbacks.values()] == [LIFECYCLE]
    assert posted == [ev.LibvirtStatus(True, URI, 10.0, None)]


def test_down_is_posted_once_however_many_attempts_fail(caplog):
    posted = []
    refused = libvirtfakes.error(libvirt.VIR_ERR_NO_CONNECT, "refused")
    conn = FakeConn()
    link = LibvirtConnection(URI, posted.append, reconnect_interval=5.0,
                             clock=ManualClock(0.0),
                             open=opener(refused, refused, conn))

    with caplog.at_level(logging.WARNING):
        assert not link.connect(0.0, [])
        assert link.next_connect == 5.0
        assert not link.connect(5.0, [])
        assert link.next_connect == 10.0
    assert link.connect(10.0, [])

    assert [(s.connected, s.error) for s in posted] == [
        (False, "refused"), (True, None)]
    assert len(caplog.records) == 1


def test_a_callback_that_must_be_there_fails_the_connect():
    posted = []
    conn = FakeConn()
    conn.fail[LIFECYCLE] = libvirtfakes.error(libvirt.VIR_ERR_NO_SUPPORT)
    link = LibvirtConnection(URI, posted.append, clock=ManualClock(0.0),
                             open=opener(conn))

    assert not link.connect(0.0, [(LIFECYCLE, print, None)])

    assert conn.closed and link.conn is None
    assert [s.connected for s in posted] == [False]


def test_the_close_callback_marks_it_lost_and_drop_reports_it():
    posted = []
    clock = ManualClock(20.0)
    conn = FakeConn()
    link = LibvirtConnection(URI, posted.append, reconnect_interval=5.0,
                             clock=clock, open=opener(conn))
    link.connect(20.0, [(LIFECYCLE, print, None)])

    link.on_close(conn, libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE, None)
    assert not link.usable and link.lost == "keepalive timed out"
    clock.advance(1.0)
    link.drop(link.lost)

    assert conn.closed and conn.callbacks == {} and link.conn is None
    assert link.lost is None and link.next_connect == 26.0
    assert posted[-1] == ev.LibvirtStatus(False, URI, 21.0,
                                          "keepalive timed out")


def test_a_drop_at_stop_reports_nothing():
    posted = []
    conn = FakeConn()
    link = LibvirtConnection(URI, posted.append, clock=ManualClock(0.0),
                             open=opener(conn))
    link.connect(0.0, [])

    link.drop(None, report=False)

    assert conn.closed and [s.connected for s in posted] == [True]


def test_a_failed_call_is_the_connection_only_if_libvirt_says_so(caplog):
    conn = FakeConn()
    link = libvirtfakes.link_to(conn)

    with caplog.at_level(logging.WARNING):
        # a request's error, on a live connection: logged, not lost
        assert not link.failed(libvirtfakes.error(
            libvirt.VIR_ERR_OPERATION_FAILED), "attaching", "uuid-1")
    assert link.usable
    assert "instance uuid-1: attaching failed" in caplog.text

    # an error code that means the connection
    assert link.failed(libvirtfakes.broken(), "reading")
    assert link.lost == "reading failed: Broken pipe"


def test_a_failed_call_on_a_dead_connection_is_the_connection():
    conn = FakeConn()
    conn.alive = False
    link = libvirtfakes.link_to(conn)

    assert link.failed(libvirtfakes.error(libvirt.VIR_ERR_INTERNAL_ERROR),
                       "listing")
    assert not link.usable


def test_a_failed_call_without_a_connection_is_the_connection():
    link = LibvirtConnection(URI, print)

    assert link.failed(libvirtfakes.gone(), "reading")
