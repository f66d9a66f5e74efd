# SPDX-License-Identifier: Apache-2.0
"""What a guest asks of its server group, on its way to the controller.

A guest may broadcast a message to the other members of its server group
and ask for the group's status.  The agent relays both to the controller
(the instance hands them to :meth:`Env.relay
<guestha.agent.instance.Env.relay>`, the reporter casts them), within the
operator's limits (``[agent] broadcasts_per_second`` and
``status_queries_per_second``, each with a burst of twice as many), so that
a flooding guest never reaches the bus: beyond them the guest is answered
``rate_limited``.  The controller's own limit on status queries is applied
here, before the bus.  What the controller sends to the guest (other
members' broadcasts, status replies) takes the other way, through
:meth:`Instance.deliver <guestha.agent.instance.Instance.deliver>`.

A :class:`GroupRelay` does no I/O: it returns what to relay (a
:class:`Relay`) or what to answer the guest (a protocol ``error``
message), with the time passed in.
"""

import base64

from guestha.ratelimit import TokenBucket
from guestha_guest import protocol as p


class Relay(object):
    """Call ``method`` of the controller with ``kwargs`` (through
    :meth:`Env.relay <guestha.agent.instance.Env.relay>`)."""

    __slots__ = ("method", "kwargs")

    def __init__(self, method, kwargs):
        self.method = method
        self.kwargs = kwargs

    def __repr__(self):
        return "Relay(%s, %r)" % (self.method, self.kwargs)


class GroupRelay(object):
    """The server-group requests of one instance's guest.

    :param instance: the instance's uuid (it names the sender).
    :param policy: ``broadcasts_per_second`` and
        ``status_queries_per_second`` (an
        :class:`~guestha.agent.instance.Policy`).
    :param now: monotonic seconds (the buckets start full).
    """

    def __init__(self, instance, policy, now):
        self.instance = instance
        self.policy = policy
        self._broadcasts = TokenBucket(policy.broadcasts_per_second,
                                       2 * policy.broadcasts_per_second, now)
        self._queries = TokenBucket(policy.status_queries_per_second,
                                    2 * policy.status_queries_per_second,
                                    now)

    def broadcast(self, msg, now):
        """The guest's :class:`~guestha_guest.protocol.messages.Broadcast`:
        a :class:`Relay`, or the error to answer it with."""
        if not self._broadcasts.take(now):
            return p.Error(app="server_group", code="rate_limited",
                           message="at most %d broadcasts per second"
                           % self.policy.broadcasts_per_second,
                           ref=msg.seq)
        return Relay("relay_broadcast", {
            "instance": self.instance,
            "payload_b64": base64.b64encode(msg.payload).decode(),
            "seq": msg.seq})

    def query(self, msg, now):
        """The guest's
        :class:`~guestha_guest.protocol.messages.StatusQuery`: a
        :class:`Relay`, or the error to answer it with."""
        if not self._queries.take(now):
            return p.Error(
                app="server_group", code="rate_limited", ref=msg.seq,
                message="at most %g status queries per second"
                % self.policy.status_queries_per_second)
        return Relay("query_status", {"instance": self.instance,
                                      "seq": msg.seq})
