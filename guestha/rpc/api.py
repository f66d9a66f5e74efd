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
``events`` are the records of :mod:`guestha.records` (fault, recovery,
state), which builds and checks them.

Versioning and rolling upgrades
-------------------------------
Additions that old peers can ignore bump the minor version (1.1), of the
RPC API and of the event records alike; a new major version (2.0) is a
break.  A controller accepts records of any minor version of its major
one: it checks the fields it knows, and keeps and hands on the others
(:func:`guestha.records.validate_event`), so an agent upgraded before its
controllers loses no fault.  The other way round, ``[upgrade_levels]
guestha_controller`` caps what an agent sends (``version_cap`` of
:class:`ControllerAPI`): methods newer than the cap are not called, and
records are sent as the cap's version
(:func:`guestha.records.backport_event`).
"""

import abc

import oslo_messaging
from oslo_messaging.rpc import dispatcher

from guestha import records
from guestha import rpc


class InvalidAnswer(ValueError):
    """A controller answered ``report_events`` with something malformed."""


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
        self.host = records.check_host(host)
        self.version_cap = version_cap or None
        if self.version_cap is not None:
            records.backport_event({"version": records.EVENT_VERSION},
                                   self.version_cap)
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
            events = [records.backport_event(e, self.version_cap)
                      for e in events]
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
        self._client.prepare(server=records.check_host(host)).cast(
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
    """What the agent's RPC endpoint forwards to
    (:class:`guestha.agent.deliveries.GroupDeliveries`, which posts to the
    loop).

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
