# SPDX-License-Identifier: Apache-2.0
"""A real single-node OpenStack for guestha's tests: up, down, status.

Run through ``bash tools/cloud.sh up|down|status`` (which makes the
virtualenv this module runs in).  Keystone, Placement, Glance (file store),
Nova (api, conductor, scheduler, compute with the libvirt driver under
QEMU/TCG) and Masakari (api, engine), pinned releases from PyPI
(tools/cloud/requirements.txt), on the machine's MariaDB and RabbitMQ, with
Nova's versioned notifications on.  See doc/source/testing.rst, "The real
OpenStack cloud harness", for what is where and why.

Everything the harness makes is named so that ``down`` can find it again:
processes carry ``GUESTHA_CLOUD_DIR=<state dir>`` in their environment and
run in their own process group (pid files in <state>/run), databases start
with ``ghcloud_``, the RabbitMQ vhost is ``guestha-cloud``, and the libvirt
domains are those whose metadata is Nova's.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STATE = os.path.abspath(os.environ.get("GUESTHA_CLOUD_DIR",
                                       "/tmp/guestha-cloud"))
VENV = os.path.abspath(os.environ.get(
    "GUESTHA_CLOUD_VENV",
    os.path.join(os.path.expanduser("~"), ".cache", "guestha", "cloud-venv")))
BIN = os.path.join(VENV, "bin")
ETC = os.path.join(STATE, "etc")
LOG = os.path.join(STATE, "log")
RUN = os.path.join(STATE, "run")
STAMPS = os.path.join(STATE, "stamps")

HOST = "127.0.0.1"
DB_PREFIX = "ghcloud_"
DATABASES = ["keystone", "placement", "glance", "nova_api", "nova",
             "nova_cell0", "masakari"]
DB_URL = "mysql+pymysql://root@%s:3306/%s%%s?charset=utf8" % (HOST, DB_PREFIX)
VHOST = "guestha-cloud"
TRANSPORT_URL = "rabbit://guest:guest@%s:5672/%s" % (HOST, VHOST)
PASSWORD = "guestha"  # admin and every service user; a test cloud only
REGION = "RegionOne"
PORTS = {"keystone": 5000, "placement": 8778, "glance": 9292,
         "nova-api": 8774, "masakari-api": 15868, "network": 9696}
AUTH_URL = "http://%s:%d/v3" % (HOST, PORTS["keystone"])
# (service name, type, endpoint URL); "network" is the stand-in (netstub.py)
CATALOG = [
    ("placement", "placement", "http://%s:%d" % (HOST, PORTS["placement"])),
    ("glance", "image", "http://%s:%d" % (HOST, PORTS["glance"])),
    ("nova", "compute", "http://%s:%d/v2.1" % (HOST, PORTS["nova-api"])),
    ("masakari", "instance-ha",
     "http://%s:%d/v1/$(tenant_id)s" % (HOST, PORTS["masakari-api"])),
    ("neutron", "network", "http://%s:%d" % (HOST, PORTS["network"])),
]
SERVICE_USERS = ["placement", "glance", "nova", "masakari", "neutron"]
# the order of "up"; "down" stops them in reverse
SERVICES = ["network", "keystone", "placement", "glance", "nova-api",
            "nova-conductor", "nova-scheduler", "masakari-api",
            "masakari-engine", "nova-compute"]
FLAVORS = [  # name, ram MiB, vcpus, disk GiB, extra specs
    ("guestha.heartbeat", 256, 1, 1, {"guestha:heartbeat": "true"}),
    ("guestha.plain", 256, 1, 1, {}),
    # server-group messaging too (scenario 5 of tests/cloud)
    ("guestha.group", 256, 1, 1, {"guestha:heartbeat": "true",
                                  "guestha:server_group_messaging": "true"}),
]
SEGMENT = "guestha-cloud"
NOVA_XMLNS = "http://openstack.org/xmlns/libvirt/nova/"
API_WAIT_S = 120
STOP_GRACE_S = 5

_t0 = time.monotonic()
_print_lock = threading.Lock()


def say(msg):
    with _print_lock:
        print("cloud [%5.1fs] %s" % (time.monotonic() - _t0, msg), flush=True)


class CloudError(Exception):
    pass


# --- small helpers ---------------------------------------------------------

def run(argv, name, env=None, timeout=600, check=True):
    """Run a set-up command, its output appended to <log>/setup-<name>.log."""
    os.makedirs(LOG, exist_ok=True)
    path = os.path.join(LOG, "setup-%s.log" % name)
    with open(path, "ab") as out:
        out.write(("$ %s\n" % " ".join(argv)).encode())
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env,
                              timeout=timeout, cwd=STATE)
    if check and proc.returncode:
        raise CloudError("%s failed (exit %d); the end of %s:\n%s" % (
            " ".join(argv[:3]), proc.returncode, path, tail(path)))
    return proc.returncode


def tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def port_open(port, host=HOST, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_answers(port, path="/", timeout=3.0):
    """True when an HTTP request gets any answer (401 and 300 included).

    With a timeout: a half-started WSGI server may accept and never answer.
    """
    try:
        urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path),
                               timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def stamp_done(name):
    return os.path.exists(os.path.join(STAMPS, name))


def stamp(name):
    write(os.path.join(STAMPS, name), time.strftime("%F %T\n"))


def db_connect(database=None):
    import pymysql  # in the cloud venv
    return pymysql.connect(host=HOST, port=3306, user="root", password="",
                           database=database, autocommit=True,
                           connect_timeout=5)


# --- MariaDB and RabbitMQ --------------------------------------------------

def ensure_mariadb():
    if port_open(3306):
        return
    say("MariaDB is not running: starting it")
    if os.path.exists("/etc/init.d/mariadb"):
        run(["/etc/init.d/mariadb", "start"], "mariadb", timeout=120)
    else:
        mysqld_safe = shutil.which("mysqld_safe")
        if not mysqld_safe:
            raise CloudError("MariaDB is neither running on %s:3306 nor "
                             "installed (apt-get install mariadb-server)"
                             % HOST)
        subprocess.Popen([mysqld_safe], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not port_open(3306):
        if time.monotonic() > deadline:
            raise CloudError("MariaDB did not start within 60 s")
        time.sleep(0.5)


def ensure_rabbitmq():
    if not port_open(5672):
        say("RabbitMQ is not running: starting it")
        run(["rabbitmq-server", "-detached"], "rabbitmq", timeout=60)
        run(["rabbitmqctl", "await_startup", "--timeout", "90"], "rabbitmq",
            timeout=120)
    vhosts = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True,
        text=True, timeout=60, check=True).stdout.split()
    if VHOST not in vhosts:
        run(["rabbitmqctl", "add_vhost", VHOST], "rabbitmq", timeout=60)
        run(["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*",
             ".*", ".*"], "rabbitmq", timeout=60)
        say("RabbitMQ vhost %s created" % VHOST)


def ensure_databases():
    """Create the missing databases; forget the syncs of those created.

    (A stamp says a service's sync ran; a database dropped behind the
    harness's back must be synced again.)
    """
    existing = set(our_databases())
    conn = db_connect()
    with conn.cursor() as cur:
        for name in DATABASES:
            full = DB_PREFIX + name
            if full in existing:
                continue
            cur.execute("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % full)
            service = "nova" if name.startswith("nova") else name
            try:
                os.unlink(os.path.join(STAMPS, service))
            except FileNotFoundError:
                pass
    conn.close()


def our_databases():
    try:
        conn = db_connect()
    except Exception:  # noqa: BLE001 (MariaDB down: nothing to drop)
        return []
    with conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (DB_PREFIX + "%",))
        names = [row[0] for row in cur.fetchall()]
    conn.close()
    return names


# --- configuration ---------------------------------------------------------

def authtoken(user):
    return """
[keystone_authtoken]
www_authenticate_uri = {auth}
auth_url = {auth}
auth_type = password
username = {user}
password = {pw}
project_name = service
user_domain_name = Default
project_domain_name = Default
""".format(auth=AUTH_URL, user=user, pw=PASSWORD)


def ks_section(section, user="nova", extra=""):
    return """
[{section}]
auth_url = {auth}
auth_type = password
username = {user}
password = {pw}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {region}
{extra}""".format(section=section, auth=AUTH_URL, user=user, pw=PASSWORD,
                  region=REGION, extra=extra)


def write_configs():
    paste = os.path.join(VENV, "etc")
    # Keystone.  Few bcrypt rounds: every token issue hashes the password,
    # 0.6 s at the default; a test cloud only.
    write(os.path.join(ETC, "keystone", "keystone.conf"), """
[DEFAULT]
log_file = {log}/keystone.log
[database]
connection = {db}
[token]
provider = fernet
[fernet_tokens]
key_repository = {state}/keystone/fernet-keys
[credential]
key_repository = {state}/keystone/credential-keys
[identity]
password_hash_rounds = 4
""".format(log=LOG, db=DB_URL % "keystone", state=STATE))
    write(os.path.join(ETC, "placement", "placement.conf"), """
[DEFAULT]
log_file = {log}/placement.log
[placement_database]
connection = {db}
[api]
auth_strategy = keystone
""".format(log=LOG, db=DB_URL % "placement") + authtoken("placement"))
    write(os.path.join(ETC, "glance", "glance-api.conf"), """
[DEFAULT]
log_file = {log}/glance.log
enabled_backends = fs:file
worker_self_reference_url = http://{host}:{port}
[database]
connection = {db}
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {state}/glance/images
[os_glance_staging_store]
filesystem_store_datadir = {state}/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = {state}/glance/tasks
[paste_deploy]
flavor = keystone
""".format(log=LOG, db=DB_URL % "glance", state=STATE, host=HOST,
           port=PORTS["glance"]) + authtoken("glance"))
    shutil.copy(os.path.join(paste, "glance", "glance-api-paste.ini"),
                os.path.join(ETC, "glance", "glance-api-paste.ini"))
    for d in ("images", "staging", "tasks"):
        os.makedirs(os.path.join(STATE, "glance", d), exist_ok=True)

    # Nova: one nova.conf; each service adds <service>.conf (its log file)
    # and then the drop-in directory nova.conf.d (later settings win), where
    # tests and later work may put their own settings before "up".
    nova_conf = """
[DEFAULT]
transport_url = {transport}
state_path = {state}/nova
instances_path = {state}/nova/instances
my_ip = {host}
compute_driver = libvirt.LibvirtDriver
heal_instance_info_cache_interval = -1
shutdown_timeout = 5
allow_resize_to_same_host = true
[api_database]
connection = {api_db}
[database]
connection = {db}
[api]
auth_strategy = keystone
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 2
[libvirt]
virt_type = qemu
cpu_mode = none
connection_uri = qemu:///system
# the test guest ignores ACPI: a soft reboot falls back to hard after this
# (default 120 s)
wait_soft_reboot_seconds = 10
[workarounds]
disable_rootwrap = true
[oslo_concurrency]
lock_path = {state}/nova/locks
[notifications]
notification_format = versioned
notify_on_state_change = vm_and_task_state
# only guestha's topic, which its controllers read and drain: a topic
# nobody reads is a queue that grows (doc/source/install.rst)
versioned_notifications_topics = guestha_notifications
[oslo_messaging_notifications]
driver = messagingv2
[vnc]
enabled = false
[spice]
enabled = false
[glance]
region_name = {region}
""".format(transport=TRANSPORT_URL, state=STATE, host=HOST,
           api_db=DB_URL % "nova_api", db=DB_URL % "nova", region=REGION)
    nova_conf += authtoken("nova")
    nova_conf += ks_section("placement")
    nova_conf += ks_section("neutron")
    nova_conf += ks_section("service_user",
                            extra="send_service_user_token = true\n")
    write(os.path.join(ETC, "nova", "nova.conf"), nova_conf)
    shutil.copy(os.path.join(paste, "nova", "api-paste.ini"),
                os.path.join(ETC, "nova", "api-paste.ini"))
    os.makedirs(os.path.join(ETC, "nova", "nova.conf.d"), exist_ok=True)
    for svc in ("nova-api", "nova-conductor", "nova-scheduler",
                "nova-compute", "nova-manage"):
        write(os.path.join(ETC, "nova", svc + ".conf"),
              "[DEFAULT]\nlog_file = %s/%s.log\n" % (LOG, svc))
    for d in ("instances", "locks"):
        os.makedirs(os.path.join(STATE, "nova", d), exist_ok=True)

    masakari_conf = """
[DEFAULT]
transport_url = {transport}
api_paste_config = {etc}/masakari/api-paste.ini
os_privileged_user_name = masakari
os_privileged_user_password = {pw}
os_privileged_user_tenant = service
os_privileged_user_auth_url = {auth}
os_region_name = {region}
[database]
connection = {db}
[DEFAULT]
# a notification equal to one of the last N seconds is refused as a
# duplicate (default 180 s): a guest hung twice within 3 minutes would
# get one recovery; short here for the MTTR benchmark's back-to-back hangs
duplicate_notification_detection_interval = 5
[taskflow]
connection = {db}
[oslo_concurrency]
lock_path = {state}/masakari/locks
""".format(transport=TRANSPORT_URL, etc=ETC, pw=PASSWORD, auth=AUTH_URL,
           region=REGION, db=DB_URL % "masakari", state=STATE)
    write(os.path.join(ETC, "masakari", "masakari.conf"),
          masakari_conf + authtoken("masakari"))
    shutil.copy(os.path.join(paste, "masakari", "api-paste.ini"),
                os.path.join(ETC, "masakari", "api-paste.ini"))
    os.makedirs(os.path.join(ETC, "masakari", "masakari.conf.d"),
                exist_ok=True)
    for svc in ("masakari-api", "masakari-engine", "masakari-manage"):
        write(os.path.join(ETC, "masakari", svc + ".conf"),
              "[DEFAULT]\nlog_file = %s/%s.log\n" % (LOG, svc))
    os.makedirs(os.path.join(STATE, "masakari", "locks"), exist_ok=True)

    # privsep starts its helper as "sudo privsep-helper ..."; everything
    # runs as root here and Debian's sudo may be missing: a sudo that drops
    # its options and runs the command, on nova-compute's PATH only.
    sudo = os.path.join(STATE, "bin", "sudo")
    write(sudo, "#!/bin/sh\n# the cloud harness's sudo: we are root already\n"
          "while [ $# -gt 0 ]; do case \"$1\" in\n"
          "    -E|-n|-H|-S) shift ;;\n"
          "    -u|-g|-C) shift 2 ;;\n"
          "    --) shift; break ;;\n"
          "    *) break ;;\nesac; done\nexec \"$@\"\n")
    os.chmod(sudo, 0o755)


def nova_config_args(service):
    d = os.path.join(ETC, "nova")
    return ["--config-file", os.path.join(d, "nova.conf"),
            "--config-file", os.path.join(d, service + ".conf"),
            "--config-dir", os.path.join(d, "nova.conf.d")]


def masakari_config_args(service):
    d = os.path.join(ETC, "masakari")
    return ["--config-file", os.path.join(d, "masakari.conf"),
            "--config-file", os.path.join(d, service + ".conf"),
            "--config-dir", os.path.join(d, "masakari.conf.d")]


# --- processes -------------------------------------------------------------

def base_env():
    env = dict(os.environ)
    env["PATH"] = "%s:%s" % (BIN, env.get("PATH", "/usr/bin:/bin"))
    env["GUESTHA_CLOUD_DIR"] = STATE
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def gunicorn(name, app, argv=None, env=None):
    env = dict(env or {})
    env["GUESTHA_CLOUD_WSGI_APP"] = app
    env["GUESTHA_CLOUD_WSGI_ARGV"] = json.dumps(argv or [name])
    # One sync worker: one request at a time per API keeps the machine's
    # load modest; the timeout covers image uploads and slow first calls.
    cmd = [os.path.join(BIN, "gunicorn"), "--bind",
           "%s:%d" % (HOST, PORTS[name]), "--workers", "1",
           "--timeout", "300", "--graceful-timeout", "3",
           "--pythonpath", ROOT, "--name", "ghcloud-" + name,
           "tools.cloud.wsgi:application"]
    return cmd, env


def service_command(name):
    """(argv, extra environment) of one service."""
    if name == "network":
        return [sys.executable, "-m", "tools.cloud.netstub", "--host", HOST,
                "--port", str(PORTS["network"])], {"PYTHONPATH": ROOT}
    if name == "keystone":
        return gunicorn(name, "keystone.wsgi.api:application",
                        env={"OS_KEYSTONE_CONFIG_DIR":
                             os.path.join(ETC, "keystone")})
    if name == "placement":
        return gunicorn(name, "placement.wsgi.api:application",
                        env={"OS_PLACEMENT_CONFIG_DIR":
                             os.path.join(ETC, "placement")})
    if name == "glance":
        return gunicorn(name, "glance.wsgi.api:application",
                        env={"OS_GLANCE_CONFIG_DIR":
                             os.path.join(ETC, "glance")})
    if name == "nova-api":
        # The first file is the paste file; the drop-ins follow nova.conf.
        d = os.path.join(ETC, "nova")
        dropins = sorted(f for f in os.listdir(os.path.join(d, "nova.conf.d"))
                         if f.endswith(".conf"))
        files = ["api-paste.ini", "nova.conf", "nova-api.conf"] + [
            os.path.join("nova.conf.d", f) for f in dropins]
        return gunicorn(name, "nova.wsgi.osapi_compute:application",
                        env={"OS_NOVA_CONFIG_DIR": d,
                             "OS_NOVA_CONFIG_FILES": ";".join(files)})
    if name == "masakari-api":
        # masakari-api re-parses sys.argv when it loads: give it its files
        return gunicorn(name, "masakari.wsgi.api:application",
                        argv=["masakari-api"] +
                        masakari_config_args("masakari-api"),
                        env={"OS_MASAKARI_CONFIG_DIR":
                             os.path.join(ETC, "masakari")})
    if name == "masakari-engine":
        return [os.path.join(BIN, name)] + masakari_config_args(name), {}
    if name in ("nova-conductor", "nova-scheduler"):
        return [os.path.join(BIN, name)] + nova_config_args(name), {}
    if name == "nova-compute":
        path = "%s:%s:%s" % (os.path.join(STATE, "bin"), BIN,
                             os.environ.get("PATH", "/usr/bin:/bin"))
        return [os.path.join(BIN, name)] + nova_config_args(name), {
            "PATH": path}
    raise ValueError(name)


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_of(name):
    """The live pid of a service we started, or None (pid reuse checked)."""
    try:
        with open(os.path.join(RUN, name + ".pid")) as f:
            pid_s, start = f.read().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    st = _stat(pid)
    return pid if st and st[1] == start else None


def start(name):
    if pid_of(name):
        return False
    argv, extra = service_command(name)
    env = base_env()
    env.update(extra)
    env["GUESTHA_CLOUD_SERVICE"] = name
    os.makedirs(RUN, exist_ok=True)
    out = open(os.path.join(LOG, name + ".out"), "ab")
    # its own session and process group: "down" signals the whole group
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=STATE,
                            start_new_session=True)
    out.close()
    start_time = _start_time(proc.pid)
    write(os.path.join(RUN, name + ".pid"), "%d %s\n" % (proc.pid, start_time))
    with open(os.path.join(RUN, "sessions"), "a") as f:
        f.write("%d %s %s\n" % (proc.pid, start_time, name))
    return True


def wait_api(name, deadline_s=API_WAIT_S):
    port = PORTS[name]
    deadline = time.monotonic() + deadline_s
    while not http_answers(port):
        if not pid_of(name):
            raise CloudError("%s exited; the end of its logs:\n%s\n%s" % (
                name, tail(os.path.join(LOG, name + ".out")),
                tail(os.path.join(LOG, name + ".log"))))
        if time.monotonic() > deadline:
            raise CloudError("%s does not answer on port %d after %d s; "
                             "see %s" % (name, port, deadline_s, LOG))
        time.sleep(0.3)


def _stat(pid):
    """(session id, start time) of a live process, or None (a zombie is
    dead: its parent has only to reap it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return int(fields[3]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _sessions():
    """session id -> service name of every service ever started here."""
    sessions = {}
    try:
        with open(os.path.join(RUN, "sessions")) as f:
            for line in f:
                sid, start_time, name = line.split()
                leader = _stat(int(sid))
                # the leader alive as we started it, or gone (its children
                # keep the session): not a later process that reuses the pid
                if leader is None or leader[1] == start_time:
                    sessions[int(sid)] = name
    except (OSError, ValueError):
        pass
    return sessions


def our_processes():
    """pid -> service name of every process the harness started.

    Found by session (each service starts its own, which its children
    inherit) or, for a helper that made a session of its own (privsep), by
    a command line naming our configuration.  Not by the environment:
    setproctitle, which gunicorn and oslo.service use, overwrites it.
    """
    sessions = _sessions()
    etc = (ETC + "/").encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        st = _stat(pid)
        if st is None:
            continue
        if st[0] in sessions:
            found[pid] = sessions[st[0]]
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--config-file" in argv and any(a.startswith(etc) for a in argv):
            found[pid] = "?"
    return found


def stop_all():
    """SIGTERM every process group, SIGKILL what is left after a grace.

    nova-compute ignores SIGTERM for well over 15 s (graceful shutdown), so
    the grace is short: these services hold no state a kill can damage that
    "down" does not drop anyway.
    """
    groups = set()
    for name in SERVICES:
        pid = pid_of(name)
        if pid:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
    strays = our_processes()
    for pid in strays:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and our_processes():
        time.sleep(0.2)
    left = our_processes()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while our_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(groups), len(left)


# --- OpenStack set-up through one SDK session ------------------------------

def connect():
    import openstack  # in the cloud venv
    return openstack.connect(
        auth_url=AUTH_URL, username="admin", password=PASSWORD,
        project_name="admin", user_domain_name="Default",
        project_domain_name="Default", region_name=REGION,
        identity_api_version="3", load_yaml_config=False,
        load_envvars=False)


def ensure_catalog(conn):
    ident = conn.identity
    project = ident.find_project("service", domain_id="default")
    if project is None:
        project = ident.create_project(name="service", domain_id="default")
    roles = {r.name: r for r in ident.roles()}
    for role in ("admin", "service"):
        if role not in roles:
            roles[role] = ident.create_role(name=role)
    for user_name in SERVICE_USERS:
        user = ident.find_user(user_name, domain_id="default")
        if user is None:
            user = ident.create_user(name=user_name, password=PASSWORD,
                                     domain_id="default",
                                     default_project_id=project.id)
        for role in ("admin", "service"):
            ident.assign_project_role_to_user(project, user, roles[role])
    services = {s.type: s for s in ident.services()}
    endpoints = list(ident.endpoints())
    for name, stype, url in CATALOG:
        svc = services.get(stype)
        if svc is None:
            svc = ident.create_service(name=name, type=stype, enabled=True)
        for interface in ("public", "internal"):
            if not any(e.service_id == svc.id and e.interface == interface
                       for e in endpoints):
                ident.create_endpoint(service_id=svc.id, interface=interface,
                                      url=url, region_id=REGION)


def ensure_flavors(conn):
    for name, ram, vcpus, disk, specs in FLAVORS:
        flavor = conn.compute.find_flavor(name)
        if flavor is None:
            flavor = conn.compute.create_flavor(name=name, ram=ram,
                                                vcpus=vcpus, disk=disk)
            if specs:
                conn.compute.create_flavor_extra_specs(flavor, specs)


def wait_compute(conn, deadline_s=120):
    """Wait until nova-compute is up and its host is mapped to the cell."""
    deadline = time.monotonic() + deadline_s
    while True:
        up = [s for s in conn.compute.services(binary="nova-compute")
              if s.state == "up" and s.status == "enabled"]
        hyps = list(conn.compute.hypervisors())
        if up and hyps:
            return up[0].host
        if not pid_of("nova-compute"):
            raise CloudError("nova-compute exited; the end of its log:\n%s"
                             % tail(os.path.join(LOG, "nova-compute.log")))
        if time.monotonic() > deadline:
            raise CloudError("nova-compute not up after %d s; see %s"
                             % (deadline_s, LOG))
        time.sleep(1)


def ensure_segment(conn, host):
    """A Masakari failover segment holding the compute host.

    Without it masakari-api refuses every notification (HTTP 400).
    """
    ha = conn.instance_ha
    segment = next((s for s in ha.segments() if s.name == SEGMENT), None)
    if segment is None:
        segment = ha.create_segment(name=SEGMENT, recovery_method="auto",
                                    service_type="COMPUTE")
    if not any(h.name == host for h in ha.hosts(segment.uuid)):
        ha.create_host(segment.uuid, name=host, type="COMPUTE",
                       control_attributes="SSH")


# --- the steps of "up" -----------------------------------------------------

def setup_keystone():
    conf = ["--config-file", os.path.join(ETC, "keystone", "keystone.conf")]
    km = os.path.join(BIN, "keystone-manage")
    if not stamp_done("keystone"):
        for d in ("fernet-keys", "credential-keys"):
            os.makedirs(os.path.join(STATE, "keystone", d), mode=0o700,
                        exist_ok=True)
        run([km] + conf + ["db_sync"], "keystone")
        run([km] + conf + ["fernet_setup", "--keystone-user", "root",
                           "--keystone-group", "root"], "keystone")
        run([km] + conf + ["credential_setup", "--keystone-user", "root",
                           "--keystone-group", "root"], "keystone")
        url = "http://%s:%d/v3/" % (HOST, PORTS["keystone"])
        run([km] + conf + ["bootstrap", "--bootstrap-password", PASSWORD,
                           "--bootstrap-admin-url", url,
                           "--bootstrap-internal-url", url,
                           "--bootstrap-public-url", url,
                           "--bootstrap-region-id", REGION], "keystone")
        stamp("keystone")
        say("keystone: database synced, bootstrapped")
    if start("keystone"):
        say("keystone: started")
    wait_api("keystone")
    say("keystone: answering on port %d" % PORTS["keystone"])


def setup_placement():
    if not stamp_done("placement"):
        run([os.path.join(BIN, "placement-manage"), "--config-file",
             os.path.join(ETC, "placement", "placement.conf"), "db", "sync"],
            "placement")
        stamp("placement")
        say("placement: database synced")


def setup_glance():
    if not stamp_done("glance"):
        run([os.path.join(BIN, "glance-manage"), "--config-file",
             os.path.join(ETC, "glance", "glance-api.conf"), "db_sync"],
            "glance")
        stamp("glance")
        say("glance: database synced")


def setup_nova():
    if stamp_done("nova"):
        return
    nm = [os.path.join(BIN, "nova-manage")] + nova_config_args("nova-manage")
    run(nm + ["api_db", "sync"], "nova")
    run(nm + ["cell_v2", "map_cell0", "--database_connection",
              DB_URL % "nova_cell0"], "nova")
    # exit 2: the cell exists already (a re-run after a failed "up")
    rc = run(nm + ["cell_v2", "create_cell", "--name", "cell1"], "nova",
             check=False)
    if rc not in (0, 2):
        raise CloudError("nova-manage cell_v2 create_cell failed (exit %d); "
                         "see %s" % (rc, os.path.join(LOG, "setup-nova.log")))
    run(nm + ["db", "sync"], "nova")
    stamp("nova")
    say("nova: api, cell0 and cell1 databases synced")


def setup_validators():
    """guestha's Nova extra-spec validator plugin (guestha/nova_extra_specs.py,
    entry point nova.api.extra_spec_validators) in the cloud's venv, as an
    operator installs it next to nova-api: the checkout, without its
    dependencies (nova-api imports only that module)."""
    check = ("import importlib.metadata as m, sys, guestha; "
             "eps = m.entry_points(group='nova.api.extra_spec_validators'); "
             "sys.exit(0 if any(e.name == 'guestha' for e in eps) and "
             "guestha.__file__.startswith(%r) else 1)" % ROOT)
    if subprocess.run([os.path.join(BIN, "python"), "-c", check],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      cwd="/").returncode == 0:
        return
    run([os.path.join(BIN, "python"), "-m", "pip", "install", "-q",
         "--no-deps", "-e", ROOT], "guestha",
        env=dict(os.environ,
                 PBR_VERSION=os.environ.get("PBR_VERSION", "0.0.1")))
    say("nova-api: guestha's extra-spec validators installed")


def setup_masakari():
    if not stamp_done("masakari"):
        run([os.path.join(BIN, "masakari-manage")] +
            masakari_config_args("masakari-manage") + ["db", "sync"],
            "masakari")
        stamp("masakari")
        say("masakari: database synced")


def start_and_wait(names):
    for name in names:
        if start(name):
            say("%s: started" % name)
    for name in names:
        if name in PORTS:
            wait_api(name)
            say("%s: answering on port %d" % (name, PORTS[name]))


def up(args):
    os.makedirs(STATE, exist_ok=True)
    for d in (LOG, RUN, STAMPS):
        os.makedirs(d, exist_ok=True)
    say("state in %s, venv %s" % (STATE, VENV))
    ensure_mariadb()
    ensure_rabbitmq()
    ensure_databases()
    write_configs()
    if start("network"):
        say("network stand-in: started")

    # The database syncs are independent and mostly wait on MariaDB: run
    # them side by side (one process each), keystone first in the list as
    # the rest needs its catalog.
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = {pool.submit(fn): fn.__name__ for fn in (
            setup_keystone, setup_nova, setup_placement, setup_glance,
            setup_masakari, setup_validators)}
        # the catalog as soon as keystone answers, while the rest syncs
        for future in concurrent.futures.as_completed(futures):
            future.result()
            if futures[future] == "setup_keystone":
                conn = connect()
                ensure_catalog(conn)
                say("catalog: service users and endpoints ready")
                start_and_wait(["placement", "glance"])
    start_and_wait(["nova-api", "nova-conductor", "nova-scheduler",
                    "masakari-api", "masakari-engine"])
    wait_api("network")
    conn = connect()
    ensure_flavors(conn)
    say("flavors: %s" % ", ".join(f[0] for f in FLAVORS))
    if not args.no_image:
        from tools.cloud import image
        image.ensure_images(conn, say)
    if args.no_compute:
        say("nova-compute not started (--no-compute)")
    else:
        if not pid_of("nova-compute"):
            # idempotent: libvirtd and virtlogd running, QEMU as root
            run(["bash", os.path.join(ROOT, "tools", "libvirt-setup.sh")],
                "libvirt", timeout=300)
        if start("nova-compute"):
            stamp("compute-started")
            say("nova-compute: started")
        host = wait_compute(conn)
        say("nova-compute: up on host %s, mapped to cell1" % host)
        ensure_segment(conn, host)
        say("masakari: segment %s holds %s" % (SEGMENT, host))
    write_clouds_yaml()
    say("up: %s" % AUTH_URL)
    return 0


def write_clouds_yaml():
    """<state>/clouds.yaml and openrc for openstacksdk and the CLI."""
    write(os.path.join(STATE, "clouds.yaml"), """clouds:
  guestha-cloud:
    auth:
      auth_url: {auth}
      username: admin
      password: {pw}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: {region}
    identity_api_version: 3
""".format(auth=AUTH_URL, pw=PASSWORD, region=REGION))
    write(os.path.join(STATE, "openrc"), """export OS_AUTH_URL={auth}
export OS_USERNAME=admin
export OS_PASSWORD={pw}
export OS_PROJECT_NAME=admin
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_REGION_NAME={region}
export OS_IDENTITY_API_VERSION=3
""".format(auth=AUTH_URL, pw=PASSWORD, region=REGION))


# --- down ------------------------------------------------------------------

def nova_domains():
    """Names of the libvirt domains that Nova defined (its metadata)."""
    if not shutil.which("virsh"):
        return []
    proc = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all",
                           "--name"], capture_output=True, text=True,
                          timeout=60)
    names = []
    for name in proc.stdout.split():
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml",
                              name], capture_output=True, text=True,
                             timeout=60).stdout
        if NOVA_XMLNS in xml and STATE in xml:
            names.append(name)
    return names


def down(args):
    started = time.monotonic()
    groups, killed = stop_all()
    say("processes stopped (%d process groups, %d needed SIGKILL)"
        % (groups, killed))
    if stamp_done("compute-started"):
        for name in nova_domains():
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name],
                           capture_output=True, timeout=60)
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine",
                            "--nvram", name], capture_output=True, timeout=60)
            say("domain %s destroyed and undefined" % name)
    dbs = our_databases()
    if dbs:
        conn = db_connect()
        with conn.cursor() as cur:
            for name in dbs:
                cur.execute("DROP DATABASE `%s`" % name)
        conn.close()
        say("databases dropped: %s" % ", ".join(dbs))
    if port_open(5672):
        vhosts = subprocess.run(
            ["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True,
            text=True, timeout=60).stdout.split()
        if VHOST in vhosts:
            subprocess.run(["rabbitmqctl", "delete_vhost", VHOST],
                           capture_output=True, timeout=60, check=True)
            say("RabbitMQ vhost %s deleted" % VHOST)
    # keep the logs for a post-mortem; drop the rest
    if os.path.isdir(STATE):
        for entry in os.listdir(STATE):
            if entry != "log":
                path = os.path.join(STATE, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        if os.path.isdir(LOG):
            old = os.path.join(STATE, "log.previous")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(LOG, old)
    say("down in %.1f s (logs kept in %s)" % (
        time.monotonic() - started, os.path.join(STATE, "log.previous")))
    return 0


# --- status ----------------------------------------------------------------

def pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def status_dict():
    procs = our_processes()
    services = {}
    for name in SERVICES:
        pid = pid_of(name)
        entry = {"pid": pid, "running": bool(pid),
                 "pss_kib": sum(pss_kib(p) for p, n in procs.items()
                                if n == name)}
        if name in PORTS:
            entry["port"] = PORTS[name]
            entry["answering"] = bool(pid) and http_answers(PORTS[name])
        services[name] = entry
    return {"state_dir": STATE, "venv": VENV, "auth_url": AUTH_URL,
            "services": services, "databases": our_databases(),
            "processes": len(procs),
            "pss_mib_total": round(sum(pss_kib(p) for p in procs) / 1024, 1)}


def status(args):
    st = status_dict()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print("state %s  venv %s" % (st["state_dir"], st["venv"]))
    for name, entry in st["services"].items():
        if not entry["running"]:
            state = "stopped"
        elif entry.get("answering") is False:
            state = "running, NOT answering on %d" % entry["port"]
        elif "port" in entry:
            state = "running, answering on %d" % entry["port"]
        else:
            state = "running"
        print("  %-16s %-34s pid %-7s %6.0f MiB" % (
            name, state, entry["pid"] or "-", entry["pss_kib"] / 1024))
    print("  %d processes, %.0f MiB PSS; databases: %s" % (
        st["processes"], st["pss_mib_total"],
        ", ".join(st["databases"]) or "none"))
    wanted = [n for n in SERVICES if n != "nova-compute"]
    return 0 if all(st["services"][n]["running"] for n in wanted) else 3


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/cloud.sh",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="bring the cloud up (idempotent)")
    p_up.add_argument("--no-compute", action="store_true",
                      help="everything but nova-compute (leaves libvirtd "
                           "alone)")
    p_up.add_argument("--no-image", action="store_true",
                      help="upload no guest image")
    sub.add_parser("down", help="stop everything, drop databases and vhost")
    p_st = sub.add_parser("status", help="what runs (exit 3 if not all)")
    p_st.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status}[args.command](args)
    except CloudError as exc:
        say("ERROR: %s" % exc)
        if args.command == "up":
            say("what did start is left running for a look at %s; "
                "'bash tools/cloud.sh down' removes everything" % LOG)
        return 1


if __name__ == "__main__":
    sys.exit(main())
