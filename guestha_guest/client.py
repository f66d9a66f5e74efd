# SPDX-License-Identifier: Apache-2.0
"""A small blocking client of the application API, for applications.

::

    from guestha_guest.client import GuestHAClient

    def healthy():
        return worker_is_alive(), "worker stalled"

    with GuestHAClient(health_callback=healthy) as ha:
        ha.register("billing", deadline_ms=5000)
        ha.subscribe("broadcast", "notification")
        for event in ha.events():
            print(event)

Requests that have a reply (``register``, ``subscribe``, ``broadcast``,
``status``...) wait for it, raising :class:`GuestHAError` with the
daemon's code and message if it refuses.  Events that arrive meanwhile are
kept, in order, for :meth:`GuestHAClient.next_event`.  Errors that answer
no waiting request (a refused :meth:`GuestHAClient.report`, a broadcast
that the host refused after the daemon had accepted it) are events too:
``{"op": "error", ...}`` dicts, not exceptions, so that one refused
message does not end an application's event loop.  With a
``health_callback``, every ``check`` from the daemon is answered inside the
client (while waiting for a reply or for events) and never shown to the
caller; without one, ``check`` events are returned and the application
answers them with :meth:`GuestHAClient.report`.

A client object is not thread-safe: use it from one thread.  See
``doc/source/app-api.rst`` for the protocol itself.
"""

from __future__ import annotations

import base64
import collections
import json
import socket
import time

DEFAULT_SOCKET = "/run/guestha/app.sock"
#: Largest broadcast payload, in bytes (the daemon refuses larger ones).
MAX_PAYLOAD = 3050
#: Longest line accepted from the daemon (a status of many members is the
#: largest), and how many unclaimed events are kept.
MAX_LINE = 1024 * 1024
MAX_QUEUED = 10000


class GuestHAError(Exception):
    """The daemon refused a request, or the connection failed.

    ``code`` is the daemon's error code (``name_in_use``,
    ``not_registered``...) or one of this client's: ``timeout``,
    ``closed``, ``protocol``.
    """

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class GuestHATimeout(GuestHAError):
    """No reply in time."""

    def __init__(self, message):
        super().__init__("timeout", message)


class GuestHAConnectionClosed(GuestHAError):
    """The daemon closed the connection."""

    def __init__(self, message="the daemon closed the connection"):
        super().__init__("closed", message)


class GuestHAClient(object):
    """A connection to the guest daemon's application API.

    :param path: the daemon's socket.
    :param timeout: seconds to wait for a reply to a request.
    :param health_callback: called with the ``check`` message on every
        check; returns ``True``/``False`` or ``(healthy, reason)``.  If it
        raises, the application is reported unhealthy.
    """

    def __init__(self, path=DEFAULT_SOCKET, timeout=5.0,
                 health_callback=None):
        self.path = path
        self.timeout = timeout
        self.health_callback = health_callback
        self._sock = None
        self._buf = bytearray()
        self._queue = collections.deque()
        self._next_id = 0

    # -- connection -----------------------------------------------------------

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._buf = bytearray()
        self._queue.clear()
        return self

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def fileno(self):
        """The socket's descriptor, to wait for events in a selector.  Call
        :meth:`next_event` with ``timeout=0`` when it is readable (events
        may also be queued already: see :meth:`pending`)."""
        return self._conn().fileno()

    def pending(self):
        """Whether events are queued, to be returned without reading."""
        return bool(self._queue)

    def __enter__(self):
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- requests -------------------------------------------------------------

    def register(self, name, deadline_ms, critical=True):
        """Take part in health checks; returns the ``registered`` reply."""
        return self._request({"op": "register", "name": name,
                              "deadline_ms": deadline_ms,
                              "critical": critical}, ("registered",))

    def unregister(self):
        return self._request({"op": "unregister"})

    def report(self, healthy, reason=None, check=None, confirm=False):
        """Report health.  By default no reply is asked for (it is the
        cheap, frequent call); a refusal then comes back as an error from
        :meth:`next_event`.  ``confirm=True`` waits for the daemon's ``ok``.
        """
        msg = {"op": "health", "healthy": bool(healthy)}
        if reason is not None:
            msg["reason"] = str(reason)[:120]
        if check is not None:
            msg["check"] = check
        if confirm:
            return self._request(msg)
        self._write(msg)
        return None

    def subscribe(self, *events):
        """Receive ``broadcast``, ``notification`` and/or ``status``
        events."""
        return self._request({"op": "subscribe", "events": list(events)})

    def unsubscribe(self, *events):
        return self._request({"op": "unsubscribe", "events": list(events)})

    def broadcast(self, payload):
        """Send ``payload`` (bytes, at most 3050) to the other members of
        the server group.  Best effort: ``ok`` means the daemon sent it to
        the host, not that anyone received it."""
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD:
            # refused here: its line would be too long for the daemon
            raise GuestHAError("payload_too_large", "a payload may be at "
                               "most %d bytes" % MAX_PAYLOAD)
        return self._request({
            "op": "broadcast",
            "payload": base64.b64encode(payload).decode("ascii")})

    def status(self, timeout=None):
        """The Nova state of every member of the server group, this
        instance included: a list of ``{"instance": uuid, "state": str}``.
        """
        reply = self._request({"op": "status_query"}, ("status",),
                              timeout=timeout)
        return reply.get("members", [])

    # -- events ---------------------------------------------------------------

    def next_event(self, timeout=None):
        """The next event (a dict), or ``None`` after ``timeout`` seconds
        (``None``: wait for ever; 0: only what has arrived).  Raises
        :class:`GuestHAConnectionClosed` when the daemon goes away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._queue:
                return self._queue.popleft()
            msg = self._read_message(deadline)
            if msg is None:
                return None
            if self._is_event(msg):
                return msg

    def events(self, timeout=None):
        """Yield events until the daemon closes the connection or, with a
        ``timeout``, until none has come for that many seconds."""
        while True:
            try:
                event = self.next_event(timeout)
            except GuestHAConnectionClosed:
                return
            if event is None:
                return
            yield event

    # -- inside ---------------------------------------------------------------

    def _conn(self):
        if self._sock is None:
            raise GuestHAConnectionClosed("not connected")
        return self._sock

    def _write(self, msg):
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode(
            "utf-8")
        sock = self._conn()
        sock.settimeout(self.timeout)
        try:
            sock.sendall(data)
        except socket.timeout:
            # part of the line may have gone: the stream is unusable
            self.close()
            raise GuestHATimeout("the daemon does not read") from None
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise GuestHAConnectionClosed() from None

    def _request(self, msg, kinds=("ok",), timeout=None):
        self._next_id += 1
        req_id = self._next_id
        msg["id"] = req_id
        self._write(msg)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise GuestHATimeout("no reply to %s within %.1f s"
                                     % (msg["op"], wait))
            if reply.get("id") == req_id:
                if reply.get("op") == "error":
                    raise GuestHAError(str(reply.get("code")),
                                       str(reply.get("message")))
                if reply.get("op") in kinds:
                    return reply
            if self._is_event(reply):
                self._queue.append(reply)
                if len(self._queue) > MAX_QUEUED:
                    self._queue.popleft()  # oldest unclaimed event

    def _is_event(self, msg):
        """Whether ``msg``, which answers no waiting request, is for the
        caller; a check answered by the callback, or a late reply to a
        request that timed out, is not.  A late *error* is: it may refuse
        a broadcast that the daemon had already accepted."""
        if msg.get("id") is not None and msg.get("op") != "error":
            return False
        return not self._answer_check(msg)

    def _answer_check(self, msg):
        """Answer a ``check`` through the callback; True if answered."""
        if msg.get("op") != "check" or self.health_callback is None:
            return False
        try:
            result = self.health_callback(msg)
        except Exception as exc:  # noqa: BLE001 - the application's code
            # A health check that fails is an unhealthy application.
            result = (False, "health check failed: %s" % (
                type(exc).__name__))
        if isinstance(result, tuple):
            healthy, reason = result
        else:
            healthy, reason = result, None
        self.report(bool(healthy), None if healthy else reason,
                    check=msg.get("check"))
        return True

    def _read_message(self, deadline):
        """The next message from the daemon, or None at ``deadline``."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line.decode("utf-8"))
                except ValueError:
                    raise GuestHAError("protocol", "the daemon sent a line "
                                       "that is not JSON") from None
                if not isinstance(msg, dict):
                    raise GuestHAError("protocol", "the daemon sent a line "
                                       "that is not a JSON object")
                return msg
            if len(self._buf) > MAX_LINE:
                raise GuestHAError("protocol", "the daemon sent a line "
                                   "longer than %d bytes" % MAX_LINE)
            sock = self._conn()
            if deadline is None:
                sock.settimeout(None)
            else:
                # past the deadline: one look without waiting (timeout=0)
                sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.close()
                raise GuestHAConnectionClosed()
            self._buf += data
