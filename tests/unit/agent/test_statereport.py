# SPDX-License-Identifier: Apache-2.0
"""The agent's instance state reports (guestha.agent.statereport), on a
fake clock: a real Instance against an in-process guest through
registration, a hang, its recovery, a pause and its departure; and the
states of instances without a registered guest."""

import types

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent import statereport
from guestha import records
from tests.unit.agent.harness import Harness
from tests.unit.agent.harness import PATH
from tests.unit.agent.harness import UUID

PROJECT = "9f1c2d3e4b5a69788a9b0c1d2e3f4a5b"
ASKS = {"guestha:heartbeat": "true"}
NOVA = {"name": "vm-1", "project": PROJECT, "extra_specs": ASKS}


class Reports(object):
    def __init__(self, host="compute-1"):
        self.records = []
        # (looks a second apart: the scenarios below count them so)
        self.reporter = statereport.StateReporter(
            host, self.submit, wallclock=lambda: 1.8e9, settle=2.0,
            interval=1.0)

    def submit(self, record):
        records.validate_event(record)  # what the controller checks
        self.records.append(record)

    def states(self):
        return [r["state"] for r in self.records]


def nova_domain(h, state=ev.RUNNING):
    h.inst.domain(ev.DomainInfo(UUID, "instance-00000001", state, PATH,
                                True, NOVA), h.now)


def run(h, reports, seconds, instances=None):
    """Advance the harness, the reporter looking every 0.1 s."""
    instances = {UUID: h.inst} if instances is None else instances
    for _ in range(int(round(seconds / 0.1))):
        h.advance(0.1)
        reports.reporter.tick(h.now, instances)


def test_a_real_instance_through_its_states():
    h = Harness()
    nova_domain(h)
    reports = Reports()
    # the first look (0.1 s) may still see it registered (the host's first
    # challenge is jittered): monitored from the second look (1.1 s) at
    # the latest, held for ``settle`` at the fourth (3.1 s)
    run(h, reports, 3.5)
    # registered and answering: one report, the states it passed through
    # on the way (unregistered, registered) did not hold long enough
    assert reports.states() == ["monitored"]
    first = reports.records[0]
    assert first["type"] == "state" and first["instance"] == UUID
    assert first["host"] == "compute-1"
    assert first["details"] == {"project_id": PROJECT, "name": "vm-1",
                                "interval_ms": 100}
    run(h, reports, 5)
    assert reports.states() == ["monitored"]  # nothing changed
    # a hang: the fault, then the state, once it held
    h.guest.frozen = True
    h.advance(0.3)
    h.confirm(ev.RUNNING)
    assert h.faults()
    run(h, reports, 1)
    assert reports.states() == ["monitored"]
    run(h, reports, 2)
    assert reports.states() == ["monitored", "faulted"]
    assert "missed" in reports.records[-1]["reason"]
    h.guest.frozen = False
    run(h, reports, 3.5)   # as above: recovered by the next look or so
    assert h.recoveries()
    assert reports.states() == ["monitored", "faulted", "monitored"]
    # paused by Nova
    nova_domain(h, ev.PAUSED)
    run(h, reports, 3)
    assert reports.states()[-1] == "suspended"
    # gone from the host: at once
    reports.reporter.tick(h.now + 10, {})
    assert reports.states()[-1] == "gone"
    assert reports.records[-1]["details"]["project_id"] == PROJECT
    # and not again
    reports.reporter.tick(h.now + 20, {})
    assert reports.states().count("gone") == 1


def fake(state, channel=False, controller=True, extra_specs=ASKS,
         note=None, fault=None, uuid=UUID):
    nova = dict(NOVA, extra_specs=extra_specs)
    return types.SimpleNamespace(
        uuid=uuid, state=state, note=note, fault=fault, interval_ms=None,
        monitored=None, features={}, answered_since_init=0,
        info=ev.DomainInfo(uuid, "instance-1", ev.RUNNING,
                           PATH if channel else None, controller, nova))


def test_without_a_virtio_serial_controller_the_channel_is_refused():
    view = statereport.view(fake(im.NO_CHANNEL, controller=False))
    assert view.state == "refused"
    assert "hw_qemu_guest_agent=yes" in view.reason
    # the hot-plug's own message, once there, is the reason
    view = statereport.view(fake(im.NO_CHANNEL, controller=False,
                                 note="the domain has no virtio-serial "
                                      "controller, so ..."))
    assert view.reason.startswith("the domain has no virtio-serial")


def test_flavor_asks_and_no_guest_registered_is_unregistered():
    assert statereport.view(fake(im.NO_CHANNEL)).state == "unregistered"
    for state in (im.CONNECTING, im.SYNCING, im.WAITING):
        view = statereport.view(fake(state, channel=True,
                                     note="waiting for the guest daemon"))
        assert (view.state, view.reason) == (
            "unregistered", "waiting for the guest daemon")


def test_registered_until_the_first_answer():
    inst = fake(im.MONITORED, channel=True)
    assert statereport.view(inst).state == "registered"
    inst.answered_since_init = 1
    assert statereport.view(inst).state == "monitored"
    inst.fault = {"id": "x", "kind": "unhealthy"}
    assert statereport.view(inst).state == "faulted"
    inst.state = im.EXITED
    inst.fault = None
    assert statereport.view(inst).state == "exited"
    inst.state = im.STOPPED
    assert statereport.view(inst).state == "stopped"


def test_an_instance_guestha_has_nothing_to_do_with_is_not_reported():
    inst = fake(im.NO_CHANNEL, extra_specs={"hw:cpu_policy": "dedicated"})
    assert statereport.view(inst) is None
    reports = Reports()
    for t in range(5):
        reports.reporter.tick(float(t), {UUID: inst})
    assert reports.records == []
    # nor its departure
    reports.reporter.tick(10.0, {})
    assert reports.records == []


def test_a_flavor_that_stops_asking_is_unmonitored():
    inst = fake(im.NO_CHANNEL)
    reports = Reports()
    for t in range(4):
        reports.reporter.tick(float(t), {UUID: inst})
    assert reports.states() == ["unregistered"]
    inst.info = ev.DomainInfo(UUID, "instance-1", ev.RUNNING, None, True,
                              dict(NOVA, extra_specs={}))
    for t in range(4, 8):
        reports.reporter.tick(float(t), {UUID: inst})
    assert reports.states() == ["unregistered", "unmonitored"]
    reports.reporter.tick(20.0, {})  # forgotten: no gone
    assert reports.states() == ["unregistered", "unmonitored"]


def test_a_state_that_does_not_hold_is_not_reported():
    inst = fake(im.MONITORED, channel=True)
    inst.answered_since_init = 1
    reports = Reports()
    for t in range(4):
        reports.reporter.tick(float(t), {UUID: inst})
    assert reports.states() == ["monitored"]
    # suspended for a second (below settle), then back
    inst.state = im.SUSPENDED
    reports.reporter.tick(4.0, {UUID: inst})
    reports.reporter.tick(5.0, {UUID: inst})
    inst.state = im.MONITORED
    for t in range(6, 10):
        reports.reporter.tick(float(t), {UUID: inst})
    assert reports.states() == ["monitored"]


def test_looks_are_a_second_apart():
    inst = fake(im.NO_CHANNEL)
    reports = Reports()
    reports.reporter.tick(0.0, {UUID: inst})
    # many loop passes within the interval: no look, so nothing settles
    for i in range(1, 100):
        reports.reporter.tick(0.01 * i, {UUID: inst})
    reports.reporter.tick(2.5, {UUID: inst})
    assert reports.states() == ["unregistered"]


def test_by_default_looks_are_two_seconds_apart():
    # (a look reads every instance: at 1,000 instances, looking every
    # second was about 2% of the agent's CPU)
    inst = fake(im.NO_CHANNEL)
    records = []
    reporter = statereport.StateReporter("compute-1", records.append,
                                         wallclock=lambda: 1.8e9,
                                         settle=0.0)
    assert reporter.tick(0.0, {UUID: inst}) == 1
    inst.state = im.STOPPED
    assert [reporter.tick(t, {UUID: inst}) for t in (1.0, 1.99)] == [0, 0]
    assert reporter.tick(2.0, {UUID: inst}) == 1
    assert [r["state"] for r in records] == ["unregistered", "stopped"]


def test_a_first_look_at_many_instances_is_spread_over_passes():
    uuids = ["0d000000-0000-4000-8000-%012d" % i for i in range(10)]
    instances = {u: fake(im.NO_CHANNEL, uuid=u) for u in uuids}
    records = []
    reporter = statereport.StateReporter("compute-1", records.append,
                                         wallclock=lambda: 1.8e9,
                                         settle=0.0, max_per_tick=4,
                                         interval=1.0)
    sent = [reporter.tick(float(t), instances) for t in range(4)]
    assert sent == [4, 4, 2, 0]
    assert sorted(r["instance"] for r in records) == uuids


def test_an_instance_as_reported_is_not_looked_at_again(monkeypatch):
    # a look costs a view per instance every second; one whose inputs did
    # not change since its view was reported is skipped (issue 10)
    h = Harness()
    nova_domain(h)
    reports = Reports()
    run(h, reports, 3.5)
    assert reports.states() == ["monitored"]
    views = []
    real_view = statereport.view

    def counting_view(instance):
        views.append(instance.state)
        return real_view(instance)
    monkeypatch.setattr(statereport, "view", counting_view)
    run(h, reports, 5)
    assert views == []  # answering all along: nothing it shows changed
    h.inst.note = "a note the status shows"
    run(h, reports, 1)
    assert len(views) == 1  # looked at again, once, and the same report
    assert reports.states() == ["monitored"]


class _Reads(object):
    """An instance that notes which of its attributes are read."""

    def __init__(self, instance):
        object.__setattr__(self, "_instance", instance)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._instance, name)


def test_the_look_compares_everything_the_view_reads():
    # the look skips an instance whose _inputs are as reported; so every
    # attribute view() reads must be among them, in every state
    h = Harness()
    instances = [h.inst, fake(ev.RUNNING, channel=True),
                 fake(ev.SHUTOFF), fake(ev.PAUSED, controller=False)]
    h.advance(1.0)
    for instance in instances:
        viewed, compared = _Reads(instance), _Reads(instance)
        statereport.view(viewed)
        statereport._inputs(compared)
        assert viewed.read, instance
        assert viewed.read <= compared.read, (
            viewed.read - compared.read)
