# SPDX-License-Identifier: Apache-2.0
"""Server-group traffic between the guest's applications and the host.

Applications ask through the local API (``broadcast``, ``status_query``);
the relay sends the messages on the channel and remembers which
application asked (at most :data:`MAX_PENDING` requests), so that the
host's answer (a ``status``, or an ``error`` naming the request) goes back
to it.  What the host sends unasked (broadcasts from other members,
notifications, status) is published to the applications subscribed.
"""

import base64
import logging
import time

from guestha_guest import protocol as p
from guestha_guest.ratelimit import RateLimitedLog

LOG = logging.getLogger(__name__)

#: Server-group requests remembered to route the host's answers back.
MAX_PENDING = 256


class GroupRelay(object):
    """The application API's handler for server-group requests, and the
    receiver of the host's server-group messages.

    :param send: ``send(msg) -> bool``: send a message to the host; False
        if the channel could not take it.
    :param apps: the :class:`~guestha_guest.appapi.AppServer`, or None
        (then the host's messages are dropped).
    :param clock: monotonic clock, for the rate limit on its logs.
    """

    def __init__(self, send, apps=None, clock=time.monotonic):
        self._send = send
        self.apps = apps
        self._pending = {}  # seq of a request -> (client, id)
        self._rlog = RateLimitedLog(LOG, clock=clock)

    def forget(self):
        """A new channel: no answer will come to the requests sent."""
        self._pending.clear()

    # -- from the applications (the AppServer's handler interface) ----------

    def on_broadcast(self, client, payload, req_id):
        msg = p.Broadcast(payload=payload)
        if not self._send(msg):
            self._refuse(client, req_id, "unavailable",
                         "the host channel is not ready")
            return
        self._remember(msg.seq, client, req_id)
        reply = {"op": "ok"}
        if req_id is not None:
            reply["id"] = req_id
        self.apps.reply(client, reply)

    def on_status_query(self, client, req_id):
        msg = p.StatusQuery()
        if not self._send(msg):
            self._refuse(client, req_id, "unavailable",
                         "the host channel is not ready")
            return
        self._remember(msg.seq, client, req_id)

    def _remember(self, seq, client, req_id):
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[seq] = (client, req_id)

    def _refuse(self, client, req_id, code, message):
        msg = {"op": "error", "code": code, "message": message}
        if req_id is not None:
            msg["id"] = req_id
        self.apps.reply(client, msg)

    # -- from the host ------------------------------------------------------

    def receive(self, event):
        """A server-group message from the host (an ``error`` of the
        server group's included)."""
        if isinstance(event, p.Error):
            self._route_error(event)
        elif isinstance(event, p.Broadcast):
            self._publish("broadcast", {
                "op": "broadcast", "from": event.sender,
                "payload": base64.b64encode(event.payload).decode("ascii")})
        elif isinstance(event, p.Notification):
            self._publish("notification", {
                "op": "notification", "instance": event.instance,
                "state": event.state, "event": event.event})
        elif isinstance(event, p.Status):
            self._answer_status(event)

    def _route_error(self, error):
        client, req_id = self._pending.pop(error.ref, (None, None))
        if client is None or self.apps is None:
            self._rlog.warning("sg-error", "host refused a server-group "
                               "message: %s: %s", error.code, error.message)
            return
        self._refuse(client, req_id, error.code, error.message)

    def _answer_status(self, status):
        members = [m.to_wire() for m in status.members]
        client, req_id = self._pending.pop(status.ref, (None, None))
        msg = {"op": "status", "members": members}
        if status.group:
            msg["group"] = status.group
        if client is not None and self.apps is not None:
            mine = dict(msg)
            if req_id is not None:
                mine["id"] = req_id
            self.apps.reply(client, mine)
        self._publish("status", msg, skip=client)

    def _publish(self, event, msg, skip=None):
        if self.apps is not None:
            self.apps.publish(event, msg, skip=skip)
