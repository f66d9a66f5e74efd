# SPDX-License-Identifier: Apache-2.0
"""The outbox with its fallback in memory, on its own: a real sqlite
outbox whose disk fills (tests.unit.agent.test_reporter_disk.DiskOutbox),
a fake clock, no bus."""

import logging

from guestha.agent import fallbackoutbox
from guestha.agent.fallbackoutbox import FallbackOutbox
from tests.support.clock import ManualClock
from tests.unit.agent.test_reporter import fault
from tests.unit.agent.test_reporter_disk import disk  # noqa: F401 fixture


def ids(batch):
    rows, held = batch
    return [e["id"] for _, e in rows] + [h.event["id"] for h in held]


def test_a_full_disk_holds_events_behind_those_on_disk(disk):  # noqa: F811
    box = FallbackOutbox(disk, limit=10, clock=ManualClock(0.0))
    events = [fault(n) for n in range(4)]
    box.put(events[0])
    disk.full = True
    box.put(events[1])
    disk.full = False
    box.put(events[2])      # behind the held one, though the disk is fine

    assert box.counts() == (1, 2)
    assert box.trouble() and box.holding()
    # on disk first, then from memory
    assert ids(box.next_batch(10)) == [e["id"] for e in events[:3]]
    assert ids(box.next_batch(1)) == [events[0]["id"]]


def test_retry_writes_the_held_events_when_it_is_due(disk, caplog):  # noqa: F811,E501
    clock = ManualClock(0.0)
    box = FallbackOutbox(disk, limit=10, retry_interval=1.0, clock=clock)
    disk.full = True
    with caplog.at_level(logging.INFO, logger=fallbackoutbox.LOG.name):
        box.put(fault(1))
        box.put(fault(2))
        assert box.due == 1.0 and box.error.startswith("OperationalError")
        box.retry()                       # still full: tried, logged once
        disk.full = False
        clock.advance(1.0)
        box.retry()

    assert box.counts() == (2, 0)
    assert not box.trouble() and box.error is None and box.due is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "cannot write the outbox" in messages[0]
    assert "writable again: saved 2 event(s)" in messages[1]


def test_delivered_held_events_no_longer_wait(disk):  # noqa: F811
    box = FallbackOutbox(disk, limit=10, clock=ManualClock(0.0))
    disk.full = True
    box.put(fault(1))
    rows, held = box.next_batch(10)

    box.done([], held)

    assert box.counts() == (0, 0)
    assert box.next_batch(10) is None
    assert box.holding()      # its open-fault record is still to be written


def test_the_oldest_held_event_is_dropped_past_the_limit(disk):  # noqa: F811
    box = FallbackOutbox(disk, limit=2, clock=ManualClock(0.0))
    disk.full = True
    events = [fault(n) for n in range(3)]
    for e in events:
        box.put(e)

    assert box.counts() == (0, 2)
    assert box.dropped == 1
    assert ids(box.next_batch(10)) == [e["id"] for e in events[1:]]


def test_an_undeletable_delivery_is_not_offered_again(disk):  # noqa: F811
    box = FallbackOutbox(disk, limit=10, clock=ManualClock(0.0))
    events = [fault(1), fault(2)]
    box.put(events[0])
    box.put(events[1])
    rows, _ = box.next_batch(1)
    disk.full = True

    box.done([rowid for rowid, _ in rows], [])

    assert box.counts() == (1, 0)
    assert ids(box.next_batch(10)) == [events[1]["id"]]
    disk.full = False
    box.retry()
    assert len(disk) == 1 and not box.trouble()
