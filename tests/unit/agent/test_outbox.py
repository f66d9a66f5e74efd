# SPDX-License-Identifier: Apache-2.0
"""The outbox: order, idempotent puts, bounds, restarts, corruption,
threads."""

import logging
import os
import sqlite3
import threading
import uuid

import pytest

from guestha.agent import outbox as outbox_mod
from guestha.agent.outbox import Outbox

# 2024-03-01T12:00:00Z, for the name of a moved-aside file
WALLCLOCK = 1709294400.0


def event(n, kind="missed"):
    return {"id": str(uuid.uuid4()), "type": "fault", "kind": kind,
            "instance": "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e", "n": n}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "outbox.sqlite")


def ns(batch):
    return [e["n"] for _, e in batch]


def test_put_peek_ack_in_order(path):
    box = Outbox(path, 100)
    for n in range(5):
        assert box.put(event(n)) is True
    assert len(box) == 5

    batch = box.peek(3)
    assert ns(batch) == [0, 1, 2]
    assert [r for r, _ in batch] == sorted(r for r, _ in batch)
    assert ns(box.peek(3)) == [0, 1, 2], "peek must not remove"

    box.ack([batch[0][0], batch[2][0]])
    assert len(box) == 3
    assert ns(box.peek(10)) == [1, 3, 4]
    box.ack([])
    assert len(box) == 3
    box.close()


def test_putting_the_same_event_again_is_a_no_op(path):
    box = Outbox(path, 100)
    e = event(0)
    assert box.put(e) is True
    assert box.put(dict(e, n=99)) is False
    assert len(box) == 1
    assert ns(box.peek(10)) == [0]


def test_reopen_returns_pending_events_in_order_and_new_ones_after(path):
    box = Outbox(path, 100)
    for n in range(4):
        box.put(event(n))
    box.ack([box.peek(1)[0][0]])
    box.close()

    box = Outbox(path, 100)
    assert len(box) == 3
    assert ns(box.peek(10)) == [1, 2, 3]
    box.put(event(4))
    assert ns(box.peek(10)) == [1, 2, 3, 4]


def test_rowids_are_never_reused_after_the_outbox_was_emptied(path):
    box = Outbox(path, 100)
    box.put(event(0))
    first = box.peek(1)[0][0]
    box.ack([first])
    box.close()

    box = Outbox(path, 100)
    box.put(event(1))
    assert box.peek(1)[0][0] > first


def test_full_outbox_drops_the_oldest_and_logs_each(path, caplog):
    box = Outbox(path, 3)
    events = [event(n, kind="unhealthy" if n == 1 else "missed")
              for n in range(5)]
    with caplog.at_level(logging.ERROR, logger=outbox_mod.__name__):
        for e in events:
            box.put(e)

    assert len(box) == 3
    assert box.dropped == 2
    assert ns(box.peek(10)) == [2, 3, 4]
    drops = [r.getMessage() for r in caplog.records]
    assert len(drops) == 2
    assert events[0]["id"] in drops[0] and "missed" in drops[0]
    assert events[1]["id"] in drops[1] and "unhealthy" in drops[1]


def test_lowering_max_events_drops_the_oldest_at_open(path):
    box = Outbox(path, 10)
    for n in range(6):
        box.put(event(n))
    box.close()

    box = Outbox(path, 4)
    assert len(box) == 4
    assert box.dropped == 2
    assert ns(box.peek(10)) == [2, 3, 4, 5]


def test_ack_of_more_rows_than_one_statement_takes(path):
    box = Outbox(path, 5000)
    for n in range(1200):
        box.put(event(n))
    box.ack([r for r, _ in box.peek(1100)])
    assert len(box) == 100
    assert ns(box.peek(1))[0] == 1100


def test_the_file_is_in_wal_mode_with_the_chosen_sync_level(path):
    box = Outbox(path, 10, synchronous="FULL")
    # journal_mode is a property of the file, synchronous of a connection
    # (2 is FULL, 1 NORMAL).
    assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    box.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    box = Outbox(path, 10)
    assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_a_corrupt_file_is_moved_aside_and_a_new_outbox_started(
        path, caplog):
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, logger=outbox_mod.__name__):
        box = Outbox(path, 10, wallclock=lambda: WALLCLOCK)

    aside = path + ".corrupt-20240301T120000Z"
    assert os.path.exists(aside)
    with open(aside, "rb") as f:
        assert f.read().startswith(b"this is not a database")
    assert len(box) == 0
    box.put(event(0))
    assert ns(box.peek(1)) == [0]
    assert any(aside in r.getMessage() for r in caplog.records)


def test_a_database_with_another_schema_is_moved_aside(path):
    os.makedirs(os.path.dirname(path))
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (n INTEGER)")
    conn.commit()
    conn.close()

    box = Outbox(path, 10, wallclock=lambda: WALLCLOCK)
    assert os.path.exists(path + ".corrupt-20240301T120000Z")
    box.put(event(0))
    assert len(box) == 1


def test_a_bad_row_is_dropped_not_returned(path):
    box = Outbox(path, 10)
    box.put(event(0))
    box._conn.execute("INSERT INTO events (id, body) VALUES ('x', 'nope')")
    box.put(event(2))
    box._count += 1  # the row inserted behind its back

    assert ns(box.peek(10)) == [0, 2]
    assert box.dropped == 1
    assert len(box) == 2


def test_max_events_must_be_positive(path):
    with pytest.raises(ValueError, match="max_events"):
        Outbox(path, 0)
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(path, 1, synchronous="OFF")


def test_concurrent_puts_and_acks_lose_and_repeat_nothing(path):
    box = Outbox(path, 100000)
    writers, per_writer = 4, 500
    taken = []
    done = threading.Event()

    def write(w):
        for n in range(per_writer):
            box.put(event(w * per_writer + n))

    def read():
        while True:
            finished = done.is_set()
            batch = box.peek(50)
            taken.extend(e["n"] for _, e in batch)
            box.ack([r for r, _ in batch])
            if finished and not batch:
                return

    threads = [threading.Thread(target=write, args=(w,))
               for w in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(30)

    assert sorted(taken) == list(range(writers * per_writer))
    assert len(box) == 0
    # each writer's events came out in the order it put them
    for w in range(writers):
        mine = [n for n in taken if n // per_writer == w]
        assert mine == sorted(mine)


def test_a_closed_outbox_raises_an_sqlite_error(path):
    box = Outbox(path, 10)
    box.close()
    for operation in (lambda: box.put(event(0)), lambda: box.peek(1),
                      lambda: box.ack([1])):
        with pytest.raises(sqlite3.Error, match="closed"):
            operation()


# -- open faults (issue 13: one durable step with the event) -----------------

def fault_event(instance, n=0):
    return {"id": str(uuid.uuid4()), "type": "fault", "kind": "missed",
            "instance": instance, "n": n}


def recovery_event(fault):
    return {"id": str(uuid.uuid4()), "type": "recovery",
            "instance": fault["instance"], "fault_id": fault["id"]}


A = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
B = "6c1f8e0f-4d2b-4c70-9f3e-2a1b0d9c8e7f"


def test_a_fault_and_its_recovery_follow_the_events(path):
    box = Outbox(path, 100)
    fa, fb = fault_event(A), fault_event(B)
    box.put(fa)
    box.put(fb)
    assert box.open_faults() == {A: {"id": fa["id"], "kind": "missed"},
                                 B: {"id": fb["id"], "kind": "missed"}}
    box.put(recovery_event(fa))
    box.put(recovery_event(dict(fb, id=str(uuid.uuid4()))))  # not its own
    assert set(box.open_faults()) == {B}
    # acked (delivered) events leave the open faults as they are
    box.ack([r for r, _ in box.peek(10)])
    box.close()
    assert Outbox(path, 100).open_faults() == {
        B: {"id": fb["id"], "kind": "missed"}}


def test_a_failed_write_records_neither_the_event_nor_the_fault(path):
    # the event and the open-fault record are one transaction: a failure
    # (here a bad event, in a real agent a full disk or a kill) leaves
    # both as they were
    box = Outbox(path, 100)
    box._conn.execute(
        "CREATE TEMP TRIGGER full BEFORE INSERT ON events BEGIN "
        "SELECT RAISE(ABORT, 'database or disk is full'); END")
    fa = fault_event(A)
    with pytest.raises(sqlite3.Error, match="disk is full"):
        box.put(fa)
    with pytest.raises(sqlite3.Error, match="disk is full"):
        box.put_many([(fault_event(B), False), (fa, True)])
    assert len(box) == 0 and box.open_faults() == {}


def test_a_delivered_event_written_late_records_only_its_fault(path):
    box = Outbox(path, 100)
    fa = fault_event(A)
    assert box.put(fa, pending=False) is False
    assert len(box) == 0
    assert set(box.open_faults()) == {A}


def test_faults_json_is_adopted_once_and_removed(path, tmp_path):
    os.makedirs(os.path.dirname(path))
    legacy = os.path.join(os.path.dirname(path), "faults.json")
    with open(legacy, "w") as f:
        f.write('{"%s": {"id": "f-1", "kind": "unhealthy"}}' % A)
    box = Outbox(path, 100)
    assert box.adopt_faults_json(legacy) == 1
    assert not os.path.exists(legacy)
    assert box.open_faults() == {A: {"id": "f-1", "kind": "unhealthy"}}
    box.put(recovery_event({"instance": A, "id": "f-1"}))
    # a copy left by a crash before the removal is not adopted again:
    # that would reopen the fault just recovered
    with open(legacy, "w") as f:
        f.write('{"%s": {"id": "f-1", "kind": "unhealthy"}}' % A)
    assert box.adopt_faults_json(legacy) == 0
    assert not os.path.exists(legacy)
    assert box.open_faults() == {}
    assert box.adopt_faults_json(legacy) == 0     # no file: nothing
