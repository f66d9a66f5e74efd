# SPDX-License-Identifier: Apache-2.0
"""GuestHAClient (and the example application) against a real AppServer.

The server runs in a background thread with its own selector loop, as in
the daemon; the test talks to it through :meth:`ServerThread.call`, which
runs a function inside that loop (the server is not thread-safe, like the
daemon it belongs to).  The tests wait for conditions and events, with
generous safety deadlines (SAFETY), never for fixed times, and assert no
durations beyond the lower bounds a timeout guarantees.
"""

import base64
import os
import queue
import selectors
import socket
import subprocess
import sys
import threading
import time

import pytest

from guestha_guest.appapi import AppServer
from guestha_guest.client import GuestHAClient
from guestha_guest.client import GuestHAConnectionClosed
from guestha_guest.client import GuestHAError
from guestha_guest.client import GuestHATimeout
from guestha_guest import example_app

#: Real seconds after which a wait for a condition fails the test: a
#: safety net for a loaded machine, not a timing target.
SAFETY = 30.0

MEMBERS = [{"instance": "11111111-2222-3333-4444-555555555555",
            "state": "active"},
           {"instance": "66666666-7777-8888-9999-000000000000",
            "state": "paused"}]


class ServerThread(threading.Thread):
    """An AppServer in a selector loop of its own; also its handler, a
    stand-in for the daemon."""

    def __init__(self, path):
        super().__init__(name="appserver", daemon=True)
        self.sel = selectors.DefaultSelector()
        self.server = AppServer(path, 0o660, 8, self)
        self.server.start(self.sel)
        self.broadcasts = []
        self.answer_status = True
        self._calls = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._run_calls)
        self._stopped = False

    # the daemon's side of the handler interface
    def on_broadcast(self, client, payload, req_id):
        self.broadcasts.append(payload)
        if payload == b"refuse me":
            self.server.reply(client, {"op": "error", "code": "unavailable",
                                       "message": "no host", "id": req_id})
        else:
            self.server.reply(client, {"op": "ok", "id": req_id})

    def on_status_query(self, client, req_id):
        if self.answer_status:
            self.server.reply(client, {"op": "status", "members": MEMBERS,
                                       "id": req_id})

    def run(self):
        while not self._stopped:
            for key, mask in self.sel.select(0.1):
                key.data(mask)
        self.server.stop()
        self.sel.close()

    def _run_calls(self, mask):
        self._wake_r.recv(4096)
        while True:
            try:
                fn, args, done = self._calls.get_nowait()
            except queue.Empty:
                return
            result, finished = done
            try:
                result.append((True, fn(*args)))
            except Exception as exc:  # handed to the test's thread
                result.append((False, exc))
            finished.set()

    def call(self, fn, *args):
        """Run ``fn(*args)`` in the loop; return its result."""
        done = []
        finished = threading.Event()
        self._calls.put((fn, args, (done, finished)))
        self._wake_w.send(b"x")
        assert finished.wait(SAFETY), "server loop does not answer"
        ok, value = done[0]
        if not ok:
            raise value
        return value

    def health(self):
        return self.call(lambda: self.server.health(time.monotonic()))

    def until(self, predicate, limit=SAFETY):
        """Wait until ``predicate()``, run in the loop, is true; it is
        tried again after every pass of the loop (or 20 ms)."""
        end = time.monotonic() + limit
        while not self.call(predicate):
            assert time.monotonic() < end, "condition not reached"
            time.sleep(0.02)  # polling a condition; SAFETY bounds it

    def stop(self):
        self._stopped = True
        self._wake_w.send(b"x")
        self.join(5)
        self._wake_r.close()
        self._wake_w.close()


@pytest.fixture
def srv(tmp_path):
    s = ServerThread(str(tmp_path / "app.sock"))
    s.start()
    yield s
    if s.is_alive():
        s.stop()


@pytest.fixture
def client(srv):
    c = GuestHAClient(srv.server.path, timeout=SAFETY)
    c.connect()
    yield c
    c.close()


def test_register(srv, client):
    assert client.register("web", 1000) == {
        "op": "registered", "id": 1, "name": "web"}
    assert srv.call(srv.server.counts)["critical"] == 1


def test_register_not_critical(srv, client):
    client.register("web", 1000, critical=False)
    assert srv.call(srv.server.counts)["critical"] == 0


def test_error_carries_code_and_message(srv, client):
    client.register("web", 1000)
    with GuestHAClient(srv.server.path) as other:
        with pytest.raises(GuestHAError) as err:
            other.register("web", 1000)
    assert err.value.code == "name_in_use"
    assert err.value.message == "another connection has registered 'web'"
    assert str(err.value) == (
        "name_in_use: another connection has registered 'web'")
    with pytest.raises(GuestHAError) as err:
        client.register("web", 50)
    assert err.value.code == "invalid_field"


def test_report(srv, client):
    client.register("web", 1000)
    assert client.report(False, "cache cold") is None  # no reply asked
    srv.until(lambda: srv.server.health(time.monotonic())[0] is False)
    assert srv.health() == (False, "app web: cache cold")
    assert client.report(True, confirm=True) == {"op": "ok", "id": 2}
    assert srv.health() == (True, None)


def test_report_refused_without_confirm_comes_back_as_an_event(client):
    client.report(True)
    assert client.next_event(timeout=SAFETY) == {
        "op": "error", "code": "not_registered",
        "message": "register before reporting health"}


def test_late_error_for_an_accepted_request_is_an_event(srv, client):
    assert client.broadcast(b"x") == {"op": "ok", "id": 1}
    # the host refuses it after the daemon said ok
    [app] = srv.call(lambda: srv.server.clients)
    srv.call(srv.server.reply, app, {"op": "error", "code": "rate_limited",
                                     "message": "slow down", "id": 1})
    assert client.next_event(timeout=SAFETY) == {
        "op": "error", "code": "rate_limited", "message": "slow down",
        "id": 1}


def test_report_refused_with_confirm(client):
    with pytest.raises(GuestHAError) as err:
        client.report(True, confirm=True)
    assert err.value.code == "not_registered"


def test_unregister(srv, client):
    client.register("web", 1000)
    assert client.unregister() == {"op": "ok", "id": 2}
    client.close()
    srv.until(lambda: not srv.server.clients)
    assert srv.health() == (True, None)


def test_subscribe_and_events(srv, client):
    assert client.subscribe("broadcast", "notification") == {
        "op": "ok", "id": 1}
    note = {"op": "notification", "instance": MEMBERS[0]["instance"],
            "state": "shutoff", "event": "power_off"}
    bc = {"op": "broadcast", "from": MEMBERS[1]["instance"],
          "payload": base64.b64encode(b"hello").decode()}
    srv.call(srv.server.publish, "notification", note)
    srv.call(srv.server.publish, "broadcast", bc)
    srv.call(srv.server.publish, "status", {"op": "status", "members": []})
    assert client.next_event(timeout=SAFETY) == note
    assert client.next_event(timeout=SAFETY) == bc
    assert client.next_event(timeout=0.1) is None  # not subscribed


def test_unsubscribe(srv, client):
    client.subscribe("broadcast")
    client.unsubscribe("broadcast")
    srv.call(srv.server.publish, "broadcast", {"op": "broadcast"})
    assert client.next_event(timeout=0.1) is None


def test_events_arriving_during_a_request_are_kept(srv, client):
    client.subscribe("notification")
    note = {"op": "notification", "instance": "i", "state": "active",
            "event": "x"}
    srv.call(srv.server.publish, "notification", note)
    assert client.status() == MEMBERS  # reads past the notification
    assert client.pending()
    assert client.next_event(timeout=0) == note


def test_broadcast(srv, client):
    assert client.broadcast(b"\x00\xffdata") == {"op": "ok", "id": 1}
    payload = b"p" * 3050
    client.broadcast(payload)
    assert srv.broadcasts == [b"\x00\xffdata", payload]


def test_broadcast_refused_by_daemon(srv, client):
    with pytest.raises(GuestHAError) as err:
        client.broadcast(b"refuse me")
    assert (err.value.code, err.value.message) == ("unavailable", "no host")


def test_broadcast_too_large_is_refused_before_sending(srv, client):
    with pytest.raises(GuestHAError) as err:
        client.broadcast(b"x" * 3051)
    assert err.value.code == "payload_too_large"
    assert srv.broadcasts == []
    # the connection is still fine (the line was never sent)
    assert client.subscribe("status") == {"op": "ok", "id": 1}


def test_status(client):
    assert client.status() == MEMBERS


def test_status_timeout_and_late_reply_discarded(srv, client):
    srv.answer_status = False
    start = time.monotonic()
    with pytest.raises(GuestHATimeout) as err:
        client.status(timeout=0.2)
    assert time.monotonic() - start >= 0.2  # not before the timeout
    assert err.value.code == "timeout"
    # the reply comes late: it is not mistaken for an event or a reply
    [app] = srv.call(lambda: srv.server.clients)
    srv.call(srv.server.reply, app, {"op": "status", "members": [],
                                     "id": 1})
    assert client.next_event(timeout=0.2) is None
    srv.answer_status = True
    assert client.status() == MEMBERS


def test_check_without_callback_is_an_event(srv, client):
    client.register("web", 1000)
    srv.call(srv.server.send_checks, time.monotonic())
    assert client.next_event(timeout=SAFETY) == {"op": "check", "check": 1}
    client.report(False, "answering check", check=1, confirm=True)
    assert srv.health() == (False, "app web: answering check")


def test_health_callback_answers_checks(srv, client):
    calls = []

    def check(msg):
        calls.append(msg)
        return (False, "db down") if len(calls) == 2 else True
    client.health_callback = check
    client.register("web", 1000)
    srv.call(srv.server.send_checks, time.monotonic())
    wait_for_callback(client, calls, 1)  # answered, not returned
    assert calls == [{"op": "check", "check": 1}]
    assert srv.health() == (True, None)
    srv.call(srv.server.send_checks, time.monotonic())
    # answered while waiting for the reply to another request
    assert client.status() == MEMBERS
    assert calls[1] == {"op": "check", "check": 2}
    srv.until(lambda: not srv.server.health(time.monotonic())[0])
    assert srv.health() == (False, "app web: db down")


def wait_for_callback(client, calls, n):
    """Let the client read until its health callback ran ``n`` times;
    nothing it reads is returned as an event."""
    end = time.monotonic() + SAFETY
    while len(calls) < n:
        assert time.monotonic() < end, "the check never came"
        assert client.next_event(timeout=0.05) is None


def test_health_callback_that_raises_means_unhealthy(srv, client):
    calls = []

    def check(msg):
        calls.append(msg)
        raise RuntimeError("oops")
    client.health_callback = check
    client.register("web", 1000)
    srv.call(srv.server.send_checks, time.monotonic())
    wait_for_callback(client, calls, 1)
    srv.until(lambda: not srv.server.health(time.monotonic())[0])
    assert srv.health() == (False,
                            "app web: health check failed: RuntimeError")


def test_events_generator(srv, client):
    client.subscribe("broadcast")
    for i in range(3):
        srv.call(srv.server.publish, "broadcast",
                 {"op": "broadcast", "n": i})
    got = [e["n"] for e in client.events(timeout=0.3)]
    assert got == [0, 1, 2]  # and it ended after 0.3 s without events


def test_events_end_when_daemon_goes(srv, client):
    client.subscribe("broadcast")
    srv.call(srv.server.publish, "broadcast", {"op": "broadcast", "n": 1})
    srv.stop()
    assert list(client.events()) == [{"op": "broadcast", "n": 1}]
    with pytest.raises(GuestHAConnectionClosed):
        client.next_event(timeout=1)


def test_request_when_daemon_is_gone(srv, client):
    srv.stop()
    with pytest.raises(GuestHAConnectionClosed) as err:
        client.subscribe("status")
    assert err.value.code == "closed"


def test_next_event_without_waiting(srv, client):
    assert client.next_event(timeout=0) is None
    client.subscribe("broadcast")
    srv.call(srv.server.publish, "broadcast", {"op": "broadcast"})
    end = time.monotonic() + SAFETY
    event = None
    while event is None and time.monotonic() < end:
        event = client.next_event(timeout=0)
    assert event == {"op": "broadcast"}
    assert isinstance(client.fileno(), int)


def test_context_manager(srv):
    with GuestHAClient(srv.server.path) as c:
        c.register("ctx", 1000)
        srv.until(lambda: srv.server.counts()["registered"] == 1)
    srv.until(lambda: srv.server.counts()["connected"] == 0)
    # left without unregistering: departed
    assert srv.health() == (False, "app ctx disconnected")
    with pytest.raises(GuestHAError) as err:
        c.subscribe("status")
    assert err.value.code == "closed"


def test_connect_to_missing_socket(tmp_path):
    with pytest.raises(FileNotFoundError):
        GuestHAClient(str(tmp_path / "none.sock")).connect()


# -- the example application --------------------------------------------------

def run_example(srv, args):
    result = []
    t = threading.Thread(target=lambda: result.append(
        example_app.main(["--socket", srv.server.path] + args)))
    t.start()
    return t, result


def run_example_process(srv, args):
    """The example application as a process of its own, so that the test
    decides when it ends (SIGTERM makes it unregister and exit)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    return subprocess.Popen(
        [sys.executable, "-m", "guestha_guest.example_app", "--socket",
         srv.server.path] + args,
        env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def stop_example(proc):
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=SAFETY)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out.splitlines()


def test_example_app(srv):
    proc = run_example_process(srv, ["--name", "demo", "--broadcast",
                                     "hi there"])
    try:
        # (it subscribes, then broadcasts)
        srv.until(lambda: srv.server.counts()["subscribers"]["status"] == 1
                  and srv.broadcasts)
        assert srv.broadcasts == [b"hi there"]
        bc = {"op": "broadcast", "from": MEMBERS[1]["instance"],
              "payload": base64.b64encode(b"from a peer").decode()}
        srv.call(srv.server.publish, "broadcast", bc)
        srv.call(srv.server.send_checks, time.monotonic())
        srv.until(lambda: all(c.asked_at is None for c in srv.server.clients
                              if c.name == "demo"))  # it answered the check
        assert srv.health() == (True, None)
    finally:
        out = stop_example(proc)
    assert out[0] == "registered as demo"
    assert out[1] == "broadcast sent"
    assert '"text": "from a peer"' in out[2]
    assert out[-1] == "unregistered"
    # it unregistered before leaving: no fault
    srv.until(lambda: srv.server.counts()["connected"] == 0)
    assert srv.health() == (True, None)


def test_example_app_stalled_worker(srv):
    proc = run_example_process(srv, ["--name", "demo", "--stall-after", "0"])
    try:
        srv.until(lambda: srv.server.counts()["registered"] == 1)

        def stalled():
            # ask again until the worker has been stalled long enough
            srv.server.send_checks(time.monotonic())
            return not srv.server.health(time.monotonic())[0]
        srv.until(stalled)
        healthy, reason = srv.health()
        assert reason.startswith("app demo: worker stalled for ")
    finally:
        stop_example(proc)


def test_example_app_without_daemon(tmp_path, capsys):
    assert example_app.main(["--socket", str(tmp_path / "none")]) == 1
    assert "error: " in capsys.readouterr().err


def test_example_app_survives_a_refused_broadcast(srv, capsys):
    t, result = run_example(
        srv, ["--name", "demo", "--broadcast", "refuse me", "--duration",
              "0.5"])
    t.join(SAFETY)
    assert result == [0]
    out = capsys.readouterr().out.splitlines()
    assert out == ["registered as demo",
                   "broadcast refused: unavailable: no host",
                   "unregistered"]
    assert srv.health() == (True, None)
