# SPDX-License-Identifier: Apache-2.0
"""The RPC API between compute agents and controllers, version 1.0.

Every method carries plain JSON types only.  The agent's methods go to
``guestha-controller`` (any controller answers, namespace
``guestha.controller``); the controller's go to ``guestha-agent`` with
``server=<host>`` (namespace ``guestha.agent``).

====================  =====  ====  ==========================  ===========
method                from   kind  arguments                   answer
====================  =====  ====  ==========================  ===========
report_events         agent  call  host, events                accepted,
                                                               rejected
relay_broadcast       agent  cast  host, instance,             -
                                   payload_b64, seq
query_status          agent  cast  host, instance, seq         -
agent_alive           agent  cast  host, instances             -
deliver_broadcast     ctrl   cast  instances, sender,          -
                                   payload_b64
deliver_notification  ctrl   cast  instances, instance,        -
                                   state, event
deliver_status        ctrl   cast  instance, seq, members,     -
                                   group
deliver_error         ctrl   cast  instance, seq, code,        -
                                   message
====================  =====  ====  ==========================  ===========

``host`` is the compute host of the sending agent (``[agent] host``).  In
the ``deliver_*`` methods, ``instances`` are the local recipients on the
receiving host, ``sender``/``instance`` the peer they hear about.
``payload_b64`` is a server-group datagram (at most 3050 bytes) in base64.
``events`` is a list of event records (below); the answer to
``report_events`` is ``{"accepted": [event ids], "rejected": {event id:
reason}}``.  ``agent_alive`` is cast every ``[reporting] alive_interval``
seconds, so the controllers learn the hosts and which instances use which
service: ``instances`` is a list of ``{"instance": uuid, "heartbeat":
bool, "server_group_messaging": bool}``.  A ``query_status`` is answered by
``deliver_status`` (or ``deliver_error``) with the same ``seq``.

Why faults travel by call, not cast
-----------------------------------
A cast is done when the broker has the message in memory, not when a
controller has it: the broker may restart, or no controller may be
listening, and the fault is gone.  ``report_events`` is a call, and a
controller answers only after it has taken durable responsibility for the
events it lists as ``accepted`` (stored or handed to its sinks).  Only then
does the agent delete them from its outbox; anything else (timeout, broker
down, partial answer) leaves them there, to be sent again in the same
order.  Delivery is therefore at least once: a controller that answered
but whose answer was lost sees the same events again, and deduplicates by
the event ``id`` (a uuid4, the idempotency key).  ``rejected`` lists
events a controller will never accept (malformed, unknown version): the
agent drops those, logged, instead of retrying them forever.  A controller
should accept a prefix of the batch, so that what it leaves for later is
sent again before anything newer.

The server-group methods are casts: they are best effort by design (the
applications acknowledge end to end), and a reply would only add latency.

Event records
-------------
:func:`make_fault`, :func:`make_recovery` and :func:`make_state` build the
records ``report_events`` carries, :func:`validate_event` checks one on
arrival.  Every record has ``version`` ("1.0"), ``id``, ``type``
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

Versioning and rolling upgrades
-------------------------------
Additions that old peers can ignore bump the minor version (1.1), of the
RPC API and of the event records alike; a new major version (2.0) is a
break.  A controller accepts records of any minor version of its major
one: it checks the fields it knows, and keeps and hands on the others
(:func:`validate_event`), so an agent upgraded before its controllers
loses no fault.  The other way round, ``[upgrade_levels]
guestha_controller`` caps what an agent sends (``version_cap`` of
:class:`ControllerAPI`): methods newer than the cap are not called, and
records are sent as the cap's version (:func:`backport_event`).
"""

import abc
import datetime
import json
import math
import re
import uuid

import oslo_messaging
from oslo_messaging.rpc import dispatcher

from guestha import rpc
# What a guest may recommend: the wire protocol's list, re-exported.
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


class InvalidAnswer(ValueError):
    """A controller answered ``report_events`` with something malformed."""


# -- event records ------------------------------------------------------------

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


def _check_host(host):
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
        "host": _check_host(host),
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
    _check_host(event["host"])
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


# -- the agent's client of the controllers -----------------------------------

class ControllerAPI(object):
    """The agent's client of the controllers.

    :param host: this compute host, sent with every method.
    :param timeout: default seconds a ``report_events`` call waits for its
        answer.
    :param version_cap: ``[upgrade_levels] guestha_controller``: the
        newest API and record version the controllers understand (None:
        this guestha's).
    :param retry: publish attempts after the first when the broker is
        unreachable.  0 (the default) fails at once with
        ``MessageDeliveryFailure``, so a broker outage costs the caller
        about a millisecond, not oslo.messaging's retry-forever default;
        the reporter has its own back-off.
    """

    def __init__(self, transport, host, timeout=10, retry=0,
                 version_cap=None):
        self.host = _check_host(host)
        self.version_cap = version_cap or None
        if self.version_cap is not None:
            backport_event({"version": EVENT_VERSION}, self.version_cap)
        self._client = oslo_messaging.get_rpc_client(
            transport, rpc.controller_target(), timeout=timeout,
            retry=retry, version_cap=version_cap)

    def report_events(self, events, timeout=None):
        """Hand ``events`` to a controller; a call.

        :returns: ``{"accepted": [ids], "rejected": {id: reason}}``; the
            controller has taken durable responsibility for the accepted.
        :raises: one of :data:`guestha.rpc.TRANSIENT_ERRORS`, or
            :class:`InvalidAnswer`.
        """
        cctxt = (self._client if timeout is None
                 else self._client.prepare(timeout=timeout))
        events = list(events)
        if self.version_cap is not None:
            events = [backport_event(e, self.version_cap) for e in events]
        answer = cctxt.call({}, "report_events", host=self.host,
                            events=events)
        return _check_answer(answer)

    def relay_broadcast(self, instance, payload_b64, seq):
        self._client.cast({}, "relay_broadcast", host=self.host,
                          instance=instance, payload_b64=payload_b64,
                          seq=seq)

    def query_status(self, instance, seq):
        self._client.cast({}, "query_status", host=self.host,
                          instance=instance, seq=seq)

    def agent_alive(self, instances):
        """Tell the controllers this agent lives, and what it monitors:
        ``instances`` is a list of ``{"instance": uuid, "heartbeat": bool,
        "server_group_messaging": bool}``."""
        self._client.cast({}, "agent_alive", host=self.host,
                          instances=list(instances))


def _check_answer(answer):
    if not isinstance(answer, dict) or not isinstance(
            answer.get("accepted"), list):
        raise InvalidAnswer("report_events answer lacks an 'accepted' "
                            "list: %r" % (answer,))
    rejected = answer.get("rejected") or {}
    if not isinstance(rejected, dict):
        raise InvalidAnswer("report_events answer has a 'rejected' that is "
                            "not a dict: %r" % (answer,))
    return {"accepted": answer["accepted"], "rejected": rejected}


# -- the controller's client of one agent ------------------------------------

class AgentAPI(object):
    """The controller's client of the agents; every method is a cast to
    the agent of ``host``."""

    def __init__(self, transport, retry=0, version_cap=None):
        self._client = oslo_messaging.get_rpc_client(
            transport, rpc.agent_target(None), retry=retry,
            version_cap=version_cap)

    def _cast(self, host, method, **kwargs):
        self._client.prepare(server=_check_host(host)).cast(
            {}, method, **kwargs)

    def deliver_broadcast(self, host, instances, sender, payload_b64):
        self._cast(host, "deliver_broadcast", instances=list(instances),
                   sender=sender, payload_b64=payload_b64)

    def deliver_notification(self, host, instances, instance, state, event):
        self._cast(host, "deliver_notification", instances=list(instances),
                   instance=instance, state=state, event=event)

    def deliver_status(self, host, instance, seq, members, group):
        self._cast(host, "deliver_status", instance=instance, seq=seq,
                   members=members, group=group)

    def deliver_error(self, host, instance, seq, code, message):
        self._cast(host, "deliver_error", instance=instance, seq=seq,
                   code=code, message=message)


# -- the agent's endpoint ----------------------------------------------------

class AgentHandler(abc.ABC):
    """What the agent's RPC endpoint forwards to (the I/O loop).

    The methods run in oslo.messaging's worker threads: they must be
    thread-safe and quick (post to the loop and return).
    """

    @abc.abstractmethod
    def on_deliver_broadcast(self, instances, sender, payload_b64):
        """Broadcast ``payload_b64`` from ``sender`` to local
        ``instances``."""

    @abc.abstractmethod
    def on_deliver_notification(self, instances, instance, state, event):
        """Tell local ``instances`` that peer ``instance`` is now
        ``state``."""

    @abc.abstractmethod
    def on_deliver_status(self, instance, seq, members, group):
        """Answer ``instance``'s status query ``seq``."""

    @abc.abstractmethod
    def on_deliver_error(self, instance, seq, code, message):
        """Tell ``instance`` its request ``seq`` failed."""


class AgentEndpoint(object):
    """The agent's RPC endpoint: forwards each method to the handler."""

    target = rpc.endpoint_target(rpc.AGENT_NAMESPACE)

    def __init__(self, handler):
        self._handler = handler

    def deliver_broadcast(self, ctxt, instances, sender, payload_b64):
        self._handler.on_deliver_broadcast(
            instances=instances, sender=sender, payload_b64=payload_b64)

    def deliver_notification(self, ctxt, instances, instance, state, event):
        self._handler.on_deliver_notification(
            instances=instances, instance=instance, state=state,
            event=event)

    def deliver_status(self, ctxt, instance, seq, members, group):
        self._handler.on_deliver_status(
            instance=instance, seq=seq, members=members, group=group)

    def deliver_error(self, ctxt, instance, seq, code, message):
        self._handler.on_deliver_error(
            instance=instance, seq=seq, code=code, message=message)


def start_agent_server(transport, host, handler):
    """Start the agent's RPC server on ``guestha-agent``/``host``.

    oslo.messaging's default (threading) executor runs the endpoint; no
    ``executor=`` is passed, since naming even 'threading' is deprecated.
    Stop it with ``server.stop(); server.wait()``.
    """
    server = oslo_messaging.get_rpc_server(
        transport, rpc.agent_server_target(host), [AgentEndpoint(handler)],
        access_policy=dispatcher.DefaultRPCAccessPolicy)
    server.start()
    return server
