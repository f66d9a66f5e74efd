# SPDX-License-Identifier: Apache-2.0
"""The guest daemon against a simulated host, on a fake clock.

The port is a pty (a character device, as the virtio-serial port is) or,
in unix-listen mode, a UNIX socket; the host is :class:`SimHost`, which
speaks the real protocol with the same state machine the agent uses.  A
:class:`Bench` runs both in the test's thread on one fake clock: time
moves only when neither side has anything left to do, so no result
depends on how fast or how loaded the machine is.  Only the test of the
real process (SIGTERM) runs on the real clock, and it asserts no timing.
"""

import base64
import logging
import os
import pty
import subprocess
import sys
import tty

import pytest

from guestha_guest import daemon as daemon_mod
from guestha_guest.daemon import GuestDaemon
from guestha_guest import protocol as p
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.testing.simhost import SimHost
from tests.unit.guest.bench import Bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
UUID = "0f6c0c4e-7a4b-4c59-9d2e-3b5f1f1b2c3d"
PEER = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def pty_port(tmp_path):
    """(master fd, path of the slave) - the slave stays open in the test
    so that the master does not see EIO while the daemon has no fd."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def bench():
    b = Bench()
    yield b
    if b.daemon is not None and b.daemon.running:
        b.daemon.stop()
        b.run_until(lambda: not b.daemon.running, daemon_mod.STOP_WAIT + 1)
        b.daemon.close()


def _init(interval_ms=100, action="none"):
    return p.Init(name="vm-test", interval_ms=interval_ms,
                  corrective_action=action)


class StubHooks(object):
    """The HookRunner interface with a result the test sets (the runner
    and its processes are tested in test_health.py)."""

    def __init__(self, healthy=True, reason=None):
        self.outcome = (healthy, reason)
        self.period = None
        self.closed = False

    def set_period(self, seconds):
        self.period = seconds

    def next_deadline(self):
        return None

    def tick(self, now):
        pass

    def result(self, now):
        return self.outcome

    def close(self):
        self.closed = True


def _daemon(bench, port, init=None, **kwargs):
    return bench.start(GuestDaemon(port, init or _init(),
                                   clock=bench.clock, **kwargs))


def _host(bench, master, **kwargs):
    kwargs.setdefault("clock", bench.clock)
    return bench.attach(SimHost(fd=master, **kwargs))


def _answered(host, n):
    return lambda: len(host.of(hb.Answered)) >= n


def test_registers_and_answers_over_a_character_device(pty_port, bench):
    master, path = pty_port
    d = _daemon(bench, path, _init(interval_ms=50))
    host = _host(bench, master, instance=UUID, min_ms=150, seed=1)
    bench.run_until(_answered(host, 5), 2.0)
    registered = host.of(hb.Registered)
    assert registered[0].init.name == "vm-test"
    assert registered[0].interval_ms == 150  # clamped to the host's bound
    assert d.session.heartbeat.interval_ms == 150
    assert d.session.heartbeat.instance == UUID
    answers = host.of(hb.Answered)
    assert all(a.healthy for a in answers)
    assert all(a.rtt == 0 for a in answers)  # at once, from cached health
    assert host.of(hb.Missed) == []


def test_waits_for_a_port_that_is_hot_plugged_later(pty_port, bench,
                                                    tmp_path):
    master, path = pty_port
    link = str(tmp_path / "org.openstack.guestha.0")
    d = _daemon(bench, link)
    bench.advance(10.0)
    assert d.port.fd is None  # still waiting, looking every POLL_PATH
    os.symlink(path, link)
    bench.run_until(lambda: d.port.fd is not None, 0.6)
    host = _host(bench, master, seed=2)
    bench.run_until(_answered(host, 3), 2.0)
    assert host.of(hb.Registered)


def test_stale_backlog_in_the_port_is_discarded(pty_port, bench):
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
                     for i in range(30)) + b'{"v":1,"app":"heartb'
    os.write(master, stale)  # and a torn line
    bench.to_daemon += len(stale)
    d = _daemon(bench, path)
    host = _host(bench, master, seed=3)
    bench.run_until(_answered(host, 2), 2.0)
    stale_tokens = {"%032x" % i for i in range(30)}
    answered = {m.challenge for m in host.received(p.ChallengeResponse)}
    assert not answered & stale_tokens
    assert d.session.conn.discarded >= 30


def test_new_host_on_the_same_port_gets_a_fresh_registration(pty_port,
                                                             bench):
    master, path = pty_port
    d = _daemon(bench, path)
    first = _host(bench, master, seed=4)
    bench.run_until(_answered(first, 2), 1.0)
    # the agent restarts: the new one knows nothing and says so after its
    # sync; the guest registers again without waiting for a timeout
    second = _host(bench, master, seed=5)
    bench.run_until(_answered(second, 2), 0.3)  # two intervals and a bit
    assert second.of(hb.Registered)
    assert second.of(hb.Missed) == []
    assert d.channel.stats["registrations"] == 2


def test_unix_listen_keeps_the_registration_across_host_reconnects(
        tmp_path, bench):
    """As a real port: the device stays open when the host goes, so the
    guest keeps its registration and synchronises with the next host,
    which invites it to register again."""
    sock = str(tmp_path / "guest.sock")
    d = _daemon(bench, "unix-listen:" + sock)
    host = bench.attach(SimHost.connect_unix(sock, seed=6,
                                             clock=bench.clock),
                        new_stream=True)
    bench.run_until(_answered(host, 2), 1.0)
    conn = d.session.conn
    host.close()
    bench.detach()
    assert d.session.heartbeat.state == hb.REGISTERED  # nothing says otherwise
    host = bench.attach(SimHost.connect_unix(sock, seed=7,
                                             clock=bench.clock),
                        new_stream=True)
    bench.run_until(_answered(host, 2), 0.3)
    assert d.session.conn is conn  # the same channel, synchronised again
    assert host.of(hb.Missed) == []
    assert d.channel.stats["registrations"] == 2
    host.close()


def test_an_unhealthy_check_is_answered_at_once_with_reason_and_action(
        pty_port, bench):
    master, path = pty_port
    hooks = StubHooks(False, "10-hang timed out")
    _daemon(bench, path, _init(interval_ms=100, action="reboot"),
            hooks=hooks, hook_period_ms=100)
    assert hooks.period == 0.1
    host = _host(bench, master, seed=8)
    bench.run_until(_answered(host, 3), 1.0)
    assert host.of(hb.Missed) == []
    bad = host.of(hb.Answered)[-1]
    assert (bad.healthy, bad.reason, bad.action, bad.rtt) == (
        False, "10-hang timed out", "reboot", 0)


def test_a_failing_check_reports_its_reason_and_recovers(pty_port, bench):
    master, path = pty_port
    hooks = StubHooks(False, "20-disk exited 3: disk full")
    _daemon(bench, path, hooks=hooks)
    host = _host(bench, master, seed=9)
    bench.run_until(_answered(host, 1), 1.0)
    bad = host.of(hb.Answered)[-1]
    assert (bad.healthy, bad.reason, bad.action) == (
        False, "20-disk exited 3: disk full", "none")
    hooks.outcome = (True, None)
    n = len(host.of(hb.Answered))
    bench.run_until(_answered(host, n + 1), 0.2)
    good = host.of(hb.Answered)[-1]
    assert (good.healthy, good.reason, good.action) == (True, None, None)


def test_junk_from_the_host_is_answered_with_an_error(pty_port, bench):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=10)
    bench.run_until(_answered(host, 1), 1.0)
    bench.write(b"this is not json\n" + b"x" * 9000 + b"\n"
                + b'{"v":1,"app":"nope","type":"x","seq":5}\n')
    bench.settle()
    codes = [e.code for e in host.received(p.Error)]
    assert codes == ["invalid_json", "line_too_long", "unknown_type"]
    assert host.received(p.Error)[2].ref == 5
    n = len(host.of(hb.Answered))
    bench.run_until(_answered(host, n + 2), 0.3)
    assert d.channel.stats["protocol_errors"] == 3


def test_an_error_from_the_host_is_never_answered_valid_or_not(pty_port,
                                                               bench):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=16)
    bench.run_until(_answered(host, 1), 1.0)
    bench.write(b'{"v":1,"app":"base","type":"error","seq":7,'
                b'"code":"NOT VALID","message":"x"}\n'
                b'{"v":1,"app":"heartbeat","type":"error","seq":8}\n'
                b'{"v":1,"app":"nope","type":"error","seq":9}\n'
                b'{"v":1,"app":"base","type":"error","seq":10,'
                b'"code":"invalid_json","message":"a valid one"}\n')
    bench.settle()
    assert host.received(p.Error) == []
    # counted and logged, though
    assert d.channel.stats["protocol_errors"] == 3


def test_sigterm_sends_exit_and_the_process_ends(tmp_path):
    sock = str(tmp_path / "guest.sock")
    cfg = tmp_path / "guest.ini"
    cfg.write_text("[guestha]\ninterval_ms = 1000\nname = proc-test\n"
                   "[health]\nhook_dir = %s\n[app_api]\nenabled = false\n"
                   % (tmp_path / "none"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "guestha_guest", "--config", str(cfg),
         "--port", "unix-listen:" + sock], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # real processes, real clock: the waits are safety deadlines
        host = SimHost.connect_unix(sock, timeout=30, seed=11)
        host.run(30, lambda: len(host.of(hb.Answered)) >= 1)
        assert host.of(hb.Answered)
        proc.terminate()
        host.run(30, lambda: bool(host.of(hb.Exited)))
        assert proc.wait(30) == 0
        assert host.hb.state == hb.EXITED
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0].decode()
    assert "signal 15" in out


# -- stopping -----------------------------------------------------------------

def test_stop_sends_exit_when_synchronised(pty_port, bench):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=17)
    bench.run_until(_answered(host, 1), 1.0)
    d.stop()
    bench.run_until(lambda: not d.running, 0.01)
    assert host.of(hb.Exited) and host.hb.state == hb.EXITED


def test_a_stop_asked_in_the_middle_of_a_tick_begins_at_the_next(
        pty_port, bench):
    # SIGTERM's handler runs between any two lines of the loop: a stop
    # asked after the tick looked for one (here, while the channel ticks)
    # must neither break that tick nor be lost
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=17)
    bench.run_until(_answered(host, 1), 1.0)
    channel_tick = d.channel.tick

    def tick_then_stop(now):
        channel_tick(now)
        d.channel.tick = channel_tick
        d.stop()
    d.channel.tick = tick_then_stop
    d.tick(bench.clock())
    assert d.running
    bench.run_until(lambda: not d.running, 0.01)
    assert host.of(hb.Exited) and host.hb.state == hb.EXITED


def test_stop_while_resynchronising_syncs_then_sends_exit(pty_port, bench):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=18)
    bench.run_until(_answered(host, 1), 1.0)
    # the guest starts a sync whose answer has not come when it is told
    # to stop (written while the host is not reading)
    host.auto_heartbeat = False
    d.channel.apply(d.session.start_sync(bench.clock(), fresh=False),
                    bench.clock())
    d.stop()
    d.tick(bench.clock())
    assert d.running and d.session.conn.state == p.SYNCING
    host.auto_heartbeat = True
    inits = len(host.received(p.Init))
    bench.run_until(lambda: not d.running, daemon_mod.STOP_WAIT)
    assert host.received(p.Exit) and host.hb.state == hb.EXITED
    assert len(host.received(p.Init)) == inits  # no init on the way out
    assert host.of(hb.Missed) == []


def test_stop_gives_up_after_stop_wait_without_a_host(pty_port, bench,
                                                      caplog):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=19)
    bench.run_until(_answered(host, 1), 1.0)
    host.close()
    bench.detach()  # nobody answers the sync any more
    d.channel.apply(d.session.start_sync(bench.clock(), fresh=False),
                    bench.clock())
    stopped_at = bench.clock()
    d.stop()
    with caplog.at_level(logging.WARNING, "guestha_guest.daemon"):
        bench.run_until(lambda: not d.running, daemon_mod.STOP_WAIT + 1)
    assert bench.clock() - stopped_at == pytest.approx(daemon_mod.STOP_WAIT)
    assert "stopping without exit" in caplog.text


def test_stop_after_a_silence_timeout_still_sends_exit(pty_port, bench):
    """A guest whose watchdog expired is UNREGISTERED, but the host may
    still hold its registration: it says exit too."""
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=20)
    bench.run_until(_answered(host, 1), 1.0)
    # the host stops challenging and answering syncs for a while
    host.auto_heartbeat = host.answer_syncs = False
    bench.run_until(lambda: d.session.heartbeat.state == hb.UNREGISTERED, 2.0)
    assert d.session.conn.state == p.SYNCING
    d.stop()
    d.tick(bench.clock())
    host.auto_heartbeat = host.answer_syncs = True
    bench.run_until(lambda: not d.running, daemon_mod.STOP_WAIT)
    assert host.received(p.Exit) and host.hb.state == hb.EXITED


def test_stop_of_a_guest_that_never_registered_says_nothing(pty_port,
                                                            bench):
    master, path = pty_port
    d = _daemon(bench, path)
    d.stop()
    bench.run_until(lambda: not d.running, 0.01)
    host = _host(bench, master, seed=21, sync=False)
    bench.settle()
    assert host.received(p.Exit) == []


# -- synchronising after a silence --------------------------------------------

def _lose_writes(d):
    """The port drops every line (a full or disconnected port); returns
    a function that restores it."""
    write = d.port.write

    def dropped(data, sync=False):
        d.port.dropped += 1
        return False
    d.port.write = dropped
    return lambda: setattr(d.port, "write", write)


@pytest.mark.parametrize("seen_before", [False, True],
                         ids=["first-data-after-silence", "data-while-sync"])
def test_traffic_after_a_long_backoff_resynchronises_at_once(
        pty_port, bench, seen_before):
    master, path = pty_port
    d = _daemon(bench, path)
    restore = _lose_writes(d)
    bench.advance(100.0)  # syncs at 1, 2, 4 ... 30 s, all lost
    assert d.session.sync_retry == daemon_mod.SYNC_RETRY_MAX
    restore()
    # first data after 0-byte reads, or more data from a host already seen
    d.port.host_connected = seen_before
    host = _host(bench, master, seed=22)
    bench.run_until(lambda: d.session.conn.state == p.READY, 0.001)
    bench.run_until(_answered(host, 1), 1.0)


def test_data_while_a_fresh_sync_is_pending_does_not_resync(pty_port,
                                                            bench):
    master, path = pty_port
    d = _daemon(bench, path)
    d.port.host_connected = True
    sent = d.session.sync_sent_at
    bench.advance(0.5)
    host = _host(bench, master, seed=23, sync=False)
    host.send(p.Sync(nonce="n1", versions=[1]))  # data, but not our answer
    bench.settle()
    assert d.session.sync_sent_at == sent


# -- rate limits --------------------------------------------------------------

def test_error_replies_to_a_flooding_host_are_rate_limited(pty_port, bench):
    master, path = pty_port
    d = _daemon(bench, path)
    host = _host(bench, master, seed=15)
    bench.run_until(_answered(host, 1), 1.0)
    bench.write(b"junk\n" * 500)
    bench.settle()
    assert len(host.received(p.Error)) == 10  # the burst
    bench.advance(1.0)
    bench.write(b"junk\n" * 500)
    bench.settle()
    assert len(host.received(p.Error)) == 12  # then 2 a second
    assert d.channel.stats["protocol_errors"] == 1000
    assert host.of(hb.Missed) == []


# -- applications on the local API --------------------------------------------

def _with_apps(bench, tmp_path, port, **kwargs):
    from guestha_guest.appapi import AppServer
    d = GuestDaemon(port, kwargs.pop("init", _init()), clock=bench.clock,
                    **kwargs)
    sock = str(tmp_path / "app.sock")
    d.apps = AppServer(sock, 0o600, 8, d.relay, clock=bench.clock)
    bench.start(d)
    return d, sock


def _client(bench, sock, **kwargs):
    from guestha_guest.client import GuestHAClient
    c = GuestHAClient(sock, timeout=10.0, **kwargs)
    bench.call(c.connect)
    return c


def _answer_checks(bench, app):
    # the application reads and answers the checks that have come
    while bench.call(app.next_event, 0) is not None:
        pass
    bench.settle()


def test_an_application_that_stops_answering_makes_the_guest_unhealthy(
        pty_port, tmp_path, bench):
    master, path = pty_port
    d, sock = _with_apps(bench, tmp_path, path)
    host = _host(bench, master, seed=12)
    bench.run_until(_answered(host, 1), 1.0)
    app = _client(bench, sock, health_callback=lambda check: (True, None))
    bench.call(app.register, "db", 300)
    # the app answers checks while it processes its events...
    for _ in range(10):
        bench.advance(0.1)
        _answer_checks(bench, app)
    assert host.of(hb.Answered)[-1].healthy
    # ... then it hangs: no more answers within its 300 ms deadline
    bench.run_until(lambda: not host.of(hb.Answered)[-1].healthy, 1.0)
    assert "app db stopped answering" in host.of(hb.Answered)[-1].reason
    assert host.of(hb.Missed) == []
    app.close()


def test_an_application_not_asked_while_no_host_is_not_overdue(tmp_path,
                                                               bench):
    """An application that only answers checks, registered while no host
    challenges, is healthy at the first challenge that comes later than its
    deadline: nobody had asked it anything."""
    port = str(tmp_path / "chan.sock")
    d, sock = _with_apps(bench, tmp_path, "unix-listen:" + port)
    app = _client(bench, sock, health_callback=lambda check: (True, None))
    bench.call(app.register, "db", 300)
    bench.advance(0.8)  # no host yet: no checks for 800 ms
    host = bench.attach(SimHost.connect_unix(port, seed=14,
                                             clock=bench.clock),
                        new_stream=True)
    for _ in range(15):
        bench.advance(0.1)
        _answer_checks(bench, app)
    answers = host.of(hb.Answered)
    assert len(answers) >= 5
    assert [a.reason for a in answers if not a.healthy] == []
    app.close()


def test_broadcast_status_and_notification_through_the_daemon(
        pty_port, tmp_path, bench):
    master, path = pty_port
    d, sock = _with_apps(bench, tmp_path, path)
    host = _host(bench, master, seed=13)
    bench.run_until(_answered(host, 1), 1.0)
    app = _client(bench, sock)
    bench.call(app.subscribe, "broadcast", "notification")
    # guest -> host
    bench.call(app.broadcast, b"\x00hello peers\xff")
    bench.settle()
    sent = host.received(p.Broadcast)[0]
    assert sent.payload == b"\x00hello peers\xff"
    assert sent.sender is None  # the host stamps the source, not us
    # host -> guest: a peer's broadcast and a state change
    host.send(p.Broadcast(payload=b"from a peer", sender=PEER))
    host.send(p.Notification(instance=PEER, state="stopped",
                             event="instance.power_off.end"))
    bench.settle()
    got = [bench.call(app.next_event, 5), bench.call(app.next_event, 5)]
    assert got[0]["op"] == "broadcast" and got[0]["from"] == PEER
    assert base64.b64decode(got[0]["payload"]) == b"from a peer"
    assert got[1] == {"op": "notification", "instance": PEER,
                      "state": "stopped", "event": "instance.power_off.end"}
    # a status query is answered by the host with every member
    members = [p.Member(PEER, "active"), p.Member(UUID, "active")] + [
        p.Member("%08x-0000-4000-8000-000000000000" % i, "stopped")
        for i in range(60)]
    real_pump = host.pump

    def answering_pump(wait=0.0):
        got = real_pump(wait)
        for q in host.received(p.StatusQuery):
            host.messages.remove(q)
            host.send(p.Status(ref=q.seq, members=members))
        return got
    host.pump = answering_pump
    result = bench.call(app.status, 10)
    assert [(m["instance"], m["state"]) for m in result] == [
        (m.instance, m.state) for m in members]
    app.close()


def test_a_refused_broadcast_reaches_the_application_as_an_error(
        pty_port, tmp_path, bench):
    master, path = pty_port
    d, sock = _with_apps(bench, tmp_path, path)
    host = _host(bench, master, seed=14)
    bench.run_until(_answered(host, 1), 1.0)
    app = _client(bench, sock)
    bench.call(app.broadcast, b"x")
    bench.settle()
    b = host.received(p.Broadcast)[0]
    host.send(p.Error(app="server_group", code="not_member",
                      message="not in a server group", ref=b.seq))
    bench.settle()
    ev = bench.call(app.next_event, 5)
    assert ev["op"] == "error" and ev["code"] == "not_member"
    app.close()
