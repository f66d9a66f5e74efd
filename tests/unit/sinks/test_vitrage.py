# SPDX-License-Identifier: Apache-2.0
"""The vitrage sink: what it posts (never a Doctor "status"), batches,
how errors map to retry or drop, configuration, a real
python-vitrageclient over keystoneauth against a loopback stand-in of
Vitrage's event API; and the plugin's separation from guestha."""

import ast
import http.server
import json
import os

from keystoneauth1 import exceptions as ks_exc
from oslo_config import cfg
import pytest
from vitrageclient import exceptions as vitrage_exc

from guestha.conf import sinks as sinks_conf
from guestha import records
from guestha.sinks import base
from guestha.sinks import vitrage as vitrage_sink
from guestha.vitrage_datasource import guestha as plugin
from tests.support.http import serving

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class FakeEvents(object):
    def __init__(self, errors=()):
        self.posts = []
        self.errors = list(errors)

    def post(self, event_time, event_type, details):
        if self.errors:
            raise self.errors.pop(0)
        self.posts.append((event_time, event_type, details))


class FakeClient(object):
    def __init__(self, errors=()):
        self.event = FakeEvents(errors)


def fault(kind="missed", n=0):
    return records.make_fault(
        instance=INSTANCE, host="compute-1", kind=kind,
        reason="no answer to 2 challenges", action="reboot",
        detected_at=1.7e9 + n, interval_ms=1000, misses=2)


def recovery(of):
    return records.make_recovery(
        instance=INSTANCE, host="compute-1", fault_id=of["id"],
        recovered_at=1.7e9 + 5, details={"why": "answered"})


def sink(errors=(), **kwargs):
    kwargs.setdefault("severities", {"missed": "CRITICAL",
                                     "unhealthy": "WARNING"})
    return vitrage_sink.VitrageSink(FakeClient(errors),
                                    wallclock=lambda: 1.8e9, **kwargs)


def test_a_fault_is_a_guestha_fault_event():
    s = sink()
    f = fault()
    s.send(f)
    [(event_time, event_type, details)] = s._client.event.posts
    assert event_time == "2023-11-14T22:13:20.000000"
    assert event_type == plugin.FAULT_EVENT
    assert details == {
        "instance_id": INSTANCE, "fault_id": f["id"], "event_id": f["id"],
        "kind": "missed", "severity": "CRITICAL",
        "reason": "no answer to 2 challenges",
        "recommended_action": "reboot", "compute_host": "compute-1",
        "detected_at": f["detected_at"], "misses": 2, "interval_ms": 1000,
    }
    assert set(details) <= set(plugin.DETAILS)


def test_a_recovery_names_the_fault_it_clears():
    s = sink()
    f = fault()
    r = recovery(f)
    s.send(r)
    [(_, event_type, details)] = s._client.event.posts
    assert event_type == plugin.RECOVERY_EVENT
    assert details["fault_id"] == f["id"] and details["event_id"] == r["id"]
    assert details["instance_id"] == INSTANCE
    assert set(details) <= set(plugin.DETAILS)


def test_never_a_status_that_vitrage_would_hand_to_doctor():
    # Vitrage's event API routes details with status up/down to Doctor.
    s = sink()
    for kind in records.FAULT_KINDS:
        f = fault(kind)
        s.send(f)
        s.send(recovery(f))
    s.send_batch([fault(), recovery(fault())])
    for _, _, details in s._client.event.posts:
        assert "status" not in details
        for item in details.get("events", []):
            assert "status" not in item["details"]


def test_a_kind_without_a_configured_severity_leaves_it_to_the_plugin():
    s = sink()
    s.send(fault("channel-lost"))
    [(_, _, details)] = s._client.event.posts
    assert "severity" not in details


def test_only_faults_and_recoveries_are_taken():
    s = sink()
    assert s.accepts(fault()) and s.accepts(recovery(fault()))
    assert not s.accepts({"type": "action"})
    assert not s.accepts({"type": "refusal"})
    assert not s.accepts({"type": "state"})


def test_a_batch_is_one_request_in_order():
    s = sink(batch_size=50)
    assert s.max_batch == 50
    events = [fault(n=n) for n in range(3)]
    events.append(recovery(events[0]))
    s.send_batch(events)
    [(event_time, event_type, details)] = s._client.event.posts
    assert event_type == plugin.BATCH_EVENT
    assert event_time == "2027-01-15T08:00:00.000000"
    assert [i["type"] for i in details["events"]] == [
        plugin.FAULT_EVENT] * 3 + [plugin.RECOVERY_EVENT]
    assert [i["details"]["event_id"] for i in details["events"]] == [
        e["id"] for e in events]


@pytest.mark.parametrize("error, outcome", [
    (vitrage_exc.ClientException(400, "bad"), base.SinkRejected),
    (vitrage_exc.ClientException(422, "bad"), base.SinkRejected),
    # Vitrage says 404 when its API could not reach vitrage-graph.
    (vitrage_exc.ClientException(404, "Failed to post event"),
     base.SinkUnavailable),
    (vitrage_exc.ClientException(503, "busy"), base.SinkUnavailable),
    (ks_exc.ConnectFailure("refused"), base.SinkUnavailable),
    (ks_exc.ConnectTimeout("slow"), base.SinkUnavailable),
    (ks_exc.EndpointNotFound("no rca"), base.SinkUnavailable),
    (ks_exc.Unauthorized("who?"), base.SinkUnavailable),
])
def test_errors_mean_retry_or_drop(error, outcome):
    with pytest.raises(outcome):
        sink(errors=[error]).send(fault())


def test_a_malformed_record_is_rejected():
    bad = fault()
    del bad["detected_at_ts"]
    with pytest.raises(base.SinkRejected):
        sink().send(bad)


def test_constants_agree_with_the_plugin():
    assert vitrage_sink.FAULT_EVENT == plugin.FAULT_EVENT
    assert vitrage_sink.RECOVERY_EVENT == plugin.RECOVERY_EVENT
    assert vitrage_sink.BATCH_EVENT == plugin.BATCH_EVENT
    assert set(sinks_conf.VITRAGE_SEVERITIES) == set(plugin.SEVERITIES)
    assert set(plugin.DEFAULT_SEVERITIES) == set(records.FAULT_KINDS)
    defaults = {k: v.upper() for k, v in _default_severities().items()}
    assert defaults == plugin.DEFAULT_SEVERITIES


def _default_severities():
    [opt] = [o for o in sinks_conf.VITRAGE_OPTS if o.name == "severities"]
    return opt.default


def test_nothing_in_guestha_imports_the_plugin():
    package = os.path.join(ROOT, "guestha")
    plugin_dir = os.path.join(package, "vitrage_datasource")
    offenders = []
    for dirpath, _, files in os.walk(package):
        if dirpath.startswith(plugin_dir):
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                if any(n.startswith(("guestha.vitrage_datasource",
                                     "vitrage.")) or n == "vitrage"
                       for n in names):
                    offenders.append(path)
    assert offenders == []


def test_the_plugin_package_imports_without_vitrage():
    # Only oslo.config: what this test process already has.
    assert [o.name for o in plugin.OPTS][:3] == [
        "transformer", "driver", "update_method"]
    assert plugin.OPTS[2].default == "push"


# -- configuration and the real client ---------------------------------------

@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    sinks_conf.register_opts(conf)
    conf([], project="guestha-test")
    return conf


def test_from_conf_needs_an_auth_type(conf):
    with pytest.raises(ValueError, match="auth_type"):
        vitrage_sink.VitrageSink.from_conf(conf)


def test_from_conf_checks_severities(conf):
    conf.set_override("auth_type", "none", group="vitrage")
    conf.set_override("severities", {"missed": "LOUD"}, group="vitrage")
    with pytest.raises(ValueError, match="LOUD"):
        vitrage_sink.VitrageSink.from_conf(conf)
    conf.set_override("severities", {"nope": "MAJOR"}, group="vitrage")
    with pytest.raises(ValueError, match="nope"):
        vitrage_sink.VitrageSink.from_conf(conf)


class _EventAPI(http.server.BaseHTTPRequestHandler):
    """Vitrage's POST /v1/event/, recording what arrives."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers),
                                     json.loads(body)))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"null" if status == 200
                         else b'{"description": "nope"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def event_api():
    with serving(_EventAPI, requests=[], statuses=[]) as server:
        yield server


def test_real_client_over_keystoneauth(conf, event_api):
    conf.set_override("auth_type", "none", group="vitrage")
    conf.set_override("endpoint_override", "http://127.0.0.1:%d"
                      % event_api.server_port, group="vitrage")
    s = vitrage_sink.VitrageSink.from_conf(conf)
    f = fault()
    s.send(f)
    s.send_batch([fault(n=1), recovery(f)])
    event_api.statuses = [400]
    with pytest.raises(base.SinkRejected):
        s.send(f)
    s.close()

    (path, headers, body), (_, _, batch) = event_api.requests[:2]
    assert path == "/v1/event/"
    assert headers["Content-Type"] == "application/json"
    assert body["type"] == plugin.FAULT_EVENT
    assert body["details"]["instance_id"] == INSTANCE
    assert body["details"]["severity"] == "CRITICAL"
    assert batch["type"] == plugin.BATCH_EVENT
    assert len(batch["details"]["events"]) == 2


def test_real_client_against_nothing_is_unavailable(conf):
    conf.set_override("auth_type", "none", group="vitrage")
    # A port nothing listens on (reserved, closed right away).
    conf.set_override("endpoint_override", "http://127.0.0.1:9",
                      group="vitrage")
    conf.set_override("timeout", 2, group="vitrage")
    with pytest.raises(base.SinkUnavailable):
        vitrage_sink.VitrageSink.from_conf(conf).send(fault())
