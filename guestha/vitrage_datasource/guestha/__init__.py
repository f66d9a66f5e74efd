# SPDX-License-Identifier: Apache-2.0
"""The ``guestha`` Vitrage datasource: in-guest heartbeat faults as alarms
on ``nova.instance`` vertices.

A push datasource with its own event types, fed through Vitrage's event
API (``POST /v1/event``) by guestha's ``vitrage`` fault sink:

``guestha.instance.fault``
    raises (or updates) the instance's guestha alarm;
``guestha.instance.recovery``
    clears it;
``guestha.instance.events``
    several of the above in one request (``details["events"]`` is a list
    of ``{"type", "time", "details"}``), because Vitrage's API takes some
    140 ms per request, whatever its size.

The details of a fault or recovery (see :data:`DETAILS`) never carry a
``status`` key: Vitrage's event API hands any event whose details have
``status`` "up" or "down" to its Doctor datasource instead.

This module must stay importable without Vitrage (guestha's tests check
that the sink and this plugin agree on the constants below): the option
names are Vitrage's ``DatasourceOpts`` values, spelled out.
"""

from oslo_config import cfg

GUESTHA_DATASOURCE = "guestha"

FAULT_EVENT = "guestha.instance.fault"
RECOVERY_EVENT = "guestha.instance.recovery"
BATCH_EVENT = "guestha.instance.events"
EVENT_TYPES = (FAULT_EVENT, RECOVERY_EVENT, BATCH_EVENT)

#: The keys of an event's details (all optional but instance_id and
#: fault_id): instance_id, fault_id, event_id, kind, severity, reason,
#: recommended_action, compute_host, detected_at, recovered_at, misses,
#: interval_ms.
DETAILS = ("instance_id", "fault_id", "event_id", "kind", "severity",
           "reason", "recommended_action", "compute_host", "detected_at",
           "recovered_at", "misses", "interval_ms")

#: Severity of a fault whose event names none (or an unknown one).
DEFAULT_SEVERITIES = {
    "missed": "CRITICAL",
    "channel-lost": "CRITICAL",
    "unhealthy": "MAJOR",
    "guest-exit-unexpected": "MAJOR",
}
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
FALLBACK_SEVERITY = "CRITICAL"

#: The alarm's name is this with the fault kind, e.g. "guestha heartbeat
#: missed"; Vitrage templates match alarms by name (or by type guestha).
ALARM_NAME_FORMAT = "guestha heartbeat %s"

OPTS = [
    cfg.StrOpt("transformer",
               default="guestha.vitrage_datasource.guestha.transformer."
                       "GuesthaTransformer",
               help="guestha transformer class path",
               required=True),
    cfg.StrOpt("driver",
               default="guestha.vitrage_datasource.guestha.driver."
                       "GuesthaDriver",
               help="guestha driver class path",
               required=True),
    cfg.StrOpt("update_method",
               default="push",
               help="push: guestha posts its events to Vitrage's event API.",
               required=True),
    cfg.IntOpt("remember_closed", default=10000, min=0,
               help="Closed (recovered or superseded) fault ids "
                    "remembered, so that a fault that arrives after its own "
                    "recovery (several guestha controllers, retries) does "
                    "not raise an alarm that nothing would clear."),
]
