# SPDX-License-Identifier: Apache-2.0
"""The application API's parts on their own: the request checks
(apprequests) and the registry of applications (AppRegistry).  The
server's tests, test_appapi.py, run them wired, over real sockets."""

import pytest

from guestha_guest.appregistry import AppRegistry
from guestha_guest import apprequests as rq


class Client(object):
    """An AppClient's registration fields, without a socket."""

    def __init__(self, serial=1):
        self.serial = serial
        self.name = None
        self.critical = True
        self.deadline_s = None
        self.report_at = None
        self.asked_at = None
        self.healthy = True
        self.reason = None

    def __repr__(self):
        return "client #%d" % self.serial


# -- apprequests ------------------------------------------------------------

@pytest.mark.parametrize("line", [b"", b"   ", b"\r", b" \t\r"])
def test_blank_lines_are_keepalives(line):
    assert rq.decode(line) is None


@pytest.mark.parametrize("line,message", [
    (b"\xff", "a line must be UTF-8"),
    (b"{", "not valid JSON"),
    (b"[1]", "a line must hold one JSON object"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
])
def test_a_line_that_is_not_one_object_is_invalid_json(line, message):
    with pytest.raises(rq.RequestError) as exc:
        rq.decode(line)
    assert exc.value.code == "invalid_json"
    assert message in exc.value.message


def test_a_request_with_a_carriage_return():
    assert rq.decode(b'{"op": "x"}\r') == {"op": "x"}


@pytest.mark.parametrize("value,kind,ok", [
    (True, "bool", True), (1, "bool", False), (1, "int", True),
    (True, "int", False), ("a", "str", True), ([], "list", True),
    ("a", "list", False)])
def test_fields_are_checked_by_kind(value, kind, ok):
    if ok:
        assert rq.field({"f": value}, "f", kind) == value
    else:
        with pytest.raises(rq.RequestError) as exc:
            rq.field({"f": value}, "f", kind)
        assert (exc.value.code, exc.value.field) == ("invalid_field", "f")


def test_a_missing_field_is_required_or_has_its_default():
    with pytest.raises(rq.RequestError):
        rq.field({"f": None}, "f", "int")
    assert rq.field({}, "f", "int", required=False, default=3) == 3


@pytest.mark.parametrize("req_id,ok", [
    (None, True), (7, True), ("x" * rq.MAX_ID, True),
    ("x" * (rq.MAX_ID + 1), False), (1.5, False), (True, False)])
def test_request_ids(req_id, ok):
    if ok:
        assert rq.request_id({"id": req_id}) == req_id
    else:
        with pytest.raises(rq.RequestError):
            rq.request_id({"id": req_id})


def test_events_are_from_the_list():
    assert rq.events({"events": ["status", "broadcast"]}) == [
        "status", "broadcast"]
    with pytest.raises(rq.RequestError):
        rq.events({"events": ["status", "gossip"]})


# -- AppRegistry ------------------------------------------------------------

def test_a_registered_app_is_healthy_until_it_says_otherwise():
    reg = AppRegistry(max_departed=4)
    app = Client()
    reg.register(app, "db", 1000, True, now=10.0)
    assert reg.health(10.0) == (True, None)
    reg.report(app, False, "stuck\x00", now=10.5)
    assert reg.health(10.5) == (False, "app db: stuck ")
    reg.report(app, True, None, now=11.0)
    assert reg.health(11.0) == (True, None)


def test_the_deadline_runs_from_the_first_check_unanswered():
    reg = AppRegistry(max_departed=4)
    app = Client()
    reg.register(app, "db", 500, True, now=10.0)
    assert reg.health(100.0) == (True, None)  # nobody asked
    assert reg.ask(100.0) == [app]
    reg.ask(100.4)  # a later check does not move the deadline
    assert reg.health(100.5) == (True, None)
    assert reg.health(100.6) == (False, "app db stopped answering "
                                        "(90600 ms)")
    reg.report(app, True, None, now=100.7)
    assert reg.health(200.0) == (True, None)


def test_names_are_unique_and_a_new_name_replaces_the_old():
    reg = AppRegistry(max_departed=4)
    one, two = Client(1), Client(2)
    reg.register(one, "db", 1000, True, now=0.0)
    with pytest.raises(rq.RequestError) as exc:
        reg.register(two, "db", 1000, True, now=0.0)
    assert exc.value.code == "name_in_use"
    reg.register(one, "db2", 1000, False, now=0.0)
    assert reg.counts() == {"registered": 1, "critical": 0, "departed": 0}
    reg.register(two, "db", 1000, True, now=0.0)


def test_reports_need_a_registration():
    with pytest.raises(rq.RequestError) as exc:
        AppRegistry(max_departed=4).report(Client(), True, None, now=0.0)
    assert exc.value.code == "not_registered"


def test_a_critical_app_that_leaves_is_unhealthy_until_it_is_back():
    reg = AppRegistry(max_departed=4)
    app, quiet = Client(1), Client(2)
    reg.register(app, "db", 1000, True, now=0.0)
    reg.register(quiet, "cache", 1000, False, now=0.0)
    reg.left(app, now=1.0)
    reg.left(quiet, now=1.0)  # not critical: forgotten
    assert reg.health(2.0) == (False, "app db disconnected")
    reg.register(Client(3), "db", 1000, True, now=3.0)
    assert reg.health(3.0) == (True, None)


def test_an_app_that_unregistered_may_leave():
    reg = AppRegistry(max_departed=4)
    app = Client()
    reg.register(app, "db", 1000, True, now=0.0)
    reg.unregister(app)
    reg.left(app, now=1.0)
    assert reg.health(1.0) == (True, None)
    assert reg.counts()["departed"] == 0


def test_departed_apps_are_bounded_oldest_first():
    reg = AppRegistry(max_departed=2)
    for i in range(3):
        app = Client(i)
        reg.register(app, "app%d" % i, 1000, True, now=0.0)
        reg.left(app, now=float(i))
    assert list(reg.departed) == ["app1", "app2"]
