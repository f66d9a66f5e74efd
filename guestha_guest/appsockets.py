# SPDX-License-Identifier: Apache-2.0
"""The application API's UNIX socket and its connections.

The socket lives in the daemon's selector loop; there are no threads.
:class:`AppSockets` registers its listening socket and every client socket
with the selector the caller passes to :meth:`AppSockets.start`, and each
key's ``data`` is a callable taking the event mask.  It bounds what an
application can cost: connections (``max_apps``; more are refused with
``too_many_apps``), accepts per readiness event, the length of a line
(:data:`MAX_LINE`) and what is queued for an application that does not
read (:data:`MAX_OUTBUF`; beyond it the application is disconnected).
"""

import errno
import functools
import json
import logging
import os
import selectors
import socket
import stat
import struct

LOG = logging.getLogger(__name__)

#: Longest line, in bytes, the terminating newline included.
MAX_LINE = 8192
#: Most bytes queued for one application; beyond it, it is disconnected.
MAX_OUTBUF = 256 * 1024

_RECV_SIZE = 65536
# Connections accepted per readiness event, so that a connect storm cannot
# hold the loop.
_ACCEPT_BATCH = 16
# Out of descriptors or memory: stop accepting until a client leaves,
# rather than spinning on a listener that stays readable.
_ACCEPT_PAUSE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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
    and hands them back to :meth:`~guestha_guest.appapi.AppServer.reply`;
    it need not look inside.  ``name`` is the registered name (``None``
    when not registered); ``pid`` and ``uid`` are the peer's credentials
    if known.
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


class AppSockets(object):
    """The listening socket and the connections: lines in, JSON out.

    :param path: the socket's path.
    :param mode: its permissions (an int such as ``0o660``).
    :param max_apps: the most clients connected at once.
    :param on_line: ``on_line(client, line)``: a line received (without
        its newline).
    :param close: ``close(client, reason)``: disconnect a client that
        failed (it ends with :meth:`drop`).
    """

    def __init__(self, path, mode, max_apps, on_line, close):
        self.path = path
        self.mode = mode
        self.max_apps = max_apps
        self._on_line = on_line
        self._close = close
        self._sel = None
        self._listener = None
        self._inode = None
        self._accept_paused = False
        self._full_logged = False
        self._serial = 0
        #: the connected clients
        self.clients = []

    # -- the listening socket ----------------------------------------------

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
        for client in list(self.clients):
            self.drop(client)
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

    def _accept(self, mask):
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_PAUSE and self.clients:
                    LOG.error("cannot accept applications: %s; waiting for "
                              "one to leave", exc)
                    self._sel.unregister(self._listener)
                    self._accept_paused = True
                else:
                    LOG.warning("accepting an application failed: %s", exc)
                return
            if len(self.clients) >= self.max_apps:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            self._serial += 1
            client = AppClient(sock, self._serial)
            self.clients.append(client)
            self._set_events(client, selectors.EVENT_READ)
            LOG.debug("%s connected", client)

    def _refuse(self, sock):
        if not self._full_logged:
            LOG.warning("refusing applications: %d are connected, the most "
                        "allowed (max_apps)", len(self.clients))
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

    # -- the connections ---------------------------------------------------

    def drop(self, client):
        """Close a client's connection (no questions asked)."""
        client.closed = True
        if client.events:
            self._sel.unregister(client.sock)
            client.events = 0
        client.sock.close()
        client.rbuf = bytearray()
        client.wbuf = bytearray()
        self.clients.remove(client)
        if self._accept_paused and self._listener is not None:
            self._sel.register(self._listener, selectors.EVENT_READ,
                               self._accept)
            self._accept_paused = False
        if len(self.clients) < self.max_apps:
            self._full_logged = False

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
            self._close(client, "read failed: %s" % exc)
            return
        if not data:
            self._close(client, None)
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
            self._on_line(client, line)
            if client.closed:
                return
        del buf[:start]
        if len(buf) >= MAX_LINE:
            # no newline within MAX_LINE bytes: it cannot end in time
            self._too_long(client)

    def _too_long(self, client):
        self.send(client, {
            "op": "error", "code": "line_too_long",
            "message": "a line may be at most %d bytes, the newline "
                       "included" % MAX_LINE})
        self._close(client, "sent a line longer than %d bytes" % MAX_LINE)

    def send(self, client, msg):
        """Queue ``msg`` (a dict) for ``client`` and write what the socket
        takes; False if the client is gone (or was disconnected now, as it
        does not read)."""
        if client.closed:
            return False
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode(
            "utf-8")
        if len(client.wbuf) + len(data) > MAX_OUTBUF:
            LOG.warning("%s does not read its messages (%d bytes queued)",
                        client, len(client.wbuf))
            self._close(client, "output buffer full")
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
                self._close(client, "write failed: %s" % exc)
                return
            del client.wbuf[:n]
        events = selectors.EVENT_READ
        if client.wbuf:
            events |= selectors.EVENT_WRITE
        self._set_events(client, events)
