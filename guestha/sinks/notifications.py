# SPDX-License-Identifier: Apache-2.0
"""The ``notifications`` sink: faults and recoveries as versioned
oslo.messaging notifications, for any consumer (issue 12).

Each fault is published as ``guestha.instance.fault`` and each recovery
as ``guestha.instance.recovery``, priority ``info``, with the
``messagingv2`` envelope, on every topic of ``[notifications_sink]
topics`` (default ``notifications``) of the transport's control exchange.
The payload follows Nova's versioned notifications: an object with its
name, namespace and version, and its fields in ``data``::

    {"guestha_object.name": "InstanceFaultPayload",
     "guestha_object.namespace": "guestha",
     "guestha_object.version": "1.0",
     "guestha_object.data": {
         "instance_id": "...", "project_id": "...", "host": "compute-1",
         "fault_id": "...", "event_id": "...", "kind": "missed",
         "reason": "...", "action": "reboot",
         "detected_at": "2026-...+00:00", "recovered_at": null,
         "interval_ms": 1000, "misses": 3}}

A recovery's payload is ``InstanceRecoveryPayload`` with the same fields
(``recovered_at`` set; ``action``, ``interval_ms`` and ``misses`` null;
``detected_at`` null: the recovery does not carry it).  ``event_id`` is
the id of the guestha record (for a fault, the fault id), so a consumer
can drop the duplicate of an event published again after a controller
restart; the notification's ``message_id`` is derived from it too.  A
minor version adds fields only; a consumer checks the major version.
doc/source/sinks.rst has the table of fields.

``project_id``: the records of the agents do not carry it; the sink asks
Nova (``GET /servers/<id>``, cached) when ``lookup_project`` is set.

Delivery: oslo.messaging's :class:`~oslo_messaging.Notifier` logs a
failure to publish and returns, which would lose the event; the sink
hands the message to the transport itself (what the ``messagingv2``
driver does) with a bounded retry, so a broker outage raises
:class:`~guestha.sinks.base.SinkUnavailable` and the dispatcher retries.
"""

import functools
import logging
import threading
import uuid

import oslo_messaging
from oslo_utils import timeutils

from guestha.sinks import base

LOG = logging.getLogger(__name__)

PAYLOAD_VERSION = "1.0"
EVENT_TYPES = {"fault": "guestha.instance.fault",
               "recovery": "guestha.instance.recovery"}
PAYLOAD_NAMES = {"fault": "InstanceFaultPayload",
                 "recovery": "InstanceRecoveryPayload"}
PRIORITY = "info"
#: Connection attempts per publication before the dispatcher's back-off
#: takes over (the rabbit driver's ``retry``).
PUBLISH_RETRY = 1
#: Instances whose project the sink remembers.
PROJECT_CACHE = 10000


def payload_of(event, project_id=None):
    """The versioned payload of a fault or recovery record."""
    type_ = event["type"]
    fault = type_ == "fault"
    return {
        "guestha_object.name": PAYLOAD_NAMES[type_],
        "guestha_object.namespace": "guestha",
        "guestha_object.version": PAYLOAD_VERSION,
        "guestha_object.data": {
            "instance_id": event["instance"],
            "project_id": project_id,
            "host": event.get("host"),
            "fault_id": event["id"] if fault else event.get("fault_id"),
            "event_id": event["id"],
            "kind": event.get("kind"),
            "reason": event.get("reason"),
            "action": event.get("action") if fault else None,
            "detected_at": event.get("detected_at") if fault else None,
            "recovered_at": None if fault else event.get("recovered_at"),
            "interval_ms": event.get("interval_ms") if fault else None,
            "misses": event.get("misses") if fault else None,
        },
    }


def _project_from_nova(client, instance):
    server = client.server(instance)
    return server and server.get("project_id")


class NotificationsSink(base.FaultSink):
    """Publishes faults and recoveries on ``transport``.

    :param projects: ``f(instance uuid)`` -> project id or None (may raise
        anything: the notification then goes without it), or None.
    """

    event_types = frozenset(EVENT_TYPES)

    def __init__(self, transport, topics, publisher_id, projects=None,
                 clock=timeutils.utcnow):
        if not topics:
            raise ValueError("[notifications_sink] topics is empty")
        self.transport = transport
        self.topics = list(topics)
        self.publisher_id = publisher_id
        self._projects = projects
        self._clock = clock
        self._known = {}
        self._lock = threading.Lock()

    @classmethod
    def from_conf(cls, conf):
        group = conf.notifications_sink
        transport = oslo_messaging.get_notification_transport(
            conf, url=group.transport_url or None)
        client = None
        if group.lookup_project:
            from guestha import nova as nova_mod
            client = nova_mod.NovaClient.from_conf(conf, optional=True)
        return cls(transport, group.topics,
                   group.publisher_id or "guestha-server:%s"
                   % conf.server.server_id,
                   projects=None if client is None else functools.partial(
                       _project_from_nova, client))

    def project_of(self, instance):
        with self._lock:
            if instance in self._known:
                return self._known[instance]
        if self._projects is None:
            return None
        try:
            project = self._projects(instance)
        except Exception as exc:  # noqa: BLE001 - any lookup failure
            LOG.warning("instance %s: project not known (%s): notification "
                        "sent with project_id null", instance, exc)
            return None
        with self._lock:
            if len(self._known) >= PROJECT_CACHE:
                self._known.pop(next(iter(self._known)))
            self._known[instance] = project
        return project

    def message_of(self, event):
        """The ``messagingv2`` message (what
        :class:`oslo_messaging.Notifier` builds)."""
        return {
            "message_id": str(uuid.uuid5(uuid.UUID(event["id"]),
                                         "notification")),
            "publisher_id": self.publisher_id,
            "event_type": EVENT_TYPES[event["type"]],
            "priority": PRIORITY.upper(),
            "payload": payload_of(event,
                                  self.project_of(event["instance"])),
            "timestamp": str(self._clock()),
        }

    def send(self, event):
        message = self.message_of(event)
        for topic in self.topics:
            target = oslo_messaging.Target(topic="%s.%s" % (topic, PRIORITY))
            try:
                # what the messagingv2 driver does, without its catch-all
                self.transport._send_notification(
                    target, {}, message, version=2.0, retry=PUBLISH_RETRY)
            except oslo_messaging.MessageDeliveryFailure as exc:
                raise base.SinkUnavailable(
                    sink=self.name,
                    reason="cannot publish %s of instance %s on %s: %s" % (
                        message["event_type"], event["instance"], topic,
                        exc))

    def close(self):
        self.transport.cleanup()
