# SPDX-License-Identifier: Apache-2.0
"""The REST API against a real SQLite ledger that a controller's Ledger
filled (events accepted as from agents, action records), with the noauth
strategy: what each route answers, filters, pages, errors; and what the
policy lets an admin, a project member, a reader and a stranger see."""

from oslo_config import cfg
import pytest
import webtest

from guestha.api import app as app_mod
from guestha.api import db as db_mod
from guestha.conf import opts
from guestha import records
from tests.support.ledger import fill_ledger

P1 = "1111aaaa1111aaaa1111aaaa1111aaaa"
P2 = "2222bbbb2222bbbb2222bbbb2222bbbb"
A1 = "0a000000-0000-4000-8000-000000000001"  # project 1, compute-1
A2 = "0a000000-0000-4000-8000-000000000002"  # project 1, compute-2
B1 = "0b000000-0000-4000-8000-000000000001"  # project 2
ORPHAN = "0c000000-0000-4000-8000-000000000001"  # no state report
T0 = 1_800_000_000.0

ADMIN = {"X-Project-Id": P2, "X-Roles": "admin,member,reader"}
MEMBER1 = {"X-Project-Id": P1, "X-Roles": "member,reader"}
READER1 = {"X-Project-Id": P1, "X-Roles": "reader"}
MEMBER2 = {"X-Project-Id": P2, "X-Roles": "member"}
NOBODY1 = {"X-Project-Id": P1, "X-Roles": ""}


def state(instance, host, state_name, project, at, **details):
    details.update(project_id=project)
    return records.make_state(instance, host, state_name, None, at,
                              details=details)


@pytest.fixture
def world(tmp_path):
    """A ledger with three instances' states, faults and actions."""
    path = str(tmp_path / "ledger.sqlite")
    f_a1_old = records.make_fault(A1, "compute-1", "missed", "no answer",
                                  "reboot", T0 + 1, 1000, 2)
    f_a1 = records.make_fault(A1, "compute-1", "unhealthy", "app down", "log",
                              T0 + 5, 1000, 0)
    f_b1 = records.make_fault(B1, "compute-1", "missed", "no answer", None,
                              T0 + 3, 500, 2)
    f_orphan = records.make_fault(ORPHAN, "compute-9", "channel-lost", "gone",
                                  None, T0 + 4, None, 0)
    events = [
        state(A1, "compute-1", "monitored", P1, T0, interval_ms=1000,
              name="vm-a1"),
        state(A2, "compute-2", "unregistered", P1, T0),
        state(B1, "compute-1", "faulted", P2, T0 + 3, interval_ms=500),
        f_a1_old, f_b1, f_orphan,
        records.make_recovery(A1, "compute-1", f_a1_old["id"], T0 + 2,
                              kind="missed"),
        f_a1,
        state(A1, "compute-1", "faulted", P1, T0 + 5, interval_ms=1000,
              name="vm-a1"),
    ]
    fill_ledger(path, events, [
        dict(fault=fault, action="reboot", outcome=outcome,
             reason="the guest recommends reboot", at=at, step="hard")
        for fault, outcome, at in ((f_a1_old, "applied", T0 + 1.5),
                                   (f_b1, "refused: cap", T0 + 3.5))],
        now=T0, accepted_at=T0 + 6)
    return {"path": path, "faults": {"a1_old": f_a1_old, "a1": f_a1,
                                     "b1": f_b1, "orphan": f_orphan}}


def make_conf(path, **api_opts):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="guestha-test")
    conf.set_override("ledger_path", path, group="server")
    conf.set_override("auth_strategy", "noauth", group="api")
    for name, value in api_opts.items():
        conf.set_override(name, value, group="api")
    return conf


@pytest.fixture
def app(world):
    conf = make_conf(world["path"])
    return webtest.TestApp(app_mod.make_app(conf))


def ids(items):
    return [item["id"] for item in items]


# -- versions and errors -----------------------------------------------------

def test_root_lists_v1_without_any_header(app):
    body = app.get("/").json
    assert [v["id"] for v in body["versions"]] == ["v1"]
    assert body["versions"][0]["status"] == "CURRENT"
    assert body["versions"][0]["links"][0]["href"].endswith("/v1/")
    assert app.get("/v1/", headers=ADMIN).json["version"]["id"] == "v1"


def test_unknown_path_and_writes_answer_json_errors(app):
    resp = app.get("/v1/nothing", headers=ADMIN, status=404)
    assert resp.json["error"]["code"] == 404
    assert resp.json["error"]["title"] == "Not Found"
    resp = app.post("/v1/instances", headers=ADMIN, status=405)
    assert resp.json["error"]["code"] == 405
    assert resp.headers["Allow"] == "GET"


def test_bad_parameters_are_400(app):
    for query in ("limit=x", "limit=0"):
        resp = app.get("/v1/instances?" + query, headers=ADMIN, status=400)
        assert resp.json["error"]["code"] == 400
    app.get("/v1/faults?open=maybe", headers=ADMIN, status=400)
    resp = app.get("/v1/faults?marker=no-such", headers=ADMIN, status=400)
    assert "marker" in resp.json["error"]["message"]


# -- instances ---------------------------------------------------------------

def test_admin_lists_every_instance_with_its_state(app):
    body = app.get("/v1/instances", headers=ADMIN).json
    assert body["next"] is None
    by_id = {i["id"]: i for i in body["instances"]}
    assert list(by_id) == [A1, A2, B1]  # ordered by id
    a1 = by_id[A1]
    assert (a1["state"], a1["project_id"], a1["host"], a1["interval_ms"],
            a1["open_faults"], a1["name"]) == ("faulted", P1, "compute-1",
                                               1000, 1, "vm-a1")
    assert a1["updated_at"].startswith("2027-01-15T08:")
    assert by_id[A2]["state"] == "unregistered"
    assert by_id[A2]["open_faults"] == 0
    assert by_id[B1]["open_faults"] == 1


def test_instance_filters_and_pages(app):
    def listed(query):
        return ids(app.get("/v1/instances?" + query,
                           headers=ADMIN).json["instances"])
    assert listed("host=compute-1") == [A1, B1]
    assert listed("state=unregistered") == [A2]
    assert listed("project_id=" + P2) == [B1]
    page = app.get("/v1/instances?limit=2", headers=ADMIN).json
    assert ids(page["instances"]) == [A1, A2] and page["next"] == A2
    page = app.get("/v1/instances?limit=2&marker=" + page["next"],
                   headers=ADMIN).json
    assert ids(page["instances"]) == [B1] and page["next"] is None


def test_max_limit_caps_a_page(world):
    conf = make_conf(world["path"], max_limit=1)
    client = webtest.TestApp(app_mod.make_app(conf))
    page = client.get("/v1/instances?limit=50", headers=ADMIN).json
    assert ids(page["instances"]) == [A1] and page["next"] == A1


def test_show_instance(app):
    body = app.get("/v1/instances/" + A2, headers=MEMBER1).json
    assert body["instance"]["id"] == A2
    app.get("/v1/instances/" + ORPHAN, headers=ADMIN, status=404)


# -- faults and actions -------------------------------------------------------

def test_faults_newest_first_with_their_recovery(app, world):
    f = world["faults"]
    body = app.get("/v1/faults", headers=ADMIN).json
    assert ids(body["faults"]) == [f["a1"]["id"], f["orphan"]["id"],
                                   f["b1"]["id"], f["a1_old"]["id"]]
    old = body["faults"][-1]
    assert (old["open"], old["kind"], old["action"], old["instance_id"],
            old["project_id"]) == (False, "missed", "reboot", A1, P1)
    assert old["recovery_id"] is not None and old["recovered_at"]
    assert body["faults"][0]["open"] is True
    assert body["faults"][0]["recovered_at"] is None
    # the orphan's instance never reported a state: no project known
    assert body["faults"][1]["project_id"] is None


def test_fault_filters_and_pages(app, world):
    f = world["faults"]

    def listed(query):
        return ids(app.get("/v1/faults?" + query,
                           headers=ADMIN).json["faults"])
    assert listed("open=false") == [f["a1_old"]["id"]]
    assert listed("open=true&instance_id=" + A1) == [f["a1"]["id"]]
    assert listed("kind=missed") == [f["b1"]["id"], f["a1_old"]["id"]]
    assert listed("host=compute-9") == [f["orphan"]["id"]]
    page = app.get("/v1/faults?limit=3", headers=ADMIN).json
    assert page["next"] == f["b1"]["id"]
    page = app.get("/v1/faults?limit=3&marker=" + page["next"],
                   headers=ADMIN).json
    assert ids(page["faults"]) == [f["a1_old"]["id"]]
    assert page["next"] is None
    shown = app.get("/v1/faults/" + f["b1"]["id"], headers=ADMIN).json
    assert shown["fault"]["reason"] == "no answer"


def test_actions_newest_first(app, world):
    f = world["faults"]
    body = app.get("/v1/actions", headers=ADMIN).json
    assert [(a["fault_id"], a["outcome"], a["project_id"])
            for a in body["actions"]] == [
        (f["b1"]["id"], "refused: cap", P2),
        (f["a1_old"]["id"], "applied", P1)]
    a = body["actions"][1]
    assert (a["action"], a["step"], a["server"], a["instance_id"]) == (
        "reboot", "hard", "ctl-a", A1)
    only = app.get("/v1/actions?fault_id=" + f["a1_old"]["id"],
                   headers=ADMIN).json
    assert len(only["actions"]) == 1


# -- policy -----------------------------------------------------------------

@pytest.mark.parametrize("who", [MEMBER1, READER1])
def test_a_project_sees_its_own_and_nothing_else(app, world, who):
    f = world["faults"]
    assert ids(app.get("/v1/instances", headers=who).json[
        "instances"]) == [A1, A2]
    assert ids(app.get("/v1/faults", headers=who).json["faults"]) == [
        f["a1"]["id"], f["a1_old"]["id"]]
    assert [a["instance_id"] for a in app.get(
        "/v1/actions", headers=who).json["actions"]] == [A1]
    # asking for another project's items by filter: nothing
    assert app.get("/v1/instances?project_id=" + P2,
                   headers=who).json["instances"] == []
    assert app.get("/v1/faults?instance_id=" + B1,
                   headers=who).json["faults"] == []
    # another project's instance, or one of no known project: 404 as if
    # it did not exist
    for path in ("/v1/instances/" + B1, "/v1/faults/" + f["b1"]["id"],
                 "/v1/faults/" + f["orphan"]["id"]):
        resp = app.get(path, headers=who, status=404)
        assert resp.json["error"]["code"] == 404
    assert app.get("/v1/instances/" + A1, headers=who).json[
        "instance"]["id"] == A1


def test_the_other_project_sees_only_its_instance(app):
    assert ids(app.get("/v1/instances", headers=MEMBER2).json[
        "instances"]) == [B1]
    app.get("/v1/instances/" + A1, headers=MEMBER2, status=404)


def test_no_role_or_no_project_is_refused(app):
    for headers in (NOBODY1, {"X-Roles": "reader"}, {}):
        resp = app.get("/v1/instances", headers=headers, status=403)
        assert resp.json["error"]["code"] == 403
        app.get("/v1/instances/" + A1, headers=headers, status=403)


def test_admin_sees_an_instance_of_no_known_project(app, world):
    fault = world["faults"]["orphan"]
    assert app.get("/v1/faults/" + fault["id"], headers=ADMIN).json[
        "fault"]["instance_id"] == ORPHAN


# -- the database ---------------------------------------------------------

def test_no_database_yet_is_503(tmp_path):
    conf = make_conf(str(tmp_path / "none.sqlite"))
    client = webtest.TestApp(app_mod.make_app(conf))
    resp = client.get("/v1/instances", headers=ADMIN, status=503)
    assert "guestha-server" in resp.json["error"]["message"]
    assert not (tmp_path / "none.sqlite").exists()


def test_a_database_behind_is_503_until_migrated(tmp_path):
    from guestha.db import api as db_api
    from guestha.db import migration
    path = str(tmp_path / "old.sqlite")
    migration.upgrade(db_api.create_engine(path), "002")
    reader = db_mod.Reader(db_api.sqlite_url(path))
    client = webtest.TestApp(app_mod.make_app(make_conf(path),
                                              reader=reader))
    resp = client.get("/v1/instances", headers=ADMIN, status=503)
    assert "db sync" in resp.json["error"]["message"]
    migration.upgrade(db_api.create_engine(path))
    assert client.get("/v1/instances", headers=ADMIN).json == {
        "instances": [], "next": None}
