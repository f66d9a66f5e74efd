# SPDX-License-Identifier: Apache-2.0
"""What guestha asks Nova: which instances want guestha, and (for the
controller) server groups and server state.

Enabling is per flavor, through extra specs that an operator sets with
``openstack flavor set --property guestha:heartbeat=true``:

``guestha:heartbeat``
    Heartbeat and health check for instances of this flavor.
``guestha:server_group_messaging``
    Server-group messaging for instances of this flavor.
``guestha:corrective_action``
    The action the operator recommends on a fault (such as ``reboot`` or
    ``stop``); the controller's policy decides whether it is applied.

The first two are booleans, read as OpenStack reads them (and as Nova's
API checks them with :mod:`guestha.nova_extra_specs`): ``1``, ``t``,
``true``, ``on``, ``y`` and ``yes`` (any case) turn them on; anything
else, or no such key, leaves them off.

The agent reads them from the domain XML, where Nova writes the flavor
with its extra specs (:func:`guestha.agent.domain.parse_domain`), and asks
Nova's API only for a domain of an older Nova that does not: Nova embeds
the flavor, with its extra specs, in ``GET /servers/{id}`` from
microversion 2.47 on, so one request per instance tells everything; the
answer is cached for ``[nova] flavor_cache_ttl`` seconds.  Showing extra
specs needs Nova's ``os_compute_api:servers:show:flavor-extra-specs``
policy (admin by default).
"""

import datetime
import logging
import threading
import time

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1.loading import adapter as ks_adapter
from novaclient import api_versions
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from guestha.conf import nova as nova_conf

LOG = logging.getLogger(__name__)

HEARTBEAT = "guestha:heartbeat"
SERVER_GROUP_MESSAGING = "guestha:server_group_messaging"
CORRECTIVE_ACTION = "guestha:corrective_action"

#: oslo_utils.strutils.TRUE_STRINGS, which Nova's API accepts as true
TRUE_VALUES = frozenset(("1", "t", "true", "on", "y", "yes"))

#: The first microversion that shows a server's ``server_groups``.
SERVER_GROUPS_MICROVERSION = "2.71"

#: Server groups asked for per request: Nova's default ``[api]
#: max_limit``, the most it answers in one page anyway.
GROUP_PAGE_SIZE = 1000

#: The instance action of a reboot, soft or hard
#: (nova.compute.instance_actions.REBOOT), and the event of its compute
#: manager (``wrap_instance_event(prefix='compute')`` on
#: ``reboot_instance``): the event finishes once the driver's reboot has
#: returned, a soft one's fallback to hard included.
REBOOT_ACTION = "reboot"
REBOOT_EVENT = "compute_reboot_instance"

NO_FEATURES = {"heartbeat": False, "server_group_messaging": False,
               "corrective_action": None}


class NovaUnavailable(Exception):
    """Nova could not answer now (unreachable, an error on its side, or
    refused our credentials): ask again later."""


def features_from_extra_specs(extra_specs):
    """The guestha settings of a flavor, from its extra specs."""
    extra_specs = extra_specs or {}

    def flag(key):
        return str(extra_specs.get(key, "")).strip().lower() in TRUE_VALUES

    action = extra_specs.get(CORRECTIVE_ACTION)
    action = str(action).strip() if action is not None else ""
    return {"heartbeat": flag(HEARTBEAT),
            "server_group_messaging": flag(SERVER_GROUP_MESSAGING),
            "corrective_action": action or None}


class NovaClient(object):
    """A small Nova API client for guestha, safe to use from several
    threads (the agent asks from its hot-plug workers).

    :param client: a python-novaclient client (``novaclient.client.Client``)
        at microversion 2.47 or later.
    :param cache_ttl: seconds to keep an instance's guestha settings.
    :param groups_client: the same at microversion
        :data:`SERVER_GROUPS_MICROVERSION` or later, for
        :meth:`server_group_of` (default: ``client``).
    """

    def __init__(self, client, cache_ttl=300, clock=time.monotonic,
                 groups_client=None):
        self._client = client
        # at microversion 2.71 or later, for server_group_of
        self._groups_client = groups_client or client
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._cache = {}
        self._lock = threading.Lock()

    @classmethod
    def from_conf(cls, conf, group=nova_conf.GROUP.name, optional=False):
        """A client configured by the ``[nova]`` group of ``conf`` (which
        :func:`guestha.conf.nova.register_opts` registered).

        :param optional: return None, rather than a client that fails
            every request, when the group configures no ``auth_type``: a
            compute agent reads the flavor from the domain XML and needs
            Nova only for domains of an older Nova.
        """
        group_conf = conf[group]
        if optional and not group_conf.auth_type:
            LOG.info("[%s] has no auth_type: Nova's API is not asked; the "
                     "flavor extra specs come from the domain XML only",
                     group)
            return None
        version = api_versions.APIVersion(group_conf.api_microversion)
        if version < api_versions.APIVersion(nova_conf.MIN_MICROVERSION):
            raise ValueError(
                "[%s] api_microversion = %s: guestha needs at least %s "
                "(flavor extra specs in the server)" % (
                    group, group_conf.api_microversion,
                    nova_conf.MIN_MICROVERSION))
        auth = ks_loading.load_auth_from_conf_options(conf, group)
        session = ks_loading.load_session_from_conf_options(
            conf, group, auth=auth)
        adapter_kwargs = {}
        ks_adapter.process_conf_options(group_conf, adapter_kwargs)
        # novaclient names the interface "endpoint_type" and passes the
        # rest (retries) on to its keystoneauth Adapter.  The major-version
        # bounds are dropped: novaclient's "version" is the microversion
        # (api_microversion), and the compute endpoint is always v2.1.
        endpoint_type = adapter_kwargs.pop("interface")
        for name in ("version", "min_version", "max_version"):
            if adapter_kwargs.pop(name, None) is not None:
                LOG.warning("[%s] %s is ignored: the microversion is "
                            "api_microversion", group, name)
        client = nova_client.Client(
            version, session=session, auth=auth,
            endpoint_type=endpoint_type, **adapter_kwargs)
        groups_client = None
        groups_version = api_versions.APIVersion(SERVER_GROUPS_MICROVERSION)
        if version < groups_version:
            # the same session, asking for a server's groups
            groups_client = nova_client.Client(
                groups_version, session=session, auth=auth,
                endpoint_type=endpoint_type, **adapter_kwargs)
        return cls(client, cache_ttl=group_conf.flavor_cache_ttl,
                   groups_client=groups_client)

    # -- the agent --------------------------------------------------------

    def guestha_features(self, instance_uuid):
        """What the flavor of an instance asks of guestha.

        :returns: ``{"heartbeat": bool, "server_group_messaging": bool,
            "corrective_action": str or None}``; all off for an instance
            Nova does not know (a domain that is not Nova's).
        :raises NovaUnavailable: Nova did not answer; ask again later.
        """
        now = self._clock()
        with self._lock:
            cached = self._cache.get(instance_uuid)
        if cached is not None and now < cached[0]:
            return dict(cached[1])
        try:
            server = self._client.servers.get(instance_uuid)
        except nova_exc.NotFound:
            LOG.info("instance %s: not found in Nova; guestha not enabled "
                     "for it", instance_uuid)
            features = dict(NO_FEATURES)
        except (nova_exc.ClientException, ks_exc.ClientException) as exc:
            raise NovaUnavailable(
                "instance %s: cannot read its flavor from Nova: %s" % (
                    instance_uuid, _describe(exc)))
        else:
            flavor = getattr(server, "flavor", None) or {}
            if "extra_specs" not in flavor:
                # Nova did not embed the flavor's extra specs: the policy
                # hides them from our user, or the microversion is too old
                LOG.warning("instance %s: Nova shows no flavor extra specs "
                            "(needs microversion >= %s and the policy "
                            "os_compute_api:servers:show:flavor-extra-"
                            "specs); guestha not enabled for it",
                            instance_uuid, nova_conf.MIN_MICROVERSION)
            features = features_from_extra_specs(flavor.get("extra_specs"))
            LOG.debug("instance %s: flavor %s: guestha %s", instance_uuid,
                      flavor.get("original_name"), features)
        if self._cache_ttl > 0:
            with self._lock:
                self._cache[instance_uuid] = (now + self._cache_ttl,
                                              features)
        return dict(features)

    def forget(self, instance_uuid):
        """Drop an instance's cached settings (it was deleted, resized)."""
        with self._lock:
            self._cache.pop(instance_uuid, None)

    # -- the controller ---------------------------------------------------

    def server_groups(self):
        """Every server group of every project, with its members.

        Nova answers at most ``[api] max_limit`` groups (1000 by default)
        per request, whatever ``limit`` asks, so the list is read page by
        page (``limit`` and ``offset``, the only paging
        ``os-server-groups`` has) until a page comes back empty: a short
        page does not mean the end, since Nova's max_limit may be below
        :data:`GROUP_PAGE_SIZE`.  A group created or deleted while the
        pages are read may shift the offsets; a group read twice is kept
        once, and one missed is found by the next read.

        :returns: ``[{"id", "name", "policy", "members", "project_id"}]``,
            ``policy`` being the first (before 2.64, the only) policy.
        :raises NovaUnavailable: Nova did not answer.
        """
        groups = []
        seen = set()
        offset = 0
        while True:
            try:
                page = self._client.server_groups.list(
                    all_projects=True, limit=GROUP_PAGE_SIZE, offset=offset)
            except (nova_exc.ClientException, ks_exc.ClientException) as exc:
                raise NovaUnavailable("cannot list server groups: %s"
                                      % _describe(exc))
            if not page:
                break
            offset += len(page)
            for group in page:
                if group.id not in seen:
                    seen.add(group.id)
                    groups.append(group)
        return [_group_dict(group) for group in groups]

    def server_group_of(self, instance_uuid):
        """The server group of one instance, with its members: two small
        requests whatever the number of groups (``server_groups`` of the
        server, microversion 2.71 or later, then ``GET
        /os-server-groups/{id}``).

        :returns: as one item of :meth:`server_groups`, or None when the
            instance is in no group (or Nova knows neither).
        :raises NovaUnavailable: Nova did not answer, or is older than
            2.71 (then only :meth:`server_groups` can tell).
        """
        try:
            server = self._groups_client.servers.get(instance_uuid)
            group_ids = getattr(server, "server_groups", None)
            if group_ids is None:
                raise NovaUnavailable(
                    "instance %s: Nova shows no server_groups (needs "
                    "microversion %s)" % (instance_uuid,
                                          SERVER_GROUPS_MICROVERSION))
            if not group_ids:
                return None
            group = self._groups_client.server_groups.get(group_ids[0])
        except nova_exc.NotFound:
            return None
        except (nova_exc.ClientException, ks_exc.ClientException) as exc:
            raise NovaUnavailable("instance %s: cannot read its server "
                                  "group: %s" % (instance_uuid,
                                                 _describe(exc)))
        return _group_dict(group)

    def server(self, instance_uuid):
        """Nova's view of one instance, or None if Nova does not know it.

        :returns: ``{"id", "status", "host", "vm_state", "task_state",
            "project_id"}``.
        :raises NovaUnavailable: Nova did not answer.
        """
        try:
            server = self._client.servers.get(instance_uuid)
        except nova_exc.NotFound:
            return None
        except (nova_exc.ClientException, ks_exc.ClientException) as exc:
            raise NovaUnavailable("instance %s: cannot read it from Nova: "
                                  "%s" % (instance_uuid, _describe(exc)))
        info = server.to_dict()
        return {"id": info.get("id"), "status": info.get("status"),
                "host": info.get("OS-EXT-SRV-ATTR:host"),
                "vm_state": info.get("OS-EXT-STS:vm_state"),
                "task_state": info.get("OS-EXT-STS:task_state"),
                "project_id": info.get("tenant_id")}

    def reboot_finished(self, instance_uuid, started_after):
        """When Nova's latest successful reboot of an instance finished,
        among the reboots asked at or after ``started_after``.

        Reads Nova's instance actions: ``GET /servers/{id}/os-instance-
        actions`` (newest first), then ``GET .../os-instance-actions/
        {request_id}`` for each ``reboot`` action started at or after
        ``started_after``, and takes the ``finish_time`` of its
        ``compute_reboot_instance`` event with result ``Success``.  Nova
        records a soft reboot and its own fallback to hard (libvirt,
        after ``[libvirt] wait_soft_reboot_seconds``) as ONE action whose
        event finishes when the guest has been started anew, so the time
        is when the guest's new boot began.  Events are shown to admins,
        and from microversion 2.51 to the server's owner too.

        :param started_after: wall-clock seconds (epoch).
        :returns: the finish time in epoch seconds, or None (no such
            reboot, none finished yet, or Nova shows no events).
        :raises NovaUnavailable: Nova did not answer.
        """
        latest = None
        try:
            listed = self._client.instance_action.list(instance_uuid)
            for summary in listed:
                if getattr(summary, "action", None) != REBOOT_ACTION:
                    continue
                started = _epoch(getattr(summary, "start_time", None))
                if started is None or started < started_after:
                    break       # newest first: the rest are older
                action = self._client.instance_action.get(
                    instance_uuid, summary.request_id)
                for event in getattr(action, "events", None) or ():
                    if (event.get("event") != REBOOT_EVENT
                            or event.get("result") != "Success"):
                        continue
                    finished = _epoch(event.get("finish_time"))
                    if finished is not None and (latest is None
                                                 or finished > latest):
                        latest = finished
        except nova_exc.NotFound:
            return None
        except (nova_exc.ClientException, ks_exc.ClientException) as exc:
            raise NovaUnavailable("instance %s: cannot read its actions "
                                  "from Nova: %s" % (instance_uuid,
                                                     _describe(exc)))
        return latest


def _epoch(text):
    """Epoch seconds of one of Nova's timestamps (ISO 8601, UTC when it
    names no zone), or None."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(text).replace("Z",
                                                                 "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _group_dict(group):
    policy = getattr(group, "policy", None)
    if policy is None:
        policies = getattr(group, "policies", None) or [None]
        policy = policies[0]
    return {"id": group.id, "name": group.name, "policy": policy,
            "members": list(group.members or ()),
            "project_id": getattr(group, "project_id", None)}


def _describe(exc):
    return "%s: %s" % (type(exc).__name__, exc)
