# SPDX-License-Identifier: Apache-2.0
"""The ``vitrage`` sink: faults and recoveries to Vitrage's event API.

Each fault is posted (``POST /v1/event/``, python-vitrageclient's
``client.event.post(event_time, event_type, details)`` over a keystoneauth
session) as an event of the guestha datasource plugin's own type,
``guestha.instance.fault``; the plugin (:mod:`guestha.vitrage_datasource`,
loaded by vitrage-graph) raises an alarm on the instance's
``nova.instance`` vertex.  A recovery, ``guestha.instance.recovery``,
clears it.  Actions and refusals are not sent: they are the controller's
business, and the log sink has them.

The details of an event (the plugin's :data:`DETAILS`): ``instance_id``,
``fault_id``, ``event_id``, ``kind``, ``severity`` (from ``[vitrage]
severities``), ``reason``, ``recommended_action``, ``compute_host``,
``detected_at`` or ``recovered_at``, ``misses``, ``interval_ms``.  Never
``status``: Vitrage's event API routes any event whose details have status
"up" or "down" to its Doctor datasource, which alarms a ``nova.host``.

Throughput: Vitrage's API answers about 7 requests a second (it runs a
full garbage collection per request).  The dispatcher keeps one request
in flight per sink, which is the rate limit; what arrives meanwhile waits
in the sink's queue and goes, up to ``[vitrage] batch_size`` events at a
time, as ONE ``guestha.instance.events`` event whose details hold the
list (``{"events": [{"type", "time", "details"}, ...]}``); the plugin
splits it.  A burst of faults thus costs a request per 50 events, not
per event, and events keep their order.
"""

import datetime
import logging
import time

from keystoneauth1 import exceptions as ks_exc
from vitrageclient import exceptions as vitrage_exc
from vitrageclient.v1 import client as vitrage_client

from guestha.conf import sinks as sinks_conf
from guestha import records
from guestha.sinks import base

LOG = logging.getLogger(__name__)

GROUP = "vitrage"

# The plugin's event types.  guestha must not import the plugin (it
# imports Vitrage); tests/unit/sinks/test_vitrage.py checks these agree
# with guestha.vitrage_datasource.guestha.
FAULT_EVENT = "guestha.instance.fault"
RECOVERY_EVENT = "guestha.instance.recovery"
BATCH_EVENT = "guestha.instance.events"

#: Vitrage's event time format (vitrage.common.constants.EventProperties).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"

#: HTTP statuses after which sending the same event again cannot help.
#: Vitrage answers 404 when its API could not reach vitrage-graph, so 404
#: is NOT among them: that is an outage.
REJECTED_STATUSES = frozenset((400, 413, 422))


def _event_time(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).strftime(TIME_FORMAT)


def _severities(configured):
    severities = {}
    for kind, severity in (configured or {}).items():
        if kind not in records.FAULT_KINDS:
            raise ValueError("[vitrage] severities: unknown fault kind %r "
                             "(kinds: %s)" % (kind, ", ".join(
                                 records.FAULT_KINDS)))
        severity = str(severity).strip().upper()
        if severity not in sinks_conf.VITRAGE_SEVERITIES:
            raise ValueError("[vitrage] severities: %s: unknown severity %r "
                             "(one of %s)" % (kind, severity, ", ".join(
                                 sinks_conf.VITRAGE_SEVERITIES)))
        severities[kind] = severity
    return severities


class VitrageSink(base.FaultSink):
    """Posts faults and recoveries through ``client``, a
    python-vitrageclient v1 ``Client``.

    :param severities: ``{fault kind: severity}``; kinds not listed are
        sent without a severity and the plugin picks its default.
    :param batch_size: most events in one request.
    """

    name = "vitrage"
    event_types = frozenset(("fault", "recovery"))

    def __init__(self, client, severities=None, batch_size=50,
                 wallclock=time.time):
        self._client = client
        self.severities = dict(severities or {})
        self.max_batch = batch_size
        self._wallclock = wallclock

    @classmethod
    def from_conf(cls, conf):
        group = conf[GROUP]
        severities = _severities(group.severities)
        session, adapter_kwargs = base.load_session(conf, GROUP)
        # The v1 client is a keystoneauth Adapter: the adapter options
        # (service_type, interfaces, region, endpoint_override, retries)
        # go straight to it.
        client = vitrage_client.Client(session=session, **adapter_kwargs)
        return cls(client, severities=severities,
                   batch_size=group.batch_size)

    # -- records to Vitrage events --------------------------------------------

    def event_of(self, event):
        """``(event_time, event_type, details)`` for one record.

        :raises SinkRejected: a record that lacks what Vitrage needs.
        """
        try:
            if event["type"] == "fault":
                details = {
                    "instance_id": event["instance"],
                    "fault_id": event["id"],
                    "event_id": event["id"],
                    "kind": event["kind"],
                    "severity": self.severities.get(event["kind"]),
                    "reason": event.get("reason"),
                    "recommended_action": event.get("action"),
                    "compute_host": event.get("host"),
                    "detected_at": event.get("detected_at"),
                    "misses": event.get("misses"),
                    "interval_ms": event.get("interval_ms"),
                }
                when, event_type = event["detected_at_ts"], FAULT_EVENT
            elif event["type"] == "recovery":
                details = {
                    "instance_id": event["instance"],
                    "fault_id": event["fault_id"],
                    "event_id": event["id"],
                    "kind": event.get("kind"),
                    "reason": event.get("reason"),
                    "compute_host": event.get("host"),
                    "recovered_at": event.get("recovered_at"),
                }
                when, event_type = event["recovered_at_ts"], RECOVERY_EVENT
            else:
                raise base.SinkRejected(
                    sink=self.name, reason="not a fault or recovery: %r"
                    % (event.get("type"),))
            event_time = _event_time(when)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise base.SinkRejected(
                sink=self.name, reason="malformed %s record %s: %s: %s" % (
                    event.get("type"), event.get("id"),
                    type(exc).__name__, exc))
        details = {k: v for k, v in details.items() if v is not None}
        return event_time, event_type, details

    # -- sending --------------------------------------------------------------

    def send(self, event):
        self._post(*self.event_of(event))

    def send_batch(self, events):
        if len(events) == 1:
            return self.send(events[0])
        items = []
        for event in events:
            event_time, event_type, details = self.event_of(event)
            items.append({"type": event_type, "time": event_time,
                          "details": details})
        self._post(_event_time(self._wallclock()), BATCH_EVENT,
                   {"events": items})

    def _post(self, event_time, event_type, details):
        try:
            self._client.event.post(event_time=event_time,
                                    event_type=event_type, details=details)
        except vitrage_exc.ClientException as exc:
            if exc.code in REJECTED_STATUSES:
                raise base.SinkRejected(sink=self.name, reason=str(exc))
            raise base.SinkUnavailable(sink=self.name, reason=str(exc))
        except ks_exc.ClientException as exc:
            # Connection refused or timed out, no endpoint in the catalog,
            # Keystone down or refusing the credentials: all may pass.
            raise base.SinkUnavailable(sink=self.name, reason="%s: %s" % (
                type(exc).__name__, exc))

    def close(self):
        # The client is a keystoneauth Adapter (its _api) over a Session
        # that owns a requests.Session with pooled connections.
        adapter = getattr(self._client, "_api", None)
        ks_session = getattr(adapter, "session", None)
        requests_session = getattr(ks_session, "session", None)
        if requests_session is not None:
            requests_session.close()
