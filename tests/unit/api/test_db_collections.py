# SPDX-License-Identifier: Apache-2.0
"""The reader's one list function over its collection tables: filters a
collection does not have, markers that name nothing, and the order of
each collection (a migrated SQLite database, rows written as the
controllers' views write them)."""

import pytest

from guestha.api import db as api_db
from guestha.db import api as db_api
from guestha.db import migration
from guestha.db import models

T0 = 1_800_000_000.0
I1 = "00000000-0000-4000-8000-000000000001"
I2 = "00000000-0000-4000-8000-000000000002"


@pytest.fixture
def reader(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    engine = db_api.create_engine(path)
    migration.upgrade(engine)
    with engine.begin() as conn:
        for n, instance in enumerate((I2, I1)):
            conn.execute(models.instance_states.insert().values(
                instance=instance, project_id="p%d" % n, host="h",
                state="monitored", at=T0, updated=T0, event_id=instance))
        for n in range(3):
            conn.execute(models.faults.insert().values(
                id="f%d" % n, instance=I1, host="h", kind="missed",
                detected_at=T0 + n, received=T0 + n, server="ctl",
                recovered_at=None if n else T0 + 5))
    engine.dispose()
    reader = api_db.Reader(db_api.sqlite_url(path))
    yield reader
    reader.close()


def test_each_collection_in_its_order_page_by_page(reader):
    items, nxt = reader.list(api_db.INSTANCES, limit=1)
    assert [i["id"] for i in items] == [I1] and nxt == I1
    items, nxt = reader.list(api_db.INSTANCES, limit=1, marker=nxt)
    assert [i["id"] for i in items] == [I2] and nxt is None

    items, nxt = reader.list(api_db.FAULTS, limit=2)
    assert [i["id"] for i in items] == ["f2", "f1"] and nxt == "f1"
    items, nxt = reader.list(api_db.FAULTS, limit=2, marker=nxt)
    assert [i["id"] for i in items] == ["f0"] and nxt is None


def test_filters_of_the_collections_table(reader):
    items, _ = reader.list(api_db.FAULTS, open=True, project_id="p1")
    assert [i["id"] for i in items] == ["f2", "f1"]
    assert reader.list(api_db.FAULTS, open=False, kind=None)[0][0][
        "id"] == "f0"
    assert reader.list(api_db.ACTIONS, fault_id="f0") == ([], None)
    with pytest.raises(TypeError, match="instances cannot be filtered "
                                        "by kind"):
        reader.list(api_db.INSTANCES, kind="missed")


def test_a_marker_that_names_nothing(reader):
    with pytest.raises(api_db.BadMarker):
        reader.list(api_db.FAULTS, marker="nope")
    assert reader.get(api_db.FAULTS, "f1")["open"] is True
    assert reader.get(api_db.ACTIONS, "nope") is None
