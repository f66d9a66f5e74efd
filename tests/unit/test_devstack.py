# SPDX-License-Identifier: Apache-2.0
"""The devstack plugin (devstack/) and the shell scripts of the guest image.

* shellcheck passes on devstack/plugin.sh, devstack/settings, the scripts
  of the guest image element (etc/guest-image) and the stubs below.
* The plugin's phases run in bash with devstack's helpers replaced by
  tests/unit/devstack_stubs.sh, in a temporary directory: the generated
  guestha.conf (checked against the options guestha really has), the
  systemd units, the Keystone user, Nova's and Vitrage's settings (Nova's
  on compute-only nodes too), the example flavor, the Masakari segment,
  and what unstack and clean undo.
"""

import configparser
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "devstack", "plugin.sh")
SETTINGS = os.path.join(ROOT, "devstack", "settings")
STUBS = os.path.join(ROOT, "tests", "unit", "devstack_stubs.sh")
SAMPLE = os.path.join(ROOT, "etc", "guestha", "guestha.conf.sample")

ALL_IN_ONE = ("key,n-api,n-cpu,rabbit,guestha-agent,guestha-server,"
              "vitrage-api,masakari-api")


def shell_scripts():
    scripts = [PLUGIN, SETTINGS, STUBS]
    element = os.path.join(ROOT, "etc", "guest-image")
    for path in sorted(glob.glob(os.path.join(element, "**", "*"),
                                 recursive=True)):
        if os.path.isfile(path) and os.path.basename(
                os.path.dirname(path)).endswith(".d"):
            scripts.append(path)
    return scripts


def _shellcheck():
    """The shellcheck binary, installed with apt-get if missing and root."""
    found = shutil.which("shellcheck")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
             "shellcheck"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            timeout=600, check=False)
        found = shutil.which("shellcheck")
    if found is None:
        pytest.skip("shellcheck is not installed and could not be installed "
                    "(as root: apt-get install shellcheck, which "
                    "tools/setup.sh does)")
    return found


def test_element_scripts_are_found():
    names = [os.path.relpath(p, ROOT) for p in shell_scripts()]
    assert any("extra-data.d" in n for n in names), names
    assert any("install.d" in n for n in names), names


def test_shellcheck():
    shellcheck = _shellcheck()
    result = subprocess.run(
        [shellcheck, "--external-sources", *shell_scripts()],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- running the plugin ---------------------------------------------------

class Devstack(object):
    """One node's devstack, stubbed, in a temporary directory."""

    def __init__(self, tmp_path, services, **env):
        self.root = tmp_path
        self.env = dict(os.environ)
        self.env.update({
            "STUB_ROOT": str(tmp_path),
            "ENABLED_SERVICES": services,
            "GUESTHA_DIR": ROOT,
            "GUESTHA_CONF_DIR": str(tmp_path / "etc" / "guestha"),
            "STACK_USER": "stack",
        })
        self.env.update(env)
        self.conf_path = tmp_path / "etc" / "guestha" / "guestha.conf"
        self.systemd_dir = tmp_path / "etc" / "systemd" / "system"
        self.bin_dir = tmp_path / "opt" / "stack" / "data" / "venv" / "bin"
        self.state_dir = tmp_path / "opt" / "stack" / "data" / "guestha"

    def run(self, *phases):
        """Source settings once, then plugin.sh for each (mode, phase)."""
        lines = ["set -o errexit -o pipefail",
                 'source "%s"' % STUBS, 'source "%s"' % SETTINGS]
        for phase in phases:
            lines.append('source "%s" %s' % (PLUGIN, " ".join(phase)))
        result = subprocess.run(
            ["bash", "-c", "\n".join(lines)], env=self.env,
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def calls(self, name=None):
        path = self.root / "calls.log"
        if not path.exists():
            return []
        calls = [line.split("\t")
                 for line in path.read_text().splitlines()]
        return [c for c in calls if name is None or c[0] == name]

    def clear_calls(self):
        (self.root / "calls.log").unlink(missing_ok=True)

    def conf(self):
        return read_ini(self.conf_path)

    def unit(self, service):
        return read_ini(self.systemd_dir / ("devstack@%s.service" % service))

    def stack(self):
        return self.run(("stack", "install"), ("stack", "post-config"),
                        ("stack", "extra"))


def read_ini(path):
    parser = configparser.RawConfigParser(default_section="\0",
                                          strict=True)
    parser.optionxform = str
    with open(path) as f:
        parser.read_file(f)
    return parser


def sample_options():
    """{section: {option names}} of the generated sample config."""
    options = {}
    section = None
    with open(SAMPLE) as f:
        for line in f:
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = options.setdefault(line[1:-1], set())
            elif (line.startswith("#") and " = " in line
                  and section is not None):
                name = line[1:].split(" = ", 1)[0]
                if name.isidentifier():
                    section.add(name)
    return options


@pytest.fixture
def aio(tmp_path):
    """An all-in-one devstack with Vitrage and Masakari."""
    nova_conf = tmp_path / "etc" / "nova" / "nova.conf"
    nova_conf.parent.mkdir(parents=True)
    nova_conf.write_text("[notifications]\nnotification_format = unversioned"
                         "\n")
    values_dir = tmp_path / "etc" / "vitrage" / "datasources_values"
    vitrage_conf = tmp_path / "etc" / "vitrage" / "vitrage.conf"
    vitrage_conf.parent.mkdir(parents=True)
    vitrage_conf.write_text(
        "[datasources]\ntypes = nova.host,nova.instance,static\n\n"
        "[entity_graph]\ndatasources_values_dir = %s\n" % values_dir)
    return Devstack(tmp_path, ALL_IN_ONE, NOVA_CONF=str(nova_conf),
                    VITRAGE_CONF=str(vitrage_conf))


def test_install_phase(aio):
    aio.run(("stack", "install"))
    assert aio.calls("setup_develop") == [["setup_develop", ROOT]]
    assert aio.calls("install_package") == [
        ["install_package", "libvirt-dev", "pkg-config", "gcc"]]


def test_conf_all_in_one(aio):
    aio.stack()
    conf = aio.conf()
    assert conf.get("DEFAULT", "transport_url") == \
        "rabbit://stackrabbit:secretrabbit@10.0.0.5:5672/"
    assert conf.get("DEFAULT", "debug") == "True"
    assert conf.get("sinks", "enabled") == "log,vitrage,masakari"
    assert conf.get("sinks", "log_path") == \
        str(aio.state_dir / "events.jsonl")
    assert conf.get("agent", "state_dir") == str(aio.state_dir / "agent")
    assert conf.get("agent", "socket_dir") == str(aio.state_dir / "channels")
    assert conf.get("agent", "status_socket") == \
        str(aio.state_dir / "agent.sock")
    assert conf.get("server", "ledger_path") == \
        str(aio.state_dir / "server-ledger.sqlite")
    assert conf.get("actions", "allowed_max") == "log"
    assert conf.get("server", "notification_topic") == \
        "guestha_notifications"
    for section in ("nova", "vitrage", "masakari"):
        assert dict(conf.items(section)) == {
            "auth_type": "password",
            "auth_url": "http://10.0.0.5/identity",
            "username": "guestha",
            "password": "secretservice",
            "user_domain_name": "Default",
            "project_name": "service",
            "project_domain_name": "Default",
            "region_name": "RegionOne",
        }, section
    assert aio.state_dir.is_dir()


def test_conf_options_exist(aio):
    """Every option the plugin writes is one guestha has (per the sample
    generated from the code), and oslo.config loads the file."""
    aio.stack()
    conf = aio.conf()
    known = sample_options()
    for section in conf.sections():
        assert section in known, section
        for option in conf.options(section):
            assert option in known[section], (section, option)

    from oslo_config import cfg

    from guestha.conf import opts
    oslo_conf = cfg.ConfigOpts()
    opts.register_opts(oslo_conf)
    oslo_conf(["--config-file", str(aio.conf_path)], project="guestha",
              default_config_files=[], default_config_dirs=[])
    assert oslo_conf.sinks.enabled == ["log", "vitrage", "masakari"]
    assert oslo_conf.actions.allowed_max == "log"
    assert oslo_conf.nova.auth_type == "password"
    assert oslo_conf.agent.socket_dir == str(aio.state_dir / "channels")


def test_units_all_in_one(aio):
    aio.stack()
    conf = str(aio.conf_path)
    agent = aio.unit("guestha-agent")
    assert agent.get("Service", "ExecStart") == \
        "%s/guestha-agent --config-file %s" % (aio.bin_dir, conf)
    assert agent.get("Service", "User") == "root"
    assert agent.get("Service", "LimitNOFILE") == "65536"
    assert agent.get("Service", "Restart") == "on-failure"
    assert agent.get("Install", "WantedBy") == "multi-user.target"
    assert set(agent.get("Unit", "After").split()) >= {
        "libvirtd.service", "virtqemud.service"}
    server = aio.unit("guestha-server")
    assert server.get("Service", "ExecStart") == \
        "%s/guestha-server --config-file %s" % (aio.bin_dir, conf)
    assert server.get("Service", "User") == "stack"

    systemctl = [c[1:] for c in aio.calls("systemctl")]
    for service in ("guestha-server", "guestha-agent"):
        unit = "devstack@%s.service" % service
        assert ["enable", unit] in systemctl
        assert ["start", unit] in systemctl
        # enabled (post-config) before started (extra)
        assert systemctl.index(["enable", unit]) < \
            systemctl.index(["start", unit])
    assert ["daemon-reload"] in systemctl


def test_accounts_nova_and_vitrage(aio, tmp_path):
    aio.stack()
    assert aio.calls("create_service_user") == [
        ["create_service_user", "guestha", "admin"]]
    assert aio.calls("get_or_add_user_project_role") == [
        ["get_or_add_user_project_role", "admin", "user-id-of-guestha",
         "service"]]

    assert_nova_notifies(tmp_path / "etc" / "nova" / "nova.conf")

    vitrage = read_ini(tmp_path / "etc" / "vitrage" / "vitrage.conf")
    assert vitrage.get("datasources", "types") == \
        "nova.host,nova.instance,static,guestha"
    assert vitrage.get("datasources", "path") == \
        "vitrage.datasources,guestha.vitrage_datasource"
    copied = (tmp_path / "etc" / "vitrage" / "datasources_values" /
              "guestha.yaml")
    with open(os.path.join(ROOT, "etc", "vitrage", "datasources_values",
                           "guestha.yaml")) as f:
        assert copied.read_text() == f.read()

    # a second stack leaves Vitrage's lists alone
    aio.run(("stack", "post-config"))
    vitrage = read_ini(tmp_path / "etc" / "vitrage" / "vitrage.conf")
    assert vitrage.get("datasources", "types") == \
        "nova.host,nova.instance,static,guestha"


def flavor_creates(node):
    return [c for c in node.calls("openstack")
            if c[3:5] == ["flavor", "create"]]


def flavor_sets(node):
    return [c for c in node.calls("openstack")
            if c[3:7] == ["--os-compute-api-version", "2.86", "flavor",
                          "set"]]


def test_flavor(aio):
    aio.stack()
    creates = flavor_creates(aio)
    assert creates == [[
        "openstack", "--os-cloud", "devstack-admin", "flavor", "create",
        "--ram", "1024", "--disk", "10", "--vcpus", "1", "guestha.small"]]
    # the extra specs where Nova validates them (microversion 2.86)
    assert flavor_sets(aio) == [[
        "openstack", "--os-cloud", "devstack-admin",
        "--os-compute-api-version", "2.86", "flavor", "set",
        "--property", "guestha:heartbeat=true", "guestha.small"]]


def test_flavor_extra_properties_and_existing(tmp_path):
    node = Devstack(tmp_path, ALL_IN_ONE, GUESTHA_FLAVOR_NAME="hb.tiny",
                    GUESTHA_FLAVOR_EXTRA_PROPERTIES=(
                        "guestha:server_group_messaging=true "
                        "guestha:corrective_action=reboot"))
    node.run(("stack", "extra"))
    creates = flavor_creates(node)
    assert creates == [[
        "openstack", "--os-cloud", "devstack-admin", "flavor", "create",
        "--ram", "1024", "--disk", "10", "--vcpus", "1", "hb.tiny"]]
    assert flavor_sets(node) == [[
        "openstack", "--os-cloud", "devstack-admin",
        "--os-compute-api-version", "2.86", "flavor", "set",
        "--property", "guestha:heartbeat=true",
        "--property", "guestha:server_group_messaging=true",
        "--property", "guestha:corrective_action=reboot", "hb.tiny"]]

    node.clear_calls()
    node.env["STUB_FLAVOR_EXISTS"] = "1"
    node.run(("stack", "extra"))
    assert not flavor_creates(node) and not flavor_sets(node)


def test_compute_node_only(tmp_path):
    """A compute node: the agent only, log sink, no accounts, no flavor,
    no Nova credentials, and Nova's notifications set all the same."""
    nova_dir = tmp_path / "etc" / "nova"
    nova_dir.mkdir(parents=True)
    (nova_dir / "nova.conf").write_text("[DEFAULT]\nhost = cmp1\n")
    (nova_dir / "nova-cpu.conf").write_text("[DEFAULT]\nhost = cmp1\n")
    node = Devstack(tmp_path, "n-cpu,guestha-agent",
                    NOVA_CONF=str(nova_dir / "nova.conf"),
                    NOVA_CPU_CONF=str(nova_dir / "nova-cpu.conf"))
    node.stack()
    conf = node.conf()
    assert conf.get("sinks", "enabled") == "log"
    assert not conf.has_section("nova")
    assert not conf.has_option("server", "notification_topic")
    assert not conf.has_section("vitrage")
    assert not conf.has_section("masakari")
    assert (node.systemd_dir / "devstack@guestha-agent.service").exists()
    assert not (node.systemd_dir / "devstack@guestha-server.service").exists()
    assert node.calls("create_service_user") == []
    assert node.calls("openstack") == []
    for name in ("nova.conf", "nova-cpu.conf"):
        assert_nova_notifies(nova_dir / name)


def assert_nova_notifies(path,
                         topics="versioned_notifications,"
                                "guestha_notifications",
                         notification_format="versioned"):
    """Nova sends versioned notifications with task states on guestha's
    topic, to the message bus."""
    nova = read_ini(path)
    assert nova.get("notifications", "notification_format") == \
        notification_format
    assert nova.get("notifications", "notify_on_state_change") == \
        "vm_and_task_state"
    assert nova.get("notifications", "versioned_notifications_topics") == \
        topics
    assert nova.get("oslo_messaging_notifications", "driver") == \
        "messagingv2"


def test_nova_notifications_keep_what_is_there(tmp_path):
    """An existing topic list is extended, "both" is kept, a driver that
    sends nothing is replaced; a second stack changes nothing."""
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text(
        "[notifications]\nnotification_format = both\n"
        "versioned_notifications_topics = other_topic\n\n"
        "[oslo_messaging_notifications]\ndriver = noop\n")
    node = Devstack(tmp_path, "n-cpu,guestha-agent",
                    NOVA_CONF=str(nova_conf))
    node.run(("stack", "post-config"))
    assert_nova_notifies(nova_conf, topics="other_topic,guestha_notifications",
                         notification_format="both")
    before = nova_conf.read_text()
    node.run(("stack", "post-config"))
    assert nova_conf.read_text() == before


def test_nova_notifications_custom_topic_and_off(tmp_path):
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text("[DEFAULT]\n")
    node = Devstack(tmp_path, ALL_IN_ONE, NOVA_CONF=str(nova_conf),
                    GUESTHA_NOTIFICATION_TOPIC="ha_topic")
    node.run(("stack", "post-config"))
    assert_nova_notifies(nova_conf, topics="versioned_notifications,ha_topic")
    assert node.conf().get("server", "notification_topic") == "ha_topic"

    nova_conf.write_text("[DEFAULT]\n")
    node.env["GUESTHA_NOVA_VERSIONED_NOTIFICATIONS"] = "False"
    node.run(("stack", "post-config"))
    assert nova_conf.read_text() == "[DEFAULT]\n"


# Nova's and Masakari's own option definitions read what the plugin (and
# devstack/README.rst) write: option names, choices and list values.  They
# are in the cloud harness's virtualenv (tools/cloud.sh, not started
# here); without it these are skipped.
CLOUD_PYTHON = os.path.join(os.environ.get(
    "GUESTHA_CLOUD_VENV",
    os.path.expanduser(os.path.join("~", ".cache", "guestha", "cloud-venv"))),
    "bin", "python")

READ_NOVA_CONF = """
import sys
import nova.conf
from oslo_messaging.notify import notifier
CONF = nova.conf.CONF
# oslo.messaging registers these when nova starts its notifier
CONF.register_opts(notifier._notifier_opts,
                   group="oslo_messaging_notifications")
CONF(["--config-file", sys.argv[1]], project="nova",
     default_config_files=[], default_config_dirs=[])
n = CONF.notifications
print(n.notification_format)
print(n.notify_on_state_change)
print(",".join(n.versioned_notifications_topics))
print(",".join(CONF.oslo_messaging_notifications.driver))
"""

READ_MASAKARI_CONF = """
import sys
import masakari.conf
CONF = masakari.conf.CONF
CONF(["--config-file", sys.argv[1]], project="masakari",
     default_config_files=[], default_config_dirs=[])
print(CONF.duplicate_notification_detection_interval)
"""


def _cloud_python(module):
    if not os.path.exists(CLOUD_PYTHON):
        pytest.skip("no cloud virtualenv (%s): bash tools/cloud.sh up "
                    "installs it" % CLOUD_PYTHON)
    found = subprocess.run([CLOUD_PYTHON, "-c", "import " + module],
                           capture_output=True, timeout=120)
    if found.returncode != 0:
        pytest.skip("%s is not installed in %s" % (module, CLOUD_PYTHON))
    return CLOUD_PYTHON


def _read_with(python, script, path):
    result = subprocess.run(
        [python, "-W", "ignore", "-c", script, str(path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_nova_reads_the_settings(tmp_path):
    """Real Nova's options load the nova.conf the plugin wrote, with the
    values guestha needs (a wrong name or choice fails here)."""
    python = _cloud_python("nova.conf")
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text(
        "[notifications]\nnotification_format = unversioned\n")
    node = Devstack(tmp_path, "n-cpu,guestha-agent",
                    NOVA_CONF=str(nova_conf))
    node.run(("stack", "post-config"))
    assert _read_with(python, READ_NOVA_CONF, nova_conf) == [
        "versioned", "vm_and_task_state",
        "versioned_notifications,guestha_notifications", "messagingv2"]


def test_masakari_reads_the_readme_advice(tmp_path):
    """The masakari.conf snippet of devstack/README.rst is an option
    Masakari has."""
    python = _cloud_python("masakari.conf")
    with open(os.path.join(ROOT, "devstack", "README.rst")) as f:
        readme = f.read()
    snippet = "[DEFAULT]\nduplicate_notification_detection_interval = 5\n"
    assert "    " + snippet.replace("\n", "\n    ").rstrip() in readme
    masakari_conf = tmp_path / "masakari.conf"
    masakari_conf.write_text(snippet)
    assert _read_with(python, READ_MASAKARI_CONF, masakari_conf) == ["5"]


def segment_calls(node):
    return [c[3:] for c in node.calls("openstack") if c[3] == "segment"
            and "create" in c]


def test_masakari_segment(tmp_path):
    """Where masakari-api runs: a segment with every compute host."""
    node = Devstack(tmp_path, ALL_IN_ONE, STUB_COMPUTE_HOSTS="cmp1 cmp2")
    node.run(("stack", "extra"))
    assert segment_calls(node) == [
        ["segment", "create", "--description",
         "guestha: compute hosts of this devstack", "guestha", "auto",
         "COMPUTE"],
        ["segment", "host", "create", "cmp1", "COMPUTE", "SSH", "guestha"],
        ["segment", "host", "create", "cmp2", "COMPUTE", "SSH", "guestha"],
    ]
    # the host names are those nova-compute reports
    assert ["openstack", "--os-cloud", "devstack-admin", "compute",
            "service", "list", "--service", "nova-compute", "-f", "value",
            "-c", "Host"] in node.calls("openstack")


def test_masakari_segment_idempotent(tmp_path):
    node = Devstack(tmp_path, ALL_IN_ONE, STUB_COMPUTE_HOSTS="cmp1 cmp2",
                    STUB_SEGMENTS="other guestha", STUB_SEGMENT_HOSTS="cmp1",
                    GUESTHA_MASAKARI_SEGMENT="guestha")
    node.run(("stack", "extra"))
    assert segment_calls(node) == [
        ["segment", "host", "create", "cmp2", "COMPUTE", "SSH", "guestha"]]


@pytest.mark.parametrize("services,env", [
    ("key,n-api,n-cpu,guestha-agent,guestha-server", {}),
    (ALL_IN_ONE, {"GUESTHA_SINKS": "log,vitrage"}),
    (ALL_IN_ONE, {"GUESTHA_MASAKARI_SEGMENT": ""}),
    ("n-cpu,guestha-agent,masakari-engine", {}),
])
def test_no_masakari_segment(tmp_path, services, env):
    node = Devstack(tmp_path, services, STUB_COMPUTE_HOSTS="cmp1", **env)
    node.run(("stack", "extra"))
    assert [c for c in node.calls("openstack") if c[3] == "segment"] == []


def test_sinks_override(tmp_path):
    node = Devstack(tmp_path, ALL_IN_ONE, GUESTHA_SINKS="log")
    node.run(("stack", "post-config"))
    conf = node.conf()
    assert conf.get("sinks", "enabled") == "log"
    assert not conf.has_section("vitrage")


def test_not_enabled_does_nothing(tmp_path):
    node = Devstack(tmp_path, "key,n-api,n-cpu")
    node.stack()
    node.run(("unstack",), ("clean",))
    assert not node.conf_path.exists()
    assert {c[0] for c in node.calls()} == {"define_plugin"}


def test_unstack_and_clean(aio):
    aio.stack()
    aio.clear_calls()
    aio.run(("unstack",))
    assert aio.calls("stop_process") == [
        ["stop_process", "guestha-api"], ["stop_process", "guestha-agent"],
        ["stop_process", "guestha-server"]]
    assert aio.conf_path.exists()

    aio.run(("clean",))
    assert not (aio.systemd_dir / "devstack@guestha-agent.service").exists()
    assert not (aio.systemd_dir / "devstack@guestha-server.service").exists()
    assert not aio.state_dir.exists()
    assert not aio.conf_path.parent.exists()
    assert ["systemctl", "daemon-reload"] in aio.calls("systemctl")


def test_api_service(tmp_path):
    """guestha-api: [api] with Keystone tokens, keystonemiddleware's
    section by devstack's helper, its unit, started, and the endpoint of
    service type guestha in the catalog; unstack and clean undo it."""
    node = Devstack(tmp_path, ALL_IN_ONE + ",guestha-api")
    node.stack()
    conf = node.conf()
    assert dict(conf.items("api")) == {
        "auth_strategy": "keystone", "host": "0.0.0.0", "port": "9749"}
    assert node.calls("configure_keystone_authtoken_middleware") == [
        ["configure_keystone_authtoken_middleware", str(node.conf_path),
         "guestha"]]
    assert node.calls("get_or_create_service") == [
        ["get_or_create_service", "guestha", "guestha",
         "guestha: instances monitored from the inside"]]
    assert node.calls("get_or_create_endpoint") == [
        ["get_or_create_endpoint", "guestha", "RegionOne",
         "http://10.0.0.5:9749"]]
    api = node.unit("guestha-api")
    assert api.get("Service", "ExecStart") == \
        "%s/guestha-api --config-file %s" % (node.bin_dir, node.conf_path)
    assert api.get("Service", "User") == "stack"
    systemctl = [c[1:] for c in node.calls("systemctl")]
    assert ["enable", "devstack@guestha-api.service"] in systemctl
    assert ["start", "devstack@guestha-api.service"] in systemctl
    known = sample_options()
    for option in conf.options("api"):
        assert option in known["api"], option

    node.run(("unstack",), ("clean",))
    assert ["stop_process", "guestha-api"] in node.calls("stop_process")
    assert not (node.systemd_dir / "devstack@guestha-api.service").exists()


def test_api_service_alone(tmp_path):
    """The plugin acts for guestha-api on a node without the other two."""
    node = Devstack(tmp_path, "key,guestha-api")
    node.stack()
    assert node.conf().get("api", "auth_strategy") == "keystone"
    assert node.calls("get_or_create_endpoint")
