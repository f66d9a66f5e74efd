# SPDX-License-Identifier: Apache-2.0
"""devstack/plugin.sh's functions against the real services of the cloud
harness (issue 9), marker openstack.

devstack's own helpers (``iniset``, ``iniget``, ``is_service_enabled``,
``iniset_rpc_backend``, ``sudo``...) are the stand-ins of
tests/unit/devstack_stubs.sh, as in tests/unit/test_devstack.py; what the
plugin's functions talk to and write for is real here:

* ``create_guestha_masakari_segment`` runs the real ``openstack`` CLI
  (python-openstackclient with python-masakariclient, from .venv) against
  the real masakari-api and nova-api, with the harness's admin as
  devstack's ``devstack-admin`` cloud;
* ``create_guestha_flavor`` the same against the real nova-api, whose
  guestha extra-spec validators check what it sets;
* ``configure_nova_for_guestha`` edits a copy of the harness's nova.conf,
  which the real Nova then loads (``nova.config.parse_args``, as its
  services start) and publishes a versioned notification with, on the
  real RabbitMQ (a vhost of the test's own);
* ``configure_guestha`` writes guestha.conf, whose ``[nova]`` and
  ``[masakari]`` credentials (the plugin's service user, made as devstack's
  ``create_service_user`` makes it) authenticate at the real Keystone and
  read server groups from the real Nova and segments from the real
  Masakari.
"""

import configparser
import os
import shutil
import subprocess
import uuid as uuidlib

import pytest

from tools.cloud import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "devstack", "plugin.sh")
SETTINGS = os.path.join(ROOT, "devstack", "settings")
STUBS = os.path.join(ROOT, "tests", "unit", "devstack_stubs.sh")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")

#: The real Nova loads a nova.conf and sends a versioned notification as
#: nova-compute does (nova.rpc's versioned notifier).
NOVA_NOTIFIES = """
import sys
from nova import config, context, rpc
config.parse_args(["nova-compute", "--config-file", sys.argv[1]],
                  default_config_files=[], configure_db=False)
notifier = rpc.get_versioned_notifier("nova-compute:ghcl-devstack")
notifier.info(context.get_admin_context(), "instance.update",
              {"nova_object.name": "InstanceUpdatePayload",
               "nova_object.namespace": "nova",
               "nova_object.version": "2.0", "nova_object.data": {}})
rpc.cleanup()
c = config.CONF
print(c.notifications.notification_format)
print(c.notifications.notify_on_state_change)
print(",".join(c.notifications.versioned_notifications_topics))
"""


def unique(prefix="ghcl-devstack"):
    return "%s-%s" % (prefix, uuidlib.uuid4().hex[:8])


class Plugin(object):
    """The plugin's functions, called in bash with devstack's helpers
    stubbed and the real ``openstack`` CLI on PATH."""

    def __init__(self, tmp_path, services, **env):
        self.tmp = tmp_path
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text("""clouds:
  devstack-admin:
    auth:
      auth_url: {auth}
      username: admin
      password: {pw}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: {region}
    identity_api_version: 3
""".format(auth=harness.AUTH_URL, pw=harness.PASSWORD,
           region=harness.REGION))
        self.env = dict(os.environ)
        self.env.update({
            "STUB_ROOT": str(tmp_path), "ENABLED_SERVICES": services,
            "GUESTHA_DIR": ROOT, "STACK_USER": "stack",
            "GUESTHA_CONF_DIR": str(tmp_path / "etc" / "guestha"),
            "OS_CLIENT_CONFIG_FILE": str(clouds),
            "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        })
        for key in [k for k in self.env if k.startswith("OS_")
                    and k != "OS_CLIENT_CONFIG_FILE"]:
            del self.env[key]
        self.env.update(env)

    def call(self, *functions, check=True):
        lines = ["set -o errexit -o pipefail",
                 'source "%s"' % STUBS, 'source "%s"' % SETTINGS,
                 # no mode: the plugin only defines its functions
                 'source "%s"' % PLUGIN,
                 # the real CLI, not the stub's recorder
                 "unset -f openstack"] + list(functions)
        result = subprocess.run(["bash", "-c", "\n".join(lines)],
                                env=self.env, capture_output=True,
                                text=True, timeout=600)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result


@pytest.fixture(scope="module")
def compute_host(cloud):
    if not cloud.compute_enabled:
        pytest.skip("the cloud runs without nova-compute "
                    "(GUESTHA_CLOUD_COMPUTE=0)")
    return next(cloud.conn.compute.services(binary="nova-compute")).host


def _segment(ha, name):
    return next((s for s in ha.segments() if s.name == name), None)


def _hosts(ha, segment):
    return sorted((h.name, h.type, h.control_attributes)
                  for h in ha.hosts(segment.uuid))


def _drop_segment(ha, name):
    segment = _segment(ha, name)
    if segment is not None:
        for host in ha.hosts(segment.uuid):
            ha.delete_host(host.uuid, segment.uuid, ignore_missing=True)
        ha.delete_segment(segment.uuid, ignore_missing=True)


def test_masakari_segment_against_the_real_masakari(cloud, compute_host,
                                                    tmp_path):
    """The plugin's segment, by the real CLI at the real masakari-api:
    created with the host nova-compute reports (which Masakari checks
    against Nova); a host already in another segment (Masakari allows
    one) is left there rather than failing stack.sh with HTTP 409; a
    second run changes nothing."""
    ha = cloud.conn.instance_ha
    name = unique()
    plugin = Plugin(tmp_path, "masakari-api,guestha-server",
                    GUESTHA_MASAKARI_SEGMENT=name)
    harness_segment = _segment(ha, harness.SEGMENT)
    assert harness_segment is not None
    try:
        # the host is in the harness's segment: ours is made, empty
        plugin.call("create_guestha_masakari_segment")
        ours = _segment(ha, name)
        assert ours is not None
        assert (ours.recovery_method, ours.service_type) == ("auto",
                                                             "COMPUTE")
        assert _hosts(ha, ours) == []
        assert compute_host in [h[0] for h in _hosts(ha, harness_segment)]

        # the host in no segment: the plugin puts it in its own
        for host in ha.hosts(harness_segment.uuid):
            if host.name == compute_host:
                ha.delete_host(host.uuid, harness_segment.uuid)
        plugin.call("create_guestha_masakari_segment")
        assert _hosts(ha, ours) == [(compute_host, "COMPUTE", "SSH")]

        # idempotent
        plugin.call("create_guestha_masakari_segment")
        assert [s.name for s in ha.segments()].count(name) == 1
        assert _hosts(ha, ours) == [(compute_host, "COMPUTE", "SSH")]
    finally:
        _drop_segment(ha, name)
        harness.ensure_segment(cloud.conn, compute_host)
    assert compute_host in [h[0] for h in _hosts(ha, harness_segment)]


def test_flavor_against_the_real_nova_api(cloud, tmp_path):
    """The example flavor, by the real CLI at the real nova-api, with its
    extra specs as guestha reads them; a second run leaves it; a typo in
    GUESTHA_FLAVOR_EXTRA_PROPERTIES is refused by guestha's validators in
    nova-api (the plugin sets the extra specs at microversion 2.86: below
    it Nova took ``ture`` silently, and ``flavor create --property``
    left the flavor without it and exited 0) and stops the phase, the
    flavor deleted."""
    compute = cloud.conn.compute
    name = unique()
    plugin = Plugin(
        tmp_path, "n-api,guestha-server", GUESTHA_FLAVOR_NAME=name,
        GUESTHA_FLAVOR_RAM="256", GUESTHA_FLAVOR_DISK="1",
        GUESTHA_FLAVOR_EXTRA_PROPERTIES=(
            "guestha:server_group_messaging=true "
            "guestha:corrective_action=reboot"))
    typo_name = unique()
    try:
        plugin.call("create_guestha_flavor")
        flavor = compute.find_flavor(name, get_extra_specs=True)
        assert (flavor.ram, flavor.disk, flavor.vcpus) == (256, 1, 1)
        assert flavor.extra_specs == {
            "guestha:heartbeat": "true",
            "guestha:server_group_messaging": "true",
            "guestha:corrective_action": "reboot"}
        plugin.call("create_guestha_flavor")
        assert [f.name for f in compute.flavors()].count(name) == 1

        typo = Plugin(tmp_path, "n-api,guestha-server",
                      GUESTHA_FLAVOR_NAME=typo_name,
                      GUESTHA_FLAVOR_EXTRA_PROPERTIES=(
                          "guestha:server_group_messaging=ture"))
        result = typo.call("create_guestha_flavor", check=False)
        assert result.returncode != 0, result.stdout + result.stderr
        assert "'ture' is not a valid boolean-like value" in (
            result.stderr), result.stderr
        # no flavor without its settings left for the next run to keep
        assert compute.find_flavor(typo_name) is None
    finally:
        for flavor_name in (name, typo_name):
            flavor = compute.find_flavor(flavor_name)
            if flavor is not None:
                compute.delete_flavor(flavor)


@pytest.fixture
def vhost():
    name = unique("ghcl-devstack-vhost")
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name,
                    "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=60)
    yield name
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name],
                   capture_output=True, timeout=60)


def _rabbit(*args):
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True,
                          text=True, timeout=60, check=True).stdout


def test_nova_notifications_set_by_the_plugin_reach_guesthas_topic(
        cloud, tmp_path, vhost):
    """A compute-only node: the plugin edits the harness's real nova.conf
    (its notification settings taken out, as a devstack's nova.conf
    comes) and nova-cpu.conf; the real Nova loads each and publishes a
    versioned notification on exchange ``nova`` to both topics, Nova's
    default and guestha's."""
    source = os.path.join(harness.ETC, "nova", "nova.conf")
    text = []
    section = None
    with open(source) as f:
        for line in f:
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1]
            elif section in ("notifications",
                             "oslo_messaging_notifications") and "=" in line:
                continue  # devstack's nova.conf: unversioned, no driver
            if stripped.startswith("transport_url"):
                line = "transport_url = rabbit://guest:guest@%s:5672/%s\n" % (
                    harness.HOST, vhost)
            text.append(line)
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text("".join(text))
    cpu_conf = tmp_path / "nova-cpu.conf"
    shutil.copy(nova_conf, cpu_conf)
    Plugin(tmp_path, "n-cpu,guestha-agent", NOVA_CONF=str(nova_conf),
           NOVA_CPU_CONF=str(cpu_conf)).call("configure_nova_for_guestha")

    python = os.path.join(harness.BIN, "python")
    for path in (nova_conf, cpu_conf):
        result = subprocess.run([python, "-W", "ignore", "-c",
                                 NOVA_NOTIFIES, str(path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-3:] == [
            "versioned", "vm_and_task_state",
            "versioned_notifications,guestha_notifications"], result.stdout
    queues = {}
    for line in _rabbit("list_queues", "-p", vhost, "name",
                        "messages").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            queues[parts[0]] = int(parts[1])
    assert queues.get("guestha_notifications.info") == 2, queues
    assert queues.get("versioned_notifications.info") == 2, queues
    bindings = _rabbit("list_bindings", "-p", vhost, "source_name",
                       "destination_name").split("\n")
    assert any(b.split() == ["nova", "guestha_notifications.info"]
               for b in bindings), bindings


def test_guestha_conf_credentials_work_at_the_real_services(cloud,
                                                            tmp_path):
    """configure_guestha's [nova] and [masakari]: the plugin's service
    user (admin in the service project, as create_service_user makes it)
    authenticates at the real Keystone, lists every server group at the
    real Nova and the segments at the real Masakari."""
    from keystoneauth1 import adapter as ks_adapter
    from oslo_config import cfg

    from guestha.conf import opts
    from guestha import nova as nova_mod
    from guestha.sinks import base as sinks_base

    identity = cloud.conn.identity
    user_name = unique("ghcl-devstack-user")
    user = identity.create_user(name=user_name, password=harness.PASSWORD,
                                domain_id="default")
    try:
        service = identity.find_project("service", domain_id="default")
        role = identity.find_role("admin")
        identity.assign_project_role_to_user(service, user, role)
        plugin = Plugin(
            tmp_path, "key,n-api,guestha-server,masakari-api",
            KEYSTONE_SERVICE_URI=harness.AUTH_URL,
            SERVICE_PASSWORD=harness.PASSWORD,
            GUESTHA_SERVICE_USER=user_name,
            GUESTHA_STATE_DIR=str(tmp_path / "state"))
        plugin.call("configure_guestha")
        conf_path = tmp_path / "etc" / "guestha" / "guestha.conf"
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf(["--config-file", str(conf_path)], project="guestha",
             default_config_files=[], default_config_dirs=[])
        written = configparser.RawConfigParser()
        written.read(conf_path)
        assert written["nova"]["username"] == user_name
        assert written["masakari"]["username"] == user_name

        group = cloud.conn.compute.create_server_group(
            name=unique(), policy="soft-anti-affinity")
        try:
            client = nova_mod.NovaClient.from_conf(conf)
            assert group.id in {g["id"] for g in client.server_groups()}
        finally:
            cloud.conn.compute.delete_server_group(group)

        session, kwargs = sinks_base.load_session(conf, "masakari")
        masakari = ks_adapter.Adapter(session, **kwargs)
        answer = masakari.get("/segments")
        assert harness.SEGMENT in [s["name"]
                                   for s in answer.json()["segments"]]
    finally:
        identity.delete_user(user, ignore_missing=True)
