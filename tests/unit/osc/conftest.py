# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the CLI plugin's tests: an API on a real HTTP server on
loopback, filled with a small cloud (:data:`INSTANCES`, :data:`FAULTS`,
:data:`ACTIONS`), and the commands run as the openstack CLI runs them.

TEMPORARY: until guestha.api is committed, the server serves
contract-shaped JSON from :func:`_contract_app`.
"""

import io
import json
import threading
import types
import urllib.parse
import uuid
from wsgiref import simple_server

from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
import pytest

from guestha.osc import client as osc_client

P1 = "0d0a6c4e5d6e4f3c9a1b2c3d4e5f6a71"
P2 = "0d0a6c4e5d6e4f3c9a1b2c3d4e5f6a72"


def _uuid(n):
    return str(uuid.UUID(int=0x6a000000 + n))


# instance, project, host, state, reason, interval_ms
INSTANCES = [
    (_uuid(1), P1, "host-a", "monitored", None, 1000),
    (_uuid(2), P1, "host-a", "faulted", "missed 3 heartbeats", 1000),
    (_uuid(3), P1, "host-b", "unregistered",
     "flavor asks for heartbeat, guest never registered", None),
    (_uuid(4), P2, "host-b", "refused",
     "no virtio-serial controller", None),
    (_uuid(5), P2, "host-b", "registered", None, 500),
]
# fault id, instance, kind, recommended action, recovered
FAULTS = [
    (_uuid(101), _uuid(1), "unhealthy", "reboot", True),
    (_uuid(102), _uuid(2), "missed", "reboot", False),
    (_uuid(103), _uuid(5), "missed", None, False),
]
# action id, fault id, action, outcome
ACTIONS = [
    (_uuid(201), _uuid(101), "reboot", "applied"),
    (_uuid(202), _uuid(102), "reboot", "refused: cap"),
]
PROJECT_OF = {row[0]: row[1] for row in INSTANCES}
HOST_OF = {row[0]: row[2] for row in INSTANCES}
NOW = "2026-12-04T10:00:00.000000Z"


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def serve():
    """Serve a WSGI app on 127.0.0.1 (a real socket); returns its URL."""
    servers = []

    def start(app):
        server = simple_server.make_server(
            "127.0.0.1", 0, app, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        return "http://127.0.0.1:%d/" % server.server_port

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _contract_app(page_size):
    """TEMPORARY stand-in for guestha.api (the contract's JSON)."""
    instances = [{
        "id": i, "project_id": p, "host": h, "state": s, "reason": r,
        "interval_ms": ms,
        "open_faults": sum(1 for f in FAULTS if f[1] == i and not f[4]),
        "updated_at": NOW} for i, p, h, s, r, ms in INSTANCES]
    faults = [{
        "id": f, "instance_id": i, "project_id": PROJECT_OF[i],
        "host": HOST_OF[i], "kind": k, "reason": "r", "action": a,
        "open": not rec, "detected_at": NOW,
        "recovered_at": NOW if rec else None,
        "recovery_id": None} for f, i, k, a, rec in reversed(FAULTS)]
    fault_instance = {f[0]: f[1] for f in FAULTS}
    actions = [{
        "id": a, "instance_id": fault_instance[f],
        "project_id": PROJECT_OF[fault_instance[f]], "fault_id": f,
        "action": act, "outcome": out, "server": "ctl-1", "at": NOW}
        for a, f, act, out in reversed(ACTIONS)]
    tables = {"instances": instances, "faults": faults, "actions": actions}
    names = {"instances": "instance", "faults": "fault"}

    def app(environ, start_response):
        def answer(code, body):
            start_response("%d X" % code,
                           [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]

        roles = environ.get("HTTP_X_ROLES", "").split(",")
        project = environ.get("HTTP_X_PROJECT_ID")
        q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        parts = environ["PATH_INFO"].strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2 or parts[1] not in tables:
            return answer(404, {"error": {"code": 404, "message": "no"}})
        rows = tables[parts[1]]
        if "admin" not in roles:
            rows = [r for r in rows if r["project_id"] == project]
        if len(parts) == 3:
            for r in rows:
                if r["id"] == parts[2]:
                    return answer(200, {names[parts[1]]: r})
            return answer(404, {"error": {"code": 404, "message": "gone"}})
        keys = {"host": "host", "state": "state", "project_id": "project_id",
                "instance_id": "instance_id", "kind": "kind"}
        for k, field in keys.items():
            if k in q:
                rows = [r for r in rows if r[field] == q[k]]
        if "open" in q:
            rows = [r for r in rows if r["open"] == (q["open"] == "true")]
        if "marker" in q:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(q["marker"]) + 1:]
        limit = min(int(q.get("limit", page_size)), page_size)
        page = rows[:limit]
        nxt = page[-1]["id"] if len(rows) > limit else None
        return answer(200, {parts[1]: page, "next": nxt})

    return app


@pytest.fixture(scope="module")
def api_url(serve):
    """The URL of an API serving :data:`INSTANCES` etc., in pages of at
    most 2 items."""
    return serve(_contract_app(page_size=2))


class FakeApp(object):
    """What a cliff command needs of the openstack CLI's App."""

    def __init__(self, client):
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.command_manager = types.SimpleNamespace(
            namespace="openstack.guestha.v1")
        self.client_manager = types.SimpleNamespace(guestha=client)


def make_client(url, roles="admin", project=None):
    session = ks_session.Session(auth=noauth.NoAuth())
    return osc_client.Client(session, endpoint_override=url,
                             noauth_roles=roles, noauth_project_id=project)


class Runner(object):
    """Runs one command class with the openstack CLI's parser and
    formatters, and returns what it printed."""

    def __init__(self, url, roles="admin", project=None):
        self.client = make_client(url, roles, project)

    def text(self, command_class, argv):
        app = FakeApp(self.client)
        name = command_class.__name__
        cmd = command_class(app, None, cmd_name=name)
        parser = cmd.get_parser("openstack guestha " + name)
        parsed = parser.parse_args(argv)
        assert cmd.run(parsed) == 0
        return app.stdout.getvalue()

    def json(self, command_class, argv):
        return json.loads(self.text(command_class, list(argv) +
                                    ["-f", "json"]))


@pytest.fixture
def admin(api_url):
    return Runner(api_url)


@pytest.fixture
def member_p1(api_url):
    return Runner(api_url, roles="member", project=P1)
