# SPDX-License-Identifier: Apache-2.0
"""The cloud harness's network stand-in (tools/cloud/netstub.py): what Nova
asks of Neutron for a server with no network, answered with empty lists."""

import json
import urllib.error
import urllib.request

import pytest

from tests.support.http import serving
from tools.cloud import netstub


@pytest.fixture
def stub():
    with serving(netstub.Handler) as server:
        yield server.url


def get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("path,key", [
    ("/v2.0/ports", "ports"),
    ("/v2.0/ports?device_id=abc&fields=id", "ports"),
    ("/v2.0/networks", "networks"),
    ("/v2.0/security-groups", "security_groups"),
    ("/v2.0/extensions.json", "extensions"),
])
def test_collections_are_empty(stub, path, key):
    assert get(stub + path) == (200, {key: []})


def test_version_discovery(stub):
    status, body = get(stub + "/")
    assert status == 200
    assert body["versions"][0]["id"] == "v2.0"
    assert body["versions"][0]["links"][0]["href"] == stub + "/v2.0/"


def test_one_resource_is_not_found(stub):
    with pytest.raises(urllib.error.HTTPError) as err:
        get(stub + "/v2.0/ports/1234")
    assert err.value.code == 404


def test_writes_are_refused(stub):
    req = urllib.request.Request(stub + "/v2.0/ports", data=b"{}",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405
