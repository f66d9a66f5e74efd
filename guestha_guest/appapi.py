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
handler, the daemon, which answers them later with :meth:`AppServer.reply`.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import json
import logging
import os
import re
import selectors
import socket
import stat
import struct
import time

from guestha_guest.protocol.messages import MAX_PAYLOAD

LOG = logging.getLogger(__name__)

#: Longest line, in bytes, the terminating newline included.
MAX_LINE = 8192
#: Most bytes queued for one application; beyond it, it is disconnected.
MAX_OUTBUF = 256 * 1024
#: Events an application can subscribe to.
EVENTS = ("broadcast", "notification", "status")
#: Bounds of a registration's deadline, in ms.
MIN_DEADLINE_MS = 100
MAX_DEADLINE_MS = 600000
#: Longest reason in a health report, in characters.
MAX_REASON = 120
#: Longest string ``id``, in characters.
MAX_ID = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RECV_SIZE = 65536
# Connections accepted per readiness event, so that a connect storm cannot
# hold the loop.
_ACCEPT_BATCH = 16
# Out of descriptors or memory: stop accepting until a client leaves,
# rather than spinning on a listener that stays readable.
_ACCEPT_PAUSE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class RequestError(Exception):
    """A request refused; becomes an ``error`` reply."""

    def __init__(self, code, message, field=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def _peer_credentials(sock):
    """``(pid, uid)`` of the process at the other end, or ``(None, None)``.
    Only for logs: it tells the administrator *which* application."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None, None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class AppClient(object):
    """One connected application.

    The daemon gets these as the ``client`` argument of the handler calls
    and hands them back to :meth:`AppServer.reply`; it need not look
    inside.  ``name`` is the registered name (``None`` when not
    registered); ``pid`` and ``uid`` are the peer's credentials if known.
    """

    def __init__(self, sock, serial):
        self.sock = sock
        self.serial = serial
        self.pid, self.uid = _peer_credentials(sock)
        self.name = None
        self.critical = True
        self.deadline_s = None
        self.report_at = None  # monotonic time of the last report
        # when the first check after the last report was sent (None: no
        # check unanswered); the deadline runs from there
        self.asked_at = None
        self.healthy = True
        self.reason = None
        self.subscriptions = set()
        self.closed = False
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.events = 0  # what the selector watches for

    def __repr__(self):
        who = "app %s" % self.name if self.name else "client #%d" % (
            self.serial)
        if self.pid is not None:
            who += " (pid %d)" % self.pid
        return who


# -- request checks -----------------------------------------------------------

def _get(req, field, kind, required=True, default=None):
    """``req[field]`` checked to be of ``kind`` ("bool", "int", "str",
    "list")."""
    if field not in req or req[field] is None:
        if required:
            raise RequestError("invalid_field", "field '%s' is required"
                               % field, field)
        return default
    value = req[field]
    # bool is an int in Python, never in JSON
    ok = {"bool": type(value) is bool,
          "int": type(value) is int,
          "str": isinstance(value, str),
          "list": isinstance(value, list)}[kind]
    if not ok:
        words = {"bool": "true or false", "int": "an integer",
                 "str": "a string", "list": "a list"}
        raise RequestError("invalid_field", "field '%s' must be %s"
                           % (field, words[kind]), field)
    return value


def _request_id(req):
    """The request's ``id``: a string of at most 64 characters or an
    integer, echoed in the reply."""
    req_id = req.get("id")
    if req_id is None:
        return None
    if (type(req_id) is int
            or (isinstance(req_id, str) and len(req_id) <= MAX_ID)):
        return req_id
    raise RequestError("invalid_field", "field 'id' must be an integer or "
                       "a string of at most %d characters" % MAX_ID, "id")


def _clean(text):
    return "".join(c if c.isprintable() else " " for c in text)


def _events(req):
    events = _get(req, "events", "list")
    for event in events:
        if event not in EVENTS:
            raise RequestError("invalid_field", "field 'events' may hold "
                               "only %s" % ", ".join(EVENTS), "events")
    return events


class AppServer(object):
    """The application API server.

    :param path: the socket's path.
    :param mode: its permissions (an int such as ``0o660``).
    :param max_apps: the most clients connected at once; more are refused
        with a ``too_many_apps`` error.
    :param handler: the daemon: ``on_broadcast(client, payload, req_id)``
        and ``on_status_query(client, req_id)``, which answer later through
        :meth:`reply`.
    :param clock: the monotonic clock used when a request arrives (the
        start of a deadline, the time of a health report).
    """

    def __init__(self, path, mode, max_apps, handler, clock=time.monotonic):
        self.path = path
        self.mode = mode
        self.max_apps = max_apps
        self.handler = handler
        self._clock = clock
        self._sel = None
        self._listener = None
        self._inode = None
        self._accept_paused = False
        self._full_logged = False
        self._serial = 0
        self._check = 0
        self._clients = []
        self._by_name = {}    # registered name -> AppClient
        self._departed = {}   # name -> time a critical app left unregistered
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
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Created inaccessible and opened up by chmod, so that no one
            # can connect while the socket has the umask's permissions.
            # (umask is per process; the daemon is single-threaded.)
            old = os.umask(0o777)
            try:
                listener.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, self.mode)
            listener.listen(min(self.max_apps, socket.SOMAXCONN))
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self._sel = selector
        selector.register(listener, selectors.EVENT_READ, self._accept)
        LOG.info("application API listening on %s", self.path)

    def _remove_stale(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "exists and is not a socket",
                          self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            live = False  # a socket left by a daemon that is gone
        except BlockingIOError:
            live = True   # a full backlog: someone is listening
        else:
            live = True
        finally:
            probe.close()
        if live:
            raise OSError(errno.EADDRINUSE, "another server is listening "
                          "on it", self.path)
        os.unlink(self.path)

    def stop(self):
        """Close every connection and the socket, and remove its file."""
        for client in list(self._clients):
            self._drop(client)
        self._by_name.clear()
        self._departed.clear()
        if self._listener is None:
            return
        if not self._accept_paused:
            self._sel.unregister(self._listener)
        self._accept_paused = False
        self._listener.close()
        self._listener = None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                # only our own: a newer daemon may have replaced it
                os.unlink(self.path)
        except OSError:
            pass

    # -- what the daemon calls ------------------------------------------------

    @property
    def clients(self):
        """The connected clients."""
        return list(self._clients)

    def counts(self):
        """Numbers for a status report."""
        return {
            "connected": len(self._clients),
            "registered": len(self._by_name),
            "critical": sum(1 for c in self._by_name.values() if c.critical),
            "departed": len(self._departed),
            "subscribers": {e: sum(1 for c in self._clients
                                   if e in c.subscriptions) for e in EVENTS},
        }

    def reply(self, client, msg):
        """Send ``msg`` (a dict) to one client; False if it is gone (or was
        dropped now because it does not read)."""
        return self._send(client, msg)

    def publish(self, event, msg, skip=None):
        """Send ``msg`` to every subscriber of ``event`` except ``skip``;
        returns how many it was sent to."""
        sent = 0
        for client in list(self._clients):
            if client is not skip and event in client.subscriptions:
                if self._send(client, msg):
                    sent += 1
        return sent

    def send_checks(self, now):
        """Ask every registered application to report (``check``)."""
        self._check += 1
        msg = {"op": "check", "check": self._check}
        for client in list(self._by_name.values()):
            if client.asked_at is None:
                client.asked_at = now
            self._send(client, msg)
        return self._check

    def health(self, now):
        """``(healthy, reason)`` of the registered critical applications."""
        problems = []
        for name, client in self._by_name.items():
            if not client.critical:
                continue
            if not client.healthy:
                problems.append((name, "app %s: %s" % (
                    name, client.reason or "unhealthy")))
            elif (client.asked_at is not None
                  and now - client.asked_at > client.deadline_s):
                problems.append((name, "app %s stopped answering (%d ms)" % (
                    name, round((now - client.report_at) * 1000))))
        for name in self._departed:
            problems.append((name, "app %s disconnected" % name))
        if not problems:
            return True, None
        problems.sort()
        return False, "; ".join(reason for _name, reason in problems)

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
        if client.name is not None:
            self._by_name.pop(client.name, None)
            if client.critical:
                if len(self._departed) >= self.max_apps:
                    # bounded: an application that registers under ever new
                    # names and leaves must not grow this without end
                    oldest = next(iter(self._departed))
                    del self._departed[oldest]
                    LOG.warning("forgetting departed app %s: too many "
                                "departed apps", oldest)
                self._departed[client.name] = self._clock()
        self._drop(client)

    # -- sockets --------------------------------------------------------------

    def _drop(self, client):
        client.closed = True
        if client.events:
            self._sel.unregister(client.sock)
            client.events = 0
        client.sock.close()
        client.rbuf = bytearray()
        client.wbuf = bytearray()
        self._clients.remove(client)
        if self._accept_paused and self._listener is not None:
            self._sel.register(self._listener, selectors.EVENT_READ,
                               self._accept)
            self._accept_paused = False
        if len(self._clients) < self.max_apps:
            self._full_logged = False

    def _accept(self, mask):
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_PAUSE and self._clients:
                    LOG.error("cannot accept applications: %s; waiting for "
                              "one to leave", exc)
                    self._sel.unregister(self._listener)
                    self._accept_paused = True
                else:
                    LOG.warning("accepting an application failed: %s", exc)
                return
            if len(self._clients) >= self.max_apps:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            self._serial += 1
            client = AppClient(sock, self._serial)
            self._clients.append(client)
            self._set_events(client, selectors.EVENT_READ)
            LOG.debug("%s connected", client)

    def _refuse(self, sock):
        if not self._full_logged:
            LOG.warning("refusing applications: %d are connected, the most "
                        "allowed (max_apps)", len(self._clients))
            self._full_logged = True
        line = json.dumps({"op": "error", "code": "too_many_apps",
                           "message": "%d applications are connected, the "
                           "most allowed" % self.max_apps},
                          separators=(",", ":")) + "\n"
        try:
            sock.setblocking(False)
            sock.send(line.encode("utf-8"))
        except OSError:
            pass
        sock.close()

    def _set_events(self, client, events):
        if events == client.events:
            return
        cb = functools.partial(self._ready, client)
        if client.events:
            self._sel.modify(client.sock, events, cb)
        else:
            self._sel.register(client.sock, events, cb)
        client.events = events

    def _ready(self, client, mask):
        if mask & selectors.EVENT_READ:
            self._read(client)
        if not client.closed and mask & selectors.EVENT_WRITE:
            self._flush(client)

    def _read(self, client):
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close_client(client, "read failed: %s" % exc)
            return
        if not data:
            self.close_client(client)
            return
        buf = client.rbuf
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if end + 1 - start > MAX_LINE:
                self._too_long(client)
                return
            line = bytes(buf[start:end])
            start = end + 1
            self._handle_line(client, line)
            if client.closed:
                return
        del buf[:start]
        if len(buf) >= MAX_LINE:
            # no newline within MAX_LINE bytes: it cannot end in time
            self._too_long(client)

    def _too_long(self, client):
        self._error(client, None, "line_too_long",
                    "a line may be at most %d bytes, the newline included"
                    % MAX_LINE)
        self.close_client(client, "sent a line longer than %d bytes"
                          % MAX_LINE)

    def _send(self, client, msg):
        if client.closed:
            return False
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode(
            "utf-8")
        if len(client.wbuf) + len(data) > MAX_OUTBUF:
            LOG.warning("%s does not read its messages (%d bytes queued)",
                        client, len(client.wbuf))
            self.close_client(client, "output buffer full")
            return False
        client.wbuf += data
        self._flush(client)
        return not client.closed

    def _flush(self, client):
        while client.wbuf:
            try:
                n = client.sock.send(client.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close_client(client, "write failed: %s" % exc)
                return
            del client.wbuf[:n]
        events = selectors.EVENT_READ
        if client.wbuf:
            events |= selectors.EVENT_WRITE
        self._set_events(client, events)

    # -- requests -------------------------------------------------------------

    def _error(self, client, req_id, code, message, field=None):
        msg = {"op": "error", "code": code, "message": message}
        if field is not None:
            msg["field"] = field
        if req_id is not None:
            msg["id"] = req_id
        self._send(client, msg)

    def _ok(self, client, req_id):
        msg = {"op": "ok"}
        if req_id is not None:
            msg["id"] = req_id
        self._send(client, msg)

    def _handle_line(self, client, line):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return  # blank lines are allowed, as keep-alives
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            self._error(client, None, "invalid_json", "a line must be UTF-8")
            return
        except (ValueError, RecursionError) as exc:
            # RecursionError: nesting deeper than the decoder allows
            self._error(client, None, "invalid_json",
                        "not valid JSON: %s" % exc)
            return
        if not isinstance(req, dict):
            self._error(client, None, "invalid_json",
                        "a line must hold one JSON object")
            return
        req_id = None
        try:
            req_id = _request_id(req)
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
        other = self._by_name.get(name)
        if other is not None and other is not client:
            raise RequestError("name_in_use", "another connection has "
                               "registered '%s'" % name)
        if client.name is not None and client.name != name:
            # registering under a new name replaces the old registration
            del self._by_name[client.name]
        client.name = name
        client.critical = critical
        client.deadline_s = deadline_ms / 1000.0
        client.report_at = self._clock()
        client.asked_at = None
        client.healthy = True
        client.reason = None
        self._by_name[name] = client
        if self._departed.pop(name, None) is not None:
            LOG.info("%s registered again", client)
        else:
            LOG.info("%s registered (deadline %d ms, %s)", client,
                     deadline_ms, "critical" if critical else "not critical")
        msg = {"op": "registered", "name": name}
        if req_id is not None:
            msg["id"] = req_id
        self._send(client, msg)

    def _op_health(self, client, req, req_id):
        healthy = _get(req, "healthy", "bool")
        reason = _get(req, "reason", "str", required=False)
        if reason is not None and len(reason) > MAX_REASON:
            raise RequestError("invalid_field", "field 'reason' must be at "
                               "most %d characters" % MAX_REASON, "reason")
        _get(req, "check", "int", required=False)
        if client.name is None:
            raise RequestError("not_registered", "register before reporting "
                               "health")
        reason = _clean(reason) if reason else None
        if healthy != client.healthy or reason != client.reason:
            if healthy:
                LOG.info("%s reports healthy", client)
            else:
                LOG.info("%s reports unhealthy: %s", client, reason)
        client.healthy = healthy
        client.reason = None if healthy else reason
        client.report_at = self._clock()
        client.asked_at = None
        if req_id is not None:
            self._ok(client, req_id)

    def _op_unregister(self, client, req, req_id):
        if client.name is not None:
            LOG.info("%s unregistered", client)
            del self._by_name[client.name]
            client.name = None
        self._ok(client, req_id)

    def _op_subscribe(self, client, req, req_id):
        client.subscriptions.update(_events(req))
        self._ok(client, req_id)

    def _op_unsubscribe(self, client, req, req_id):
        client.subscriptions.difference_update(_events(req))
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
