# SPDX-License-Identifier: Apache-2.0
"""The ``masakari`` sink: a fault becomes a Masakari VM notification.

``POST /v1/notifications`` (service type ``instance-ha``) with plain
keystoneauth, no python-masakariclient::

    {"notification": {
        "type": "VM",
        "hostname": "<the fault's compute host>",
        "generated_time": "2026-01-01T12:00:00.123456",
        "payload": {"event": "QEMU_GUEST_AGENT_ERROR",
                    "instance_uuid": "<the instance>",
                    "vir_domain_event": "STOPPED_FAILED"}}}

Masakari's engine starts its instance recovery flow only for the payloads
it lists (``masakari/engine/instance_events.py``): event
``QEMU_GUEST_AGENT_ERROR`` (what its own in-guest monitor sends) or
``LIFECYCLE``, each with ``vir_domain_event`` ``STOPPED_FAILED``; its API
allows no other payload keys, so the fault's kind and reason cannot travel
(the log and vitrage sinks have them).  ``hostname`` must be a host of a
Masakari failover segment (its Nova compute host name); otherwise Masakari
answers 400 and the fault is dropped for this sink, logged.

Only faults, and only of the kinds in ``[masakari] fault_kinds``, are
sent.  Recoveries are NOT sent: Masakari has no notification that cancels
a recovery, and by the time a guest recovers Masakari has acted (or is
acting) already.  A 409 that says the notification is a duplicate (the
same payload from the same host within Masakari's detection interval,
180 s by default) counts as delivered; a 409 because the host is in
maintenance is a rejection.

A notification makes Masakari recover the instance (stop and start it),
so it is a corrective action like the controller's own, and counts
against the same per-instance cap, ``[actions] max_actions`` per
``window`` (:class:`~guestha.server.actions.ActionCap`, bound by the
controller): each fault takes a slot before it is sent (a retry of the
same fault takes none), and once the instance has had its share of
recoveries in the window, a fault is logged and not sent.  Whatever a
guest does (an ``unhealthy`` answer is the guest's own doing), Masakari
acts on it at most as often as the operator allows.
"""

import datetime
import logging

from keystoneauth1 import adapter as ks_adapter_mod
from keystoneauth1 import exceptions as ks_exc

from guestha.db import api as db_api
from guestha.sinks import base

LOG = logging.getLogger(__name__)

GROUP = "masakari"
NOTIFICATIONS_PATH = "/notifications"
VIR_DOMAIN_EVENT = "STOPPED_FAILED"
#: Sending the same notification again cannot help after these.
REJECTED_STATUSES = frozenset((400, 403, 404, 409, 413, 422))


def _generated_time(ts):
    # Naive UTC with microseconds, as masakari-monitors sends it.
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


class MasakariSink(base.FaultSink):
    """Sends faults as VM notifications through ``adapter``, a
    keystoneauth ``Adapter`` for the instance-ha service.

    :param fault_kinds: the fault kinds to send.
    :param vm_event: the payload's ``event``.
    """

    name = "masakari"
    event_types = frozenset(("fault",))
    leads_to_recovery = True

    def __init__(self, adapter, fault_kinds,
                 vm_event="QEMU_GUEST_AGENT_ERROR"):
        self._adapter = adapter
        self.fault_kinds = frozenset(fault_kinds)
        self.vm_event = vm_event
        self.duplicates = 0
        self.capped = 0

    @classmethod
    def from_conf(cls, conf):
        group = conf[GROUP]
        session, adapter_kwargs = base.load_session(conf, GROUP)
        adapter = ks_adapter_mod.Adapter(session, **adapter_kwargs)
        return cls(adapter, group.fault_kinds, vm_event=group.vm_event)

    def accepts(self, event):
        return (event.get("type") == "fault"
                and event.get("kind") in self.fault_kinds)

    def notification_of(self, event):
        """The request body for fault ``event``."""
        try:
            return {"notification": {
                "type": "VM",
                "hostname": event["host"],
                "generated_time": _generated_time(event["detected_at_ts"]),
                "payload": {
                    "event": self.vm_event,
                    "instance_uuid": event["instance"],
                    "vir_domain_event": VIR_DOMAIN_EVENT,
                },
            }}
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise base.SinkRejected(
                sink=self.name, reason="malformed fault %s: %s: %s" % (
                    event.get("id"), type(exc).__name__, exc))

    def _within_cap(self, event):
        cap = self.recovery_cap
        if cap is None:
            return True
        try:
            granted, count = cap.take(event["instance"], event["id"],
                                      path=self.name)
        except db_api.DB_ERRORS as exc:
            raise base.SinkUnavailable(
                sink=self.name, reason="cannot count the recovery in the "
                "ledger: %s" % exc)
        if granted is False:
            self.capped += 1
            LOG.warning("instance %s: fault %s not sent to Masakari: %d "
                        "recoveries of this instance in the last %d s, at "
                        "most %d allowed ([actions] max_actions)",
                        event["instance"], event["id"], count, cap.window,
                        cap.max_actions)
            return False
        return True

    def send(self, event):
        body = self.notification_of(event)
        if not self._within_cap(event):
            return  # done for this sink: the cap is the operator's policy
        try:
            response = self._adapter.post(NOTIFICATIONS_PATH, json=body,
                                          raise_exc=False)
        except ks_exc.ClientException as exc:
            raise base.SinkUnavailable(sink=self.name, reason="%s: %s" % (
                type(exc).__name__, exc))
        status = response.status_code
        if status < 300:
            LOG.info("instance %s: fault %s sent to Masakari (%s)",
                     event["instance"], event["id"], _notification_uuid(
                         response))
            return
        text = (response.text or "")[:500]
        if status == 409 and "duplicate" in text.lower():
            self.duplicates += 1
            LOG.info("instance %s: Masakari already has a notification for "
                     "fault %s (duplicate within its detection interval)",
                     event["instance"], event["id"])
            return
        reason = "HTTP %d from %s: %s" % (status, NOTIFICATIONS_PATH, text)
        if status in REJECTED_STATUSES:
            raise base.SinkRejected(sink=self.name, reason=reason)
        raise base.SinkUnavailable(sink=self.name, reason=reason)

    def close(self):
        requests_session = getattr(getattr(self._adapter, "session", None),
                                   "session", None)
        if requests_session is not None:
            requests_session.close()


def _notification_uuid(response):
    try:
        return response.json()["notification"]["notification_uuid"]
    except (ValueError, KeyError, TypeError):
        return "no notification uuid in the answer"
