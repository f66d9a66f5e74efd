# SPDX-License-Identifier: Apache-2.0
"""What a hostile guest can do to the agent, bounded (issue 8), and a hang
during an agent restart, reported (issue 13), on the fake clock."""

import json
import logging
import socket

from guestha.agent import events as ev
from guestha.agent import guestlog
from guestha.agent import instance as im
from guestha.agent import loop as loop_mod
from guestha.agent import monitored as monitored_mod
from guestha.agent import status as status_mod
from guestha_guest import protocol as p
from guestha_guest.protocol import messages as msgs
from tests.unit.agent.harness import Guest
from tests.unit.agent.harness import Harness

# what the protocol lets through in text (it refuses C0 controls)
UNSAFE = "\x85\x9b[2J\u2028\u2029\u202e\u2066\x7f"


def monitored(**kwargs):
    h = Harness(**kwargs)
    h.advance(0.5)
    assert h.inst.state == im.MONITORED
    return h


def confirm_all(h, seen):
    # libvirt confirms every suspected fault: the domain runs
    while len(h.env.confirms) > seen[0]:
        h.inst.confirmed(ev.RUNNING, h.env.confirms[seen[0]], h.now)
        seen[0] += 1


# -- 1. guest text in the log -------------------------------------------------

def test_sanitise_leaves_one_printable_line_of_bounded_length():
    text = guestlog.sanitise("ok \x1b\x00\r\n" + UNSAFE + "\\" + "x" * 500)
    assert text.startswith("ok \\x1b\\x00\\x0d\\x0a\\x85\\x9b[2J\\u2028"
                           "\\u2029\\u202e\\u2066\\x7f\\\\x")
    assert len(text) <= guestlog.MAX_TEXT + 3 and text.endswith("...")
    assert text.isprintable()
    assert guestlog.sanitise("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"
    assert guestlog.sanitise(None) is None


def test_guest_errors_are_logged_rate_limited_and_escaped(caplog):
    h = monitored()
    caplog.set_level(logging.INFO, logger="guestha.agent.instance")
    for _ in range(120):  # 10 a second for 12 s, under the line budget
        h.guest.send(p.Error(app="heartbeat", code="x", message=UNSAFE))
        h.advance(0.1, step=0.05)
    logged = [r.getMessage() for r in caplog.records
              if "guest reports error" in r.getMessage()]
    budget = h.policy.guest_log_lines_per_minute
    assert 1 <= len(logged) <= budget + 3
    for line in logged:
        assert line.isprintable(), repr(line)
    assert h.inst.status(h.now)["counters"]["log_suppressed"] >= 100
    assert "suppressed" in logged[-1]


def test_registrations_are_logged_rate_limited(caplog):
    h = monitored()
    caplog.set_level(logging.INFO, logger="guestha.agent.instance")
    for _ in range(60):
        h.guest = Guest(h.guest.sock, now=h.now)  # the daemon starts over
        h.advance(0.5, step=0.05)
    logged = [r for r in caplog.records if "registered" in r.getMessage()]
    # a burst of the budget, then the budget per minute (30 s here)
    assert len(logged) <= 1.5 * h.policy.guest_log_lines_per_minute + 1


# -- 2. re-registration as a fault generator ----------------------------------

def test_faults_a_guest_can_cause_per_window_are_bounded():
    policy = im.Policy(min_interval_ms=100, fault_limit=3, fault_window=60)
    h = monitored(policy=policy)
    seen = [0]
    for _ in range(300):  # 150 s: an init after every answered challenge
        h.guest = Guest(h.guest.sock, now=h.now)
        h.advance(0.5, step=0.05)
        confirm_all(h, seen)
    starts = [f["detected_at_ts"] for f in h.faults()]
    assert 3 <= len(starts) <= 9
    for t in starts:  # no window of 60 s holds more than 3
        assert len([s for s in starts if t <= s < t + 60]) <= 3
    # every fault is recovered from, once
    h.advance(70, step=0.05)
    assert len(h.recoveries()) == len(starts)
    assert h.inst.fault is None


def test_a_held_recovery_shows_and_a_new_fault_keeps_it_open():
    policy = im.Policy(min_interval_ms=100, fault_limit=1, fault_window=30)
    h = monitored(policy=policy)
    seen = [0]
    h.guest.frozen = True
    h.advance(0.3)
    confirm_all(h, seen)
    assert len(h.faults()) == 1
    h.guest.frozen = False
    h.advance(1)
    assert h.recoveries() == []  # held: 1 fault in the window
    st = h.inst.status(h.now)
    assert st["recovery_held"]["faults_in_window"] == 1
    assert "held back" in st["note"]
    h.guest.frozen = True  # hangs again: the same fault goes on
    h.advance(1)
    assert h.inst.status(h.now)["recovery_held"] is None
    assert len(h.faults()) == 1 and h.inst.fault is not None
    h.guest.frozen = False  # healthy again: held until the window allows
    h.advance(1)
    assert h.recoveries() == [] and h.inst.status(h.now)["recovery_held"]
    h.advance(29)
    assert len(h.faults()) == 1
    assert len(h.recoveries()) == 1 and h.inst.fault is None
    assert "held back" in h.recoveries()[0]["details"]["why"]


def test_a_stopped_instance_recovers_at_once_even_when_held():
    policy = im.Policy(min_interval_ms=100, fault_limit=1, fault_window=600)
    h = monitored(policy=policy)
    seen = [0]
    h.guest.frozen = True
    h.advance(0.3)
    confirm_all(h, seen)
    h.guest.frozen = False
    h.advance(1)
    assert h.recoveries() == []
    h.inst.domain_gone(h.now)
    assert len(h.recoveries()) == 1


# -- 3. status queries --------------------------------------------------------

def test_status_queries_are_limited_at_the_agent():
    h = monitored()
    for _ in range(40):  # 40 in 2 s, under the line budget
        h.guest.send(p.StatusQuery())
        h.advance(0.05, step=0.05)
    relays = [r for r in h.env.relays if r[0] == "query_status"]
    q = h.policy.status_queries_per_second
    assert len(relays) <= 2 * q + 2 * q + 1
    refused = [e for e in h.guest.received if isinstance(e, p.Error)
               and e.code == "rate_limited" and e.app == "server_group"]
    assert len(refused) == 40 - len(relays) > 0
    assert h.inst.counters["refused_queries"] == len(refused)


# -- 4. floods that were never counted ----------------------------------------

def test_a_flood_of_empty_lines_is_misbehaviour(caplog):
    h = monitored()
    caplog.set_level(logging.WARNING, logger="guestha.agent.instance")
    for _ in range(100):  # 2,000 keep-alives a second
        h.guest.sock.send(b"\n" * 20)
        h.advance(0.01)
        if h.inst.counters["resets"]:
            break
    assert h.inst.counters["resets"] == 1
    assert any("misbehaves" in r.getMessage() for r in caplog.records)


def test_garbage_while_synchronising_is_misbehaviour():
    h = Harness(guest_frozen=True)  # never answers our sync
    h.advance(0.1)
    assert h.inst.state == im.SYNCING
    for _ in range(300):  # 30 bad lines a second, under the line budget
        h.guest.sock.send(b"not the protocol\n")
        h.advance(1 / 30.0)
        if h.inst.counters["resets"]:
            break
    assert h.inst.counters["discarded_lines"] >= 20
    assert h.inst.counters["resets"] == 1


def test_a_few_stale_lines_at_a_resync_are_not_misbehaviour():
    h = Harness(guest_frozen=True)
    h.advance(0.1)
    h.guest.sock.send(b"stale\n" * 10)
    h.advance(0.1)
    assert h.inst.counters["discarded_lines"] == 10
    assert h.inst.conduct.misbehaviour.count == 0


# -- 5. partial writes --------------------------------------------------------

def big_status():
    members = [p.Member("%08d-0000-4000-8000-000000000000" % i, "active")
               for i in range(msgs.STATUS_MEMBERS_PER_PART
                              * msgs.MAX_STATUS_PARTS)]
    return p.Status(ref=7, members=members)


def test_a_partial_write_is_finished_when_the_socket_is_writable():
    h = monitored()
    h.inst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    msg = big_status()
    assert len(h.inst.conn.send(msg)) > 150000
    assert h.inst.deliver(msg)
    # the socket took part of it: the rest waits for it to be writable
    assert h.inst.output_queued and h.inst.sock in h.env.writable
    h.advance(0.3)
    got = [e for e in h.guest.received if isinstance(e, p.Status)]
    assert len(got) == 1 and len(got[0].members) == len(msg.members)
    assert not h.inst.output_queued and h.inst.sock not in h.env.writable
    assert h.inst.state == im.MONITORED and h.env.reports == []


def test_challenges_are_dropped_not_queued_behind_a_partial_line():
    h = monitored()
    h.inst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.guest.frozen = True
    assert h.inst.deliver(big_status())
    h.inst.writable(h.now)
    queued = h.inst.output_queued
    h.advance(0.25, step=0.05)  # two challenges are due
    assert h.inst.counters["dropped_lines"] >= 1
    assert h.inst.output_queued <= queued


def test_the_output_queue_is_bounded_and_dropped_on_close():
    policy = im.Policy(min_interval_ms=100, output_buffer_bytes=65536)
    h = monitored(policy=policy)
    h.inst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.guest.frozen = True
    sent = [h.inst.deliver(p.Notification(
        instance=h.inst.uuid, state="active", event="x" * 20))
        for _ in range(5000)]
    assert not all(sent)
    assert h.inst.output_queued <= 65536 + 1024
    assert h.inst.counters["dropped_lines"] > 0
    h.inst.domain_gone(h.now)
    assert not h.inst.output_queued and not h.env.writable


# -- 6. reset back-off --------------------------------------------------------

def misbehave_until_reset(h):
    resets = h.inst.counters["resets"]
    h.guest.sock.send(b"{bad\n" * 25)
    h.advance(0.05)
    assert h.inst.counters["resets"] == resets + 1


def test_reset_back_off_shows_in_the_status_and_decays():
    h = monitored()
    misbehave_until_reset(h)
    st = h.inst.status(h.now)
    assert st["backoff"]["resets"] == 1 and st["standing"] == "misbehaving"
    assert st["note"].startswith("in back-off until ")
    assert "1 reset(s)" in st["note"]
    for _ in range(3):  # 2, 4, 8 s
        h.advance(20)
        assert h.inst.state == im.MONITORED
        misbehave_until_reset(h)
    assert h.inst.status(h.now)["backoff"]["remaining_s"] > 7
    # good behaviour: halved every minute, back to 1 s
    h.advance(10 + 4 * im.RESET_DECAY)
    assert h.inst.state == im.MONITORED
    assert h.inst.status(h.now)["reset_backoff_s"] == 1.0
    assert h.inst.status(h.now)["standing"] == "good"
    misbehave_until_reset(h)
    assert h.inst.status(h.now)["backoff"]["remaining_s"] <= 1.0


# -- 7. round trips -----------------------------------------------------------

def test_round_trips_of_a_misbehaving_channel_stay_out_of_the_agent_figures():
    h = monitored()
    h.advance(1)
    honest = len(h.env.rtts)
    assert honest > 5
    h.guest.sock.send(b"{bad\n")  # one protocol error: misbehaving
    h.advance(5)
    assert len(h.env.rtts) == honest
    st = h.inst.status(h.now)
    assert st["rtt_ms"]["samples"] > honest + 30
    assert st["standing"] == "misbehaving"
    assert 0 <= st["rtt_ms"]["mean"] <= st["rtt_ms"]["max"]
    h.advance(im.RESET_DECAY)
    h.advance(1)
    assert len(h.env.rtts) > honest


# -- issue 13: a hang while the agent was away --------------------------------

def test_registration_is_kept_for_the_next_start_and_exit_forgets_it():
    h = monitored()
    assert h.inst.monitored == {"interval_ms": 100, "action": "reboot"}
    assert h.env.monitoring_saves == 1
    h.guest.apply(h.guest.session.exit(h.now), h.now)
    h.advance(0.2)
    assert h.inst.state == im.EXITED and h.inst.monitored is None
    assert h.env.monitoring_saves == 2


def test_a_guest_monitored_before_the_restart_that_hangs_is_a_fault():
    h = Harness(guest_frozen=True,
                was_monitored={"interval_ms": 100, "action": "reboot"})
    st = h.inst.status(h.now)
    assert st["restart_resync"]["monitored_before_ms"] == 100
    bound = 2 * 0.1 + h.policy.channel_lost_grace
    h.advance(bound - 0.1)
    assert h.env.confirms == []
    h.advance(0.2)
    assert len(h.env.confirms) == 1
    h.confirm()
    (fault,) = h.faults()
    assert fault["kind"] == "missed" and fault["action"] == "reboot"
    assert fault["interval_ms"] == 100
    assert "agent started" in fault["reason"]
    assert h.inst.state == im.SYNCING
    h.guest.frozen = False  # it thaws: registers, answers, recovers
    h.advance(3)
    assert h.inst.state == im.MONITORED
    assert len(h.recoveries()) == 1
    assert h.inst.status(h.now)["restart_resync"] is None


def test_a_guest_monitored_before_the_restart_that_answers_is_no_fault():
    h = Harness(was_monitored={"interval_ms": 100, "action": "reboot"})
    h.advance(10)
    assert h.inst.state == im.MONITORED
    assert h.env.confirms == [] and h.env.reports == []


def test_a_guest_without_a_daemon_stays_quiet_across_restarts():
    h = Harness(guest_frozen=True)  # never monitored
    h.advance(60, step=0.05)
    assert h.env.confirms == [] and h.env.reports == []
    assert h.inst.status(h.now)["restart_resync"] is None


def test_a_guest_that_reboots_after_the_restart_is_waited_for():
    h = Harness(guest_frozen=True,
                was_monitored={"interval_ms": 100, "action": "reboot"})
    h.advance(0.1)
    info = ev.DomainInfo(h.inst.uuid, "vm", ev.RUNNING, h.inst.info.
                         channel_path, True, {})
    h.inst.domain(info, h.now, event="reboot")
    h.advance(30, step=0.05)
    assert h.env.confirms == [] and h.env.reports == []


class _Monitored(object):
    def __init__(self, monitored):
        self.monitored = monitored


def test_the_monitored_file_keeps_registered_guests(tmp_path):
    f = monitored_mod.MonitoredFile(str(tmp_path))
    assert f.claim("a") is None
    f.save({"a": _Monitored({"interval_ms": 500, "action": "reboot"}),
            "b": _Monitored(None)})
    f = monitored_mod.MonitoredFile(str(tmp_path))
    assert f.claim("a") == {"interval_ms": 500, "action": "reboot"}
    assert f.claim("a") is None  # once: the instance keeps it
    f.save({})  # "a" left the table (its domain stopped): forgotten
    assert monitored_mod.MonitoredFile(str(tmp_path)).claim("a") is None
    # an entry not claimed yet is kept; a bad file is no file
    (tmp_path / "monitored.json").write_text(
        '{"c": {"interval_ms": 100}, "d": {"interval_ms": "x"}}')
    f = monitored_mod.MonitoredFile(str(tmp_path))
    f.save({})
    f = monitored_mod.MonitoredFile(str(tmp_path))
    assert f.claim("c") == {"interval_ms": 100} and f.claim("d") is None
    (tmp_path / "monitored.json").write_text("not json")
    assert monitored_mod.MonitoredFile(str(tmp_path)).claim("c") is None


def test_the_loop_starts_a_registered_instance_with_its_deadline(tmp_path):
    uuid = "5b0e7d9e-3c1a-4b6f-8e2d-000000000001"
    (tmp_path / "monitored.json").write_text(
        '{"%s": {"interval_ms": 200, "action": "stop"}}' % uuid)
    loop = loop_mod.AgentLoop("h", im.Policy(), reporter=None,
                              state_dir=str(tmp_path))
    try:
        info = ev.DomainInfo(uuid, "vm", ev.RUNNING, None, True, {})
        loop._handle(ev.DomainUpdate(info, "reconcile", 0.0), 0.0)
        inst = loop.instances[uuid]
        assert inst.monitored == {"interval_ms": 200, "action": "stop"}
        assert inst.status(0.0)["restart_resync"]["monitored_before_ms"] \
            == 200
        inst.domain_gone(1.0)  # stopped: nothing to check any more
        assert loop._monitored.dirty
        loop._monitored.save(loop.instances)
        assert json.loads((tmp_path / "monitored.json").read_text()) == {}
    finally:
        loop.sel.close()
        loop._workers.shutdown(wait=False)


def test_the_status_table_shows_back_off_round_trips_and_standing():
    h = monitored()
    h.advance(1)
    misbehave_until_reset(h)
    doc = {"host": "compute-1", "uptime_s": 5.0, "libvirt_connected": True,
           "reporter": {"pending": 0, "delivered": 0},
           "rtt_ms": {"samples": 9, "p50": 1.0, "p99": 2.0, "max": 3.0},
           "instances": [h.inst.status(h.now)]}
    text = status_mod.render(doc)
    assert "in back-off until " in text and "1 reset(s)" in text
    assert "MISBEHAVING" in text and "0.0/0.0 ms" in text.splitlines()[3]
    assert "channels in good standing" in text


# -- the spec: an error line is never answered, valid or not -----------------

def test_an_invalid_error_line_gets_no_answer_but_other_bad_lines_do():
    # two peers that answer bad errors with errors could ping-pong for
    # ever; the agent answers other bad lines (rate-limited)
    h = monitored()

    def errors_received():
        return [e for e in h.guest.received if isinstance(e, p.Error)]

    before = len(errors_received())
    for n in range(3):
        h.guest.write(b'{"v":1,"app":"heartbeat","type":"error","seq":%d,'
                      b'"code":7}\n' % (900 + n))
        h.advance(0.3, step=0.05)
    assert len(errors_received()) == before
    assert h.inst.status(h.now)["counters"]["protocol_errors"] >= 3
    h.guest.write(b'{"v":1,"app":"heartbeat","type":"no_such_type",'
                  b'"seq":990}\n')
    h.advance(0.3, step=0.05)
    assert len(errors_received()) == before + 1
