"""The guest daemon against a simulated host.

The port is a pty (a character device, as the virtio-serial port is) or,
in unix-listen mode, a UNIX socket; the host is :class:`SimHost`, which
speaks the real protocol with the same state machine the agent uses.  The
daemon runs its real loop in a thread, in real time, so these tests use
short intervals and wait for outcomes rather than sleeping fixed times.
"""

import os
import pty
import stat
import subprocess
import sys
import threading
import time
import tty

import pytest

from guestha_guest import protocol as p
from guestha_guest.daemon import GuestDaemon
from guestha_guest.health import HookRunner
from guestha_guest.protocol import heartbeat as hb
from tests.unit.guest.simhost import SimHost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
UUID = "0f6c0c4e-7a4b-4c59-9d2e-3b5f1f1b2c3d"


class Running(object):
    """A daemon running its loop in a thread."""

    def __init__(self, daemon):
        self.daemon = daemon
        daemon.start()
        self.thread = threading.Thread(target=daemon.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.daemon.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def pty_port(tmp_path):
    """(master fd, path of the slave) - the slave stays open in the test
    so that the master does not see EIO while the daemon has no fd."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def running():
    started = []

    def start(*args, **kwargs):
        r = Running(GuestDaemon(*args, **kwargs))
        started.append(r)
        return r
    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


def _init(interval_ms=100, action="none"):
    return p.Init(name="vm-test", interval_ms=interval_ms,
                  corrective_action=action)


def _hooks(tmp_path, scripts, timeout=0.5, period=0.1):
    d = tmp_path / "health.d"
    d.mkdir()
    for name, body in scripts.items():
        f = d / name
        f.write_text("#!/bin/sh\n" + body + "\n")
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return HookRunner(str(d), timeout, period_s=period)


def _wait(host, seconds, until):
    host.run(seconds, until=until)
    assert until(), "condition not reached within %s s" % seconds


def test_registers_and_answers_over_a_character_device(pty_port, running):
    master, path = pty_port
    r = running(path, _init(interval_ms=50))
    host = SimHost(fd=master, instance=UUID, min_ms=150, seed=1)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 5)
    registered = host.of(hb.Registered)
    assert registered[0].init.name == "vm-test"
    assert registered[0].interval_ms == 150  # clamped to the host's bound
    assert r.daemon.heartbeat.interval_ms == 150
    assert r.daemon.heartbeat.instance == UUID
    answers = host.of(hb.Answered)
    assert all(a.healthy for a in answers)
    assert all(a.rtt < 0.15 for a in answers)
    assert host.of(hb.Missed) == []


def test_waits_for_a_port_that_is_hot_plugged_later(pty_port, running,
                                                   tmp_path):
    master, path = pty_port
    link = str(tmp_path / "org.openstack.guestha.0")
    r = running(link, _init())
    time.sleep(0.7)
    assert r.daemon.port.fd is None  # still waiting
    os.symlink(path, link)
    host = SimHost(fd=master, seed=2)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 3)
    assert host.of(hb.Registered)


def test_stale_backlog_in_the_port_is_discarded(pty_port, running):
    master, path = pty_port
    # An earlier agent challenged a guest that never answered: QEMU kept
    # the lines (about 3.7 KB) and the new daemon reads them first.
    old = p.Connection(p.HOST)
    old.start_sync()
    old.receive_data(b'{"v":1,"app":"base","type":"sync_ack","seq":1,'
                     b'"nonce":"' + old._nonce.encode() + b'","version":1}\n')
    assert isinstance(old.next_event(), p.Synced)
    stale = b"".join(old.send(p.Challenge(challenge="%032x" % i,
                                          deadline_ms=1000))
                     for i in range(30))
    os.write(master, stale + b'{"v":1,"app":"heartb')  # and a torn line
    r = running(path, _init())
    host = SimHost(fd=master, seed=3)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 2)
    stale_tokens = {"%032x" % i for i in range(30)}
    answered = {m.challenge for m in host.received(p.ChallengeResponse)}
    assert not answered & stale_tokens
    assert r.daemon.conn.discarded >= 30


def test_new_host_on_the_same_port_gets_a_fresh_registration(pty_port,
                                                             running):
    master, path = pty_port
    r = running(path, _init())
    first = SimHost(fd=master, seed=4)
    _wait(first, 5, lambda: len(first.of(hb.Answered)) >= 2)
    # the agent restarts: the new one knows nothing and says so after its
    # sync; the guest registers again without waiting for a timeout
    second = SimHost(fd=master, seed=5)
    started = time.monotonic()
    _wait(second, 5, lambda: len(second.of(hb.Answered)) >= 2)
    assert second.of(hb.Registered)
    assert second.of(hb.Missed) == []
    assert time.monotonic() - started < 1.5
    assert r.daemon.stats["registrations"] >= 2


def test_unix_listen_host_disconnects_and_reconnects(tmp_path, running):
    sock = str(tmp_path / "guest.sock")
    running("unix-listen:" + sock, _init())
    host = SimHost.connect_unix(sock, seed=6)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 2)
    host.close()
    host = SimHost.connect_unix(sock, seed=7)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 2)
    assert host.of(hb.Missed) == []
    host.close()


def test_a_hung_hook_makes_the_guest_unhealthy_not_late(pty_port, running,
                                                       tmp_path):
    master, path = pty_port
    hooks = _hooks(tmp_path, {"10-hang": "sleep 30"}, timeout=0.3,
                   period=0.1)
    running(path, _init(interval_ms=100, action="reboot"), hooks=hooks,
            hook_period_ms=100)
    host = SimHost(fd=master, seed=8)
    _wait(host, 6, lambda: any(not a.healthy for a in host.of(hb.Answered)))
    host.run(0.5)
    assert host.of(hb.Missed) == []
    bad = [a for a in host.of(hb.Answered) if not a.healthy]
    assert "10-hang timed out" in bad[-1].reason
    assert bad[-1].action == "reboot"
    assert all(a.rtt < 0.1 for a in host.of(hb.Answered))


def test_a_failing_hook_reports_its_reason_and_recovers(pty_port, running,
                                                       tmp_path):
    master, path = pty_port
    flag = tmp_path / "broken"
    flag.write_text("")
    hooks = _hooks(tmp_path, {
        "20-disk": '[ -e "%s" ] && { echo "disk full"; exit 3; }; exit 0'
                   % flag}, timeout=1.0, period=0.1)
    running(path, _init(), hooks=hooks, hook_period_ms=100)
    host = SimHost(fd=master, seed=9)
    _wait(host, 5, lambda: any(not a.healthy for a in host.of(hb.Answered)))
    bad = [a for a in host.of(hb.Answered) if not a.healthy][0]
    assert "20-disk exited 3" in bad.reason and "disk full" in bad.reason
    assert bad.action == "none"
    flag.unlink()
    n = len(host.of(hb.Answered))
    _wait(host, 5, lambda: any(a.healthy for a in host.of(hb.Answered)[n:]))


def test_junk_from_the_host_is_answered_with_an_error(pty_port, running):
    master, path = pty_port
    r = running(path, _init())
    host = SimHost(fd=master, seed=10)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 1)
    host.write(b"this is not json\n" + b"x" * 9000 + b"\n"
               + b'{"v":1,"app":"nope","type":"x","seq":5}\n')
    _wait(host, 5, lambda: len(host.received(p.Error)) >= 3)
    codes = [e.code for e in host.received(p.Error)]
    assert codes[:3] == ["invalid_json", "line_too_long", "unknown_type"]
    assert host.received(p.Error)[2].ref == 5
    n = len(host.of(hb.Answered))
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= n + 2)
    assert r.daemon.stats["protocol_errors"] == 3


def test_sigterm_sends_exit_and_the_process_ends(tmp_path):
    sock = str(tmp_path / "guest.sock")
    cfg = tmp_path / "guest.ini"
    cfg.write_text("[guestha]\ninterval_ms = 100\nname = proc-test\n"
                   "[health]\nhook_dir = %s\n[app_api]\nenabled = false\n"
                   % (tmp_path / "none"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "guestha_guest", "--config", str(cfg),
         "--port", "unix-listen:" + sock], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        host = SimHost.connect_unix(sock, timeout=10, seed=11)
        _wait(host, 10, lambda: len(host.of(hb.Answered)) >= 2)
        proc.terminate()
        _wait(host, 5, lambda: bool(host.of(hb.Exited)))
        assert proc.wait(5) == 0
        assert host.hb.state == hb.EXITED
        assert host.of(hb.Missed) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0].decode()
    assert "signal 15" in out


# -- applications on the local API --------------------------------------------

def _with_apps(tmp_path, port, **kwargs):
    from guestha_guest.appapi import AppServer
    d = GuestDaemon(port, kwargs.pop("init", _init()), **kwargs)
    sock = str(tmp_path / "app.sock")
    d.apps = AppServer(sock, 0o600, 8, d)
    return Running(d), sock


def _client(sock, **kwargs):
    from guestha_guest.client import GuestHAClient
    c = GuestHAClient(sock, timeout=5.0, **kwargs)
    c.connect()
    return c


def test_an_application_that_stops_answering_makes_the_guest_unhealthy(
        pty_port, tmp_path):
    master, path = pty_port
    r, sock = _with_apps(tmp_path, path)
    try:
        host = SimHost(fd=master, seed=12)
        _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 1)
        app = _client(sock, health_callback=lambda check: (True, None))
        app.register("db", deadline_ms=300)
        # the app answers checks while it processes its events...
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            host.run(0.05)
            app.next_event(timeout=0.01)  # answers the checks that came
        healthy_answers = host.of(hb.Answered)
        assert healthy_answers and healthy_answers[-1].healthy
        # ... then it hangs: no more answers within its 300 ms deadline
        _wait(host, 5, lambda: not host.of(hb.Answered)[-1].healthy)
        bad = host.of(hb.Answered)[-1]
        assert "app db stopped answering" in bad.reason
        assert host.of(hb.Missed) == []
        app.close()
    finally:
        r.stop()


def test_an_application_not_asked_while_no_host_is_not_overdue(tmp_path):
    """An application that only answers checks, registered while no host
    challenges, is healthy at the first challenge that comes later than its
    deadline: nobody had asked it anything."""
    port = str(tmp_path / "chan.sock")
    r, sock = _with_apps(tmp_path, "unix-listen:" + port)
    try:
        app = _client(sock, health_callback=lambda check: (True, None))
        app.register("db", deadline_ms=300)
        time.sleep(0.8)  # no host yet: no checks for 800 ms
        host = SimHost.connect_unix(port, timeout=5, seed=14)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            host.run(0.05)
            app.next_event(timeout=0.01)  # answers the checks that came
        answers = host.of(hb.Answered)
        assert len(answers) >= 5
        assert [a.reason for a in answers if not a.healthy] == []
        app.close()
    finally:
        r.stop()


def test_broadcast_status_and_notification_through_the_daemon(pty_port,
                                                              tmp_path):
    import base64
    master, path = pty_port
    r, sock = _with_apps(tmp_path, path)
    try:
        host = SimHost(fd=master, seed=13)
        _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 1)
        app = _client(sock)
        app.subscribe("broadcast", "notification")
        # guest -> host
        app.broadcast(b"\x00hello peers\xff")
        _wait(host, 5, lambda: bool(host.received(p.Broadcast)))
        sent = host.received(p.Broadcast)[0]
        assert sent.payload == b"\x00hello peers\xff"
        assert sent.sender is None  # the host stamps the source, not us
        # host -> guest: a peer's broadcast and a state change
        peer = "11111111-2222-4333-8444-555555555555"
        host.send(p.Broadcast(payload=b"from a peer", sender=peer))
        host.send(p.Notification(instance=peer, state="stopped",
                                 event="instance.power_off.end"))
        host.run(0.3)
        got = [app.next_event(timeout=2), app.next_event(timeout=2)]
        assert got[0]["op"] == "broadcast" and got[0]["from"] == peer
        assert base64.b64decode(got[0]["payload"]) == b"from a peer"
        assert got[1] == {"op": "notification", "instance": peer,
                          "state": "stopped",
                          "event": "instance.power_off.end"}
        # a status query is answered by the host with every member
        members = [p.Member(peer, "active"),
                   p.Member(UUID, "active")] + [
            p.Member("%08x-0000-4000-8000-000000000000" % i, "stopped")
            for i in range(60)]

        def answer_query():
            for q in host.received(p.StatusQuery):
                host.messages.remove(q)
                host.send(p.Status(ref=q.seq, members=members))
            return False
        result = {}

        def ask():
            result["members"] = app.status(timeout=5)
        t = threading.Thread(target=ask)
        t.start()
        end = time.monotonic() + 5
        while t.is_alive() and time.monotonic() < end:
            host.run(0.05)
            answer_query()
        t.join(1)
        assert [(m["instance"], m["state"]) for m in result["members"]] == [
            (m.instance, m.state) for m in members]
        app.close()
    finally:
        r.stop()


def test_a_refused_broadcast_reaches_the_application_as_an_error(
        pty_port, tmp_path):
    master, path = pty_port
    r, sock = _with_apps(tmp_path, path)
    try:
        host = SimHost(fd=master, seed=14)
        _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 1)
        app = _client(sock)
        app.broadcast(b"x")
        _wait(host, 5, lambda: bool(host.received(p.Broadcast)))
        b = host.received(p.Broadcast)[0]
        host.send(p.Error(app="server_group", code="not_member",
                          message="not in a server group", ref=b.seq))
        host.run(0.3)
        ev = app.next_event(timeout=2)
        assert ev["op"] == "error" and ev["code"] == "not_member"
        app.close()
    finally:
        r.stop()


def test_error_replies_to_a_flooding_host_are_rate_limited(pty_port,
                                                          running):
    master, path = pty_port
    r = running(path, _init())
    host = SimHost(fd=master, seed=15)
    _wait(host, 5, lambda: len(host.of(hb.Answered)) >= 1)
    host.write(b"junk\n" * 500)
    host.run(1.0)
    errors = [e for e in host.received(p.Error) if e.code == "invalid_json"]
    assert r.daemon.stats["protocol_errors"] == 500
    # a burst of 10, then 2 a second
    assert 10 <= len(errors) <= 14
    assert host.of(hb.Missed) == []
