# SPDX-License-Identifier: Apache-2.0
"""The hot-plug decision: which running domains get the guestha channel."""

import pytest

from guestha.agent import events as ev
from guestha.agent import hotplug
from guestha import nova
from guestha.testing.fake_nova import FakeNova
from guestha.testing.fake_nova import nova_conf

UUID = "5d2e8f1a-9c3b-4a7e-8d6f-0b1c2d3e4f5a"
SOCKET_DIR = "/var/lib/guestha/channels"
NOVA_META = {"name": "vnf-1", "flavor": "m1.vnf",
             "project": "6f70656e737461636b20342065766572"}


class StubNova(object):
    """Answers guestha_features from a dict; records who was asked."""

    def __init__(self, features=None, error=None):
        self.features = dict(nova.NO_FEATURES, **(features or {}))
        self.error = error
        self.asked = []

    def guestha_features(self, uuid):
        self.asked.append(uuid)
        if self.error is not None:
            raise self.error
        return dict(self.features)


def info(channel_path=None, nova_meta=NOVA_META, controller=True):
    return ev.DomainInfo(uuid=UUID, name="instance-00000001",
                         state=ev.RUNNING, channel_path=channel_path,
                         has_serial_controller=controller,
                         nova=dict(nova_meta))


@pytest.mark.parametrize("features", [
    {"heartbeat": True},
    {"server_group_messaging": True},
    {"heartbeat": True, "server_group_messaging": True},
])
def test_a_flavor_that_asks_for_guestha_gets_the_channel(features):
    policy = hotplug.HotplugPolicy(StubNova(features), SOCKET_DIR)

    assert policy.decide(info()) == (
        "attach", "%s/%s.sock" % (SOCKET_DIR, UUID))


def test_a_flavor_that_does_not_ask_is_skipped_with_its_name():
    policy = hotplug.HotplugPolicy(
        StubNova({"corrective_action": "reboot"}), SOCKET_DIR)

    decision, reason = policy.decide(info())

    assert decision == "skip"
    assert "m1.vnf" in reason and "guestha:heartbeat" in reason


def test_a_domain_with_the_channel_needs_no_nova_lookup():
    stub = StubNova({"heartbeat": True})
    policy = hotplug.HotplugPolicy(stub, SOCKET_DIR)

    decision, reason = policy.decide(info(channel_path="/run/x.sock"))

    assert decision == "skip" and "/run/x.sock" in reason
    assert stub.asked == []


def test_a_domain_nova_did_not_define_is_left_alone():
    stub = StubNova({"heartbeat": True})
    policy = hotplug.HotplugPolicy(stub, SOCKET_DIR)

    decision, reason = policy.decide(info(nova_meta={}))

    assert decision == "skip" and "not a Nova instance" in reason
    assert stub.asked == []


def test_no_controller_is_for_the_watcher_to_find_out():
    # the watcher reads the live XML right before attaching and reports
    # "no_controller" with the fix; the policy only decides intent
    policy = hotplug.HotplugPolicy(StubNova({"heartbeat": True}), SOCKET_DIR)

    assert policy.decide(info(controller=False))[0] == "attach"


def test_nova_unavailable_reaches_the_caller():
    error = nova.NovaUnavailable("Nova is down")
    policy = hotplug.HotplugPolicy(StubNova(error=error), SOCKET_DIR)

    with pytest.raises(nova.NovaUnavailable):
        policy.decide(info())


def test_socket_dir_at_the_unix_path_limit_is_accepted():
    # 65 bytes of directory + "/" + 36 of uuid + ".sock" = 107 bytes
    socket_dir = "/" + "d" * 64
    policy = hotplug.HotplugPolicy(StubNova({"heartbeat": True}), socket_dir)

    _, path = policy.decide(info())

    assert len(path.encode()) == hotplug.MAX_SOCKET_PATH


@pytest.mark.parametrize("socket_dir", [
    "/" + "d" * 65,
    # bytes, not characters, count: 33 two-byte characters are 66 bytes
    "/" + "\u00e9" * 33,
])
def test_socket_dir_beyond_the_unix_path_limit_is_refused(socket_dir):
    with pytest.raises(ValueError) as error:
        hotplug.HotplugPolicy(StubNova(), socket_dir)

    message = str(error.value)
    assert "107" in message and "at most 65 bytes" in message


def test_decision_against_nova_over_http():
    with FakeNova() as fake:
        fake.add_server(UUID, flavor_extra_specs={
            "guestha:heartbeat": "True"})
        policy = hotplug.HotplugPolicy(
            nova.NovaClient.from_conf(nova_conf(fake)), SOCKET_DIR)

        assert policy.decide(info())[0] == "attach"
        fake.servers[UUID]["flavor"]["extra_specs"] = {}
        # cached: the flavor cannot change without a restart of the domain
        assert policy.decide(info())[0] == "attach"


# -- the flavor from the domain XML (Nova writes its extra specs there) -------

def with_specs(specs):
    return dict(NOVA_META, extra_specs=dict(specs))


@pytest.mark.parametrize("nova_client", [StubNova(), None],
                         ids=["with-credentials", "without-credentials"])
def test_extra_specs_in_the_domain_xml_need_no_nova_lookup(nova_client):
    policy = hotplug.HotplugPolicy(nova_client, SOCKET_DIR)

    decision = policy.decide(info(nova_meta=with_specs(
        {"guestha:heartbeat": "True", "hw:cpu_policy": "shared"})))

    assert decision == ("attach", "%s/%s.sock" % (SOCKET_DIR, UUID))
    if nova_client is not None:
        assert nova_client.asked == []


def test_extra_specs_in_the_domain_xml_win_over_the_api():
    # the domain's own flavor is the truth; the API is not even asked
    stub = StubNova({"heartbeat": True})
    policy = hotplug.HotplugPolicy(stub, SOCKET_DIR)

    decision, reason = policy.decide(info(nova_meta=with_specs({})))

    assert decision == "skip" and "m1.vnf" in reason
    assert stub.asked == []


def test_features_from_the_domain_xml():
    policy = hotplug.HotplugPolicy(None, SOCKET_DIR)

    assert policy.features(info(nova_meta=with_specs({
        "guestha:server_group_messaging": "yes",
        "guestha:corrective_action": "reboot"}))) == {
        "heartbeat": False, "server_group_messaging": True,
        "corrective_action": "reboot"}


def test_an_older_nova_is_asked_through_its_api():
    stub = StubNova({"heartbeat": True})
    policy = hotplug.HotplugPolicy(stub, SOCKET_DIR)

    assert policy.decide(info())[0] == "attach"
    assert stub.asked == [UUID]


def test_an_older_nova_without_credentials_is_skipped_with_the_reason():
    policy = hotplug.HotplugPolicy(None, SOCKET_DIR)

    decision, reason = policy.decide(info())

    assert decision == "skip"
    assert "no flavor extra specs" in reason and "credentials" in reason
    assert policy.features(info()) is None


def test_no_credentials_means_no_nova_client():
    from oslo_config import cfg

    from guestha.conf import nova as nova_opts

    conf = cfg.ConfigOpts()
    nova_opts.register_opts(conf)
    conf([], project="guestha-tests", default_config_files=[],
         default_config_dirs=[])

    assert nova.NovaClient.from_conf(conf, optional=True) is None
    # the controller cannot do without: it still gets its client
    assert nova.NovaClient.from_conf(conf) is not None


def test_with_credentials_the_optional_client_is_made():
    with FakeNova() as fake:
        fake.add_server(UUID, flavor_extra_specs={"guestha:heartbeat": "1"})
        client = nova.NovaClient.from_conf(nova_conf(fake), optional=True)

        assert client.guestha_features(UUID)["heartbeat"] is True


def test_the_loop_learns_the_features_from_the_domain_xml_too():
    # the agent loop's hot-plug worker: with no Nova client, the flavor's
    # settings (corrective action, messaging) still reach the instance
    from guestha.agent import hotplugworkers

    class Watcher(object):
        def __init__(self):
            self.hotplugs = []

        def request_hotplug(self, uuid, path):
            self.hotplugs.append((uuid, path))

    posted = []
    workers = hotplugworkers.HotplugWorkers(
        hotplug.HotplugPolicy(None, SOCKET_DIR), posted.append, lambda: 0.0)
    watcher = Watcher()

    workers.decide(info(nova_meta=with_specs({
        "guestha:heartbeat": "true",
        "guestha:corrective_action": "stop"})), watcher)
    workers.shutdown()

    assert [(p.instance, p.features) for p in posted] == [
        (UUID, {"heartbeat": True, "server_group_messaging": False,
                "corrective_action": "stop"})]
    assert watcher.hotplugs == [
        (UUID, "%s/%s.sock" % (SOCKET_DIR, UUID))]
