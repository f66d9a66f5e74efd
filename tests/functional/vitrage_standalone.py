# SPDX-License-Identifier: Apache-2.0
"""Vitrage 15.0.1 standalone, for guestha's functional tests and by hand.

Installs Vitrage into its own virtualenv (``.venv-vitrage`` at the top of
the repository, never the project's ``.venv``: Vitrage pins what it
likes) and runs vitrage-graph, vitrage-persistor and vitrage-api as child
processes against RabbitMQ, with ``noauth``, SQLite, and the datasources
narrowed to ``doctor``, ``static`` and this repository's ``guestha``
plugin.  Used by ``tests/functional/test_vitrage.py``; by hand::

    .venv/bin/python -m tests.functional.vitrage_standalone install
    .venv/bin/python -m tests.functional.vitrage_standalone run \\
        --transport-url rabbit://guest:guest@127.0.0.1:5672/ \\
        --instance 11111111-2222-4333-8444-555555555555

(``run`` prints the API's URL and keeps Vitrage running until Ctrl-C.)

What it works around, each seen here with Vitrage 15.0.1:

1. pip would pick networkx 3.6, with which every topology or RCA call
   fails (KeyError 'links'): networkx is pinned below 3.6.
2. ``vitrage-dbsync`` creates ``events.id`` as a BIGINT primary key, which
   SQLite does not fill in: every event fails (NOT NULL constraint failed:
   events.id) until the table is recreated with an autoincrement id.
3. ``api-paste.ini`` and ``datasources_values/*.yaml`` are not in the
   wheel: they come from the sdist (``pip download --no-binary :all:``).
4. ``topology show`` needs ``all_tenants`` and an admin role, ``alarm
   show`` and RCA the header ``X-User-Name: admin`` under noauth:
   :func:`admin_client` sends both.

The install is cached: a stamp in the venv holds a hash of what it was
built from (Python version, pins, this module's install recipe), and a
second run with nothing changed skips pip.  A lock file keeps two test
runs from installing at once.
"""

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time

from guestha.testing.ports import free_port
from guestha.testing import processes as procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
VENV = os.path.join(ROOT, ".venv-vitrage")
VITRAGE_VERSION = "15.0.1"
REQUIREMENTS = ["vitrage==%s" % VITRAGE_VERSION,
                # Trap 1: networkx 3.6 breaks topology and RCA.
                "networkx>=3.4,<3.6"]
SHARE = os.path.join(VENV, "share", "guestha-vitrage")
STAMP = os.path.join(VENV, ".guestha-stamp")
PLUGIN_VALUES = os.path.join(ROOT, "etc", "vitrage", "datasources_values",
                             "guestha.yaml")
SERVICES = ("graph", "persistor", "api")
# Changing the recipe below? Bump this so cached venvs are rebuilt.
RECIPE = 1


def _to_stderr(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


#: Where progress goes: a function of one line.  The pytest fixture points
#: it past pytest's output capture: an install or a cold start takes tens
#: of seconds and should not look like a hang.
REPORT = _to_stderr


def say(message):
    REPORT("vitrage-standalone: %s" % message)


class VitrageError(RuntimeError):
    """Vitrage could not be installed or started."""


# -- install ----------------------------------------------------------------

def _wanted_stamp(python):
    version = subprocess.run([python, "-VV"], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout
    data = "\n".join([version, str(RECIPE)] + REQUIREMENTS)
    return hashlib.sha256(data.encode()).hexdigest()


def _pip(python, *args):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(
        [python, "-m", "pip"] + list(args), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, env=env)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines()
                 if "is ignored: it is neither" not in line]
        raise VitrageError("pip %s failed (%d):\n%s" % (
            " ".join(args), result.returncode, "\n".join(lines[-40:])))


def _extract_sdist_files(python):
    """Trap 3: api-paste.ini and datasources_values from the sdist."""
    with tempfile.TemporaryDirectory() as tmp:
        _pip(python, "download", "-q", "--no-binary", ":all:", "--no-deps",
             "-d", tmp, "vitrage==%s" % VITRAGE_VERSION)
        [sdist] = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        prefix = "vitrage-%s/etc/vitrage/" % VITRAGE_VERSION
        shutil.rmtree(SHARE, ignore_errors=True)
        os.makedirs(os.path.join(SHARE, "datasources_values"))
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix):]
                if rel == "api-paste.ini" or (
                        rel.startswith("datasources_values/")
                        and rel.endswith(".yaml") and rel.count("/") == 1):
                    with tar.extractfile(member) as src, open(
                            os.path.join(SHARE, rel), "wb") as dst:
                        shutil.copyfileobj(src, dst)
    if not os.path.exists(os.path.join(SHARE, "api-paste.ini")):
        raise VitrageError("api-paste.ini not found in the vitrage sdist")


def _site_packages(python):
    return subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                       "['purelib'])"],
        stdout=subprocess.PIPE, universal_newlines=True,
        check=True).stdout.strip()


def ensure_installed(base_python=None):
    """Install Vitrage into :data:`VENV` unless the stamp says it is
    there; returns the venv's python.  Also (re)writes the ``.pth`` that
    puts this repository, and so ``guestha.vitrage_datasource``, on
    Vitrage's path (what ``pip install --no-deps guestha`` does for an
    operator)."""
    base_python = base_python or sys.executable
    python = os.path.join(VENV, "bin", "python")
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    with open(VENV + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(python) and subprocess.run(
                [python, "-c", ""]).returncode != 0:
            say("%s is broken, recreating it" % VENV)
            shutil.rmtree(VENV)
        if not os.path.exists(python):
            say("creating %s" % VENV)
            subprocess.run([base_python, "-m", "venv", VENV], check=True)
        want = _wanted_stamp(python)
        try:
            with open(STAMP) as f:
                have = f.read().strip()
        except FileNotFoundError:
            have = None
        if have != want:
            started = time.monotonic()
            say("installing %s into %s (about a minute) ..."
                % (" ".join(REQUIREMENTS), VENV))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(STAMP)
            _pip(python, "install", "-q", *REQUIREMENTS)
            say("fetching api-paste.ini and datasources_values from the "
                "sdist ...")
            _extract_sdist_files(python)
            with open(STAMP, "w") as f:
                f.write(want + "\n")
            say("installed in %.0f s" % (time.monotonic() - started))
        with open(os.path.join(_site_packages(python),
                               "guestha-source.pth"), "w") as f:
            f.write(ROOT + "\n")
    return python


# -- configuration ------------------------------------------------------------

STATIC_TEMPLATE = """\
metadata:
  name: guestha functional test instances
definitions:
  entities:
    - static_id: host
      type: nova.host
      id: %(host)s
      name: %(host)s
      state: available
%(instances)s  relationships:
%(relationships)s"""


def static_config(host, instances):
    """A static datasource file: ``instances`` (Nova uuids) on ``host``,
    as Vitrage's Nova datasource would have them."""
    entities, relationships = [], []
    for n, instance in enumerate(instances):
        entities.append(
            "    - static_id: vm%d\n      type: nova.instance\n"
            "      id: %s\n      name: vm-%d\n      state: ACTIVE\n"
            % (n, instance, n))
        relationships.append(
            "    - source: host\n      target: vm%d\n"
            "      relationship_type: contains\n" % n)
    return STATIC_TEMPLATE % {"host": host,
                              "instances": "".join(entities),
                              "relationships": "".join(relationships)}


VITRAGE_CONF = """\
[DEFAULT]
transport_url = %(transport_url)s
log_dir = %(workdir)s/logs
debug = false

[api]
auth_mode = noauth
host = 127.0.0.1
port = %(port)d
paste_config = %(share)s/api-paste.ini
workers = 1

[database]
connection = sqlite:///%(workdir)s/vitrage.db

[datasources]
types = doctor,static,guestha
path = vitrage.datasources,guestha.vitrage_datasource

[static]
directory = %(workdir)s/static

[entity_graph]
datasources_values_dir = %(workdir)s/datasources_values

[oslo_concurrency]
lock_path = %(workdir)s/locks
"""


# -- the services ---------------------------------------------------------

class VitrageStandalone(object):
    """Vitrage's three services in ``workdir``.

    :param transport_url: RabbitMQ, ideally a vhost of its own (queues
        outlive their consumers).
    :param instances: Nova uuids the static datasource defines, on
        ``host``.
    """

    def __init__(self, workdir, transport_url, instances, host="compute-1",
                 port=None, python=None):
        self.workdir = os.path.abspath(workdir)
        self.transport_url = transport_url
        self.instances = list(instances)
        self.host = host
        self.port = port or free_port()
        self.python = python or os.path.join(VENV, "bin", "python")
        self.conf = os.path.join(self.workdir, "vitrage.conf")
        self.procs = {}
        self.timings = {}

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _bin(self, name):
        return os.path.join(os.path.dirname(self.python), name)

    def configure(self):
        for sub in ("logs", "static", "datasources_values", "locks"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(VITRAGE_CONF % {
                "transport_url": self.transport_url,
                "workdir": self.workdir, "port": self.port,
                "share": SHARE})
        with open(os.path.join(self.workdir, "static", "instances.yaml"),
                  "w") as f:
            f.write(static_config(self.host, self.instances))
        values = os.path.join(self.workdir, "datasources_values")
        for name in os.listdir(os.path.join(SHARE, "datasources_values")):
            shutil.copy(os.path.join(SHARE, "datasources_values", name),
                        values)
        shutil.copy(PLUGIN_VALUES, values)

    def create_database(self):
        db = os.path.join(self.workdir, "vitrage.db")
        if os.path.exists(db):
            os.unlink(db)
        result = subprocess.run(
            [self._bin("vitrage-dbsync"), "--config-file", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, universal_newlines=True)
        if result.returncode != 0:
            raise VitrageError("vitrage-dbsync failed:\n%s"
                               % result.stdout[-3000:])
        # Trap 2: a BIGINT primary key is no rowid alias in SQLite.
        with contextlib.closing(sqlite3.connect(db)) as conn:
            with conn:
                conn.executescript(
                    "DROP TABLE events;"
                    "CREATE TABLE events ("
                    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " payload TEXT NOT NULL,"
                    " is_vertex BOOLEAN NOT NULL,"
                    " created_at DATETIME,"
                    " updated_at DATETIME);")

    def start(self):
        for service in SERVICES:
            log = open(os.path.join(self.workdir, "logs",
                                    "%s.out" % service), "ab")
            with log:
                # A session of its own: stop() signals the whole group
                # (vitrage-graph forks workers), and nothing else; killed
                # with this process (guestha/testing/processes.py).
                self.procs[service] = procs.spawn(
                    [self._bin("vitrage-%s" % service), "--config-file",
                     self.conf], stdout=log,
                    stderr=subprocess.STDOUT, cwd=self.workdir)

    def wait_ready(self, timeout=240.0, client=None):
        """Until the API answers and the graph holds the static
        instances (so the datasources, guestha's included, are loaded);
        returns the seconds it took."""
        client = client or admin_client(self.url)
        started = time.monotonic()
        deadline = started + timeout
        last_report = started
        last_error = None
        while True:
            for service, proc in self.procs.items():
                if proc.poll() is not None:
                    raise VitrageError("vitrage-%s exited (%s)\n%s" % (
                        service, proc.returncode, self.log_tail()))
            try:
                ids = {v.get("id") for v in
                       client.topology.get(all_tenants=True)["nodes"]}
                if set(self.instances) <= ids:
                    took = time.monotonic() - started
                    say("Vitrage ready after %.1f s at %s" % (took,
                                                              self.url))
                    return took
                last_error = "topology without the static instances yet"
            except Exception as exc:  # noqa: BLE001 - any failure: retry
                last_error = "%s: %s" % (type(exc).__name__, exc)
            now = time.monotonic()
            if now > deadline:
                raise VitrageError("Vitrage not ready after %.0f s (%s)\n%s"
                                   % (timeout, last_error, self.log_tail()))
            if now - last_report >= 10:
                say("waiting for Vitrage: %.0f s (%s)" % (now - started,
                                                          last_error))
                last_report = now
            time.sleep(0.5)

    def stop(self, timeout=15.0):
        """SIGTERM each service's process group, SIGKILL what is left."""
        # Forked workers may outlive their parent: the groups go.
        procs.stop_all(list(self.procs.values()), timeout)
        self.procs = {}

    def log_tail(self, lines=30):
        out = []
        logs = os.path.join(self.workdir, "logs")
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else ():
            with open(os.path.join(logs, name), errors="replace") as f:
                # The graph logs every event it enqueues, whole: cut.
                tail = [line[:300] for line in f.read().splitlines()
                        if line.strip()][-lines:]
            out.append("--- %s\n%s" % (name, "\n".join(tail)))
        return "\n".join(out)


def admin_client(url):
    """A python-vitrageclient for ``url`` over keystoneauth, as an admin
    under noauth (trap 4)."""
    from keystoneauth1 import noauth
    from keystoneauth1 import session
    from vitrageclient.v1 import client

    return client.Client(
        session=session.Session(auth=noauth.NoAuth(), timeout=30),
        endpoint_override=url,
        additional_headers={"X-User-Name": "admin", "X-Roles": "admin"})


# -- command line -------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install Vitrage into %s" % VENV)
    run = sub.add_parser("run", help="run Vitrage until interrupted")
    run.add_argument("--transport-url", required=True)
    run.add_argument("--workdir", default=os.path.join(
        tempfile.gettempdir(), "guestha-vitrage-run"))
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--host", default="compute-1")
    run.add_argument("--instance", action="append", default=[],
                     help="a Nova uuid for the static datasource "
                          "(repeatable)")
    args = parser.parse_args(argv)
    python = ensure_installed()
    if args.command == "install":
        return 0
    vitrage = VitrageStandalone(args.workdir, args.transport_url,
                                args.instance, host=args.host,
                                port=args.port, python=python)
    vitrage.configure()
    vitrage.create_database()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    vitrage.start()
    try:
        vitrage.wait_ready()
        print("Vitrage API at %s (config %s); Ctrl-C stops it"
              % (vitrage.url, vitrage.conf), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        vitrage.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
