# SPDX-License-Identifier: Apache-2.0
"""Fault reporting through the real RabbitMQ to a controller in a child
process: order, exactly-once arrival, and nothing lost while the
controller or the broker is down or the agent restarts."""

import os
import statistics
import subprocess
import time
import uuid

from oslo_config import cfg
import pytest

from guestha.agent.outbox import Outbox
from guestha.agent.reporter import Reporter
from guestha import records
from guestha import rpc
from guestha.rpc import api
from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing.wait import wait_until

pytestmark = pytest.mark.functional

HOST = "compute-func"
# What a call that waits for the broker takes at the least: the rabbit
# driver's reconnect interval (see guestha/agent/reporter.py).
BROKER_WAIT = 2.0


class StubController(agent_harness.ControllerStub):
    """The controller stub (:mod:`guestha.testing.controller_stub`), read
    as these tests read it."""

    def received(self):
        """Every event received, in order: ``[(dup, event)]``."""
        return [(r["dup"], r["event"]) for r in self.records()]

    def accepted_ids(self):
        return [e["id"] for dup, e in self.received() if not dup]

    def cast_lines(self):
        return self.casts()


class Agent(object):
    """The agent's reporting side, in the test process."""

    def __init__(self, url, workdir):
        self.transport = rpc.get_transport(cfg.CONF, url=url)
        self.path = os.path.join(workdir, "agent", "outbox.sqlite")
        self.reporters = []
        self.outboxes = []

    def reporter(self, timeout=5.0, backoff=(0.2, 2.0), batch=100):
        outbox = Outbox(self.path, 100000)
        self.outboxes.append(outbox)
        reporter = Reporter(
            outbox, api.ControllerAPI(self.transport, HOST, timeout=timeout),
            batch=batch, timeout=timeout, backoff=backoff)
        reporter.start()
        self.reporters.append(reporter)
        return reporter

    def close(self):
        for reporter in self.reporters:
            reporter.stop(timeout=15)
        for outbox in self.outboxes:
            outbox.close()
        self.transport.cleanup()


@pytest.fixture
def controller(rabbit_vhost, tmp_path):
    processes = child_processes.Processes()
    stub = StubController(processes, rabbit_vhost, str(tmp_path))
    yield stub
    stub.stop()
    processes.kill_all()


@pytest.fixture
def agent(rabbit_vhost, tmp_path):
    agent = Agent(rabbit_vhost, str(tmp_path))
    yield agent
    agent.close()


def faults(n, start=0):
    return [records.make_fault(
        instance=str(uuid.uuid4()), host=HOST, kind="missed",
        reason="fault %d" % i, action="reboot", detected_at=time.time(),
        interval_ms=1000, misses=1) for i in range(start, start + n)]


def test_a_thousand_faults_arrive_in_order_exactly_once(agent, controller):
    controller.start()
    reporter = agent.reporter(batch=100)
    events = faults(1000)

    start = time.monotonic()
    for event in events:
        reporter.submit(event)
    wait_until(lambda: reporter.stats()["delivered"] == 1000, 60,
               "1000 deliveries")
    elapsed = time.monotonic() - start

    received = controller.received()
    assert [e["id"] for _, e in received] == [e["id"] for e in events]
    assert not any(dup for dup, _ in received)
    assert received[0][1] == events[0]
    stats = reporter.stats()
    assert (stats["pending"], stats["retries"], stats["dropped"]) == (0, 0, 0)
    print("\n1000 faults in batches of 100 through RabbitMQ: %.2f s, "
          "%.0f events/s" % (elapsed, 1000 / elapsed))


def test_faults_wait_for_a_controller_that_is_not_running(agent,
                                                          controller):
    reporter = agent.reporter(timeout=1.0, backoff=(0.2, 1.0))
    events = faults(20)
    for event in events:
        reporter.submit(event)
    wait_until(lambda: reporter.stats()["retries"] >= 2, 30,
               "failed attempts")
    stats = reporter.stats()
    assert stats["pending"] == 20
    assert stats["delivered"] == 0
    assert "MessagingTimeout" in stats["last_error"]

    controller.start()
    wait_until(lambda: reporter.stats()["delivered"] == 20, 60,
               "delivery after the controller started")
    assert controller.accepted_ids() == [e["id"] for e in events]
    assert reporter.stats()["pending"] == 0


def test_a_broker_outage_blocks_nobody_and_loses_nothing(
        agent, controller, rabbitmq):
    controller.start()
    reporter = agent.reporter(timeout=2.0, backoff=(0.2, 2.0))
    before = faults(5)
    for event in before:
        reporter.submit(event)
    wait_until(lambda: reporter.stats()["delivered"] == 5, 30,
               "delivery before the outage")

    during = faults(50, start=5)
    submit_times = []
    relay_times = []
    rabbitmq.stop_app()
    try:
        for event in during:
            start = time.perf_counter()
            reporter.submit(event)
            submit_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            reporter.cast_relay("query_status", instance=event["instance"],
                                seq=1)
            relay_times.append(time.perf_counter() - start)
        wait_until(lambda: reporter.stats()["retries"] >= 2, 30,
                   "failed attempts while the broker is down")
        stats = reporter.stats()
        assert len(reporter.outbox) == 50
        assert stats["delivered"] == 5
        assert stats["last_error"]
    finally:
        rabbitmq.start_app()

    # Reconnects take seconds: the driver's own retry interval grows.
    wait_until(lambda: reporter.stats()["delivered"] >= 55, 180,
               "delivery after the broker came back")
    assert controller.accepted_ids() == [e["id"] for e in before + during]
    assert reporter.stats()["pending"] == 0
    # The caller (the agent's I/O loop) never waited for the broker: a
    # publish that waits for it takes at least the driver's 2 s reconnect
    # interval.  The bound is that, not a speed target (the speed of
    # submit is benchmarks/reporter_submit.py's).
    assert max(submit_times) < BROKER_WAIT
    assert max(relay_times) < BROKER_WAIT
    print("\nsubmit during the outage: median %.3f ms, max %.3f ms; "
          "cast_relay max %.3f ms; retries %d" % (
              statistics.median(submit_times) * 1e3,
              max(submit_times) * 1e3, max(relay_times) * 1e3,
              reporter.stats()["retries"]))


def test_an_agent_started_during_a_broker_outage_reports_when_it_returns(
        agent, controller, rabbitmq):
    # The first call of a process sets up its reply queue on a connection
    # that oslo.messaging retries forever, whatever the call's retry and
    # timeout: the sender thread hangs in it, and only it.
    controller.start()
    events = faults(10)
    rabbitmq.stop_app()
    try:
        reporter = agent.reporter(timeout=2.0, backoff=(0.2, 2.0))
        longest = 0.0
        for event in events:
            start = time.perf_counter()
            reporter.submit(event)
            longest = max(longest, time.perf_counter() - start)
        wait_until(lambda: (reporter.stats()["in_flight_s"] or 0) > 2.0, 30,
                   "the first call to hang")
        assert reporter.stats()["pending"] == 10
        assert longest < BROKER_WAIT  # submit never waited for the broker
    finally:
        rabbitmq.start_app()

    wait_until(lambda: reporter.stats()["delivered"] == 10, 180,
               "delivery after the broker came back")
    assert controller.accepted_ids() == [e["id"] for e in events]


def test_pending_faults_survive_an_agent_restart(agent, controller):
    first = agent.reporter(timeout=1.0, backoff=(0.2, 1.0))
    events = faults(30)
    for event in events:
        first.submit(event)
    wait_until(lambda: first.stats()["retries"] >= 1, 30, "a failed attempt")
    assert first.stop(timeout=10) is True
    first.outbox.close()            # the agent is gone

    controller.start()
    second = agent.reporter()       # the agent starts again
    assert second.stats()["pending"] == 30
    wait_until(lambda: second.stats()["delivered"] == 30, 60,
               "delivery after the restart")

    received = controller.received()
    assert [e["id"] for _, e in received] == [e["id"] for e in events]
    assert not any(dup for dup, _ in received)


def test_relay_casts_reach_the_controller(agent, controller):
    controller.start()
    reporter = agent.reporter()
    instance = str(uuid.uuid4())
    reporter.cast_relay("relay_broadcast", instance=instance,
                        payload_b64="aGVsbG8=", seq=1)
    reporter.cast_relay("agent_alive", instances=[
        {"instance": instance, "heartbeat": True,
         "server_group_messaging": True}])
    wait_until(lambda: len(controller.cast_lines()) == 2, 30, "two casts")

    assert controller.cast_lines() == [
        {"method": "relay_broadcast", "host": HOST, "instance": instance,
         "payload_b64": "aGVsbG8=", "seq": 1},
        {"method": "agent_alive", "host": HOST, "instances": [
            {"instance": instance, "heartbeat": True,
             "server_group_messaging": True}]},
    ]
    assert reporter.stats()["relay_sent"] == 2


# -- a full disk (issue 13) ---------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root), and a way to fill it up."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k",
                             "tmpfs", str(mnt)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % result.stdout.decode())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def fill(directory):
    """Write a file in ``directory`` until the disk is full."""
    filler = os.path.join(str(directory), "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError:
            pass
    # the last bytes too
    with open(filler + "2", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return [filler, filler + "2"]


def test_a_full_disk_stops_no_delivery_and_recovers_at_once(
        small_disk, agent, controller):
    agent.path = str(small_disk / "outbox.sqlite")
    reporter = agent.reporter(timeout=2.0, backoff=(0.2, 2.0))
    before = faults(5)
    for event in before:
        reporter.submit(event)          # on disk: no controller yet
    wait_until(lambda: reporter.stats()["retries"] >= 1, 30,
               "a failed attempt")
    fillers = fill(small_disk)
    during = []
    while reporter.stats()["in_memory"] == 0:
        assert len(during) < 10000, "the outbox never failed"
        event = faults(1, start=len(during))[0]
        during.append(event)
        reporter.submit(event)
    during += faults(20, start=len(during))
    for event in during[-20:]:
        reporter.submit(event)
    assert reporter.stats()["disk_error"]

    # the controller comes, the disk still full: everything is delivered,
    # in order, once
    controller.start()
    wait_until(lambda: reporter.stats()["pending"] == 0, 60,
               "delivery with the disk full")
    assert controller.accepted_ids() == [e["id"] for e in before + during]
    assert not any(dup for dup, _ in controller.received())

    # the disk is freed: the held events and the deletes are written in
    # a second or so (disk_retry), and nothing is sent again
    for filler in fillers:
        os.unlink(filler)
    wait_until(lambda: reporter.stats()["disk_error"] is None, 30,
               "the outbox written again")
    assert len(reporter.outbox) == 0
    more = faults(3, start=1000)
    for event in more:
        reporter.submit(event)
    wait_until(lambda: reporter.stats()["delivered"] == len(
        before + during + more), 30, "delivery after the disk came back")
    received = controller.received()
    assert [e["id"] for _, e in received] == [
        e["id"] for e in before + during + more]
    assert not any(dup for dup, _ in received)


def test_an_agent_started_on_a_full_disk_runs_and_catches_up(
        small_disk, agent, controller):
    # sqlite cannot open a WAL database on a full disk ("disk I/O
    # error"): before, the agent could not start at all
    agent.path = str(small_disk / "outbox.sqlite")
    old = faults(2)
    box = Outbox(agent.path, 1000)
    for event in old:
        box.put(event)
    box.close()                     # the agent stops...
    fillers = fill(small_disk)      # ...the disk fills, and it starts
    controller.start()
    reporter = agent.reporter(timeout=2.0, backoff=(0.2, 2.0))
    assert reporter.outbox.unknown
    new = faults(3, start=2)
    for event in new:
        reporter.submit(event)
    assert reporter.stats()["in_memory"] == 3
    # held, not sent ahead of the two on disk it cannot see yet
    assert controller.received() == []

    for filler in fillers:
        os.unlink(filler)
    wait_until(lambda: reporter.stats()["delivered"] == 5, 30,
               "delivery once the outbox could be opened")
    assert controller.accepted_ids() == [e["id"] for e in old + new]
