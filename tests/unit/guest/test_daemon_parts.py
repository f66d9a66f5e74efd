# SPDX-License-Identifier: Apache-2.0
"""The guest daemon's parts on their own: HealthSources and GroupRelay
(the daemon's tests, test_daemon.py, run them wired, over a real port)."""

import base64

from guestha_guest.healthsources import HealthSources
from guestha_guest import protocol as p
from guestha_guest import relay as relay_mod
from guestha_guest.relay import GroupRelay
from tests.support.clock import ManualClock

PEER = "11111111-2222-4333-8444-555555555555"
GROUP = "22222222-3333-4444-8555-666666666666"


class Hooks(object):
    def __init__(self, healthy=True, reason=None):
        self.outcome = (healthy, reason)
        self.periods = []

    def set_period(self, seconds):
        self.periods.append(seconds)

    def result(self, now):
        return self.outcome


class Apps(object):
    """The AppServer's interface the parts use, recording."""

    def __init__(self, healthy=True, reason=None):
        self.outcome = (healthy, reason)
        self.checks = []
        self.replies = []
        self.published = []

    def health(self, now):
        return self.outcome

    def send_checks(self, now):
        self.checks.append(now)

    def reply(self, client, msg):
        self.replies.append((client, msg))

    def publish(self, event, msg, skip=None):
        self.published.append((event, msg, skip))


def _init(interval_ms=1000, action="reboot"):
    return p.Init(name="g", interval_ms=interval_ms,
                  corrective_action=action)


# -- HealthSources ----------------------------------------------------------

def test_healthy_without_sources():
    assert HealthSources(_init())(5.0) == (True, None, None)


def test_every_unhealthy_source_is_a_reason_hooks_first():
    health = HealthSources(_init(), Hooks(False, "disk full"),
                           Apps(False, "app db: stuck"))
    assert health(5.0) == (False, "disk full; app db: stuck", "reboot")
    health = HealthSources(_init(action="none"), Hooks(False, None))
    assert health(5.0) == (False, "unhealthy", "none")


def test_the_hooks_run_at_the_granted_interval_or_their_own_period():
    hooks = Hooks()
    health = HealthSources(_init(interval_ms=1000), hooks)
    health.registered(2500)
    assert hooks.periods == [1.0, 2.5]
    hooks = Hooks()
    health = HealthSources(_init(interval_ms=1000), hooks,
                           hook_period_ms=300)
    health.registered(2500)
    assert hooks.periods == [0.3, 0.3]


def test_applications_are_asked_after_each_answer():
    apps = Apps()
    health = HealthSources(_init(), apps=apps)
    health.challenge_answered(7.0)
    assert apps.checks == [7.0]
    HealthSources(_init()).challenge_answered(8.0)  # no apps: nothing


# -- GroupRelay -------------------------------------------------------------

class Channel(object):
    """Sends when ``ready``, stamping sequence numbers as a connection
    does."""

    def __init__(self):
        self.ready = True
        self.sent = []
        self._seq = 100

    def send(self, msg):
        if not self.ready:
            return False
        self._seq += 1
        msg.seq = self._seq
        self.sent.append(msg)
        return True


def _relay():
    channel, apps = Channel(), Apps()
    return GroupRelay(channel.send, apps, clock=ManualClock(0.0)), \
        channel, apps


def test_a_broadcast_is_sent_and_acknowledged():
    relay, channel, apps = _relay()
    relay.on_broadcast("app1", b"hi", 7)
    msg, = channel.sent
    assert type(msg) is p.Broadcast and msg.payload == b"hi"
    assert apps.replies == [("app1", {"op": "ok", "id": 7})]


def test_requests_are_refused_when_the_channel_is_not_ready():
    relay, channel, apps = _relay()
    channel.ready = False
    relay.on_broadcast("app1", b"hi", None)
    relay.on_status_query("app2", "q")
    assert apps.replies == [
        ("app1", {"op": "error", "code": "unavailable",
                  "message": "the host channel is not ready"}),
        ("app2", {"op": "error", "code": "unavailable",
                  "message": "the host channel is not ready", "id": "q"})]


def test_a_status_goes_to_the_asker_and_to_the_other_subscribers():
    relay, channel, apps = _relay()
    relay.on_status_query("app1", "q1")
    query, = channel.sent
    relay.receive(p.Status(ref=query.seq, members=[
        p.Member(PEER, "active")], group=GROUP))
    wire = {"op": "status", "members": [{"instance": PEER,
                                         "state": "active"}],
            "group": GROUP}
    assert apps.replies == [("app1", dict(wire, id="q1"))]
    assert apps.published == [("status", wire, "app1")]
    # the host's own status (no request of ours): published to all
    relay.receive(p.Status(ref=999, members=[]))
    assert apps.published[-1] == ("status", {"op": "status",
                                             "members": []}, None)


def test_a_refusal_goes_back_to_the_asker_and_others_are_logged(caplog):
    relay, channel, apps = _relay()
    relay.on_broadcast("app1", b"hi", 3)
    sent, = channel.sent
    relay.receive(p.Error(app="server_group", code="too_large",
                          message="no", ref=sent.seq))
    assert apps.replies[-1] == ("app1", {"op": "error", "code": "too_large",
                                         "message": "no", "id": 3})
    relay.receive(p.Error(app="server_group", code="too_large",
                          message="no", ref=12345))
    assert "host refused a server-group message" in caplog.text


def test_news_from_the_host_is_published():
    relay, channel, apps = _relay()
    relay.receive(p.Broadcast(payload=b"yo", sender=PEER))
    relay.receive(p.Notification(instance=PEER, state="stopped",
                                 event="instance.power_off.end"))
    assert apps.published == [
        ("broadcast", {"op": "broadcast", "from": PEER,
                       "payload": base64.b64encode(b"yo").decode()}, None),
        ("notification", {"op": "notification", "instance": PEER,
                          "state": "stopped",
                          "event": "instance.power_off.end"}, None)]


def test_requests_remembered_are_bounded_and_forgotten_on_a_new_channel():
    relay, channel, apps = _relay()
    for i in range(relay_mod.MAX_PENDING + 1):
        relay.on_status_query("app%d" % i, i)
    first, second = channel.sent[0], channel.sent[1]
    relay.receive(p.Status(ref=first.seq, members=[]))
    assert apps.replies == []  # the oldest was forgotten
    relay.receive(p.Status(ref=second.seq, members=[]))
    assert apps.replies[-1][0] == "app1"
    relay.forget()
    relay.receive(p.Status(ref=channel.sent[-1].seq, members=[]))
    assert len(apps.replies) == 1
