# SPDX-License-Identifier: Apache-2.0
"""The plugin's HTTP client: where it sends requests, what it sends, and
the errors a person reads when the API is not there or says no."""

import json

from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session
from osc_lib import exceptions
import pytest

from guestha.osc import client as osc_client
from guestha.testing.ports import free_port
from tests.unit.osc import conftest


def _recorder(status=200, body=None, content_type="application/json",
              seen=None):
    def app(environ, start_response):
        if seen is not None:
            seen.append(environ)
        start_response("%d X" % status, [("Content-Type", content_type)])
        if isinstance(body, bytes):
            return [body]
        return [json.dumps(body).encode()]
    return app


def test_connection_refused_names_the_url():
    url = "http://127.0.0.1:%d/" % free_port()
    client = conftest.make_client(url)
    with pytest.raises(exceptions.CommandError) as exc:
        client.list("instances")
    message = str(exc.value)
    assert message.startswith(
        "Could not connect to the guestha API at %sv1/instances" % url)
    assert "refused" in message.lower()


@pytest.mark.parametrize("root", ["/", "", "/v1", "/v1/"])
def test_root_with_or_without_version(serve, root):
    seen = []
    url = serve(_recorder(body={"instances": [], "next": None}, seen=seen))
    client = conftest.make_client(url.rstrip("/") + root)
    assert client.list("instances", filters={"host": "h1", "state": None},
                       limit=5) == []
    assert seen[-1]["PATH_INFO"] == "/v1/instances"
    assert seen[-1]["QUERY_STRING"] == "host=h1&limit=5"


def test_noauth_headers(serve):
    seen = []
    url = serve(_recorder(body={"instances": [], "next": None}, seen=seen))
    conftest.make_client(url, roles="member,reader", project="p1").list(
        "instances")
    assert seen[-1]["HTTP_X_ROLES"] == "member,reader"
    assert seen[-1]["HTTP_X_PROJECT_ID"] == "p1"
    conftest.make_client(url, roles=None).list("instances")
    assert "HTTP_X_ROLES" not in seen[-1]
    assert "HTTP_X_PROJECT_ID" not in seen[-1]


def test_error_body_message(serve):
    url = serve(_recorder(status=500, body={"error": {
        "code": 500, "title": "Internal Server Error",
        "message": "the ledger is locked"}}))
    with pytest.raises(exceptions.CommandError) as exc:
        conftest.make_client(url).list("faults")
    assert "500" in str(exc.value)
    assert "the ledger is locked" in str(exc.value)
    assert "%sv1/faults" % url in str(exc.value)


def test_not_json(serve):
    url = serve(_recorder(body=b"<html>hello</html>",
                          content_type="text/html"))
    with pytest.raises(exceptions.CommandError) as exc:
        conftest.make_client(url).list("instances")
    assert "not JSON (text/html)" in str(exc.value)


def test_answer_without_the_list(serve):
    url = serve(_recorder(body={"servers": []}))
    with pytest.raises(exceptions.CommandError) as exc:
        conftest.make_client(url).list("instances")
    assert "no 'instances' list" in str(exc.value)


def test_pagination_stops_on_a_repeated_marker(serve):
    # an API that always answers the same page and the same ``next``
    seen = []
    url = serve(_recorder(body={"actions": [{"id": "a"}], "next": "a"},
                          seen=seen))
    items = conftest.make_client(url).list("actions")
    assert items == [{"id": "a"}, {"id": "a"}]
    assert len(seen) == 2


def test_no_url_without_auth():
    client = osc_client.Client(ks_session.Session(auth=noauth.NoAuth()))
    with pytest.raises(exceptions.CommandError) as exc:
        client.list("instances")
    assert "--os-guestha-url" in str(exc.value)
    client = osc_client.Client(ks_session.Session())
    with pytest.raises(exceptions.CommandError) as exc:
        client.show("instances", "x")
    assert "--os-guestha-url" in str(exc.value)
