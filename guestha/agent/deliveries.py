# SPDX-License-Identifier: Apache-2.0
"""Server-group messages from the controller, on their way to the guests.

The controller's RPC calls (``deliver_broadcast``, ``deliver_notification``,
``deliver_status``, ``deliver_error``; see
:class:`guestha.rpc.api.AgentEndpoint`) arrive in oslo.messaging's threads.
:class:`GroupDeliveries` turns each into the protocol message the guest
gets and posts it to the loop as a :class:`Deliver` record, one per local
instance; the loop hands it to the instance, which sends it if its channel
is ready.  A message the protocol refuses (a bad payload, a field out of
bounds) is dropped here, with a warning, and never reaches the loop.
"""

import base64
import binascii
import logging

from guestha_guest import protocol as p

LOG = logging.getLogger(__name__)


class Deliver(object):
    """A server-group message from the controller for one local instance
    (posted by the RPC endpoint thread)."""

    __slots__ = ("instance", "message")

    def __init__(self, instance, message):
        self.instance = instance
        self.message = message


class GroupDeliveries(object):
    """The controller's server-group deliveries, as records for the loop:
    the agent's RPC handler (``on_deliver_*``, called in oslo.messaging's
    threads).

    :param post: hands a record to the loop (any thread).
    """

    def __init__(self, post):
        self._post = post

    def on_deliver_broadcast(self, instances, sender, payload_b64):
        try:
            payload = base64.b64decode(payload_b64, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            LOG.warning("instances %s: dropped a broadcast from the "
                        "controller: its payload is not base64: %s",
                        ", ".join(instances), exc)
            return
        for uuid in instances:
            self._deliver(uuid, lambda: p.Broadcast(payload=payload,
                                                    sender=sender))

    def on_deliver_notification(self, instances, instance, state, event):
        for uuid in instances:
            self._deliver(uuid, lambda: p.Notification(
                instance=instance, state=state, event=event))

    def on_deliver_status(self, instance, seq, members, group):
        self._deliver(instance, lambda: p.Status(
            ref=seq, group=group, members=[
                p.Member(m["instance"], m["state"]) for m in members]))

    def on_deliver_error(self, instance, seq, code, message):
        self._deliver(instance, lambda: p.Error(
            app="server_group", code=code, message=message[:200], ref=seq))

    def _deliver(self, instance, build):
        try:
            msg = build()
        except (p.LocalProtocolError, ValueError, TypeError,
                binascii.Error) as exc:
            LOG.warning("instance %s: dropped a server-group message from "
                        "the controller: %s", instance, exc)
            return
        self._post(Deliver(instance, msg))
