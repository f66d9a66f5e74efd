# SPDX-License-Identifier: Apache-2.0
"""The REST API's tables on a real MariaDB (a mariadbd of the test's own,
guestha/testing/shared_controllers.py): migration 003 from a database at 002
with events in it, the ledger keeping the tables as events arrive, the API
reading them through ``[database] connection``, and pruning."""

import json
import time
import uuid

from oslo_config import cfg
import pytest
import sqlalchemy as sa
import webtest

from guestha.api import app as app_mod
from guestha.conf import opts
from guestha.db import api as db_api
from guestha.db import migration
from guestha.db import models
from guestha import records
from guestha.server import actions as actions_mod
from guestha.server.ledger import Ledger
from guestha.testing import shared_controllers

pytestmark = pytest.mark.functional

P1, P2 = "1" * 32, "2" * 32
ADMIN = {"X-Project-Id": P1, "X-Roles": "admin"}
MEMBER2 = {"X-Project-Id": P2, "X-Roles": "member"}


@pytest.fixture
def mariadb(tmp_path):
    if not shared_controllers.MariaDB.available():
        pytest.skip("MariaDB is not installed (mariadb-server)")
    db = shared_controllers.MariaDB(str(tmp_path)).install().start()
    db.execute("CREATE DATABASE ghapi CHARACTER SET utf8mb4")
    try:
        yield db
    finally:
        db.kill()


def test_the_api_on_mariadb(mariadb):
    url = mariadb.url("ghapi")
    engine = db_api.create_engine(url)
    migration.upgrade(engine, "002")
    now = time.time()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    old_fault = records.make_fault(a, "c1", "missed", "no answer", "reboot",
                                   now - 60, 1000, 1)
    with engine.begin() as conn:
        for seq, event in enumerate([
                records.make_state(a, "c1", "monitored", None, now - 100,
                                   details={"project_id": P1}),
                old_fault,
                records.make_recovery(a, "c1", old_fault["id"], now - 50)]):
            conn.execute(models.events.insert().values(
                id=event["id"], type=event["type"],
                instance=event["instance"], host=event["host"],
                body=json.dumps(event), received=now - 100 + seq,
                server="ctl-old", seq=seq))
    migration.upgrade(engine)
    assert migration.current(engine) == migration.head()
    with engine.connect() as conn:
        [row] = conn.execute(sa.select(models.faults)).all()
    assert (row.id, row.recovered_at) == (old_fault["id"], now - 50)

    ledger = Ledger(url, "ctl-a", sinks=("log",))
    try:
        ledger.register()
        fault = records.make_fault(b, "c2", "unhealthy", "é" * 2000, None, now,
                                   500, 0)
        assert not ledger.accept([
            records.make_state(b, "c2", "faulted", None, now,
                               details={"project_id": P2, "name": "vm-b"}),
            fault]).rejected
        ledger.record(actions_mod.action_record(
            fault, "reboot", "failed: " + "x" * 600, "Nova said no",
            "ctl-a", now + 1))

        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf([], project="guestha-test")
        conf.set_override("connection", url, group="database")
        conf.set_override("auth_strategy", "noauth", group="api")
        client = webtest.TestApp(app_mod.make_app(conf))
        body = client.get("/v1/instances", headers=ADMIN).json
        assert sorted(i["id"] for i in body["instances"]) == sorted([a, b])
        body = client.get("/v1/instances", headers=MEMBER2).json
        assert [(i["id"], i["name"], i["open_faults"])
                for i in body["instances"]] == [(b, "vm-b", 1)]
        client.get("/v1/instances/" + a, headers=MEMBER2, status=404)
        faults = client.get("/v1/faults", headers=ADMIN).json["faults"]
        assert [f["id"] for f in faults] == [fault["id"], old_fault["id"]]
        assert faults[0]["reason"] == "é" * 1024  # the record's limit
        [action] = client.get("/v1/actions", headers=MEMBER2).json[
            "actions"]
        assert len(action["outcome"]) == 255
        page = client.get("/v1/faults?limit=1", headers=ADMIN).json
        assert page["next"] == fault["id"]
        rest = client.get("/v1/faults?limit=1&marker=" + page["next"],
                          headers=ADMIN).json
        assert [f["id"] for f in rest["faults"]] == [old_fault["id"]]

        # pruning on MySQL: the recovered fault goes, the open one stays
        with engine.begin() as conn:
            conn.execute(models.deliveries.update().values(state="done"))
        ledger.prune(now - 10)
        faults = client.get("/v1/faults", headers=ADMIN).json["faults"]
        assert [f["id"] for f in faults] == [fault["id"]]
    finally:
        ledger.close()
        engine.dispose()
