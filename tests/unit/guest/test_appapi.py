# SPDX-License-Identifier: Apache-2.0
"""AppServer tests: a real selector and real UNIX sockets, a fake clock.

The server runs in the test's thread; :meth:`Env.pump` plays the daemon's
loop (``key.data(mask)`` for every ready key) until nothing is ready.
"""

import base64
import errno
import json
import logging
import os
import selectors
import socket
import stat

import pytest

from guestha_guest import appapi
from guestha_guest.appapi import AppServer
from tests.support.clock import ManualClock


class Handler(object):
    def __init__(self):
        self.calls = []

    def on_broadcast(self, client, payload, req_id):
        self.calls.append(("broadcast", client, payload, req_id))

    def on_status_query(self, client, req_id):
        self.calls.append(("status_query", client, req_id))


class Env(object):
    def __init__(self, tmp_path, max_apps=4):
        self.sel = selectors.DefaultSelector()
        self.clock = ManualClock(1000.0)
        self.handler = Handler()
        self.path = str(tmp_path / "run" / "guestha" / "app.sock")
        self.server = AppServer(self.path, 0o660, max_apps, self.handler,
                                clock=self.clock)
        self.server.start(self.sel)
        self.apps = []  # held, so that no connection closes by accident

    def pump(self, rounds=50):
        """Dispatch ready keys until nothing is ready.  (What one end of
        a UNIX socket writes is readable at the other at once, so a short
        wait suffices.)"""
        for _ in range(rounds):
            ready = self.sel.select(0.005)
            if not ready:
                return
            for key, mask in ready:
                key.data(mask)

    def app(self):
        return App(self)

    def close(self):
        self.server.stop()
        self.sel.close()


class App(object):
    """An application at the other end of a real socket."""

    def __init__(self, env):
        self.env = env
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(env.path)
        self.sock.setblocking(False)
        self.buf = b""
        self.eof = False
        env.apps.append(self)
        env.pump()

    def send_raw(self, data):
        self.sock.sendall(data)
        self.env.pump()

    def send(self, msg):
        self.send_raw(json.dumps(msg).encode() + b"\n")

    def messages(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                break
            self.buf += data
        lines = self.buf.split(b"\n")
        self.buf = lines.pop()
        return [json.loads(line) for line in lines]

    def request(self, msg):
        self.send(msg)
        return self.messages()

    def close(self):
        self.sock.close()
        self.env.pump()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def registered(env, name="a", deadline_ms=1000, critical=True):
    app = env.app()
    assert app.request({"op": "register", "name": name,
                        "deadline_ms": deadline_ms,
                        "critical": critical}) == [
        {"op": "registered", "name": name}]
    return app


def error(code, message, id=None, field=None):
    msg = {"op": "error", "code": code, "message": message}
    if id is not None:
        msg["id"] = id
    if field is not None:
        msg["field"] = field
    return msg


# -- the socket ---------------------------------------------------------------

def test_socket_created_with_mode_and_parent(tmp_path):
    old = os.umask(0o022)
    try:
        e = Env(tmp_path)
    finally:
        os.umask(old)
    try:
        st = os.stat(e.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        parent = os.stat(os.path.dirname(e.path))
        assert stat.S_IMODE(parent.st_mode) == 0o755
        # umask restored
        assert os.umask(0o022) == 0o022
    finally:
        e.close()
    assert not os.path.exists(e.path)  # stop removes it


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "run" / "guestha" / "app.sock"
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    e = Env(tmp_path)
    try:
        app = e.app()
        assert app.request({"op": "subscribe", "events": [], "id": 1}) == [
            {"op": "ok", "id": 1}]
    finally:
        e.close()


def test_live_socket_is_not_taken_over(tmp_path):
    e = Env(tmp_path)
    try:
        other = AppServer(e.path, 0o660, 4, Handler())
        sel = selectors.DefaultSelector()
        with pytest.raises(OSError) as err:
            other.start(sel)
        assert err.value.errno == errno.EADDRINUSE
        assert os.path.exists(e.path)
        sel.close()
    finally:
        e.close()


def test_regular_file_is_not_removed(tmp_path):
    path = tmp_path / "app.sock"
    path.write_text("precious")
    server = AppServer(str(path), 0o660, 4, Handler())
    with pytest.raises(OSError) as err:
        server.start(selectors.DefaultSelector())
    assert err.value.errno == errno.EEXIST
    assert path.read_text() == "precious"


def test_stop_closes_clients_and_restart_works(tmp_path):
    e = Env(tmp_path)
    app = e.app()
    e.server.stop()
    assert app.messages() == [] and app.eof
    assert not os.path.exists(e.path)
    e.server.start(e.sel)
    assert e.app().request({"op": "unregister", "id": "x"}) == [
        {"op": "ok", "id": "x"}]
    e.close()


def test_selector_data_is_a_callable_taking_the_mask(env):
    app = env.app()
    keys = list(env.sel.get_map().values())
    assert len(keys) == 2  # the listener and one client
    for key in keys:
        assert callable(key.data)
    app.close()


# -- register -----------------------------------------------------------------

def test_register(env):
    app = env.app()
    assert app.request({"op": "register", "name": "db.main-1_x",
                        "deadline_ms": 100, "id": 7}) == [
        {"op": "registered", "id": 7, "name": "db.main-1_x"}]
    assert env.server.counts()["registered"] == 1
    assert env.server.counts()["critical"] == 1


@pytest.mark.parametrize("fields,field,message", [
    ({"deadline_ms": 1000}, "name", "field 'name' is required"),
    ({"name": 5, "deadline_ms": 1000}, "name",
     "field 'name' must be a string"),
    ({"name": "", "deadline_ms": 1000}, "name",
     "field 'name' must be 1 to 64 characters from A-Z a-z 0-9 . _ -"),
    ({"name": "a" * 65, "deadline_ms": 1000}, "name",
     "field 'name' must be 1 to 64 characters from A-Z a-z 0-9 . _ -"),
    ({"name": "a b", "deadline_ms": 1000}, "name",
     "field 'name' must be 1 to 64 characters from A-Z a-z 0-9 . _ -"),
    ({"name": "a:b", "deadline_ms": 1000}, "name",
     "field 'name' must be 1 to 64 characters from A-Z a-z 0-9 . _ -"),
    ({"name": "a"}, "deadline_ms", "field 'deadline_ms' is required"),
    ({"name": "a", "deadline_ms": 99}, "deadline_ms",
     "field 'deadline_ms' must be from 100 to 600000"),
    ({"name": "a", "deadline_ms": 600001}, "deadline_ms",
     "field 'deadline_ms' must be from 100 to 600000"),
    ({"name": "a", "deadline_ms": 1000.0}, "deadline_ms",
     "field 'deadline_ms' must be an integer"),
    ({"name": "a", "deadline_ms": True}, "deadline_ms",
     "field 'deadline_ms' must be an integer"),
    ({"name": "a", "deadline_ms": "1000"}, "deadline_ms",
     "field 'deadline_ms' must be an integer"),
    ({"name": "a", "deadline_ms": 1000, "critical": 1}, "critical",
     "field 'critical' must be true or false"),
])
def test_register_invalid(env, fields, field, message):
    app = env.app()
    req = dict(fields, op="register", id="r")
    assert app.request(req) == [
        error("invalid_field", message, id="r", field=field)]
    assert env.server.counts()["registered"] == 0


def test_register_name_in_use(env):
    registered(env, "a")
    other = env.app()
    assert other.request({"op": "register", "name": "a",
                          "deadline_ms": 1000, "id": 2}) == [
        error("name_in_use", "another connection has registered 'a'", id=2)]


def test_register_again_on_same_connection(env):
    app = registered(env, "a", deadline_ms=1000)
    env.clock.now += 0.9
    # again, with a longer deadline: the clock starts over
    assert app.request({"op": "register", "name": "a",
                        "deadline_ms": 2000}) == [
        {"op": "registered", "name": "a"}]
    env.clock.now += 1.5
    assert env.server.health(env.clock.now) == (True, None)


def test_register_under_a_new_name_replaces_the_old(env):
    app = registered(env, "a")
    registered_b = app.request({"op": "register", "name": "b",
                                "deadline_ms": 1000})
    assert registered_b == [{"op": "registered", "name": "b"}]
    assert env.server.counts()["registered"] == 1
    # "a" is free now, and not departed
    registered(env, "a")
    assert env.server.health(env.clock.now) == (True, None)


# -- health -------------------------------------------------------------------

def test_health_not_registered(env):
    app = env.app()
    assert app.request({"op": "health", "healthy": True}) == [
        error("not_registered", "register before reporting health")]


def test_health_reply_only_with_id(env):
    app = registered(env)
    assert app.request({"op": "health", "healthy": True}) == []
    assert app.request({"op": "health", "healthy": True, "check": 3,
                        "id": 9}) == [{"op": "ok", "id": 9}]


@pytest.mark.parametrize("fields,field,message", [
    ({}, "healthy", "field 'healthy' is required"),
    ({"healthy": "yes"}, "healthy", "field 'healthy' must be true or false"),
    ({"healthy": 0}, "healthy", "field 'healthy' must be true or false"),
    ({"healthy": False, "reason": 5}, "reason",
     "field 'reason' must be a string"),
    ({"healthy": False, "reason": "x" * 121}, "reason",
     "field 'reason' must be at most 120 characters"),
    ({"healthy": True, "check": "1"}, "check",
     "field 'check' must be an integer"),
])
def test_health_invalid(env, fields, field, message):
    app = registered(env)
    assert app.request(dict(fields, op="health")) == [
        error("invalid_field", message, field=field)]


def test_health_states(env):
    server = env.server
    app = registered(env, "a", deadline_ms=1000)  # at t=1000
    assert server.health(1000.0) == (True, None)
    # nobody asked yet: a silent application is not overdue
    assert server.health(1005.0) == (True, None)
    env.clock.now = 1000.0
    server.send_checks(1000.0)
    assert server.health(1001.0) == (True, None)  # deadline not passed
    server.send_checks(1001.0)  # a second check: the first one counts
    assert server.health(1001.5) == (
        False, "app a stopped answering (1500 ms)")
    env.clock.now = 1001.6
    app.send({"op": "health", "healthy": True})
    assert server.health(1001.7) == (True, None)
    assert server.health(1009.0) == (True, None)  # not asked since
    app.send({"op": "health", "healthy": False, "reason": "queue\nfull"})
    assert server.health(1001.7) == (False, "app a: queue full")
    app.send({"op": "health", "healthy": False})
    assert server.health(1001.7) == (False, "app a: unhealthy")
    app.send({"op": "health", "healthy": True, "reason": "ignored"})
    assert server.health(1001.7) == (True, None)
    # asked at 1001.7, no report since: stopped answering after 1000 ms
    server.send_checks(1001.7)
    assert server.health(1002.6) == (True, None)
    assert server.health(1002.8) == (False,
                                     "app a stopped answering (1200 ms)")


def test_a_check_answered_late_but_within_the_deadline(env):
    server = env.server
    app = registered(env, "a", deadline_ms=1000)
    for t in (1000.0, 1000.5, 1001.0):
        server.send_checks(t)  # every 500 ms, answered 800 ms late
        env.clock.now = t + 0.8
        app.send({"op": "health", "healthy": True})
        assert server.health(t + 0.9) == (True, None)


def test_reason_of_exactly_120_characters(env):
    app = registered(env)
    app.send({"op": "health", "healthy": False, "reason": "r" * 120})
    assert env.server.health(env.clock.now) == (False, "app a: " + "r" * 120)


def test_non_critical_app_does_not_count(env):
    app = registered(env, "a", critical=False)
    app.send({"op": "health", "healthy": False, "reason": "meh"})
    assert env.server.health(env.clock.now + 100) == (True, None)
    app.close()
    assert env.server.health(env.clock.now) == (True, None)
    assert env.server.counts()["departed"] == 0


def test_several_problems_sorted_by_name(env):
    b = registered(env, "b")
    registered(env, "c", deadline_ms=100)
    a = registered(env, "a")
    a.send({"op": "health", "healthy": False, "reason": "x"})
    env.server.send_checks(env.clock.now)
    b.close()
    assert env.server.health(env.clock.now + 0.5) == (
        False, "app a: x; app b disconnected; "
               "app c stopped answering (500 ms)")


def test_disconnect_then_register_again(env):
    app = registered(env, "a", deadline_ms=1000)
    app.close()
    assert env.server.health(env.clock.now) == (False, "app a disconnected")
    env.clock.now += 60
    assert env.server.health(env.clock.now) == (False, "app a disconnected")
    registered(env, "a", deadline_ms=1000)
    assert env.server.health(env.clock.now) == (True, None)
    # the deadline of the new registration runs from the first check
    env.server.send_checks(env.clock.now)
    assert env.server.health(env.clock.now + 1.0) == (True, None)
    assert env.server.health(env.clock.now + 1.2) == (
        False, "app a stopped answering (1200 ms)")


def test_unregister(env):
    app = registered(env, "a")
    assert app.request({"op": "unregister", "id": 1}) == [
        {"op": "ok", "id": 1}]
    assert env.server.health(env.clock.now + 100) == (True, None)
    assert app.request({"op": "health", "healthy": True}) == [
        error("not_registered", "register before reporting health")]
    app.close()  # leaving after unregistering is not a departure
    assert env.server.health(env.clock.now) == (True, None)
    # unregistering when not registered is harmless
    assert env.app().request({"op": "unregister"}) == [{"op": "ok"}]


def test_departed_records_are_bounded(env, caplog):
    caplog.set_level(logging.WARNING, logger="guestha_guest.appapi")
    for i in range(6):  # max_apps is 4
        registered(env, "n%d" % i).close()
    assert env.server.counts()["departed"] == 4
    assert env.server.health(env.clock.now)[1] == (
        "app n2 disconnected; app n3 disconnected; app n4 disconnected; "
        "app n5 disconnected")
    assert "forgetting departed app n0" in caplog.text


def test_send_checks(env):
    a = registered(env, "a")
    b = registered(env, "b", critical=False)
    idle = env.app()
    assert env.server.send_checks(env.clock.now) == 1
    assert env.server.send_checks(env.clock.now) == 2
    assert a.messages() == [{"op": "check", "check": 1},
                            {"op": "check", "check": 2}]
    assert b.messages() == [{"op": "check", "check": 1},
                            {"op": "check", "check": 2}]
    assert idle.messages() == []
    a.send({"op": "health", "check": 2, "healthy": True})
    assert env.server.health(env.clock.now) == (True, None)


# -- subscriptions ------------------------------------------------------------

def test_subscription_fan_out(env):
    a, b, c = env.app(), env.app(), env.app()
    assert a.request({"op": "subscribe",
                      "events": ["broadcast", "status"], "id": 1}) == [
        {"op": "ok", "id": 1}]
    assert b.request({"op": "subscribe", "events": ["notification"]}) == [
        {"op": "ok"}]
    assert b.request({"op": "subscribe", "events": ["broadcast"]}) == [
        {"op": "ok"}]  # adds to the earlier subscription
    server = env.server
    note = {"op": "notification", "instance": "u", "state": "active",
            "event": "update"}
    assert server.publish("notification", note) == 1
    bc = {"op": "broadcast", "from": "u", "payload": "aGk="}
    assert server.publish("broadcast", bc) == 2
    st = {"op": "status", "members": []}
    client_a = server.clients[0]  # the server's end of a
    assert server.publish("status", st, skip=client_a) == 0
    assert server.publish("status", st) == 1
    env.pump()
    assert a.messages() == [bc, st]
    assert b.messages() == [note, bc]
    assert c.messages() == []
    assert server.counts()["subscribers"] == {
        "broadcast": 2, "notification": 1, "status": 1}
    assert a.request({"op": "unsubscribe", "events": ["broadcast"]}) == [
        {"op": "ok"}]
    assert server.publish("broadcast", bc) == 1


@pytest.mark.parametrize("events", [None, "broadcast", ["broadcast", "x"],
                                    [1]])
def test_subscribe_invalid(env, events):
    app = env.app()
    req = {"op": "subscribe"}
    if events is not None:
        req["events"] = events
    reply = app.request(req)
    assert len(reply) == 1
    assert reply[0]["code"] == "invalid_field"
    assert reply[0]["field"] == "events"
    assert env.server.counts()["subscribers"]["broadcast"] == 0


def test_subscription_needs_no_registration_and_ends_with_connection(env):
    app = env.app()
    app.request({"op": "subscribe", "events": ["broadcast"]})
    app.close()
    assert env.server.publish("broadcast", {"op": "broadcast"}) == 0


# -- server-group requests ----------------------------------------------------

def test_broadcast(env):
    app = env.app()
    payload = bytes(range(256)) * 11 + b"x" * 234  # 3050 bytes, the most
    assert len(payload) == 3050
    app.send({"op": "broadcast", "id": "b1",
              "payload": base64.b64encode(payload).decode()})
    [(kind, client, got, req_id)] = env.handler.calls
    assert (kind, got, req_id) == ("broadcast", payload, "b1")
    assert app.messages() == []  # the daemon answers, later
    assert env.server.reply(client, {"op": "ok", "id": "b1"}) is True
    assert app.messages() == [{"op": "ok", "id": "b1"}]


def test_broadcast_empty_payload(env):
    env.app().send({"op": "broadcast", "payload": ""})
    assert [c[2:] for c in env.handler.calls] == [(b"", None)]


@pytest.mark.parametrize("payload,code,message", [
    (base64.b64encode(b"x" * 3051).decode(), "payload_too_large",
     "a payload may be at most 3050 bytes"),
    ("A" * 8000, "payload_too_large", "a payload may be at most 3050 bytes"),
    ("not base64!", "bad_payload",
     "field 'payload' must be base64 (RFC 4648, with padding)"),
    ("aGk", "bad_payload",
     "field 'payload' must be base64 (RFC 4648, with padding)"),
    ("\u00e9\u00e9\u00e9\u00e9", "bad_payload",
     "field 'payload' must be base64 (RFC 4648, with padding)"),
])
def test_broadcast_refused(env, payload, code, message):
    app = env.app()
    assert app.request({"op": "broadcast", "payload": payload,
                        "id": 3}) == [error(code, message, id=3)]
    assert env.handler.calls == []


def test_broadcast_payload_must_be_a_string(env):
    app = env.app()
    assert app.request({"op": "broadcast", "payload": [1]}) == [
        error("invalid_field", "field 'payload' must be a string",
              field="payload")]


def test_status_query(env):
    app = env.app()
    app.send({"op": "status_query", "id": 5})
    [(kind, client, req_id)] = env.handler.calls
    assert (kind, req_id) == ("status_query", 5)
    members = [{"instance": "11111111-2222-3333-4444-555555555555",
                "state": "active"}]
    env.server.reply(client, {"op": "status", "members": members, "id": 5})
    assert app.messages() == [{"op": "status", "members": members, "id": 5}]


def test_handler_failure_is_an_internal_error(env, caplog):
    def boom(client, req_id):
        raise RuntimeError("bug")
    env.handler.on_status_query = boom
    app = env.app()
    assert app.request({"op": "status_query", "id": 1}) == [
        error("internal_error", "the daemon failed to handle the request",
              id=1)]
    assert "request failed" in caplog.text
    # the connection and the server carry on
    assert app.request({"op": "unregister", "id": 2}) == [
        {"op": "ok", "id": 2}]


def test_reply_to_a_closed_client(env):
    app = env.app()
    app.send({"op": "status_query"})
    client = env.handler.calls[0][1]
    app.close()
    assert client.closed
    assert env.server.reply(client, {"op": "ok"}) is False


# -- bad lines ----------------------------------------------------------------

@pytest.mark.parametrize("line,expected", [
    (b'{"op": "register"', error("invalid_json", None)),
    (b"[1, 2]", error("invalid_json", "a line must hold one JSON object")),
    (b'"op"', error("invalid_json", "a line must hold one JSON object")),
    (b'{"op": "\xff"}', error("invalid_json", "a line must be UTF-8")),
    (b"nonsense", error("invalid_json", None)),
    (b"{}", error("invalid_field", "field 'op' is required", field="op")),
    (b'{"op": 3}', error("invalid_field", "field 'op' must be a string",
                         field="op")),
    (b'{"op": "fly", "id": "f"}', error(
        "unknown_op", "unknown op 'fly'; known: broadcast, health, "
        "register, status_query, subscribe, unregister, unsubscribe",
        id="f")),
    (b'{"op": "unregister", "id": 1.5}', error(
        "invalid_field", "field 'id' must be an integer or a string of at "
        "most 64 characters", field="id")),
    (b'{"op": "unregister", "id": true}', error(
        "invalid_field", "field 'id' must be an integer or a string of at "
        "most 64 characters", field="id")),
    (b'{"op": "unregister", "id": "' + b"i" * 65 + b'"}', error(
        "invalid_field", "field 'id' must be an integer or a string of at "
        "most 64 characters", field="id")),
])
def test_bad_line_gets_an_error_and_connection_survives(env, line, expected):
    app = env.app()
    [reply] = _raw(app, line)
    if expected["message"] is None:
        assert reply["message"].startswith("not valid JSON: ")
        expected = dict(expected, message=reply["message"])
    assert reply == expected
    assert app.request({"op": "unregister", "id": 1}) == [
        {"op": "ok", "id": 1}]


def _raw(app, line):
    app.send_raw(line + b"\n")
    return app.messages()


def test_deep_nesting_is_invalid_json(env):
    app = env.app()
    [reply] = _raw(app, b"[" * 8000)
    assert reply["code"] == "invalid_json"
    [reply] = _raw(app, b'{"a":' * 1300 + b"1" + b"}" * 1300)
    assert reply["code"] in ("invalid_json", "invalid_field")
    assert not app.eof


def test_blank_lines_and_crlf(env):
    app = env.app()
    app.send_raw(b"\n  \n\r\n")
    assert app.messages() == []
    assert _raw(app, b'{"op": "unregister", "id": 1}\r') == [
        {"op": "ok", "id": 1}]


def test_several_lines_in_one_write_and_one_line_in_pieces(env):
    app = env.app()
    app.send_raw(b'{"op":"unregister","id":1}\n{"op":"unregister","id":2}\n'
                 b'{"op":"unreg')
    assert app.messages() == [{"op": "ok", "id": 1}, {"op": "ok", "id": 2}]
    app.send_raw(b'ister","id":3}\n')
    assert app.messages() == [{"op": "ok", "id": 3}]


def _line_of(size, id=1):
    """A valid request line of exactly ``size`` bytes, newline included."""
    head = b'{"op":"unregister","id":%d,"pad":"' % id
    tail = b'"}\n'
    return head + b"p" * (size - len(head) - len(tail)) + tail


def test_longest_line_is_accepted(env):
    app = env.app()
    line = _line_of(appapi.MAX_LINE)
    assert len(line) == 8192
    app.send_raw(line)
    assert app.messages() == [{"op": "ok", "id": 1}]
    assert not app.eof


def test_line_too_long_disconnects(env):
    app = registered(env, "a")
    app.send_raw(_line_of(appapi.MAX_LINE + 1))
    assert app.messages() == [error(
        "line_too_long", "a line may be at most 8192 bytes, the newline "
        "included")]
    assert app.eof
    assert env.server.counts()["connected"] == 0
    # a critical app thrown out this way has departed
    assert env.server.health(env.clock.now) == (False, "app a disconnected")


def test_unterminated_line_too_long_disconnects(env):
    app = env.app()
    app.send_raw(b"x" * 8191)  # could still end in time
    assert app.messages() == [] and not app.eof
    app.send_raw(b"x")  # 8192 bytes and no newline: cannot
    assert app.messages() == [error(
        "line_too_long", "a line may be at most 8192 bytes, the newline "
        "included")]
    assert app.eof


# -- bounds -------------------------------------------------------------------

def test_client_that_does_not_read_is_dropped(env, caplog):
    reader = env.app()
    reader.request({"op": "subscribe", "events": ["broadcast"]})
    sleeper = registered(env, "sleepy")
    sleeper.request({"op": "subscribe", "events": ["broadcast"]})
    msg = {"op": "broadcast", "from": "u", "payload": "A" * 4000}
    line = len(json.dumps(msg, separators=(",", ":"))) + 1
    dropped_after = None
    for i in range(400):  # 1.6 MB: more than the kernel and our buffer
        env.server.publish("broadcast", msg)
        reader.messages()  # this one keeps reading
        env.pump()
        if sleeper_client_gone(env):
            dropped_after = i + 1
            break
    assert dropped_after is not None
    # at least the bound was queued before dropping it
    assert dropped_after * line > appapi.MAX_OUTBUF
    assert env.server.counts()["connected"] == 1
    assert "sleepy (pid %d) does not read its messages" % os.getpid() \
        in caplog.text
    assert env.server.health(env.clock.now) == (
        False, "app sleepy disconnected")
    assert not reader.eof


def sleeper_client_gone(env):
    return all(c.name != "sleepy" for c in env.server.clients)


def test_outgoing_buffer_is_flushed_when_writable(env):
    app = env.app()
    app.request({"op": "subscribe", "events": ["broadcast"]})
    msg = {"op": "broadcast", "from": "u", "payload": "B" * 4000}
    for _ in range(60):  # 240 KB: more than the socket takes at once
        env.server.publish("broadcast", msg)
    [client] = env.server.clients
    assert len(client.wbuf) > 0
    got = []
    for _ in range(200):
        got.extend(app.messages())
        env.pump()
        if len(got) == 60:
            break
    assert got == [msg] * 60
    assert len(client.wbuf) == 0


def test_max_apps(env):
    apps = [env.app() for _ in range(4)]
    extra = env.app()
    assert extra.messages() == [error(
        "too_many_apps", "4 applications are connected, the most allowed")]
    assert extra.eof
    apps[0].close()
    again = env.app()
    assert again.request({"op": "unregister"}) == [{"op": "ok"}]


def test_peer_credentials(env):
    env.app()
    [client] = env.server.clients
    assert client.pid == os.getpid()
    assert client.uid == os.getuid()
    assert repr(client) == "client #1 (pid %d)" % os.getpid()
