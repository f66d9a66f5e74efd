# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the CLI plugin's tests: the real REST API
(:mod:`guestha.api`, ``auth_strategy = noauth``) on a real HTTP server on
loopback, reading a real SQLite ledger that a controller's
:class:`~guestha.server.ledger.Ledger` filled with a small cloud
(:mod:`tests.unit.osc.world`); and the commands run as the openstack
CLI runs them.
"""

import io
import json
import threading
import types
from wsgiref import simple_server

from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
import pytest

from guestha.api import app as api_app
from guestha.osc import client as osc_client
from tests.unit.osc import world


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


@pytest.fixture(scope="module")
def api_url(serve, tmp_path_factory):
    """The URL of guestha.api reading :mod:`~tests.unit.osc.world`'s
    ledger, in pages of :data:`~tests.unit.osc.world.PAGE` items."""
    path = str(tmp_path_factory.mktemp("osc") / "ledger.sqlite")
    world.fill_ledger(path)
    return serve(api_app.make_app(world.api_conf(path,
                                                 max_limit=world.PAGE)))


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
    return Runner(api_url, roles="member", project=world.P1)
