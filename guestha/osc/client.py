# SPDX-License-Identifier: Apache-2.0
"""The guestha REST API v1, as the openstack CLI reads it.

One :class:`Client` per ``openstack`` command, on the keystoneauth session
that osc-lib built from the ``--os-*`` options: the session adds the
token, and finds the endpoint in the catalog (service type ``guestha``)
unless ``--os-guestha-url`` (``OS_GUESTHA_URL``) names it.

The catalog holds the API's root (``http://HOST:9749/``); a root that
ends in ``/v1`` works too.  Lists are paginated by the API (``limit``,
``marker`` and ``next``): :meth:`Client.list` follows ``next`` to the
end unless the caller gave a limit, in which case it asks once.

Under ``auth_strategy = noauth`` (tests, the demo) no Keystone stands
between the CLI and the API, and the API takes the request's project and
roles from the ``X-Project-Id`` and ``X-Roles`` headers: with
``--os-auth-type none`` the client sends those it was given
(``--os-guestha-roles``, ``--os-guestha-project-id``).  With a token it
never does: keystonemiddleware would overwrite them anyway.

Errors come out as :class:`osc_lib.exceptions.CommandError` with a
sentence for a person: which URL could not be reached, which instance
does not exist, what the API said.
"""

import json
import urllib.parse

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import noauth
from osc_lib import exceptions

SERVICE_TYPE = "guestha"
API_PREFIX = "v1"

#: Pages a listing follows at most: a bound in case an API kept
#: answering with a ``next`` marker that leads back to the same page.
MAX_PAGES = 10000

#: What the API calls each resource, in its URLs and in the messages.
RESOURCES = {
    "instances": "instance",
    "faults": "fault",
    "actions": "action",
}


class Client(object):
    """The guestha API v1 on a keystoneauth session.

    :param session: a :class:`keystoneauth1.session.Session`.
    :param endpoint_override: the API's URL, instead of the catalog's.
    :param region_name: the catalog region to look in.
    :param interface: the catalog interface (public, internal, admin).
    :param noauth_roles: with no authentication (``--os-auth-type
        none``), the roles to claim (``X-Roles``).
    :param noauth_project_id: likewise, the project (``X-Project-Id``).
    """

    def __init__(self, session, endpoint_override=None, region_name=None,
                 interface=None, noauth_roles=None, noauth_project_id=None,
                 timeout=None):
        self.session = session
        self.endpoint_override = endpoint_override or None
        self.region_name = region_name
        self.interface = interface or "public"
        self.noauth_roles = noauth_roles
        self.noauth_project_id = noauth_project_id
        self.timeout = timeout
        self._root = None

    @property
    def unauthenticated(self):
        auth = self.session.auth
        return auth is None or isinstance(auth, noauth.NoAuth)

    def root(self):
        """The API's root URL, ending in ``/``, from the override or the
        catalog."""
        if self._root is None:
            url = self.endpoint_override
            if not url:
                url = self._catalog_endpoint()
            url = url.rstrip("/")
            if url.endswith("/" + API_PREFIX):
                url = url[:-len(API_PREFIX) - 1]
            self._root = url + "/"
        return self._root

    def _catalog_endpoint(self):
        if self.session.auth is None:
            raise exceptions.CommandError(
                "No guestha API URL: give --os-guestha-url (or set "
                "OS_GUESTHA_URL)")
        try:
            url = self.session.get_endpoint(
                service_type=SERVICE_TYPE, interface=self.interface,
                region_name=self.region_name)
        except ks_exc.EndpointNotFound:
            url = None
        if not url:
            if self.unauthenticated:
                raise exceptions.CommandError(
                    "No guestha API URL: without authentication there is "
                    "no catalog; give --os-guestha-url (or set "
                    "OS_GUESTHA_URL)")
            raise exceptions.CommandError(
                "No %s endpoint (service type %r) in the service catalog "
                "for region %s; register one, or give --os-guestha-url" % (
                    self.interface, SERVICE_TYPE,
                    self.region_name or "(any)"))
        return url

    def url(self, path, params=None):
        url = urllib.parse.urljoin(self.root(), "%s/%s" % (API_PREFIX, path))
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return url

    def _headers(self):
        headers = {"Accept": "application/json"}
        if self.unauthenticated:
            if self.noauth_roles:
                headers["X-Roles"] = self.noauth_roles
            if self.noauth_project_id:
                headers["X-Project-Id"] = self.noauth_project_id
        return headers

    def get(self, path, params=None, not_found=None):
        """GET ``/v1/<path>`` and return the decoded JSON body.

        ``not_found`` is the message of a 404; without it the API's own.
        """
        url = self.url(path, params)
        try:
            resp = self.session.get(
                url, headers=self._headers(), raise_exc=False,
                connect_retries=0, timeout=self.timeout)
        except ks_exc.ConnectFailure as exc:
            raise exceptions.CommandError(
                "Could not connect to the guestha API at %s: %s" % (
                    url, _reason(exc)))
        except ks_exc.ConnectionError as exc:
            raise exceptions.CommandError(
                "Could not reach the guestha API at %s: %s" % (
                    url, _reason(exc)))
        if resp.status_code == 404 and not_found:
            raise exceptions.CommandError(not_found)
        if resp.status_code >= 400:
            raise exceptions.CommandError(
                "The guestha API answered %s %s to GET %s: %s" % (
                    resp.status_code, resp.reason or "", url,
                    _error_message(resp)))
        try:
            return resp.json()
        except ValueError:
            raise exceptions.CommandError(
                "The guestha API at %s answered with something that is "
                "not JSON (%s): is that URL a guestha API?" % (
                    url, resp.headers.get("Content-Type", "no type")))

    def list(self, collection, filters=None, limit=None, marker=None):
        """The items of ``/v1/<collection>`` that match ``filters``.

        With ``limit``, one page of at most that many items (after
        ``marker``); without it, every page, following ``next``.
        """
        params = dict(filters or {})
        if limit is not None:
            params.update(limit=limit, marker=marker)
            return self._page(collection, params)[0]
        items = []
        seen = set()
        params["marker"] = marker
        for _ in range(MAX_PAGES):
            page, nxt = self._page(collection, params)
            items.extend(page)
            if not nxt or not page or nxt in seen:
                return items
            seen.add(nxt)
            params["marker"] = nxt
        raise exceptions.CommandError(
            "The guestha API kept paginating %s after %d pages" % (
                collection, MAX_PAGES))

    def _page(self, collection, params):
        body = self.get(collection, params)
        try:
            return body[collection], body.get("next")
        except (KeyError, TypeError, AttributeError):
            raise exceptions.CommandError(
                "The guestha API's answer to GET %s has no %r list" % (
                    self.url(collection, params), collection))

    def show(self, collection, item_id):
        """The item ``item_id`` of ``/v1/<collection>``."""
        name = RESOURCES[collection]
        body = self.get(
            "%s/%s" % (collection, urllib.parse.quote(item_id, safe="")),
            not_found="No %s with ID %s" % (name, item_id))
        try:
            return body[name]
        except (KeyError, TypeError):
            raise exceptions.CommandError(
                "The guestha API's answer for %s %s has no %r object" % (
                    name, item_id, name))


def _reason(exc):
    # keystoneauth wraps requests' error, whose text ends with the
    # errno's ("[Errno 111] Connection refused")
    text = str(exc)
    marker = "[Errno"
    if marker in text:
        text = text[text.index(marker):].rstrip("')\"")
    return text


def _error_message(resp):
    try:
        body = resp.json()
    except ValueError:
        text = (resp.text or "").strip()
        return text[:300] or "(no body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return error["message"]
    return json.dumps(body)[:300]
