# SPDX-License-Identifier: Apache-2.0
"""The masakari sink over real keystoneauth against a loopback stand-in of
masakari-api's POST /v1/notifications, which checks the body the way
Masakari's request schema and engine do (type VM, hostname pattern,
generated_time, a payload of exactly event/instance_uuid/vir_domain_event
that the engine's instance recovery flow accepts)."""

import datetime
import http.server
import json
import re
import uuid

from oslo_config import cfg
import pytest

from guestha.conf import sinks as sinks_conf
from guestha import records
from guestha.sinks import base
from guestha.sinks import masakari as masakari_sink
from tests.support.http import serving

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
# Masakari's engine runs its instance recovery flow for these payloads
# only (masakari/engine/instance_events.py).
RECOVERABLE = {"QEMU_GUEST_AGENT_ERROR": ["STOPPED_FAILED"],
               "LIFECYCLE": ["STOPPED_FAILED"],
               "IO_ERROR": ["IO_ERROR_REPORT"]}
HOSTNAME = re.compile(r"^[a-zA-Z0-9-._]*$")


def check_notification(body):
    """Masakari's checks, or the reason it would answer 400."""
    if set(body) != {"notification"}:
        return "only 'notification' allowed"
    n = body["notification"]
    if set(n) != {"type", "hostname", "generated_time", "payload"}:
        return "notification keys: %s" % sorted(n)
    if n["type"] != "VM" or not HOSTNAME.match(n["hostname"]):
        return "type or hostname"
    datetime.datetime.fromisoformat(n["generated_time"])
    p = n["payload"]
    if set(p) != {"event", "instance_uuid", "vir_domain_event"}:
        return "payload keys: %s" % sorted(p)
    uuid.UUID(p["instance_uuid"])
    if p["vir_domain_event"] not in RECOVERABLE.get(p["event"], []):
        return "the engine would ignore %s/%s" % (p["event"],
                                                  p["vir_domain_event"])
    return None


class _Masakari(http.server.BaseHTTPRequestHandler):

    def do_POST(self):
        body = json.loads(self.rfile.read(
            int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        problem = check_notification(body)
        if problem:
            status, answer = 400, {"badRequest": {"code": 400,
                                                  "message": problem}}
        elif self.server.answers:
            status, answer = self.server.answers.pop(0)
        else:
            status, answer = 202, {"notification": dict(
                body["notification"], notification_uuid=str(uuid.uuid4()),
                status="new")}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def masakari_api():
    with serving(_Masakari, requests=[], answers=[]) as server:
        yield server


@pytest.fixture
def conf(masakari_api):
    conf = cfg.ConfigOpts()
    sinks_conf.register_opts(conf)
    conf([], project="guestha-test")
    conf.set_override("auth_type", "none", group="masakari")
    conf.set_override("endpoint_override", "http://127.0.0.1:%d/v1"
                      % masakari_api.server_port, group="masakari")
    return conf


def fault(kind="missed", host="compute-1.example"):
    return records.make_fault(
        instance=INSTANCE, host=host, kind=kind, reason="hung",
        action="reboot", detected_at=1.7e9, interval_ms=1000, misses=2)


def test_a_fault_is_a_vm_notification_masakari_acts_on(conf, masakari_api):
    sink = masakari_sink.MasakariSink.from_conf(conf)
    sink.send(fault())
    [(path, body)] = masakari_api.requests
    assert path == "/v1/notifications"
    assert body == {"notification": {
        "type": "VM", "hostname": "compute-1.example",
        "generated_time": "2023-11-14T22:13:20.000000",
        "payload": {"event": "QEMU_GUEST_AGENT_ERROR",
                    "instance_uuid": INSTANCE,
                    "vir_domain_event": "STOPPED_FAILED"}}}
    sink.close()


def test_lifecycle_event_can_be_chosen(conf, masakari_api):
    conf.set_override("vm_event", "LIFECYCLE", group="masakari")
    masakari_sink.MasakariSink.from_conf(conf).send(fault())
    assert masakari_api.requests[0][1]["notification"]["payload"][
        "event"] == "LIFECYCLE"


def test_only_faults_of_the_configured_kinds(conf):
    conf.set_override("fault_kinds", ["missed"], group="masakari")
    sink = masakari_sink.MasakariSink.from_conf(conf)
    assert sink.accepts(fault("missed"))
    assert not sink.accepts(fault("unhealthy"))
    recovery = records.make_recovery(
        instance=INSTANCE, host="compute-1", fault_id=str(uuid.uuid4()),
        recovered_at=1.7e9)
    assert not sink.accepts(recovery)       # recoveries are never sent
    assert not sink.accepts({"type": "action", "kind": "missed"})


def test_a_duplicate_counts_as_delivered(conf, masakari_api):
    masakari_api.answers = [(409, {"conflictingRequest": {
        "code": 409, "message": "Notification received from host "
        "compute-1 of type VM is duplicate."}})]
    sink = masakari_sink.MasakariSink.from_conf(conf)
    sink.send(fault())
    assert sink.duplicates == 1


@pytest.mark.parametrize("status, message, outcome", [
    (409, "Notification received from host compute-1 of type 'VM' is "
          "ignored as the host is already under maintenance.",
     base.SinkRejected),
    (400, "Host with name compute-1 could not be found.",
     base.SinkRejected),
    (500, "boom", base.SinkUnavailable),
    (503, "busy", base.SinkUnavailable),
])
def test_errors_mean_retry_or_drop(conf, masakari_api, status, message,
                                   outcome):
    masakari_api.answers = [(status, {"error": {"message": message}})]
    with pytest.raises(outcome):
        masakari_sink.MasakariSink.from_conf(conf).send(fault())


def test_a_hostname_masakari_refuses_is_rejected(conf, masakari_api):
    with pytest.raises(base.SinkRejected, match="400"):
        masakari_sink.MasakariSink.from_conf(conf).send(
            fault(host="bad host!"))


def test_unreachable_masakari_is_unavailable(conf):
    conf.set_override("endpoint_override", "http://127.0.0.1:9/v1",
                      group="masakari")
    conf.set_override("timeout", 2, group="masakari")
    with pytest.raises(base.SinkUnavailable):
        masakari_sink.MasakariSink.from_conf(conf).send(fault())
