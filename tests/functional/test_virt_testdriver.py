# SPDX-License-Identifier: Apache-2.0
"""The libvirt watcher against libvirt's test driver (no daemon, no QEMU).

``test:///<absolute path>`` loads domains from a node XML file.  Its state
belongs to the connection that opened it: another connection to the same
URI gets its own copy, and no events from it
(:func:`test_test_driver_state_is_per_connection`).  So the tests change
domains through the watcher's own connection
(:meth:`CallingWatcher.run_with_connection`), which delivers real libvirt
events to the watcher's callbacks through libvirt's event loop.
"""

import concurrent.futures

import libvirt
import pytest

from guestha.agent import events as ev
from guestha.agent import virt
from tests.fakes.loop import RecordingLoop

pytestmark = pytest.mark.libvirt

WITH_CHANNEL = "aaaaaaaa-0000-4000-8000-000000000001"
NO_CONTROLLER = "aaaaaaaa-0000-4000-8000-000000000002"
CONTROLLER_ONLY = "aaaaaaaa-0000-4000-8000-000000000003"
AMONG_OTHERS = "aaaaaaaa-0000-4000-8000-000000000004"
INACTIVE = "aaaaaaaa-0000-4000-8000-000000000005"
UNKNOWN = "aaaaaaaa-0000-4000-8000-0000000000ff"
ACTIVE = {WITH_CHANNEL, NO_CONTROLLER, CONTROLLER_ONLY, AMONG_OTHERS}

NOVA_METADATA = """<metadata>
      <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:name>vnf-1</nova:name>
        <nova:flavor name="m1.guestha"/>
        <nova:owner><nova:project uuid="p-1">demo</nova:project></nova:owner>
      </nova:instance>
    </metadata>"""


def channel(path, name="org.openstack.guestha.0"):
    return ("<channel type='unix'><source mode='bind' path='%s'/>"
            "<target type='virtio' name='%s'/></channel>" % (path, name))


def test_domain(name, uuid, devices="", extra=""):
    return """
  <domain type='test'
      xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>%s</name><uuid>%s</uuid>%s
    <memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>%s</devices>
  </domain>""" % (name, uuid, extra, devices)


test_domain.__test__ = False  # a helper, not a test


@pytest.fixture
def node(tmp_path):
    """A node XML with domains with and without the channel; returns its
    URI and the socket paths."""
    paths = {uuid: str(tmp_path / ("%s.sock" % uuid)) for uuid in ACTIVE}
    controller = "<controller type='virtio-serial'/>"
    domains = [
        test_domain("with-channel", WITH_CHANNEL,
                    controller + channel(paths[WITH_CHANNEL]),
                    NOVA_METADATA),
        test_domain("no-controller", NO_CONTROLLER),
        test_domain("controller-only", CONTROLLER_ONLY,
                    controller + channel("/tmp/qga.sock",
                                         "org.qemu.guest_agent.0")),
        test_domain("among-others", AMONG_OTHERS,
                    controller + channel("/tmp/qga.sock",
                                         "org.qemu.guest_agent.0")
                    + channel(paths[AMONG_OTHERS])
                    + channel("/tmp/other.sock", "org.example.0")),
        test_domain("inactive", INACTIVE, controller,
                    "<test:runstate>5</test:runstate>"),
    ]
    path = tmp_path / "node.xml"
    path.write_text("<node>%s\n</node>\n" % "".join(domains))
    return "test://%s" % path, paths


class CallingWatcher(virt.LibvirtWatcher):
    """The watcher, with a way in for the tests to its connection."""

    def run_with_connection(self, func):
        """Run ``func(conn)`` in the watcher thread with its connection;
        returns a :class:`concurrent.futures.Future` of the result."""
        future = concurrent.futures.Future()
        if self._stopping:
            future.set_exception(RuntimeError("watcher stopped"))
        else:
            self._ask(_Call(func, future))
        return future


class _Call(object):
    """A request of the watcher's (see ``LibvirtWatcher._ask``)."""

    def __init__(self, func, future):
        self.func = func
        self.future = future

    def run(self, conn):
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.func(conn))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                self.future.set_exception(exc)
        return False

    def unconnected(self):
        self.future.set_exception(RuntimeError("libvirt not connected"))
        return False

    def stopped(self):
        self.future.set_exception(RuntimeError("watcher stopped"))


@pytest.fixture
def watch():
    """Starts watchers; stops them (and checks they stop) afterwards."""
    started = []

    def start(uri, **kwargs):
        loop = RecordingLoop()
        kwargs.setdefault("reconnect_interval", 0.2)
        kwargs.setdefault("reconcile_interval", 3600)
        watcher = CallingWatcher(uri, loop.post, **kwargs)
        watcher.start()
        started.append(watcher)
        return watcher, loop

    yield start
    for watcher in started:
        watcher.stop()
        assert not watcher._thread.is_alive()


def is_update(uuid, state=None, event=None):
    def match(record):
        return (isinstance(record, ev.DomainUpdate)
                and record.info.uuid == uuid
                and (state is None or record.info.state == state)
                and (event is None or record.event == event))
    return match


def call(watcher, func):
    return watcher.run_with_connection(func).result(timeout=2)


def test_initial_reconcile_posts_every_active_domain(node, watch):
    uri, paths = node
    watcher, loop = watch(uri)

    _, reconciled = loop.wait_for(lambda r: isinstance(r, ev.Reconciled))

    records = loop.since()
    assert records[0] == ev.LibvirtStatus(True, uri, records[0].at, None)
    updates = {r.info.uuid: r for r in records
               if isinstance(r, ev.DomainUpdate)}
    assert reconciled.uuids == frozenset(ACTIVE)
    assert set(updates) == ACTIVE  # not the inactive one
    assert records.index(reconciled) == len(updates) + 1  # updates first
    assert all(u.event == "reconcile" and u.info.state == ev.RUNNING
               for u in updates.values())

    def described(uuid):
        info = updates[uuid].info
        return info.channel_path, info.has_serial_controller, info.nova

    assert described(WITH_CHANNEL) == (
        paths[WITH_CHANNEL], True,
        {"name": "vnf-1", "flavor": "m1.guestha", "project": "p-1"})
    assert described(NO_CONTROLLER) == (None, False, {})
    assert described(CONTROLLER_ONLY) == (None, True, {})
    assert described(AMONG_OTHERS) == (paths[AMONG_OTHERS], True, {})
    assert updates[WITH_CHANNEL].info.name == "with-channel"
    assert watcher.last_reconcile[0] == len(ACTIVE)


def test_lifecycle_events_become_updates_and_gone(node, watch):
    uri, paths = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))

    mark = loop.mark()
    call(watcher, lambda c: c.lookupByUUIDString(WITH_CHANNEL).suspend())
    _, paused = loop.wait_for(is_update(WITH_CHANNEL, ev.PAUSED), since=mark)
    assert paused.event == "lifecycle:suspended:paused"
    # a full DomainInfo, re-read after the event
    assert paused.info.channel_path == paths[WITH_CHANNEL]
    assert paused.info.nova["flavor"] == "m1.guestha"

    mark = loop.mark()
    call(watcher, lambda c: c.lookupByUUIDString(WITH_CHANNEL).resume())
    _, resumed = loop.wait_for(is_update(WITH_CHANNEL, ev.RUNNING),
                               since=mark)
    assert resumed.event == "lifecycle:resumed:unpaused"

    mark = loop.mark()
    call(watcher, lambda c: c.lookupByUUIDString(WITH_CHANNEL).destroy())
    _, gone = loop.wait_for(lambda r: isinstance(r, ev.DomainGone),
                            since=mark)
    assert gone == ev.DomainGone(WITH_CHANNEL, "lifecycle:stopped:destroyed",
                                 gone.at)
    assert loop.since(mark, ev.DomainUpdate) == []

    mark = loop.mark()
    call(watcher, lambda c: c.lookupByUUIDString(WITH_CHANNEL).create())
    _, started = loop.wait_for(is_update(WITH_CHANNEL, ev.RUNNING),
                               since=mark)
    assert started.event == "lifecycle:started:booted"


def test_a_quick_restart_still_reads_as_a_stop_then_a_start(node, watch):
    uri, _ = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    mark = loop.mark()

    def restart(conn):
        dom = conn.lookupByUUIDString(CONTROLLER_ONLY)
        dom.destroy()
        dom.create()

    # both events are handled after the restart, when the domain runs
    call(watcher, restart)
    loop.wait_for(is_update(CONTROLLER_ONLY, event="lifecycle:started:booted"),
                  since=mark)

    kinds = [(type(r).__name__, r.event) for r in loop.since(mark)
             if getattr(r, "event", None) != "reconcile"]
    assert kinds[:2] == [("DomainGone", "lifecycle:stopped:destroyed"),
                         ("DomainUpdate", "lifecycle:started:booted")]


def test_undefining_a_stopped_domain_posts_nothing(node, watch):
    uri, _ = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    mark = loop.mark()

    call(watcher, lambda c: c.lookupByUUIDString(INACTIVE).undefine())
    # a later event shows the first was handled
    call(watcher, lambda c: c.lookupByUUIDString(NO_CONTROLLER).suspend())
    loop.wait_for(is_update(NO_CONTROLLER, ev.PAUSED), since=mark)

    assert [r for r in loop.since(mark)
            if getattr(r, "uuid", None) == INACTIVE] == []


def test_test_driver_state_is_per_connection(node, watch):
    # why the tests drive changes through the watcher's own connection
    uri, _ = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    other = libvirt.open(uri)
    try:
        mark = loop.mark()
        other.lookupByUUIDString(WITH_CHANNEL).suspend()
        call(watcher, lambda c: c.lookupByUUIDString(NO_CONTROLLER).suspend())
        loop.wait_for(is_update(NO_CONTROLLER, ev.PAUSED), since=mark)

        assert loop.since(mark, ev.DomainUpdate) == [
            r for r in loop.since(mark, ev.DomainUpdate)
            if r.info.uuid == NO_CONTROLLER]
        state = call(watcher,
                     lambda c: c.lookupByUUIDString(WITH_CHANNEL).state())
        assert state[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        other.close()


def test_request_state(node, watch):
    uri, _ = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    call(watcher, lambda c: c.lookupByUUIDString(AMONG_OTHERS).suspend())

    for uuid, token in ((WITH_CHANNEL, "t1"), (AMONG_OTHERS, "t2"),
                        (UNKNOWN, "t3")):
        watcher.request_state(uuid, token)
    answers = {}
    for token in ("t1", "t2", "t3"):
        _, answer = loop.wait_for(lambda r, t=token: isinstance(
            r, ev.DomainState) and r.token == t)
        answers[token] = (answer.uuid, answer.state)

    assert answers == {"t1": (WITH_CHANNEL, ev.RUNNING),
                       "t2": (AMONG_OTHERS, ev.PAUSED),
                       "t3": (UNKNOWN, None)}


def hotplug_result(loop, uuid):
    return loop.wait_for(lambda r: isinstance(r, ev.HotplugResult)
                         and r.uuid == uuid)[1]


def test_hotplug_outcomes(node, watch, tmp_path):
    uri, paths = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    new_path = str(tmp_path / "sockets" / "new.sock")

    for uuid in (WITH_CHANNEL, NO_CONTROLLER, CONTROLLER_ONLY, UNKNOWN):
        watcher.request_hotplug(uuid, new_path)

    present = hotplug_result(loop, WITH_CHANNEL)
    assert (present.outcome, present.channel_path) == (
        "attached", paths[WITH_CHANNEL])

    missing = hotplug_result(loop, NO_CONTROLLER)
    assert missing.outcome == "no_controller"
    assert "hw_qemu_guest_agent=yes" in missing.message
    assert "virtio-serial controller" in missing.message

    # the test driver has no device hot-plug: libvirt's error is passed on
    unsupported = hotplug_result(loop, CONTROLLER_ONLY)
    assert unsupported.outcome == "error"
    assert "not supported" in unsupported.message

    unknown = hotplug_result(loop, UNKNOWN)
    assert (unknown.outcome, unknown.message) == (
        "error", "the domain no longer exists")


def test_periodic_reconcile_with_jitter(node, watch):
    uri, _ = node
    watcher, loop = watch(uri, reconcile_interval=0.5)

    _, first = loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    mark = loop.mark()
    _, second = loop.wait_for(lambda r: isinstance(r, ev.Reconciled),
                              since=mark, timeout=3)

    assert second.uuids == frozenset(ACTIVE)
    # 0.5 s +/- 10%, measured on the watcher's clock; a little slack above
    # for a loaded machine
    assert 0.45 <= second.at - first.at <= 0.55 + 0.25


def test_first_connect_fails_then_succeeds(node, watch, tmp_path):
    uri, _ = node
    later = tmp_path / "later.xml"
    later_uri = "test://%s" % later
    watcher, loop = watch(later_uri, reconnect_interval=0.1)

    _, down = loop.wait_for(lambda r: isinstance(r, ev.LibvirtStatus))
    assert (down.connected, down.uri) == (False, later_uri)
    assert "later.xml" in down.error
    # the node file appears: the next attempt connects and reconciles
    later.write_text(open(uri[len("test://"):]).read())
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled), timeout=3)

    statuses = [(s.connected) for s in loop.since(0, ev.LibvirtStatus)]
    assert statuses == [False, True]  # down once, not once per attempt


def test_connection_lost_and_reconnected_with_state_kept_by_libvirt(
        node, watch):
    uri, _ = node
    watcher, loop = watch(uri, reconnect_interval=0.1)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))
    call(watcher, lambda c: c.lookupByUUIDString(WITH_CHANNEL).suspend())
    mark = loop.mark()

    # what libvirt does when libvirtd goes away: the close callback fires
    # in the event loop (for real in test_virt_qemu)
    call(watcher, lambda c: watcher._link.on_close(
        c, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None))

    _, down = loop.wait_for(lambda r: isinstance(r, ev.LibvirtStatus),
                            since=mark)
    assert (down.connected, down.error) == (
        False, "libvirtd closed the connection")
    _, reconciled = loop.wait_for(lambda r: isinstance(r, ev.Reconciled),
                                  since=mark)
    records = loop.since(mark)
    assert [r.connected for r in records
            if isinstance(r, ev.LibvirtStatus)] == [False, True]
    # a new test:/// connection starts from the file: running again, and
    # the reconcile says what libvirt says now
    assert reconciled.uuids == frozenset(ACTIVE)
    assert any(is_update(WITH_CHANNEL, ev.RUNNING, "reconcile")(r)
               for r in records)


def test_hotplug_requests_wait_for_the_reconnect(node, watch, tmp_path):
    uri, paths = node
    later = tmp_path / "later.xml"
    watcher, loop = watch("test://%s" % later, reconnect_interval=0.1)
    loop.wait_for(lambda r: isinstance(r, ev.LibvirtStatus))

    watcher.request_hotplug(WITH_CHANNEL, "/unused.sock")
    watcher.request_state(WITH_CHANNEL, "dropped")
    later.write_text(open(uri[len("test://"):]).read())

    result = hotplug_result(loop, WITH_CHANNEL)
    assert (result.outcome, result.channel_path) == (
        "attached", paths[WITH_CHANNEL])
    # state queries are not kept: the loop has given up on them by then
    assert loop.since(0, ev.DomainState) == []


def test_stop_is_prompt_and_final(node, watch):
    import time

    uri, _ = node
    watcher, loop = watch(uri)
    loop.wait_for(lambda r: isinstance(r, ev.Reconciled))

    started = time.monotonic()
    watcher.stop()
    elapsed = time.monotonic() - started

    assert not watcher._thread.is_alive()
    assert elapsed < 2.0
    future = watcher.run_with_connection(lambda c: None)
    with pytest.raises(RuntimeError, match="stopped"):
        future.result(timeout=0.5)


def test_reconcile_of_many_domains(tmp_path, watch, record_property):
    count = 500
    domains = "".join(
        test_domain("d%d" % i, "bbbbbbbb-0000-4000-8000-%012d" % i,
                    "<controller type='virtio-serial'/>"
                    + channel("/run/guestha/%d.sock" % i))
        for i in range(count))
    path = tmp_path / "many.xml"
    path.write_text("<node>%s</node>" % domains)
    watcher, loop = watch("test://%s" % path)

    _, reconciled = loop.wait_for(lambda r: isinstance(r, ev.Reconciled),
                                  timeout=30)

    assert len(reconciled.uuids) == count
    assert len(loop.since(0, ev.DomainUpdate)) == count
    domains_seen, seconds = watcher.last_reconcile
    assert domains_seen == count
    record_property("reconcile_%d_domains_ms" % count, seconds * 1000)


def test_stop_without_start_is_harmless():
    watcher = CallingWatcher("test:///default", RecordingLoop().post)

    watcher.stop()
    watcher.stop()

    with pytest.raises(RuntimeError, match="stopped"):
        watcher.run_with_connection(lambda c: None).result(timeout=0.5)
