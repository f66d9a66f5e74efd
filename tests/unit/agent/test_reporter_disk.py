# SPDX-License-Identifier: Apache-2.0
"""The reporter when the agent's disk fails (issue 13): delivery goes on
whatever the disk does, delivered events are remembered without it, the
disk and the bus recover apart and at once, each condition is logged once
with what is kept where, and a stop loses nothing silently.

The disk fails at the boundary: a real outbox wrapped so that its writes
raise what sqlite raises on a full disk."""

import logging
import sqlite3
import threading

import oslo_messaging
import pytest

from guestha.agent.outbox import Outbox
from guestha.agent import reporter as reporter_mod
from tests.support.clock import ManualClock
from tests.unit.agent.test_reporter import drain
from tests.unit.agent.test_reporter import due_step
from tests.unit.agent.test_reporter import FakeAPI
from tests.unit.agent.test_reporter import fault
from tests.unit.agent.test_reporter import make

FULL = sqlite3.OperationalError("database or disk is full")


class DiskOutbox(object):
    """A real outbox on a disk that can fill (``full``: every write
    fails) or fail to read (``unreadable``)."""

    def __init__(self, path, max_events=1000):
        self.box = Outbox(path, max_events)
        self.full = False
        self.unreadable = False
        self.path = path

    def _write(self):
        if self.full:
            raise FULL

    def put(self, event, pending=True):
        self._write()
        return self.box.put(event, pending)

    def put_many(self, entries):
        self._write()
        return self.box.put_many(entries)

    def ack(self, rowids):
        if rowids:
            self._write()
        return self.box.ack(rowids)

    def peek(self, n, skip=()):
        if self.unreadable:
            raise sqlite3.DatabaseError("disk I/O error")
        return self.box.peek(n, skip)

    def open_faults(self):
        return self.box.open_faults()

    @property
    def dropped(self):
        return self.box.dropped

    @property
    def unknown(self):
        return self.box.unknown

    def __len__(self):
        return len(self.box)


@pytest.fixture
def disk(tmp_path):
    box = DiskOutbox(str(tmp_path / "outbox.sqlite"))
    yield box
    box.box.close()


def ids(events):
    return [e["id"] for e in events]


def test_a_full_disk_delivers_the_events_on_disk_and_in_memory(disk):
    # the case: the disk fills while the bus is down, with some
    # events already on disk; then the bus returns, the disk still full
    clock = ManualClock(100.0)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(disk, api, clock=clock)
    events = [fault(n) for n in range(12)]
    for e in events[:5]:
        rep.submit(e)
    due_step(rep, clock)                   # the bus is down
    disk.full = True
    for e in events[5:]:
        rep.submit(e)
    assert rep.stats()["on_disk"] == 5 and rep.stats()["in_memory"] == 7

    # the bus is back: everything goes, on-disk ones first, in one call
    assert due_step(rep, clock) == rep.disk_retry
    assert api.calls[1] == ids(events)
    assert api.accepted == ids(events)
    stats = rep.stats()
    assert (stats["pending"], stats["delivered"]) == (0, 12)
    assert stats["disk_error"].startswith("OperationalError")

    # the 5 delivered ones could not be deleted: remembered, not re-sent
    assert due_step(rep, clock) == rep.disk_retry
    assert len(api.calls) == 2
    assert len(disk) == 5

    # the disk returns: they are deleted, the held ones are not written
    # as pending (they were delivered), and nothing is sent again
    disk.full = False
    assert due_step(rep, clock) is None
    assert len(disk) == 0
    assert len(api.calls) == 2
    assert rep.stats()["disk_error"] is None


def test_held_events_delivered_keep_their_open_fault_record(disk):
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(disk, api, clock=clock)
    disk.full = True
    opened = fault(0)
    rep.submit(opened)
    due_step(rep, clock)
    assert api.accepted == [opened["id"]]
    disk.full = False
    due_step(rep, clock)
    # written for the open-fault table only, not as an event to send
    assert len(disk) == 0
    assert disk.open_faults() == {opened["instance"]: {
        "id": opened["id"], "kind": "missed"}}


def test_on_disk_events_go_before_held_ones_batch_by_batch(disk):
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(disk, api, batch=3, clock=clock)
    events = [fault(n) for n in range(9)]
    for e in events[:5]:
        rep.submit(e)
    disk.full = True
    for e in events[5:]:
        rep.submit(e)
    for _ in range(3):
        due_step(rep, clock)
    assert api.calls == [ids(events[0:3]), ids(events[3:6]),
                         ids(events[6:9])]


def test_held_events_wait_while_the_disk_cannot_be_read(disk, caplog):
    # which events on disk still wait is unknown: sending the held ones
    # would let them overtake
    clock = ManualClock(100.0)
    api = FakeAPI()
    rep = make(disk, api, clock=clock)
    rep.submit(fault(0))
    disk.full = disk.unreadable = True
    rep.submit(fault(1))
    with caplog.at_level(logging.ERROR, logger=reporter_mod.__name__):
        assert due_step(rep, clock) == rep.disk_retry
        due_step(rep, clock)
    assert api.calls == []
    [read] = [r.getMessage() for r in caplog.records
              if "cannot read" in r.getMessage()]
    assert "1 event(s) on disk wait, and 1 held in memory" in read
    disk.full = disk.unreadable = False
    due_step(rep, clock)
    assert len(api.calls) == 1 and len(api.accepted) == 2


def test_an_unreadable_disk_is_retried_every_second_not_in_a_spin(disk):
    clock = ManualClock(0.0)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(disk, api, clock=clock, backoff=(10.0, 10.0))
    rep.submit(fault(0))
    assert rep.step() == pytest.approx(10.0)   # the bus's back-off
    disk.unreadable = True
    clock.now = 10.0
    assert rep.step() == pytest.approx(1.0)    # the disk's retry
    for t in (10.5, 10.9):
        clock.now = t
        assert rep.step() > 0                  # nothing due: no spin
    clock.now = 11.0
    disk.unreadable = False
    assert rep.step() is None                  # read, delivered
    assert rep.stats()["disk_error"] is None and api.accepted


def test_disk_errors_do_not_grow_the_backoff_and_recovery_is_prompt(disk):
    # On the timeline the disk stayed full 25 s and the back-off,
    # grown by disk errors, reached 30 s.  Here the bus is up throughout:
    # every event goes at once, and the disk is tried every second.
    clock = ManualClock(0.0)
    api = FakeAPI()
    rep = make(disk, api, clock=clock, disk_retry=1.0)
    disk.full = True
    for t in range(25):
        clock.now = float(t)
        rep.submit(fault(t))
        assert rep.step() == 1.0              # the disk's retry, no more
    assert rep.stats()["delivered"] == 25
    assert rep.stats()["retries"] == 0
    disk.full = False
    clock.now = 25.0
    assert rep.step() is None                 # written at the next try
    assert rep.stats()["disk_error"] is None
    assert len(disk) == 0 and len(api.calls) == 25


def test_a_submit_does_not_cut_a_backoff_short(disk):
    clock = ManualClock(0.0)
    api = FakeAPI([oslo_messaging.MessagingTimeout("no answer")])
    rep = make(disk, api, clock=clock, backoff=(0.4, 0.4))
    rep.submit(fault(0))
    assert rep.step() == pytest.approx(0.4)
    clock.now = 0.1
    rep.submit(fault(1))
    assert rep.step() == pytest.approx(0.3)   # not due: no call
    assert len(api.calls) == 1
    clock.now = 0.4
    assert rep.step() is None
    assert len(api.calls) == 2 and rep.stats()["delivered"] == 2


def test_a_relay_through_the_broker_ends_a_backoff(disk):
    # the broker was unreachable; a server-group cast goes through: it is
    # back, so deliver now rather than at the end of a 30 s back-off
    clock = ManualClock(0.0)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")] * 7)
    rep = make(disk, api, clock=clock, backoff=(0.5, 30.0))
    rep.submit(fault(0))
    for _ in range(6):
        clock.now += rep.step()
    assert rep.step() == pytest.approx(30.0)
    clock.now += 1.0
    assert rep.step() == pytest.approx(29.0)  # not due: no call
    assert len(api.calls) == 7
    rep.cast_relay("agent_alive", instances=[])
    rep.relays.cast_pending()
    assert rep.step() is None
    assert rep.stats()["delivered"] == 1
    assert len(api.calls) == 8


def test_each_condition_is_logged_once_saying_what_is_kept_where(
        disk, caplog):
    clock = ManualClock(100.0)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")] * 10)
    rep = make(disk, api, clock=clock)
    with caplog.at_level(logging.INFO, logger=reporter_mod.__name__):
        for n in range(3):
            rep.submit(fault(n))
        disk.full = True
        for n in range(3, 73):
            rep.submit(fault(n))
        for _ in range(10):
            due_step(rep, clock)          # bus down, disk full
        disk.full = False
        due_step(rep, clock)              # both back
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(messages) == 4, messages
    level, text = messages[0]
    assert level == "ERROR"
    assert "cannot write the outbox" in text and "database or disk is full" \
        in text and "1 event(s) held in memory" in text
    level, text = messages[1]
    assert level == "WARNING"
    assert "cannot deliver: controller unreachable" in text
    assert "73 event(s) waiting (3 on disk, 70 in memory)" in text
    level, text = messages[2]
    assert level == "INFO"
    assert "writable again: saved 70 event(s)" in text
    level, text = messages[3]
    assert "delivering again after 10 failed attempt(s)" in text
    assert rep.stats()["delivered"] == 73


def test_the_memory_bound_drops_the_oldest_and_says_how_many(
        disk, caplog, monkeypatch):
    clock = ManualClock(100.0)
    monkeypatch.setattr(reporter_mod, "MAX_UNSAVED", 5)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep = make(disk, api, clock=clock)
    disk.full = True
    events = [fault(n) for n in range(8)]
    with caplog.at_level(logging.INFO, logger=reporter_mod.__name__):
        for e in events:
            rep.submit(e)
        disk.full = False
        due_step(rep, clock)
    assert rep.stats()["dropped"] == 3
    drops = [r.getMessage() for r in caplog.records if "dropping" in
             r.getMessage()]
    assert len(drops) == 1 and events[0]["id"] in drops[0]
    assert any("3 event(s) were dropped meanwhile" in r.getMessage()
               for r in caplog.records)
    due_step(rep, clock)
    assert api.accepted == ids(events[3:])


# -- a stop -------------------------------------------------------------------

def held(disk, api, n=7):
    rep = make(disk, api)
    disk.full = True
    events = [fault(i) for i in range(n)]
    for e in events:
        rep.submit(e)
    return rep, events


def test_a_stop_writes_held_events_if_the_disk_lets_it(disk):
    api = FakeAPI()
    rep, events = held(disk, api)
    disk.full = False
    rep.stop(timeout=5)
    assert [e["id"] for _, e in disk.peek(100)] == ids(events)
    assert api.calls == []


def test_a_stop_delivers_held_events_if_the_disk_is_still_full(disk):
    api = FakeAPI()
    rep, events = held(disk, api)
    rep.stop(timeout=5)
    assert api.accepted == ids(events)
    assert 0 < api.timeouts[0] <= 5         # within the stop's time


def test_a_stop_that_can_neither_write_nor_deliver_says_how_many_it_lost(
        disk, caplog):
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep, events = held(disk, api)
    rep.submit(dict(fault(99), type="recovery", fault_id=events[0]["id"]))
    with caplog.at_level(logging.ERROR, logger=reporter_mod.__name__):
        rep.stop(timeout=5)
    lost = [r.getMessage() for r in caplog.records
            if "they are lost" in r.getMessage()]
    assert len(lost) == 1
    assert "8 event(s)" in lost[0] and "7 fault" in lost[0] \
        and "1 recovery" in lost[0]


def test_a_stop_does_not_hang_in_a_call_that_blocks(disk, caplog):
    # a process's first call can block until the broker is back, whatever
    # its timeout: the stop's attempt runs in a thread it does not wait for
    # beyond its own timeout
    release = threading.Event()
    api = FakeAPI()
    api.during_call = lambda: release.wait(30)
    rep, events = held(disk, api)
    try:
        with caplog.at_level(logging.WARNING, logger=reporter_mod.__name__):
            rep.stop(timeout=0.2)
    finally:
        release.set()
    messages = [r.getMessage() for r in caplog.records]
    assert any("still in flight" in m for m in messages)
    assert any("7 event(s)" in m and "they are lost" in m for m in messages)


def test_a_stop_counts_the_events_the_memory_bound_dropped(
        disk, caplog, monkeypatch):
    monkeypatch.setattr(reporter_mod, "MAX_UNSAVED", 5)
    api = FakeAPI([oslo_messaging.MessageDeliveryFailure("down")])
    rep, events = held(disk, api, n=8)
    with caplog.at_level(logging.ERROR, logger=reporter_mod.__name__):
        rep.stop(timeout=5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("3 event(s) were dropped" in m for m in messages)
    assert any("5 event(s) held in memory" in m and "they are lost" in m
               for m in messages)


def test_a_stop_with_nothing_held_does_nothing(disk, caplog):
    api = FakeAPI()
    rep = make(disk, api)
    rep.submit(fault(0))
    with caplog.at_level(logging.INFO, logger=reporter_mod.__name__):
        rep.stop(timeout=5)
    assert caplog.records == [] and api.calls == []
    assert len(disk) == 1


# -- a full disk at start -----------------------------------------------------

class Unopenable(object):
    """Makes Outbox._connect fail as sqlite does on a full disk, which
    cannot set up its WAL, while ``full`` is set."""

    def __init__(self, monkeypatch):
        self.full = True
        connect = Outbox._connect

        def _connect(box):
            if self.full:
                raise sqlite3.OperationalError("disk I/O error")
            return connect(box)
        monkeypatch.setattr(Outbox, "_connect", _connect)


def test_an_agent_started_on_a_full_disk_runs_and_catches_up(
        tmp_path, monkeypatch, caplog):
    clock = ManualClock(100.0)
    path = str(tmp_path / "outbox.sqlite")
    before = Outbox(path, 1000)             # the last run left 2 events
    old = [fault(n) for n in range(2)]
    for e in old:
        before.put(e)
    before.close()

    disk = Unopenable(monkeypatch)
    box = Outbox(path, 1000)                # no exception: the agent runs
    assert box.unknown
    api = FakeAPI()
    rep = make(box, api, clock=clock)
    new = [fault(n) for n in range(2, 5)]
    with caplog.at_level(logging.ERROR, logger=reporter_mod.__name__):
        for e in new:
            rep.submit(e)
        assert due_step(rep, clock) == rep.disk_retry
    # the held events must not overtake the ones on disk, unseen yet
    assert api.calls == []
    assert any("an unknown number of event(s) on disk wait, and 3 held"
               in r.getMessage() for r in caplog.records)

    disk.full = False
    drain(rep, clock)
    assert api.accepted == ids(old + new)
    assert len(box) == 0 and not box.unknown
    box.close()


def test_a_bad_path_still_fails_at_start(tmp_path):
    (tmp_path / "outbox.sqlite").mkdir()     # a directory, not a file
    with pytest.raises(sqlite3.OperationalError):
        Outbox(str(tmp_path / "outbox.sqlite"), 10)


def test_open_faults_are_read_from_a_file_that_cannot_be_opened(
        tmp_path, monkeypatch):
    path = str(tmp_path / "outbox.sqlite")
    before = Outbox(path, 1000)
    opened = fault(0)
    before.put(opened)
    before.close()                          # a clean stop checkpoints
    Unopenable(monkeypatch)
    box = Outbox(path, 1000)
    assert box.open_faults() == {opened["instance"]: {
        "id": opened["id"], "kind": "missed"}}


def test_an_event_counts_as_delivered_only_once_it_no_longer_waits(disk):
    # stats() is read from other threads (the status socket, tests): once
    # "delivered" counts an event, "pending" must not count it any more
    clock = ManualClock(100.0)
    seen = []
    reporter = make(disk, FakeAPI(), clock=clock)
    real_ack = disk.ack

    def ack(rowids):
        seen.append(reporter.stats())  # between the answer and the delete
        return real_ack(rowids)

    disk.ack = ack
    for n in range(5):
        reporter.submit(fault(n))
    drain(reporter, clock)
    assert seen and all(s["delivered"] + s["pending"] == 5 for s in seen)
    stats = reporter.stats()
    assert (stats["delivered"], stats["pending"]) == (5, 0)
