# SPDX-License-Identifier: Apache-2.0
"""The REST API of the controllers: a WSGI application (``doc/source/
api-ref.rst``).

Seven GET routes, so a table of regular expressions and WebOb (which
keystonemiddleware is built on anyway) rather than a web framework.

Layers, outside in: the version document at ``/`` (no token, as every
OpenStack API), keystonemiddleware's ``auth_token`` (``[api]
auth_strategy = keystone``; configured from ``[keystone_authtoken]``,
no paste file), then :class:`API`, which builds an oslo.context request
context from the headers auth_token set (or, with ``noauth``, from the
request's own ``X-Project-Id`` and ``X-Roles``), authorises with
oslo.policy (:mod:`guestha.api.policy`) and reads the controllers'
database (:mod:`guestha.api.db`).
"""

import json
import logging
import re

from oslo_context import context as context_mod
import webob
import webob.exc

from guestha.api import db as db_mod
from guestha.api import policy

LOG = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class APIError(Exception):
    """An error answer: ``{"error": {"code", "title", "message"}}``."""

    def __init__(self, code, message):
        super(APIError, self).__init__(message)
        self.code = code
        self.message = message


def _json(status, body, headers=None):
    response = webob.Response(status=status, content_type="application/json",
                              charset="UTF-8")
    if headers:
        response.headers.update(headers)
    response.text = json.dumps(body, separators=(",", ":"))
    return response


def error_response(code, message, headers=None):
    title = webob.exc.status_map[code].title
    return _json(code, {"error": {"code": code, "title": title,
                                  "message": message}}, headers)


def _version(request):
    base = request.host_url + request.script_name
    return {"id": "v1", "status": "CURRENT",
            "links": [{"rel": "self", "href": base + "/v1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/json"}]}


def versions_app(environ, start_response):
    request = webob.Request(environ)
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "only GET", {"Allow": "GET"})(
            environ, start_response)
    return _json(200, {"versions": [_version(request)]})(
        environ, start_response)


class API(object):
    """The ``/v1`` routes (a WSGI application).

    :param reader: :class:`guestha.api.db.Reader`.
    :param enforcer: an oslo.policy enforcer with guestha's rules.
    :param max_limit: ``[api] max_limit``.
    """

    def __init__(self, reader, enforcer, max_limit=1000):
        self.reader = reader
        self.enforcer = enforcer
        self.max_limit = max_limit
        self.routes = [
            (re.compile(r"/v1/?\Z"), self.version),
            (re.compile(r"/v1/instances/?\Z"), self.list_instances),
            (re.compile(r"/v1/instances/(?P<item>[^/]+)/?\Z"),
             self.get_instance),
            (re.compile(r"/v1/faults/?\Z"), self.list_faults),
            (re.compile(r"/v1/faults/(?P<item>[^/]+)/?\Z"), self.get_fault),
            (re.compile(r"/v1/actions/?\Z"), self.list_actions),
        ]

    def __call__(self, environ, start_response):
        request = webob.Request(environ)
        try:
            response = self._route(request)
        except APIError as exc:
            response = error_response(exc.code, exc.message)
        except db_mod.DatabaseUnavailable as exc:
            LOG.error("guestha-api: %s", exc)
            response = error_response(503, str(exc))
        except Exception:  # the top of a request: a 500, not a traceback
            LOG.exception("guestha-api: %s %s failed", request.method,
                          request.path_qs)
            response = error_response(500, "internal error (see the "
                                      "guestha-api log)")
        return response(environ, start_response)

    def _route(self, request):
        path = request.path_info or "/"
        for pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if request.method not in ("GET", "HEAD"):
                return error_response(405, "%s is read only: GET"
                                      % request.path, {"Allow": "GET"})
            context = context_mod.RequestContext.from_environ(
                request.environ)
            return _json(200, handler(request, context,
                                      **match.groupdict()))
        raise APIError(404, "no such resource: %s" % request.path)

    # -- authorisation -------------------------------------------------------

    def _scope(self, context, rule):
        """The project whose items the caller sees, None for all.

        :raises APIError: 403, the caller may not use ``rule`` at all.
        """
        own = {"project_id": context.project_id or ""}
        if not self.enforcer.enforce(rule, own, context):
            raise APIError(403, "policy does not allow %s" % rule)
        if self.enforcer.enforce(policy.ALL_PROJECTS, own, context):
            return None
        return context.project_id

    def _visible(self, context, rule, item, what):
        """``item`` if the caller may see it, else a 404 (an item of
        another project looks like one that does not exist)."""
        self._scope(context, rule)
        if item is not None and self.enforcer.enforce(
                rule, {"project_id": item.get("project_id") or ""},
                context):
            return item
        raise APIError(404, "%s not found" % what)

    # -- parameters --------------------------------------------------------

    def _page_params(self, request):
        limit = request.GET.get("limit")
        if limit is None:
            limit = self.max_limit
        else:
            try:
                limit = int(limit)
            except ValueError:
                raise APIError(400, "limit must be an integer, not %r"
                               % limit) from None
            if limit < 1:
                raise APIError(400, "limit must be at least 1")
            limit = min(limit, self.max_limit)
        return limit, request.GET.get("marker") or None

    @staticmethod
    def _bool(request, name):
        value = request.GET.get(name)
        if value is None:
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise APIError(400, "%s must be true or false, not %r"
                       % (name, value))

    @staticmethod
    def _project_filter(request, scope):
        """``(project to query, whether the answer is empty anyway)``."""
        wanted = request.GET.get("project_id") or None
        if scope is None:
            return wanted, False
        return scope, wanted is not None and wanted != scope

    def _list(self, name, query, request, **filters):
        limit, marker = self._page_params(request)
        try:
            items, next_marker = query(limit=limit, marker=marker, **filters)
        except db_mod.BadMarker as exc:
            raise APIError(400, str(exc)) from None
        return {name: items, "next": next_marker}

    # -- handlers ------------------------------------------------------------

    def version(self, request, context):
        return {"version": _version(request)}

    def list_instances(self, request, context):
        scope = self._scope(context, policy.INSTANCE_LIST)
        project, empty = self._project_filter(request, scope)
        if empty:
            return {"instances": [], "next": None}
        return self._list("instances", self.reader.list_instances, request,
                          project_id=project,
                          host=request.GET.get("host") or None,
                          state=request.GET.get("state") or None)

    def get_instance(self, request, context, item):
        return {"instance": self._visible(
            context, policy.INSTANCE_GET, self.reader.get_instance(item),
            "instance %s" % item)}

    def list_faults(self, request, context):
        scope = self._scope(context, policy.FAULT_LIST)
        project, empty = self._project_filter(request, scope)
        if empty:
            return {"faults": [], "next": None}
        return self._list("faults", self.reader.list_faults, request,
                          project_id=project,
                          instance_id=request.GET.get("instance_id") or None,
                          open=self._bool(request, "open"),
                          kind=request.GET.get("kind") or None,
                          host=request.GET.get("host") or None)

    def get_fault(self, request, context, item):
        return {"fault": self._visible(
            context, policy.FAULT_GET, self.reader.get_fault(item),
            "fault %s" % item)}

    def list_actions(self, request, context):
        scope = self._scope(context, policy.ACTION_LIST)
        project, empty = self._project_filter(request, scope)
        if empty:
            return {"actions": [], "next": None}
        return self._list("actions", self.reader.list_actions, request,
                          project_id=project,
                          instance_id=request.GET.get("instance_id") or None,
                          fault_id=request.GET.get("fault_id") or None)


class Root(object):
    """``/`` answers the version document without a token; the rest goes
    to ``v1`` (behind auth_token)."""

    def __init__(self, v1):
        self.v1 = v1

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "/") in ("", "/"):
            return versions_app(environ, start_response)
        return self.v1(environ, start_response)


def _strip_identity_headers(app):
    """noauth: the request's own X-Project-Id and X-Roles are believed,
    but not an X-Identity-Status or service token it might carry."""
    def middleware(environ, start_response):
        for key in ("HTTP_X_IDENTITY_STATUS", "HTTP_X_SERVICE_TOKEN"):
            environ.pop(key, None)
        return app(environ, start_response)
    return middleware


def make_app(conf, reader=None, enforcer=None):
    """The WSGI application from ``conf`` (all guestha options and
    ``[keystone_authtoken]`` registered, arguments parsed).

    :param reader: a :class:`guestha.api.db.Reader` (default: from
        ``conf``).
    :param enforcer: an oslo.policy enforcer (default: from ``conf``).
    """
    if reader is None:
        reader = db_mod.Reader.from_conf(conf)
    if enforcer is None:
        enforcer = policy.get_enforcer(conf)
    v1 = API(reader, enforcer, max_limit=conf.api.max_limit)
    strategy = conf.api.auth_strategy
    if strategy == "keystone":
        from keystonemiddleware import auth_token
        authed = auth_token.AuthProtocol(v1, {"oslo_config_config": conf})
    elif strategy == "noauth":
        LOG.warning("guestha-api: [api] auth_strategy = noauth: anyone "
                    "who reaches the API sees what the headers claim; for "
                    "tests and demos only")
        authed = _strip_identity_headers(v1)
    else:  # the option's choices forbid it
        raise ValueError("unknown [api] auth_strategy %r" % strategy)
    return Root(authed)
