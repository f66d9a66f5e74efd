# SPDX-License-Identifier: Apache-2.0
"""HostSession and GuestSession: two sessions wired together with no
sockets, on a fake clock (after h11's tests)."""

import random

import pytest

from guestha_guest.protocol import connection as c
from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol import heartbeat as hb
from guestha_guest.protocol import messages as m
from guestha_guest.protocol import session as s

UUID = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"


def sends(outputs):
    return b"".join(o.data for o in outputs if type(o) is s.Send)


def events(outputs, kind=None):
    out = [o for o in outputs if type(o) is not s.Send]
    return out if kind is None else [o for o in out if isinstance(o, kind)]


class Pair(object):
    """A host session and a guest session and the bytes between them."""

    def __init__(self, interval_ms=1000, host_heartbeat=True):
        self.now = 100.0
        self.health = (True, None, None)
        self.host = s.HostSession(UUID, 100, 60000, rng=random.Random(1))
        self.guest = s.GuestSession(
            m.Init(name="g", interval_ms=interval_ms,
                   corrective_action="reboot"),
            lambda now: self.health, rng=random.Random(2))
        self.to_guest = sends(self.host.connect(self.now,
                                                heartbeat=host_heartbeat))
        self.to_host = sends(self.guest.connect(self.now))
        self.host_events = []
        self.guest_events = []
        self.cut = False  # nothing gets through

    def deliver(self, outputs, to_host):
        data = sends(outputs)
        if to_host:
            self.to_host += data
        else:
            self.to_guest += data
        return events(outputs)

    def exchange(self):
        """Move bytes both ways until nobody has anything to say."""
        while self.to_host or self.to_guest:
            if self.cut:
                self.to_host = self.to_guest = b""
                return
            data, self.to_host = self.to_host, b""
            if data:
                self.host_events += self.deliver(
                    self.host.receive(data, self.now), to_host=False)
            data, self.to_guest = self.to_guest, b""
            if data:
                self.guest_events += self.deliver(
                    self.guest.receive(data, self.now), to_host=True)

    def advance(self, seconds, step=0.01):
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            self.host_events += self.deliver(self.host.tick(self.now),
                                             to_host=False)
            self.guest_events += self.deliver(self.guest.tick(self.now),
                                              to_host=True)
            self.exchange()

    def host_saw(self, kind):
        return [e for e in self.host_events if isinstance(e, kind)]

    def guest_saw(self, kind):
        return [e for e in self.guest_events if isinstance(e, kind)]


def registered(**kwargs):
    pair = Pair(**kwargs)
    pair.exchange()
    assert pair.host.heartbeat.state == hb.IDLE
    assert pair.guest.heartbeat.state == hb.REGISTERED
    return pair


# -- the whole exchange ------------------------------------------------------

def test_sync_register_and_answer_every_interval():
    pair = registered()
    # both synchronised; the host invited, the guest registered
    assert len(pair.host_saw(c.Synced)) == len(pair.guest_saw(c.Synced)) == 1
    reg, = pair.host_saw(hb.Registered)
    assert reg.interval_ms == 1000 and not reg.again
    ack, = pair.guest_saw(hb.Acknowledged)
    assert ack.interval_ms == 1000 and ack.instance == UUID
    # the heartbeat's messages are events too, after they were handled
    assert len(pair.host_saw(m.Init)) == 1
    assert len(pair.guest_saw(m.InitAck)) == 1
    pair.advance(5.0)
    answered = pair.host_saw(hb.Answered)
    assert len(answered) in (4, 5) and all(a.healthy for a in answered)
    assert len(pair.guest_saw(hb.ChallengeAnswered)) == len(answered)
    assert len(pair.guest_saw(m.Challenge)) == len(answered)
    assert pair.host_saw(hb.Missed) == []


def test_a_read_of_one_line_gives_the_outputs_receive_gives():
    # HostSession.receive_line (every round's answer) against receive(),
    # on two hosts in the same state: the same outputs, the same state
    seen = []
    for line_of in (lambda answer: answer, lambda answer: b"\n",
                    lambda answer: b"{bad\n",
                    lambda answer: answer.replace(b'"challenge":"',
                                                  b'"challenge":"0')):
        pair = registered()
        twin = registered()
        for p in (pair, twin):
            p.advance(1.0)
            challenge = p.host.tick(p.now + 1.0)
            p.guest_events += p.deliver(p.guest.receive(sends(challenge),
                                                        p.now), to_host=True)
        data = line_of(pair.to_host)
        assert data.count(b"\n") == 1
        short = pair.host.receive_line(data, pair.now)
        usual = twin.host.receive(data, twin.now)
        assert short is not None
        assert describe(short) == describe(usual)
        assert pair.host.heartbeat.state == twin.host.heartbeat.state
        seen.append(describe(short))
    assert seen == [["ChallengeResponse", "Answered"], [],
                    ["BadLine"],
                    ["ChallengeResponse", "error", "Rejected"]]
    # anything but one whole line is left to receive_data
    assert pair.host.receive_line(b"{", pair.now) is None
    assert pair.host.receive_line(b"\n\n", pair.now) is None


def test_an_unhealthy_guest_says_so():
    pair = registered()
    pair.health = (False, "disk full", "reboot")
    pair.advance(1.0)
    answer, = pair.host_saw(hb.Answered)
    assert (answer.healthy, answer.reason, answer.action) == (
        False, "disk full", "reboot")


def test_a_silent_guest_is_missed_and_the_host_resyncs():
    pair = registered()
    pair.cut = True
    out = pair.host.tick(pair.now + 1.0)  # at most one interval: the phase
    out += pair.host.tick(pair.now + 2.0)  # the deadline of the challenge
    missed = events(out, hb.Missed)
    assert [x.why for x in missed] == ["no answer"]
    syncs = [o for o in out if type(o) is s.Send and o.sync]
    assert len(syncs) == 1 and b'"type":"sync"' in syncs[0].data
    assert syncs[0].data.startswith(b"\n")  # after an empty line
    assert pair.host.state == c.SYNCING


def test_challenges_are_droppable_and_other_lines_are_not():
    pair = registered()
    out = pair.host.tick(pair.now + 1.0)
    challenge, = [o for o in out if type(o) is s.Send]
    assert challenge.droppable and not challenge.sync
    assert type(challenge.message) is m.Challenge
    assert not pair.host.send(m.Status(ref=1, members=[])).droppable


def test_exit_ends_monitoring_without_a_fault():
    pair = registered()
    pair.advance(1.5)
    pair.deliver(pair.guest.exit(pair.now), to_host=True)
    pair.exchange()
    assert pair.guest.stop_state == s.EXIT_SENT
    assert not pair.guest.says_exit()
    exited, = pair.host_saw(hb.Exited)
    assert exited.reason == "shutdown"
    assert pair.guest.next_timer() is None  # stopping: no heartbeat timer
    pair.advance(5.0)
    assert pair.host_saw(hb.Missed) == []


def test_exit_while_synchronising_syncs_first_then_exits():
    pair = registered()
    pair.guest_events = []
    pair.deliver(pair.guest.start_sync(pair.now), to_host=True)
    out = pair.guest.exit(pair.now)
    # a fresh sync, no exit yet
    assert [o.sync for o in out if type(o) is s.Send] == [True]
    assert pair.guest.stop_state == s.EXIT_PENDING
    pair.deliver(out, to_host=True)
    pair.exchange()
    assert pair.guest.stop_state == s.EXIT_SENT
    assert pair.host_saw(hb.Exited)
    # not init: it is leaving
    assert len(pair.host_saw(m.Init)) == 1


def test_server_group_messages_are_events():
    pair = registered()
    pair.deliver([pair.guest.send(m.Broadcast(payload=b"hi"))], True)
    pair.deliver([pair.host.send(m.Notification(
        instance=UUID, state="active", event="instance.power_on.end"))],
        False)
    pair.exchange()
    broadcast, = pair.host_saw(m.Broadcast)
    assert broadcast.payload == b"hi"
    note, = pair.guest_saw(m.Notification)
    assert note.state == "active"


def test_a_split_status_arrives_whole():
    pair = registered()
    members = [m.Member(UUID, "active")] * 100
    pair.deliver([pair.host.send(m.Status(ref=7, members=members))], False)
    pair.exchange()
    status, = pair.guest_saw(m.Status)
    assert len(status.members) == 100 and status.ref == 7


def test_heartbeat_errors_go_to_the_guest_heartbeat():
    pair = registered()
    pair.deliver([pair.host.send(m.Error(
        app="heartbeat", code="wrong_echo", message="no", ref=5))], False)
    pair.exchange()
    error, = pair.guest_saw(hb.HostError)
    assert error.error.code == "wrong_echo"


# -- receiving ----------------------------------------------------------------

def test_partial_lines_byte_by_byte():
    pair = Pair()
    data, pair.to_host = pair.to_host, b""
    got = []
    for i in range(len(data)):
        got += pair.host.receive(data[i:i + 1], pair.now)
    assert events(got, m.Sync)  # the guest's sync, once complete
    answer = sends(got)
    assert b'"type":"sync_ack"' in answer
    # the answer too, fed in pieces of three bytes
    got = []
    for i in range(0, len(answer), 3):
        got += pair.guest.receive(answer[i:i + 3], pair.now)
    assert events(got, c.Synced) and pair.guest.state == c.READY


def test_next_events_line_by_line():
    pair = registered()
    note = pair.host.send(m.Notification(
        instance=UUID, state="active", event="e")).data
    pair.guest.receive_data(note + note, pair.now)
    first = pair.guest.next_events(pair.now)
    second = pair.guest.next_events(pair.now)
    assert [type(e) for e in first] == [type(e) for e in second] == [
        m.Notification]
    assert pair.guest.next_events(pair.now) is s.NEED_DATA


def test_keepalives_make_no_events():
    pair = registered()
    assert pair.host.receive(b"\n\n  \r\n", pair.now) == []


def test_a_bad_line_is_an_event_and_the_caller_answers_it():
    pair = registered()
    out = pair.host.receive(b'{"v":1,"app":"heartbeat","type":"nope",'
                            b'"seq":5}\n', pair.now)
    bad, = out
    assert type(bad) is s.BadLine and bad.error.code == "unknown_type"
    reply = pair.host.refuse(bad)
    assert b'"code":"unknown_type"' in reply.data and b'"ref":5' in reply.data
    # an error is never answered, valid or not
    bad, = pair.host.receive(b'{"type":"error"}\n', pair.now)
    assert pair.host.refuse(bad) is None


def test_bad_lines_while_synchronising_are_discarded_silently():
    pair = Pair()
    assert pair.host.receive(b"garbage\n", pair.now) == []
    assert pair.host.discarded == 1


def test_the_end_of_the_stream():
    pair = registered()
    closed, = pair.host.receive(b"", pair.now)
    assert type(closed) is c.ConnectionClosed


def test_a_full_receive_buffer_is_a_local_error():
    host = s.HostSession(rng=random.Random(3), max_buffer=m.MAX_LINE)
    host.connect(0.0)
    host.receive_data((b"x" * 99 + b"\n") * 80, 0.0)
    with pytest.raises(LocalProtocolError):
        host.receive_data(b"y" * (m.MAX_LINE + 1), 0.0)


# -- sending -----------------------------------------------------------------

def test_nothing_but_base_messages_before_the_sync_ack():
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.guest.send(m.StatusQuery())


def test_no_connection_no_sending():
    session = s.GuestSession(m.Init(name="g", interval_ms=1000),
                             lambda now: (True, None, None))
    with pytest.raises(LocalProtocolError):
        session.send(m.StatusQuery())
    assert session.tick(5.0) == [] and session.next_timer() is None
    assert session.exit(5.0) == [] and session.state is None
    assert session.stop_state == s.STOPPED


# -- the host session without a heartbeat -------------------------------------

def test_host_without_heartbeat_passes_everything_on():
    pair = Pair(host_heartbeat=False)
    pair.exchange()
    # nobody invited the guest: Synced is the caller's to act on
    assert len(pair.host_saw(c.Synced)) == 1
    assert pair.host.heartbeat is None and pair.host.next_timer() is None
    assert pair.host.tick(pair.now + 100) == []
    # the guest's init reached no heartbeat: passed on as a message
    assert len(pair.host_saw(m.Init)) == 1
    assert pair.host_saw(hb.Registered) == []
    pair.deliver(pair.host.start_heartbeat(pair.now), to_host=False)
    pair.advance(2.5)  # (the guest's init is on its way: its retry)
    assert pair.host_saw(hb.Registered)
    assert pair.host_saw(hb.Answered)
    pair.host.stop_heartbeat()
    pair.host_events = []
    pair.advance(2.5)
    assert pair.host_saw(hb.Answered) == [] and pair.host.heartbeat is None


# -- the guest's synchronisation policy ---------------------------------------

def test_guest_repeats_an_unanswered_sync_with_back_off():
    pair = Pair()
    pair.cut = True
    pair.to_host = b""
    times = []
    for k in range(1, 4000):
        now = pair.now + k * 0.25
        if any(type(o) is s.Send and o.sync for o in pair.guest.tick(now)):
            times.append(k * 0.25)
    gaps = [round(b - a, 2) for a, b in zip([0.0] + times, times)]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert pair.guest.sync_retry == s.SYNC_RETRY_MAX


def test_guest_repeats_no_sync_while_its_peer_is_gone():
    pair = Pair()
    pair.cut = True
    pair.guest.peer_gone()
    assert pair.guest.next_timer() is None
    assert pair.guest.tick(pair.now + 100) == []
    # data again: someone is there, so a fresh sync at once
    out = pair.guest.receive(b"\n", pair.now + 100)
    assert [o.sync for o in out] == [True]


def test_guest_traffic_restarts_a_sync_waiting_a_second_or_more():
    pair = Pair()
    pair.to_host = pair.to_guest = b""
    keepalive = b"\n"
    # within the first second: no new sync
    assert pair.guest.receive(keepalive, pair.now + 0.5) == []
    out = pair.guest.receive(keepalive, pair.now + 1.0)
    assert [o.sync for o in out] == [True]
    assert pair.guest.sync_sent_at == pair.now + 1.0
    assert pair.guest.sync_retry == s.SYNC_RETRY


def test_guest_silence_watchdog_resyncs_and_registers_again():
    pair = registered(interval_ms=1000)
    pair.host.stop_heartbeat()  # no more challenges
    pair.guest_events = []
    pair.advance(4.5)
    assert pair.guest_saw(c.Synced)
    assert pair.guest.heartbeat.state == hb.REGISTERING  # init on its way


def test_guest_connect_forgets_the_registration():
    pair = registered()
    out = pair.guest.connect(pair.now)
    assert pair.guest.heartbeat.state == hb.UNREGISTERED
    assert [o.sync for o in out] == [True]
    pair.guest.disconnect()
    assert pair.guest.conn is None and pair.guest.next_timer() is None


# -- the guest's stop procedure: every transition of STOP_TRANSITIONS ---------

def describe(outputs):
    """Outputs as short comparable names: "sync" for a sync of ours, the
    type of a message sent, the class of an event."""
    out = []
    for o in outputs:
        if type(o) is s.Send:
            out.append("sync" if o.sync else o.message.TYPE)
        else:
            out.append(type(o).__name__)
    return out


def stop_rig(state):
    """A pair whose guest is synchronised, has sent init to a host without
    a heartbeat (so it stays REGISTERING: the host may hold a
    registration, and a Synced makes it send init again), and is in
    ``state`` of its stop procedure."""
    pair = Pair(host_heartbeat=False)
    pair.exchange()
    guest = pair.guest
    assert guest.conn.state == c.READY
    assert guest.heartbeat.state == hb.REGISTERING
    if state == s.EXIT_PENDING:
        guest.start_sync(pair.now)  # lost: not delivered
        pair.deliver(guest.exit(pair.now), to_host=True)
    elif state == s.EXIT_SENT:
        guest.exit(pair.now)
    elif state == s.STOPPED:
        # asked while no peer could read: the registration is still there
        guest.exit(pair.now, reachable=False)
    assert guest.stop_state == state
    return pair


def _synced(pair):
    if pair.guest.conn.state == c.READY:
        pair.deliver(pair.guest.start_sync(pair.now), to_host=True)
    # the host answers; the guest's outputs of the sync_ack are the result
    pair.deliver(pair.host.receive(pair.to_host, pair.now), to_host=False)
    pair.to_host = b""
    out = pair.guest.receive(pair.to_guest, pair.now)
    pair.to_guest = b""
    return out


def _stop_unsynced(pair):
    pair.guest.start_sync(pair.now)
    return pair.guest.exit(pair.now)


STOP_INPUTS = {
    "stop": lambda pair: pair.guest.exit(pair.now),
    "stop_unsynced": _stop_unsynced,
    "stop_silent": lambda pair: pair.guest.exit(pair.now, reachable=False),
    "synced": _synced,
    "reset": lambda pair: pair.guest.connect(pair.now),
}

R, P, X, S = s.RUNNING, s.EXIT_PENDING, s.EXIT_SENT, s.STOPPED

# (state, input) -> (next state, outputs); a transition added to
# session.STOP_TRANSITIONS without an entry here fails.
STOP_EXPECTED = {
    (R, "stop"): (X, ["exit"]),
    (R, "stop_unsynced"): (P, ["sync"]),
    (R, "stop_silent"): (S, []),
    (R, "synced"): (R, ["Synced", "init"]),  # the heartbeat's
    (R, "reset"): (R, ["sync"]),  # (connect's own sync)
    (P, "synced"): (X, ["Synced", "exit"]),  # not init
    (P, "reset"): (S, ["sync"]),
    (P, "stop_unsynced"): (P, []),
    (P, "stop_silent"): (S, []),
    (X, "synced"): (X, ["Synced"]),
    (X, "reset"): (X, ["sync"]),
    (X, "stop_silent"): (X, []),
    (S, "stop"): (S, []),
    (S, "stop_unsynced"): (S, []),
    (S, "stop_silent"): (S, []),
    (S, "synced"): (S, ["Synced"]),
    (S, "reset"): (S, ["sync"]),
}


def test_every_stop_transition_has_a_test():
    assert set(STOP_EXPECTED) == set(s.STOP_TRANSITIONS)


@pytest.mark.parametrize("key", sorted(s.STOP_TRANSITIONS),
                         ids=lambda key: "%s-%s" % key)
def test_stop_transition(key):
    state, kind = key
    next_state, expected = STOP_EXPECTED[key]
    assert s.STOP_TRANSITIONS[key][1] == next_state
    pair = stop_rig(state)
    outputs = STOP_INPUTS[kind](pair)
    assert describe(outputs) == expected
    assert pair.guest.stop_state == next_state
    # the exit reaches the host and ends monitoring there
    exits = [o.message for o in outputs
             if type(o) is s.Send and type(o.message) is m.Exit]
    if exits:
        pair.host_events = []
        pair.deliver(outputs, to_host=True)
        pair.exchange()
        assert pair.host_saw(m.Exit) == exits


@pytest.mark.parametrize("state", [P, X, S])
def test_a_stopping_guest_neither_registers_nor_watches_the_host(state):
    pair = stop_rig(state)
    assert pair.guest.heartbeat.next_timer() is not None or state == X
    # only the sync retry is left as a timer (none once synchronised)
    timer = pair.guest.next_timer()
    assert timer is None or timer == pair.guest.sync_at
    pair.host_events = []
    pair.advance(100.0, step=0.5)
    assert pair.host_saw(m.Init) == []
