# SPDX-License-Identifier: Apache-2.0
"""The event records: what agents report, controllers store and sinks get.

:func:`make_fault`, :func:`make_recovery` and :func:`make_state` build
them (in the agent), ``report_events`` carries them
(:mod:`guestha.rpc.api`), :func:`validate_event` checks one on arrival (in
the controller, which then hands it to its ledger, corrective actions and
sinks).  Standard library and the guest's wire vocabulary only (hence
:data:`ACTIONS`): the agent, the sinks and the REST API use them without
importing oslo.messaging.

Every record has ``version`` ("1.0"), ``id``, ``type``
("fault", "recovery", "state"), ``instance``, ``host``, ``reason`` and
``details`` (a dict).  Times are ISO 8601 UTC strings with microseconds,
each with a ``*_ts`` twin in float epoch seconds.

* fault: ``kind`` (one of :data:`FAULT_KINDS`), ``action`` (the corrective
  action the guest recommends, one of :data:`ACTIONS`, or None),
  ``detected_at``, ``interval_ms``, ``misses``.
* recovery: ``fault_id`` (the fault it clears), ``kind`` of that fault (or
  None if unknown), ``recovered_at``.
* state: ``state`` (a short name of the monitoring state,
  :data:`INSTANCE_STATES`), ``at``; ``details`` carries the instance's
  ``project_id``, ``name`` and ``interval_ms`` when known.

Versioning: additions that old peers can ignore bump the minor version
(1.1), a new major version (2.0) is a break.  A controller accepts records
of any minor version of its major one (:func:`validate_event` checks the
fields it knows and keeps the others); an agent capped by ``[upgrade_levels]
guestha_controller`` sends records as the cap's version
(:func:`backport_event`).
"""

import datetime
import json
import math
import re
import uuid

# What a guest may recommend: the wire protocol's list, the one spelling
# of it (the host side imports it from here or from the protocol).
from guestha_guest.protocol import ACTIONS

#: The record format version (independent of, but today equal to, the RPC
#: API version).
EVENT_VERSION = "1.0"
_EVENT_VERSION_RE = re.compile(r"(\d+)\.(\d+)\Z")
EVENT_TYPES = ("fault", "recovery", "state")
FAULT_KINDS = ("missed", "unhealthy", "guest-exit-unexpected",
               "channel-lost")
#: Guest-supplied text is cut here rather than refused: a guest must not be
#: able to make the agent raise.
MAX_REASON = 1024
_STATE_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")


def _check_uuid(name, value):
    if not isinstance(value, str):
        raise ValueError("%s must be a uuid string, not %r" % (name, value))
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise ValueError("%s is not a uuid: %r" % (name, value)) from None
    # uuid.UUID also takes braces, urn: prefixes and no dashes; Nova
    # never produces those, and ids compared as strings must be canonical.
    if canonical != value.lower():
        raise ValueError("%s is not a canonical uuid: %r" % (name, value))
    return canonical


def check_host(host):
    """``host`` if it is a compute host name (also the RPC server name)."""
    if not isinstance(host, str) or not host or len(host) > 255:
        raise ValueError("host must be a non-empty string of at most 255 "
                         "characters, not %r" % (host,))
    return host


def _check_choice(name, value, choices, allow_none=False):
    if value is None and allow_none:
        return None
    if value not in choices:
        raise ValueError("%s must be one of %s%s, not %r" % (
            name, ", ".join(choices), " or None" if allow_none else "",
            value))
    return value


def _check_reason(reason):
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ValueError("reason must be a string or None, not %r"
                         % (reason,))
    return reason[:MAX_REASON]


def _check_count(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("%s must be an integer >= 0 or None, not %r"
                         % (name, value))
    return value


def _check_time(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError("%s must be epoch seconds (a positive number), "
                         "not %r" % (name, value))
    return float(value)


def _check_details(details):
    if details is None:
        return {}
    if not isinstance(details, dict):
        raise ValueError("details must be a dict or None, not %r"
                         % (details,))
    try:
        json.dumps(details)
    except (TypeError, ValueError) as exc:
        raise ValueError("details must be JSON-serializable: %s"
                         % exc) from None
    return dict(details)


def _iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="microseconds")


def _base(type_, instance, host, reason, details):
    return {
        "version": EVENT_VERSION,
        "id": str(uuid.uuid4()),
        "type": type_,
        "instance": _check_uuid("instance", instance),
        "host": check_host(host),
        "reason": _check_reason(reason),
        "details": _check_details(details),
    }


def make_fault(instance, host, kind, reason, action, detected_at,
               interval_ms, misses, details=None):
    """A fault record: ``instance`` on ``host`` has fault ``kind``.

    :param action: the corrective action the guest recommended (one of
        :data:`ACTIONS`) or None; the controller's policy decides.
    :param detected_at: epoch seconds (``time.time()``) of detection.
    :param interval_ms: the heartbeat interval in force, or None if the
        guest never registered.
    :param misses: consecutive missed challenges (0 for other kinds).
    :raises ValueError: on an unknown kind or action, a malformed uuid, a
        bad time or count, or details that are not JSON.
    """
    event = _base("fault", instance, host, reason, details)
    detected_at = _check_time("detected_at", detected_at)
    event.update({
        "kind": _check_choice("kind", kind, FAULT_KINDS),
        "action": _check_choice("action", action, ACTIONS, allow_none=True),
        "detected_at": _iso(detected_at),
        "detected_at_ts": detected_at,
        "interval_ms": _check_count("interval_ms", interval_ms),
        "misses": _check_count("misses", misses),
    })
    return event


def make_recovery(instance, host, fault_id, recovered_at, details=None,
                  kind=None, reason=None):
    """A recovery record: fault ``fault_id`` of ``instance`` is over.

    :param kind: the kind of the fault it clears, if known.
    """
    event = _base("recovery", instance, host, reason, details)
    recovered_at = _check_time("recovered_at", recovered_at)
    event.update({
        "fault_id": _check_uuid("fault_id", fault_id),
        "kind": _check_choice("kind", kind, FAULT_KINDS, allow_none=True),
        "recovered_at": _iso(recovered_at),
        "recovered_at_ts": recovered_at,
    })
    return event


#: The states an agent reports (:mod:`guestha.agent.statereport`); a
#: controller stores any short name, these are the ones guestha sends.
INSTANCE_STATES = (
    "unregistered",  # the flavor asks for guestha, no guest registered
    "refused",       # the channel cannot be added: no virtio-serial
                     # controller in the domain
    "registered",    # the guest registered, no challenge answered yet
    "monitored",     # challenged every interval, answering
    "faulted",       # a fault is open
    "suspended",     # paused, migrating, shutting down
    "exited",        # the guest ended monitoring (Exit)
    "stopped",       # shut off on its host
    "unmonitored",   # no longer asks for guestha (its flavor changed)
    "gone",          # no longer on this host
)


def make_state(instance, host, state, reason, at, details=None):
    """A state record: monitoring of ``instance`` entered ``state`` (a
    short lower-case name, one of :data:`INSTANCE_STATES` from guestha's
    agent).

    ``details`` may carry ``project_id`` (the instance's project, from
    Nova's domain metadata), ``name`` (its Nova name) and ``interval_ms``
    (the heartbeat interval in force): the controller keeps them with the
    state, for the REST API.
    """
    event = _base("state", instance, host, reason, details)
    if not isinstance(state, str) or not _STATE_RE.match(state):
        raise ValueError("state must be a short lower-case name "
                         "([a-z][a-z0-9_-]*, at most 64), not %r" % (state,))
    at = _check_time("at", at)
    event.update({"state": state, "at": _iso(at), "at_ts": at})
    return event


#: The fields of a version-1.0 record: those every type has, then each
#: type's own (what :func:`backport_event` keeps).
_BASE_FIELDS = ("version", "id", "type", "instance", "host", "reason",
                "details")
_REQUIRED = {
    "fault": ("kind", "action", "detected_at", "detected_at_ts",
              "interval_ms", "misses"),
    "recovery": ("fault_id", "kind", "recovered_at", "recovered_at_ts"),
    "state": ("state", "at", "at_ts"),
}


def _parse_version(version):
    match = _EVENT_VERSION_RE.match(version) if isinstance(
        version, str) else None
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def supported_version(version):
    """Whether a record of ``version`` can be accepted: the same major
    version as :data:`EVENT_VERSION`, any minor one (a newer minor only
    adds fields that may be ignored)."""
    parsed = _parse_version(version)
    return parsed is not None and parsed[0] == _parse_version(
        EVENT_VERSION)[0]


def backport_event(event, version_cap):
    """``event`` as a peer of ``version_cap`` reads it: with that version
    and without the fields newer minor versions added.  Records at or
    below the cap are returned as they are.

    :raises ValueError: ``version_cap`` is of another major version.
    """
    cap = _parse_version(version_cap)
    if cap is None or not supported_version(version_cap):
        raise ValueError("cannot send events as version %r (this guestha "
                         "sends %s)" % (version_cap, EVENT_VERSION))
    mine = _parse_version(event.get("version"))
    if mine is None or mine <= cap:
        return event
    # 1.0 is the only minor version so far: nothing was added since
    known = set(_BASE_FIELDS) | set(_REQUIRED.get(event.get("type"), ()))
    return dict({k: v for k, v in event.items() if k in known},
                version="%d.%d" % cap)


def validate_event(event):
    """Check a record received over the wire; returns it.

    For the controller, before it accepts an event: a record that fails
    here should be answered as ``rejected``.  A record of a newer minor
    version passes if the fields this version knows are right; the others
    stay in it, unchecked.

    :raises ValueError: saying what is wrong.
    """
    if not isinstance(event, dict):
        raise ValueError("an event must be a dict, not %r" % (event,))
    if not supported_version(event.get("version")):
        raise ValueError("unsupported event version %r (supported: %s.x)"
                         % (event.get("version"),
                            EVENT_VERSION.split(".")[0]))
    type_ = _check_choice("type", event.get("type"), EVENT_TYPES)
    missing = [k for k in ("id", "instance", "host", "reason", "details")
               + _REQUIRED[type_] if k not in event]
    if missing:
        raise ValueError("%s event lacks %s" % (type_, ", ".join(missing)))
    _check_uuid("id", event["id"])
    _check_uuid("instance", event["instance"])
    check_host(event["host"])
    if event["reason"] is not None and not isinstance(event["reason"], str):
        raise ValueError("reason must be a string or None")
    if not isinstance(event["details"], dict):
        raise ValueError("details must be a dict")
    if type_ == "fault":
        _check_choice("kind", event["kind"], FAULT_KINDS)
        _check_choice("action", event["action"], ACTIONS, allow_none=True)
        _check_time("detected_at_ts", event["detected_at_ts"])
        _check_count("interval_ms", event["interval_ms"])
        _check_count("misses", event["misses"])
    elif type_ == "recovery":
        _check_uuid("fault_id", event["fault_id"])
        _check_choice("kind", event["kind"], FAULT_KINDS, allow_none=True)
        _check_time("recovered_at_ts", event["recovered_at_ts"])
    else:
        _check_time("at_ts", event["at_ts"])
    return event
