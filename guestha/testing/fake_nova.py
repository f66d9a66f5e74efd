# SPDX-License-Identifier: Apache-2.0
"""A stand-in for the Nova compute API, over real HTTP, for unit tests and
benchmarks.

Not for functional tests (issue 9): every functional test of guestha
against Nova runs against the real Nova of the cloud harness
(tools/cloud.sh, tests/cloud/); the functional tests that are not about
Nova run their controllers without one
(guestha/testing/novaless_servers.py).  doc/source/testing.rst says which
test uses which real part.  benchmarks/controller.py, a benchmark of
server-group routing at a scale the one-node cloud cannot hold, uses it
too.

It speaks the JSON that Nova speaks for the few calls guestha makes, with
microversions (the request headers decide the response shape, and the
response carries the version headers Nova sends), so python-novaclient and
keystoneauth1 run unmodified against it.  Use keystoneauth1's ``none`` auth
type with ``endpoint_override`` set to :attr:`FakeNova.endpoint`::

    with FakeNova() as nova:
        nova.add_server(uuid, flavor_extra_specs={"guestha:heartbeat": "1"})
        ... [nova] auth_type = none, endpoint_override = nova.endpoint ...

Served:

- ``GET /`` and ``GET /v2.1/``: version discovery documents.
- ``GET /v2.1/servers/{id}``: the flavor is embedded with its extra specs
  from 2.47, a ``{"id", "links"}`` reference before.
- ``GET /v2.1/os-server-groups[?all_projects=True&limit=&offset=]``: the
  shape of 2.1, 2.13 (project and user ids) and 2.64 (``policy``,
  ``rules``); at most :attr:`FakeNova.max_limit` (Nova's ``[api]
  max_limit``, 1000) groups per answer, whatever ``limit`` asks.
- ``GET /v2.1/os-server-groups/{id}``: one group, same shapes.
- From 2.71 a server shows ``server_groups`` (the id of its group).
- ``POST /v2.1/servers/{id}/action``: ``reboot`` (SOFT/HARD), ``os-stop``,
  ``os-start``, ``os-resetState`` (active/error), recorded in
  :attr:`FakeNova.actions`; 409 when the state forbids them, as in Nova.
  :attr:`FakeNova.on_action`, if set, is called with ``(uuid, action,
  args)`` once an action is accepted (in the HTTP server's thread, before
  the answer), so that a test can carry it out on a real hypervisor, as
  nova-compute would.

Errors use Nova's body format (``{"itemNotFound": {"code": 404,
"message": ...}}``).  :meth:`FakeNova.fail` makes the next requests fail
with a given status, for outage tests; :attr:`FakeNova.requests` records
what was asked, with the microversion it was asked at.
"""

import http.server
import json
import re
import socket
import threading
import urllib.parse
import uuid as uuidlib

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
DEFAULT_PROJECT = "6f70656e737461636b20342065766572"
DEFAULT_USER = "9f1e2c3d4b5a69788796a5b4c3d2e1f0"

# Nova's fault names by HTTP status (nova.api.openstack.wsgi.Fault).
_FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden",
                404: "itemNotFound", 405: "badMethod",
                409: "conflictingRequest", 413: "overLimit",
                415: "badMediaType", 429: "overLimit",
                501: "notImplemented", 503: "serviceUnavailable"}

# Nova status -> (vm_state, power_state)
_STATES = {"ACTIVE": ("active", 1), "SHUTOFF": ("stopped", 4),
           "PAUSED": ("paused", 3), "SUSPENDED": ("suspended", 4),
           "ERROR": ("error", 0), "BUILD": ("building", 0)}


def _version_text(version):
    return "%d.%d" % version


class _NovaError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class FakeNova(object):
    """The fake's data and its HTTP server (127.0.0.1, a free port)."""

    def __init__(self):
        self.servers = {}
        self.server_groups = {}
        self.actions = []
        #: instance uuid -> its instance actions, newest first
        self.instance_actions = {}
        #: ``callable(uuid, action, args)``: carries out accepted actions
        self.on_action = None
        self.requests = []
        #: nova.conf ``[api] max_limit``: the most items one list answers
        self.max_limit = 1000
        self._failures = []
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None
        self._connections = set()

    # -- data ---------------------------------------------------------------

    def add_server(self, uuid, flavor_extra_specs=None, host="compute-1",
                   status="ACTIVE", name=None, flavor_name="m1.guestha",
                   project_id=DEFAULT_PROJECT, task_state=None):
        """Add (or replace) a server; returns its record, which tests may
        change (``status``, ``host``, ``task_state``, ``flavor``)."""
        server = {"id": uuid, "name": name or "server-%s" % uuid[:8],
                  "status": status, "host": host, "task_state": task_state,
                  "project_id": project_id,
                  "flavor": {"id": "fl-" + flavor_name,
                             "original_name": flavor_name, "vcpus": 1,
                             "ram": 512, "disk": 1, "ephemeral": 0,
                             "swap": 0,
                             "extra_specs": dict(flavor_extra_specs or {})}}
        with self._lock:
            self.servers[uuid] = server
        return server

    def add_server_group(self, uuid, name, policy="anti-affinity",
                         members=(), project_id=DEFAULT_PROJECT):
        group = {"id": uuid, "name": name, "policy": policy,
                 "members": list(members), "project_id": project_id}
        with self._lock:
            self.server_groups[uuid] = group
        return group

    def add_instance_action(self, uuid, action, request_id, start_time,
                            events=()):
        """Record an instance action (newest first, as Nova lists them);
        ``events``: dicts of ``event``, ``start_time``, ``finish_time``,
        ``result``."""
        record = {"action": action, "instance_uuid": uuid,
                  "request_id": request_id, "start_time": start_time,
                  "message": None, "project_id": DEFAULT_PROJECT,
                  "user_id": DEFAULT_USER}
        with self._lock:
            self.instance_actions.setdefault(uuid, []).insert(
                0, (record, [dict(e) for e in events]))
        return record

    def fail(self, status, count=1, message="Nova is having a bad day"):
        """Answer the next ``count`` requests with ``status``."""
        with self._lock:
            self._failures.extend([(status, message)] * count)

    # -- server -------------------------------------------------------------

    @property
    def url(self):
        host, port = self._httpd.server_address[:2]
        return "http://%s:%d" % (host, port)

    @property
    def endpoint(self):
        """The compute endpoint, for ``endpoint_override``."""
        return self.url + "/v2.1"

    def start(self):
        fake = self

        class Handler(_Handler):
            nova = fake

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-nova", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving, and drop the open keep-alive connections too, so
        that clients see Nova gone rather than a lingering handler."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _opened(self, conn):
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn):
        with self._lock:
            self._connections.discard(conn)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # -- requests (called by the handler threads) ---------------------------

    def handle(self, method, path, query, version, body):
        with self._lock:
            self.requests.append({"method": method, "path": path,
                                  "query": query,
                                  "version": _version_text(version)})
            if self._failures:
                status, message = self._failures.pop(0)
                raise _NovaError(status, message)
            return self._route(method, path, query, version, body)

    def _route(self, method, path, query, version, body):
        if path in ("/v2.1", "/v2.1/") and method == "GET":
            return 200, {"version": self._version_doc()}
        match = re.fullmatch(r"/v2\.1/servers/([^/]+)", path)
        if match and method == "GET":
            return 200, {"server": self._server_view(match.group(1),
                                                     version)}
        match = re.fullmatch(r"/v2\.1/servers/([^/]+)/action", path)
        if match and method == "POST":
            self._action(match.group(1), body)
            return 202, None
        match = re.fullmatch(
            r"/v2\.1/servers/([^/]+)/os-instance-actions(?:/([^/]+))?", path)
        if match and method == "GET":
            return 200, self._instance_actions(*match.groups())
        if path == "/v2.1/os-server-groups" and method == "GET":
            return 200, {"server_groups": self._groups_view(query,
                                                            version)}
        match = re.fullmatch(r"/v2\.1/os-server-groups/([^/]+)", path)
        if match and method == "GET":
            group = self.server_groups.get(match.group(1))
            if group is None:
                raise _NovaError(404, "Instance group %s could not be "
                                      "found." % match.group(1))
            return 200, {"server_group": self._group_view(group, version)}
        raise _NovaError(404, "The resource could not be found.")

    def _version_doc(self):
        return {"id": "v2.1", "status": "CURRENT",
                "version": _version_text(MAX_VERSION),
                "min_version": _version_text(MIN_VERSION),
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": self.endpoint + "/"},
                          {"rel": "describedby", "type": "text/html",
                           "href": "http://docs.openstack.org/"}],
                "media-types": [{
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;"
                            "version=2.1"}]}

    def _server(self, uuid):
        server = self.servers.get(uuid)
        if server is None:
            raise _NovaError(404, "Instance %s could not be found." % uuid)
        return server

    def _server_view(self, uuid, version):
        server = self._server(uuid)
        flavor = server["flavor"]
        if version >= (2, 47):
            flavor_view = {k: flavor[k] for k in (
                "original_name", "vcpus", "ram", "disk", "ephemeral", "swap",
                "extra_specs")}
        else:
            flavor_view = {"id": flavor["id"], "links": [{
                "rel": "bookmark",
                "href": "%s/flavors/%s" % (self.url, flavor["id"])}]}
        vm_state, power_state = _STATES.get(server["status"], ("active", 1))
        link = "%s/servers/%s" % (self.endpoint, uuid)
        view = {
            "id": uuid, "name": server["name"], "status": server["status"],
            "tenant_id": server["project_id"], "user_id": DEFAULT_USER,
            "metadata": {}, "hostId": "", "image": "",
            "flavor": flavor_view, "addresses": {},
            "created": "2026-01-01T00:00:00Z",
            "updated": "2026-01-01T00:00:00Z",
            "accessIPv4": "", "accessIPv6": "", "progress": 0,
            "links": [{"rel": "self", "href": link},
                      {"rel": "bookmark", "href": link}],
            "key_name": None, "config_drive": "", "locked": False,
            "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-SRV-ATTR:host": server["host"],
            "OS-EXT-SRV-ATTR:hypervisor_hostname": server["host"],
            "OS-EXT-SRV-ATTR:instance_name": "instance-%s" % uuid[:8],
            "OS-EXT-STS:vm_state": vm_state,
            "OS-EXT-STS:task_state": server["task_state"],
            "OS-EXT-STS:power_state": power_state,
            "OS-SRV-USG:launched_at": "2026-01-01T00:00:00.000000",
            "OS-SRV-USG:terminated_at": None,
            "os-extended-volumes:volumes_attached": [],
            "security_groups": [{"name": "default"}],
            "tags": [], "description": None,
        }
        if version >= (2, 71):
            view["server_groups"] = [
                g["id"] for g in self.server_groups.values()
                if uuid in g["members"]][:1]
        return view

    def _groups_view(self, query, version):
        all_projects = query.get("all_projects", ["False"])[-1].lower() in (
            "true", "1", "yes")
        groups = [g for g in self.server_groups.values()
                  if all_projects or g["project_id"] == DEFAULT_PROJECT]
        groups.sort(key=lambda g: g["id"])
        # nova.api.openstack.common.limited: no limit, 0 or more than
        # max_limit all mean max_limit
        offset = int(query.get("offset", ["0"])[-1])
        limit = int(query.get("limit", ["0"])[-1]) or self.max_limit
        groups = groups[offset:offset + min(limit, self.max_limit)]
        return [self._group_view(group, version) for group in groups]

    def _group_view(self, group, version):
        view = {"id": group["id"], "name": group["name"],
                "members": list(group["members"])}
        if version >= (2, 64):
            view.update(policy=group["policy"], rules={})
        else:
            view.update(policies=[group["policy"]], metadata={})
        if version >= (2, 13):
            view.update(project_id=group["project_id"],
                        user_id=DEFAULT_USER)
        return view

    def _instance_actions(self, uuid, request_id):
        self._server(uuid)
        listed = self.instance_actions.get(uuid, [])
        if request_id is None:
            return {"instanceActions": [dict(r) for r, _ in listed]}
        for record, events in listed:
            if record["request_id"] == request_id:
                return {"instanceAction": dict(record, events=events)}
        raise _NovaError(404, "Action %s not found" % request_id)

    def _action(self, uuid, body):
        server = self._server(uuid)
        if not isinstance(body, dict) or len(body) != 1:
            raise _NovaError(400, "Malformed request body")
        (action, args), = body.items()
        if action == "reboot":
            kind = (args or {}).get("type")
            if kind not in ("SOFT", "HARD"):
                raise _NovaError(400, "Invalid input for field/attribute "
                                      "type. Value: %s." % kind)
            if kind == "SOFT" and server["status"] != "ACTIVE":
                self._conflict(uuid, "reboot", server)
            server["status"] = "ACTIVE"
        elif action == "os-stop":
            if server["status"] not in ("ACTIVE", "ERROR"):
                self._conflict(uuid, "stop", server)
            server["status"] = "SHUTOFF"
        elif action == "os-start":
            if server["status"] != "SHUTOFF":
                self._conflict(uuid, "start", server)
            server["status"] = "ACTIVE"
        elif action == "os-resetState":
            state = (args or {}).get("state")
            if state not in ("active", "error"):
                raise _NovaError(400, "Invalid input for field/attribute "
                                      "state. Value: %s." % state)
            server["status"] = state.upper()
        else:
            raise _NovaError(400, "There is no such action: %s" % action)
        self.actions.append((uuid, action, args))
        if self.on_action is not None:
            self.on_action(uuid, action, args)

    def _conflict(self, uuid, verb, server):
        vm_state = _STATES.get(server["status"], ("active", 1))[0]
        raise _NovaError(409, "Cannot '%s' instance %s while it is in "
                              "vm_state %s" % (verb, uuid, vm_state))


class _Handler(http.server.BaseHTTPRequestHandler):
    nova = None  # set by FakeNova.start
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass  # quiet: pytest shows failures, not access logs

    def setup(self):
        super().setup()
        self.nova._opened(self.connection)

    def finish(self):
        self.nova._closed(self.connection)
        super().finish()

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def _serve(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            version = self._requested_version()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise _NovaError(400, "Malformed request body")
            if url.path in ("", "/") and method == "GET":
                status, reply = 300, {"versions": [
                    self.nova._version_doc()]}
            else:
                status, reply = self.nova.handle(method, url.path, query,
                                                 version, body)
        except _NovaError as exc:
            status = exc.status
            reply = {_FAULT_NAMES.get(status, "computeFault"): {
                "code": status, "message": exc.message}}
        self._reply(status, reply, getattr(self, "_version", MIN_VERSION))

    def _requested_version(self):
        self._version = MIN_VERSION
        text = None
        header = self.headers.get("OpenStack-API-Version")
        if header:
            for part in header.split(","):
                service, _, value = part.strip().partition(" ")
                if service.lower() == "compute":
                    text = value.strip()
        if text is None:
            text = self.headers.get("X-OpenStack-Nova-API-Version")
        if not text:
            return MIN_VERSION
        if text.lower() == "latest":
            version = MAX_VERSION
        else:
            match = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
            if match is None:
                raise _NovaError(400, "Invalid API version request string "
                                      "%s" % text)
            version = (int(match.group(1)), int(match.group(2)))
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise _NovaError(406, "Version %s is not supported by the API. "
                                  "Minimum is %s and maximum is %s." % (
                                      text, _version_text(MIN_VERSION),
                                      _version_text(MAX_VERSION)))
        self._version = version
        return version

    def _reply(self, status, reply, version):
        data = b"" if reply is None else json.dumps(reply).encode()
        self.send_response(status)
        vtext = _version_text(version)
        self.send_header("OpenStack-API-Version", "compute %s" % vtext)
        self.send_header("X-OpenStack-Nova-API-Version", vtext)
        self.send_header("Vary", "OpenStack-API-Version, "
                                 "X-OpenStack-Nova-API-Version")
        self.send_header("x-compute-request-id",
                         "req-%s" % uuidlib.uuid4())
        if reply is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def nova_conf(fake, **overrides):
    """A ConfigOpts with the ``[nova]`` group pointing at ``fake`` through
    keystoneauth1's ``none`` auth plugin (no Keystone: the endpoint is
    ``endpoint_override``), plus any ``[nova]`` overrides."""
    from oslo_config import cfg

    from guestha.conf import nova as nova_opts

    conf = cfg.ConfigOpts()
    nova_opts.register_opts(conf)
    conf([], project="guestha-tests", default_config_files=[],
         default_config_dirs=[])
    conf.set_override("auth_type", "none", "nova")
    conf.set_override("endpoint_override", fake.endpoint, "nova")
    conf.set_override("timeout", 5, "nova")
    for name, value in overrides.items():
        conf.set_override(name, value, "nova")
    return conf
