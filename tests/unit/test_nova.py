# SPDX-License-Identifier: Apache-2.0
"""The Nova client, over real HTTP against the Nova stand-in, through
keystoneauth1 and python-novaclient as configured by ``[nova]``."""

import json
import logging
import urllib.error
import urllib.request

from novaclient import api_versions
from novaclient import exceptions as nova_exc
import pytest

from guestha import nova
from guestha.testing.fake_nova import DEFAULT_PROJECT
from guestha.testing.fake_nova import FakeNova
from guestha.testing.fake_nova import nova_conf
from tests.support.clock import ManualClock

UUID = "0c7e3f9a-5b2d-4e61-8f3a-9d4c2b1a0e5f"
OTHER = "7a1d9e2c-3b4f-4a5e-9c8d-1e2f3a4b5c6d"


@pytest.fixture
def fake():
    with FakeNova() as fake:
        yield fake


def client_for(fake, clock=None, **overrides):
    client = nova.NovaClient.from_conf(nova_conf(fake, **overrides))
    if clock is not None:
        client._clock = clock
    return client


def server_gets(fake, uuid=UUID):
    return [r for r in fake.requests
            if r["method"] == "GET" and r["path"] == "/v2.1/servers/" + uuid]


# -- extra specs --------------------------------------------------------------

@pytest.mark.parametrize("value", ["true", "True", "TRUE", "1", "yes", "Yes",
                                   " true ", "on", "t", "Y"])
def test_true_values(value):
    features = nova.features_from_extra_specs({"guestha:heartbeat": value})

    assert features["heartbeat"] is True


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "", "off",
                                   "enabled", "2", "ture"])
def test_anything_else_is_false(value):
    features = nova.features_from_extra_specs(
        {"guestha:server_group_messaging": value})

    assert features["server_group_messaging"] is False


def test_no_extra_specs_means_nothing_enabled():
    assert nova.features_from_extra_specs(None) == {
        "heartbeat": False, "server_group_messaging": False,
        "corrective_action": None}


def test_corrective_action_is_passed_on_and_blank_is_none():
    assert nova.features_from_extra_specs(
        {"guestha:corrective_action": "reboot"})["corrective_action"] == (
        "reboot")
    assert nova.features_from_extra_specs(
        {"guestha:corrective_action": "  "})["corrective_action"] is None


# -- guestha_features over HTTP -----------------------------------------------

def test_features_of_an_instance_from_its_flavor(fake):
    fake.add_server(UUID, flavor_extra_specs={
        "guestha:heartbeat": "true", "guestha:server_group_messaging": "1",
        "guestha:corrective_action": "reboot", "hw:cpu_policy": "dedicated"})

    features = client_for(fake).guestha_features(UUID)

    assert features == {"heartbeat": True, "server_group_messaging": True,
                        "corrective_action": "reboot"}
    # asked at the microversion that embeds the flavor's extra specs
    assert [r["version"] for r in server_gets(fake)] == ["2.47"]


def test_a_flavor_without_guestha_specs(fake):
    fake.add_server(UUID, flavor_extra_specs={"hw:watchdog_action": "reset"})

    assert client_for(fake).guestha_features(UUID) == nova.NO_FEATURES


def test_answers_are_cached_for_the_ttl(fake):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "yes"})
    clock = ManualClock(100.0)
    client = client_for(fake, clock=clock, flavor_cache_ttl=300)

    client.guestha_features(UUID)
    fake.servers[UUID]["flavor"]["extra_specs"] = {}  # a resize, say
    clock.now += 299
    assert client.guestha_features(UUID)["heartbeat"] is True
    assert len(server_gets(fake)) == 1

    clock.now += 2
    assert client.guestha_features(UUID)["heartbeat"] is False
    assert len(server_gets(fake)) == 2


def test_forget_drops_the_cached_answer(fake):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "yes"})
    client = client_for(fake, clock=ManualClock(100.0))

    client.guestha_features(UUID)
    client.forget(UUID)
    client.guestha_features(UUID)

    assert len(server_gets(fake)) == 2


def test_ttl_zero_disables_the_cache(fake):
    fake.add_server(UUID)
    client = client_for(fake, flavor_cache_ttl=0)

    client.guestha_features(UUID)
    client.guestha_features(UUID)

    assert len(server_gets(fake)) == 2


def test_the_caller_cannot_change_the_cached_answer(fake):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "yes"})
    client = client_for(fake, clock=ManualClock(100.0))

    client.guestha_features(UUID)["heartbeat"] = False

    assert client.guestha_features(UUID)["heartbeat"] is True


def test_an_instance_nova_does_not_know_gets_nothing(fake, caplog):
    client = client_for(fake, clock=ManualClock(100.0))

    with caplog.at_level(logging.INFO, logger="guestha.nova"):
        features = client.guestha_features(UUID)

    assert features == nova.NO_FEATURES
    assert any(UUID in r.getMessage() and "not found" in r.getMessage()
               for r in caplog.records)
    # and it is not asked again within the TTL
    client.guestha_features(UUID)
    assert len(server_gets(fake)) == 1


def test_hidden_extra_specs_are_logged_and_enable_nothing(fake, caplog):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "yes"})
    client = client_for(fake)
    # what Nova answers when its policy hides extra specs from this user
    server = fake.servers[UUID]
    original_view = fake._server_view

    def view_without_specs(uuid, version):
        view = original_view(uuid, version)
        view["flavor"].pop("extra_specs", None)
        return view

    fake._server_view = view_without_specs
    with caplog.at_level(logging.WARNING, logger="guestha.nova"):
        features = client.guestha_features(UUID)

    assert features == nova.NO_FEATURES
    assert server["id"] == UUID
    assert any("flavor-extra-specs" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status", [500, 503, 401, 403])
def test_nova_errors_raise_nova_unavailable(fake, status):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "yes"})
    client = client_for(fake, clock=ManualClock(100.0))
    fake.fail(status)

    with pytest.raises(nova.NovaUnavailable) as info:
        client.guestha_features(UUID)
    assert UUID in str(info.value)

    # an error is not cached: the next ask gets the answer
    assert client.guestha_features(UUID)["heartbeat"] is True


def test_nova_unreachable_raises_nova_unavailable(fake):
    client = client_for(fake)
    fake.stop()

    with pytest.raises(nova.NovaUnavailable) as info:
        client.guestha_features(UUID)
    assert "ConnectFailure" in str(info.value)


def test_a_microversion_below_2_47_is_refused():
    with FakeNova() as fake:
        with pytest.raises(ValueError, match="2.47"):
            client_for(fake, api_microversion="2.46")


def test_a_later_microversion_is_used_as_configured(fake):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "1"})

    client_for(fake, api_microversion="2.79").guestha_features(UUID)

    assert server_gets(fake)[0]["version"] == "2.79"


# -- for the controller -------------------------------------------------------

@pytest.mark.parametrize("microversion", ["2.47", "2.64"])
def test_server_groups_of_all_projects(fake, microversion):
    fake.add_server_group("g-1", "vnf-a", "anti-affinity",
                          members=[UUID, OTHER])
    fake.add_server_group("g-2", "vnf-b", "affinity", members=[],
                          project_id="another-project")

    groups = client_for(fake, api_microversion=microversion).server_groups()

    assert groups == [
        {"id": "g-1", "name": "vnf-a", "policy": "anti-affinity",
         "members": [UUID, OTHER],
         "project_id": "6f70656e737461636b20342065766572"},
        {"id": "g-2", "name": "vnf-b", "policy": "affinity", "members": [],
         "project_id": "another-project"}]
    group_lists = [r for r in fake.requests
                   if r["path"] == "/v2.1/os-server-groups"]
    assert group_lists[0]["query"] == {"all_projects": ["True"],
                                       "limit": ["1000"]}


def group_lists(fake):
    return [r["query"] for r in fake.requests
            if r["path"] == "/v2.1/os-server-groups"]


@pytest.mark.parametrize("max_limit", [1000, 300])
def test_more_server_groups_than_one_page_are_all_read(fake, max_limit):
    # Nova answers at most [api] max_limit groups a request; one
    # unpaginated list would stop at the first 1000
    fake.max_limit = max_limit
    count = 2345
    for n in range(count):
        fake.add_server_group("g-%05d" % n, "group-%d" % n,
                              members=["m-%05d" % n])

    groups = client_for(fake).server_groups()

    assert len(groups) == count
    assert len({g["id"] for g in groups}) == count
    assert groups[-1]["members"] == ["m-%05d" % (count - 1)]
    pages = -(-count // max_limit)
    queries = group_lists(fake)
    # every page, then the empty one that says it was the last
    assert len(queries) == pages + 1
    assert [q.get("offset", ["0"])[0] for q in queries] == [
        str(n * max_limit) for n in range(pages)] + [str(count)]


def test_an_exact_page_multiple_ends_on_an_empty_page(fake):
    fake.max_limit = 2
    for n in range(4):
        fake.add_server_group("g-%d" % n, "group-%d" % n)

    assert [g["id"] for g in client_for(fake).server_groups()] == [
        "g-0", "g-1", "g-2", "g-3"]
    assert len(group_lists(fake)) == 3


def test_a_failure_on_a_later_page_is_nova_unavailable(fake):
    fake.max_limit = 2
    for n in range(5):
        fake.add_server_group("g-%d" % n, "group-%d" % n)
    client = client_for(fake)
    client.server_groups()  # warm up (version discovery, if any)
    fake.requests.clear()

    class FailSecondPage(object):
        def __init__(self, real):
            self.real = real
            self.calls = 0

        def list(self, **kwargs):
            self.calls += 1
            if self.calls == 2:
                from novaclient import exceptions as nova_exc
                raise nova_exc.ClientException(503, "bad day")
            return self.real.list(**kwargs)

    client._client.server_groups = FailSecondPage(
        client._client.server_groups)

    with pytest.raises(nova.NovaUnavailable):
        client.server_groups()


def test_server_groups_when_nova_is_down(fake):
    client = client_for(fake)
    fake.fail(503)

    with pytest.raises(nova.NovaUnavailable):
        client.server_groups()


def test_server(fake):
    fake.add_server(UUID, host="compute-7", status="SHUTOFF")

    assert client_for(fake).server(UUID) == {
        "id": UUID, "status": "SHUTOFF", "host": "compute-7",
        "vm_state": "stopped", "task_state": None,
        "project_id": DEFAULT_PROJECT}


def test_server_not_found(fake):
    assert client_for(fake).server(UUID) is None


# -- reboot_finished: Nova's instance actions -------------------------------

SOFT_ASKED = 1_764_849_600.0     # 2025-12-04T12:00:00Z


def reboot_event(finish_time, result="Success"):
    return {"event": "compute_reboot_instance",
            "start_time": "2025-12-04T12:00:00.120000",
            "finish_time": finish_time, "result": result}


def test_reboot_finished_is_the_end_of_novas_reboot_event(fake):
    # a soft reboot that Nova's libvirt driver carried on hard by itself is
    # one "reboot" action; its compute event finishes at the new boot
    fake.add_server(UUID)
    fake.add_instance_action(UUID, "create", "req-create",
                             "2025-12-04T11:00:00.000000")
    fake.add_instance_action(UUID, "reboot", "req-soft",
                             "2025-12-04T12:00:00.100000",
                             [reboot_event("2025-12-04T12:02:01.500000")])

    finished = client_for(fake).reboot_finished(UUID, SOFT_ASKED)

    assert finished == pytest.approx(SOFT_ASKED + 121.5)
    paths = [r["path"] for r in fake.requests if r["method"] == "GET"]
    assert "/v2.1/servers/%s/os-instance-actions" % UUID in paths
    assert "/v2.1/servers/%s/os-instance-actions/req-soft" % UUID in paths
    assert not any(p.endswith("req-create") for p in paths)


def test_reboot_finished_takes_the_latest_and_skips_failed(fake):
    fake.add_server(UUID)
    fake.add_instance_action(UUID, "reboot", "req-1",
                             "2025-12-04T12:00:00Z",
                             [reboot_event("2025-12-04T12:00:30Z")])
    fake.add_instance_action(UUID, "stop", "req-2", "2025-12-04T12:01:00Z")
    fake.add_instance_action(UUID, "reboot", "req-3",
                             "2025-12-04T12:02:00Z",
                             [reboot_event("2025-12-04T12:02:40Z",
                                           result="Error")])

    assert client_for(fake).reboot_finished(UUID, SOFT_ASKED) == (
        pytest.approx(SOFT_ASKED + 30))


def test_reboot_finished_none_before_nova_has_finished(fake):
    fake.add_server(UUID)
    fake.add_instance_action(UUID, "reboot", "req-soft",
                             "2025-12-04T12:00:00.100000",
                             [reboot_event(None)])

    assert client_for(fake).reboot_finished(UUID, SOFT_ASKED) is None


def test_reboot_finished_ignores_reboots_asked_before(fake):
    fake.add_server(UUID)
    fake.add_instance_action(UUID, "reboot", "req-old",
                             "2025-12-04T11:00:00.000000",
                             [reboot_event("2025-12-04T11:01:00.000000")])

    assert client_for(fake).reboot_finished(UUID, SOFT_ASKED) is None
    assert not any(r["path"].endswith("req-old") for r in fake.requests)


def test_reboot_finished_of_an_unknown_instance(fake):
    assert client_for(fake).reboot_finished(UUID, SOFT_ASKED) is None


def test_reboot_finished_when_nova_is_down(fake):
    fake.add_server(UUID)
    client = client_for(fake)
    fake.fail(503)

    with pytest.raises(nova.NovaUnavailable):
        client.reboot_finished(UUID, SOFT_ASKED)


# -- the stand-in itself ------------------------------------------------------

def raw_get(fake, path, **headers):
    request = urllib.request.Request(fake.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.load(
                response)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.load(exc)


def test_fake_embeds_the_flavor_only_from_2_47(fake):
    fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "1"})

    _, headers, old = raw_get(fake, "/v2.1/servers/" + UUID,
                              **{"X-OpenStack-Nova-API-Version": "2.46"})
    _, headers_new, new = raw_get(fake, "/v2.1/servers/" + UUID,
                                  **{"OpenStack-API-Version": "compute 2.47"})

    assert set(old["server"]["flavor"]) == {"id", "links"}
    assert headers["OpenStack-API-Version"] == "compute 2.46"
    assert new["server"]["flavor"]["extra_specs"] == {
        "guestha:heartbeat": "1"}
    assert headers_new["X-OpenStack-Nova-API-Version"] == "2.47"


def test_fake_without_a_version_header_is_2_1_and_rejects_out_of_range(fake):
    fake.add_server(UUID)

    _, headers, _ = raw_get(fake, "/v2.1/servers/" + UUID)
    status, _, body = raw_get(fake, "/v2.1/servers/" + UUID,
                              **{"OpenStack-API-Version": "compute 2.999"})

    assert headers["OpenStack-API-Version"] == "compute 2.1"
    assert status == 406 and "not supported" in body["computeFault"][
        "message"]


def test_fake_not_found_body_is_novas(fake):
    status, _, body = raw_get(fake, "/v2.1/servers/" + UUID)

    assert status == 404
    assert body == {"itemNotFound": {
        "code": 404, "message": "Instance %s could not be found." % UUID}}


def test_novaclient_version_discovery_works_against_the_fake(fake):
    client = client_for(fake)._client

    assert api_versions.discover_version(
        client, api_versions.APIVersion("2.47")) == (
        api_versions.APIVersion("2.47"))
    with pytest.raises(nova_exc.UnsupportedVersion):
        api_versions.discover_version(client,
                                      api_versions.APIVersion("2.200"))


def test_fake_records_server_actions_and_refuses_impossible_ones(fake):
    fake.add_server(UUID)
    client = client_for(fake)._client

    client.servers.reboot(UUID, "SOFT")
    client.servers.reboot(UUID, "HARD")
    client.servers.stop(UUID)
    with pytest.raises(nova_exc.Conflict):
        client.servers.stop(UUID)
    client.servers.start(UUID)

    assert fake.actions == [(UUID, "reboot", {"type": "SOFT"}),
                            (UUID, "reboot", {"type": "HARD"}),
                            (UUID, "os-stop", None),
                            (UUID, "os-start", None)]
    assert fake.servers[UUID]["status"] == "ACTIVE"


@pytest.mark.parametrize("microversion", ["2.47", "2.79"])
def test_the_server_group_of_one_instance(fake, microversion):
    # whatever the configured microversion, 2.71 is asked for this
    for n in range(1500):
        fake.add_server_group("g-%05d" % n, "group-%d" % n)
    fake.add_server(UUID)
    fake.add_server(OTHER)
    fake.add_server_group("g-mine", "vnf-a", "soft-anti-affinity",
                          members=[UUID, OTHER])
    client = client_for(fake, api_microversion=microversion)

    group = client.server_group_of(UUID)

    assert group == {"id": "g-mine", "name": "vnf-a",
                     "policy": "soft-anti-affinity",
                     "members": [UUID, OTHER],
                     "project_id": "6f70656e737461636b20342065766572"}
    asked = [(r["path"], r["version"]) for r in fake.requests
             if r["path"].startswith(("/v2.1/servers",
                                      "/v2.1/os-server-groups"))]
    expected = max(microversion, "2.71")
    assert asked == [("/v2.1/servers/%s" % UUID, expected),
                     ("/v2.1/os-server-groups/g-mine", expected)]


def test_an_instance_in_no_group_or_unknown(fake):
    fake.add_server(UUID)
    client = client_for(fake)

    assert client.server_group_of(UUID) is None
    assert client.server_group_of(OTHER) is None


def test_a_nova_older_than_2_71_cannot_tell_one_instances_group(fake):
    import guestha.testing.fake_nova as fake_mod

    fake.add_server(UUID)
    client = client_for(fake)
    old_max = fake_mod.MAX_VERSION
    fake_mod.MAX_VERSION = (2, 70)
    try:
        with pytest.raises(nova.NovaUnavailable):
            client.server_group_of(UUID)
    finally:
        fake_mod.MAX_VERSION = old_max
