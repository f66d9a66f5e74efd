# SPDX-License-Identifier: Apache-2.0
"""The application API: a UNIX socket for applications in the guest.

Theory of operation
-------------------
Applications connect to a UNIX stream socket (``/run/guestha/app.sock`` by
default) and exchange UTF-8 JSON objects, one per line, with the daemon.
They register to take part in health checks, report their health, send
server-group broadcasts and subscribe to broadcasts, notifications and
status.  ``doc/source/app-api.rst`` is the reference for applications.

The server lives in the daemon's selector loop; there are no threads.  It
registers its listening socket and every client socket with the selector
the caller passes to :meth:`AppServer.start`, and each key's ``data`` is a
callable taking the event mask, so the loop dispatches with::

    for key, mask in selector.select(timeout):
        key.data(mask)

Applications are local but not trusted to be correct: every line is
checked, a bad one gets an ``error`` reply and nothing else happens, lines
are bounded (:data:`MAX_LINE`), and so is what the daemon queues for an
application that does not read (:data:`MAX_OUTBUF`; beyond it the
application is disconnected).  Nothing a client sends raises into the
caller's loop.

Health: a registered *critical* application makes the guest unhealthy when
its last report says so, when it has not reported within its deadline of
being asked, or when it disconnected without unregistering (until it
registers again under the same name).  The daemon asks for reports with
:meth:`AppServer.send_checks` at every challenge; the deadline runs from
the first check sent after the application's last report (or its
registration), so an application is never "stopped answering" for a
period in which nobody asked it anything (before the host's first
challenge, while the host was away).  An application may also report on
its own schedule.

Server-group requests (``broadcast``, ``status_query``) are passed to the
handler (the daemon's :class:`~guestha_guest.relay.GroupRelay`), which
answers them later with :meth:`AppServer.reply`.

Three parts make the server, each with its module: the socket and its
connections (:class:`~guestha_guest.appsockets.AppSockets`: bytes, lines,
bounds), the requests' checks (:mod:`guestha_guest.apprequests`), and the
registered applications' health (:class:`~guestha_guest.appregistry.
AppRegistry`).  :class:`AppServer` carries out the requests with them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time

from guestha_guest.appregistry import AppRegistry
from guestha_guest import apprequests
from guestha_guest.apprequests import RequestError
from guestha_guest.appsockets import AppClient  # noqa: F401 (the API's)
from guestha_guest.appsockets import AppSockets
from guestha_guest.appsockets import MAX_LINE  # noqa: F401 (the API's)
from guestha_guest.appsockets import MAX_OUTBUF  # noqa: F401 (the API's)
from guestha_guest.protocol.messages import MAX_PAYLOAD

LOG = logging.getLogger(__name__)

#: Bounds of a registration's deadline, in ms.
MIN_DEADLINE_MS = 100
MAX_DEADLINE_MS = 600000
#: Longest reason in a health report, in characters.
MAX_REASON = 120

#: Events an application can subscribe to.
EVENTS = apprequests.EVENTS

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_get = apprequests.field


class AppServer(object):
    """The application API server: carries out the applications'
    requests, and the daemon's messages to them.

    :param path: the socket's path.
    :param mode: its permissions (an int such as ``0o660``).
    :param max_apps: the most clients connected at once; more are refused
        with a ``too_many_apps`` error.
    :param handler: ``on_broadcast(client, payload, req_id)`` and
        ``on_status_query(client, req_id)``, which answer later through
        :meth:`reply`.
    :param clock: the monotonic clock used when a request arrives (the
        start of a deadline, the time of a health report).
    """

    def __init__(self, path, mode, max_apps, handler, clock=time.monotonic):
        self.path = path
        self.max_apps = max_apps
        self.handler = handler
        self._clock = clock
        self._check = 0
        self._sockets = AppSockets(path, mode, max_apps, self._handle_line,
                                   self.close_client)
        self._registry = AppRegistry(max_departed=max_apps)
        self._ops = {
            "register": self._op_register,
            "health": self._op_health,
            "unregister": self._op_unregister,
            "subscribe": self._op_subscribe,
            "unsubscribe": self._op_unsubscribe,
            "broadcast": self._op_broadcast,
            "status_query": self._op_status_query,
        }

    # -- life cycle -----------------------------------------------------------

    def start(self, selector):
        """Create the socket and register it with ``selector``.

        Raises OSError if the socket cannot be created, or if another
        server is listening on it already.
        """
        self._sockets.start(selector)

    def stop(self):
        """Close every connection and the socket, and remove its file."""
        self._sockets.stop()
        self._registry.clear()

    # -- what the daemon calls ------------------------------------------------

    @property
    def clients(self):
        """The connected clients."""
        return list(self._sockets.clients)

    def counts(self):
        """Numbers for a status report."""
        clients = self._sockets.clients
        counts = {"connected": len(clients)}
        counts.update(self._registry.counts())
        counts["subscribers"] = {e: sum(1 for c in clients
                                        if e in c.subscriptions)
                                 for e in EVENTS}
        return counts

    def reply(self, client, msg):
        """Send ``msg`` (a dict) to one client; False if it is gone (or was
        dropped now because it does not read)."""
        return self._sockets.send(client, msg)

    def publish(self, event, msg, skip=None):
        """Send ``msg`` to every subscriber of ``event`` except ``skip``;
        returns how many it was sent to."""
        sent = 0
        for client in list(self._sockets.clients):
            if client is not skip and event in client.subscriptions:
                if self._sockets.send(client, msg):
                    sent += 1
        return sent

    def send_checks(self, now):
        """Ask every registered application to report (``check``)."""
        self._check += 1
        msg = {"op": "check", "check": self._check}
        for client in self._registry.ask(now):
            self._sockets.send(client, msg)
        return self._check

    def health(self, now):
        """``(healthy, reason)`` of the registered critical applications."""
        return self._registry.health(now)

    def close_client(self, client, reason=None):
        """Disconnect a client.  A registered critical application that is
        disconnected this way counts as departed: unhealthy until it
        registers again."""
        if client.closed:
            return
        if reason:
            LOG.info("%s disconnected: %s", client, reason)
        else:
            LOG.info("%s disconnected", client)
        self._registry.left(client, self._clock())
        self._sockets.drop(client)

    # -- requests -------------------------------------------------------------

    def _error(self, client, req_id, code, message, field=None):
        msg = {"op": "error", "code": code, "message": message}
        if field is not None:
            msg["field"] = field
        if req_id is not None:
            msg["id"] = req_id
        self._sockets.send(client, msg)

    def _ok(self, client, req_id):
        msg = {"op": "ok"}
        if req_id is not None:
            msg["id"] = req_id
        self._sockets.send(client, msg)

    def _handle_line(self, client, line):
        req_id = None
        try:
            req = apprequests.decode(line)
            if req is None:
                return  # blank lines are allowed, as keep-alives
            req_id = apprequests.request_id(req)
            op = _get(req, "op", "str")
            handle = self._ops.get(op)
            if handle is None:
                raise RequestError("unknown_op", "unknown op '%s'; known: %s"
                                   % (op[:32], ", ".join(sorted(self._ops))))
            handle(client, req, req_id)
        except RequestError as exc:
            LOG.debug("%s: refused: %s: %s", client, exc.code, exc.message)
            self._error(client, req_id, exc.code, exc.message, exc.field)
        except Exception:
            # The top of the handling of one untrusted request (the
            # handler is the daemon's code): a bug there must cost this
            # request, not the heartbeat of the whole guest.
            LOG.exception("%s: request failed", client)
            self._error(client, req_id, "internal_error",
                        "the daemon failed to handle the request")

    def _op_register(self, client, req, req_id):
        name = _get(req, "name", "str")
        if not _NAME_RE.match(name):
            raise RequestError("invalid_field", "field 'name' must be 1 to 64 "
                               "characters from A-Z a-z 0-9 . _ -", "name")
        deadline_ms = _get(req, "deadline_ms", "int")
        if not MIN_DEADLINE_MS <= deadline_ms <= MAX_DEADLINE_MS:
            raise RequestError("invalid_field", "field 'deadline_ms' must be "
                               "from %d to %d" % (MIN_DEADLINE_MS,
                                                  MAX_DEADLINE_MS),
                               "deadline_ms")
        critical = _get(req, "critical", "bool", required=False,
                        default=True)
        self._registry.register(client, name, deadline_ms, critical,
                                self._clock())
        msg = {"op": "registered", "name": name}
        if req_id is not None:
            msg["id"] = req_id
        self._sockets.send(client, msg)

    def _op_health(self, client, req, req_id):
        healthy = _get(req, "healthy", "bool")
        reason = _get(req, "reason", "str", required=False)
        if reason is not None and len(reason) > MAX_REASON:
            raise RequestError("invalid_field", "field 'reason' must be at "
                               "most %d characters" % MAX_REASON, "reason")
        _get(req, "check", "int", required=False)
        self._registry.report(client, healthy, reason, self._clock())
        if req_id is not None:
            self._ok(client, req_id)

    def _op_unregister(self, client, req, req_id):
        self._registry.unregister(client)
        self._ok(client, req_id)

    def _op_subscribe(self, client, req, req_id):
        client.subscriptions.update(apprequests.events(req))
        self._ok(client, req_id)

    def _op_unsubscribe(self, client, req, req_id):
        client.subscriptions.difference_update(apprequests.events(req))
        self._ok(client, req_id)

    def _op_broadcast(self, client, req, req_id):
        text = _get(req, "payload", "str")
        # checked before decoding, so a huge string costs nothing
        if len(text) > 4 * ((MAX_PAYLOAD + 2) // 3):
            raise RequestError("payload_too_large", "a payload may be at "
                               "most %d bytes" % MAX_PAYLOAD)
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("bad_payload", "field 'payload' must be "
                               "base64 (RFC 4648, with padding)") from None
        if len(payload) > MAX_PAYLOAD:
            raise RequestError("payload_too_large", "a payload may be at "
                               "most %d bytes" % MAX_PAYLOAD)
        self.handler.on_broadcast(client, payload, req_id)

    def _op_status_query(self, client, req, req_id):
        self.handler.on_status_query(client, req_id)
