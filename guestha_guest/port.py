# SPDX-License-Identifier: Apache-2.0
"""The guest's end of the channel: the virtio-serial port.

Theory of operation
-------------------
The port is a character device, ``/dev/virtio-ports/org.openstack.guestha.0``
(a udev symlink to ``/dev/vportNpM``).  It behaves unlike a socket:

* it may not exist yet: the host hot-plugs the channel into a running
  domain, so we poll for the path;
* it stays open when the host side goes away.  The kernel then reports
  POLLHUP and ``read()`` returns 0 bytes until a host connects again, so a
  0-byte read means "no host now", not end of file.  We stop polling the
  descriptor for a short while instead of spinning on POLLHUP, and notice
  the host's return by the next successful read;
* after a hot-unplug the descriptor fails with ENODEV (or EIO): we close it
  and wait for the path again, since a re-plugged port reuses the name.

:class:`UnixListenPort` plays QEMU's part instead (a UNIX socket server that
serves one client at a time), so the daemon can run outside a VM, against
a host agent or a test standing in for one, with the same code path.

Both present the same interface to the daemon: ``open(selector, now)``,
``write(data)``, ``close()``, and callbacks ``on_data(data, now)``,
``on_host_connected(now)``, ``on_host_gone(now)``.  Outgoing bytes are
buffered up to ``MAX_OUTBUF``; beyond that a line is dropped (the protocol
recovers by resynchronising), never queued without bound.

A ``sync`` is the one line that must not be lost that way: only the latest
one counts (its nonce is the only one the connection accepts), so the
buffer keeps just the latest sync not yet begun, and makes room for it by
dropping what was queued before it and not begun (written for a host that
is not reading).  So after hours without a host the line waiting for the
next host is the current ``sync``, not the first of many stale ones.
"""

import errno
import logging
import os
import selectors
import socket
import stat
import time

LOG = logging.getLogger(__name__)

#: Bytes of outgoing data kept while the port cannot take them.
MAX_OUTBUF = 16 * 1024
#: Seconds between looks for a port that does not exist yet, and between
#: looks for a host while none is connected.
POLL_PATH = 0.5
POLL_HOST = 0.25
_GONE = (errno.ENODEV, errno.EIO, errno.EBADF, errno.ENXIO)


class _Port(object):
    def __init__(self, path, on_data, on_host_connected, on_host_gone,
                 clock=time.monotonic):
        self.path = path
        self._clock = clock
        self.on_data = on_data
        self.on_host_connected = on_host_connected
        self.on_host_gone = on_host_gone
        self.fd = None
        self.host_connected = False
        self.dropped = 0
        self._sel = None
        self._registered = 0
        self._out = bytearray()
        # bytes at the head of _out that finish a line already begun
        self._begun = 0
        # (start, end) in _out of the queued sync not yet begun, or None
        self._sync_span = None
        self.retry_at = None  # when the loop should call poll()

    def _set_events(self, events):
        if self.fd is None or self._sel is None:
            return
        if events == self._registered:
            return
        if self._registered and events:
            self._sel.modify(self.fd, events, self._ready)
        elif events:
            self._sel.register(self.fd, events, self._ready)
        else:
            self._sel.unregister(self.fd)
        self._registered = events

    def write(self, data, sync=False):
        """Queue ``data`` (whole lines); returns False if it was dropped.

        ``sync``: the data is a ``sync`` (with its empty line before it);
        it replaces a queued sync not yet begun, and never finds the buffer
        full (lines queued before it and not begun are dropped instead).
        """
        if self.fd is None:
            self.dropped += 1
            return False
        if sync:
            if self._sync_span is not None:
                start, end = self._sync_span
                del self._out[start:end]
                self._sync_span = None
            if len(self._out) + len(data) > MAX_OUTBUF:
                self.dropped += self._out.count(b"\n", self._begun)
                del self._out[self._begun:]
            self._sync_span = (len(self._out), len(self._out) + len(data))
        elif len(self._out) + len(data) > MAX_OUTBUF:
            self.dropped += 1
            return False
        self._out += data
        self._flush()
        return True

    def _flush(self):
        while self._out and self.fd is not None:
            try:
                n = self._write_some(bytes(self._out))
            except BlockingIOError:
                break
            except OSError as exc:
                self._failed(exc)
                return
            self._consumed(n)
        self._update()

    def _consumed(self, n):
        # n bytes of _out were written: the rest of a line begun must go
        # out before anything else, and a sync begun cannot be replaced
        if n <= 0:
            return
        ended = self._out.rfind(b"\n", 0, n)
        if ended == n - 1:
            self._begun = 0
        else:
            nl = self._out.find(b"\n", n)
            self._begun = (len(self._out) if nl < 0 else nl + 1) - n
        del self._out[:n]
        if self._sync_span is not None:
            start, end = self._sync_span
            self._sync_span = None if start < n else (start - n, end - n)

    def pending(self):
        return len(self._out)

    def _update(self):
        events = 0
        if self.fd is not None and self.retry_at is None:
            events = selectors.EVENT_READ
            if self._out:
                events |= selectors.EVENT_WRITE
        self._set_events(events)

    def close(self):
        self._set_events(0)
        if self.fd is not None:
            self._close_fd()
        self.fd = None
        self._out = bytearray()
        self._begun = 0
        self._sync_span = None
        self.host_connected = False


class DevicePort(_Port):
    """A virtio-serial port device (or any character device, such as a pty
    standing in for one in tests)."""

    def open(self, selector, now):
        self._sel = selector
        return self.poll(now)

    def poll(self, now):
        """Called by the loop when ``retry_at`` has passed."""
        self.retry_at = None
        if self.fd is None:
            try:
                fd = os.open(self.path,
                             os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
                             | os.O_NOCTTY)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENXIO,
                                     errno.ENODEV):
                    LOG.error("cannot open %s: %s", self.path, exc)
                self.retry_at = now + POLL_PATH
                return False
            if not stat.S_ISCHR(os.fstat(fd).st_mode):
                os.close(fd)
                LOG.error("%s is not a character device", self.path)
                self.retry_at = now + POLL_PATH
                return False
            self.fd = fd
            LOG.info("opened %s", self.path)
        self._update()
        return True

    def _ready(self, mask):
        if mask & selectors.EVENT_READ:
            self._read()
        if self.fd is not None and mask & selectors.EVENT_WRITE:
            self._flush()

    def _read(self):
        now = self._clock()
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._failed(exc)
            return
        if not data:
            # no host on the other end (POLLHUP): look again shortly
            if self.host_connected:
                self.host_connected = False
                self.on_host_gone(now)
            self.retry_at = now + POLL_HOST
            self._update()
            return
        if not self.host_connected:
            self.host_connected = True
            self.on_host_connected(now)
        self.on_data(data, now)

    def _write_some(self, data):
        return os.write(self.fd, data)

    def _failed(self, exc):
        if exc.errno in _GONE:
            LOG.warning("port %s went away (%s); waiting for it to return",
                        self.path, os.strerror(exc.errno))
        else:
            LOG.error("port %s failed: %s; reopening", self.path, exc)
        was = self.host_connected
        self.close()
        now = self._clock()
        self.retry_at = now + POLL_PATH
        if was:
            self.on_host_gone(now)

    def _close_fd(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class UnixListenPort(_Port):
    """QEMU's side of a ``<channel type='unix'>``, played by the daemon: a
    listening UNIX socket that serves one host client at a time."""

    def open(self, selector, now):
        self._sel = selector
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(4)
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self.sock = None
        return True

    def poll(self, now):
        self.retry_at = None
        self._update()
        return True

    def _accept(self, mask):
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self.fd is not None:
            # QEMU serves one client at a time; a second one waits
            # unanswered.  Keep it simple: refuse it.
            sock.close()
            return
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.host_connected = True
        self._update()
        self.on_host_connected(self._clock())

    def _ready(self, mask):
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(exc)
                return
            if not data:
                self._failed(None)
                return
            self.on_data(data, self._clock())
        if self.fd is not None and mask & selectors.EVENT_WRITE:
            self._flush()

    def _write_some(self, data):
        return self.sock.send(data)

    def _failed(self, exc):
        if exc is not None:
            LOG.warning("host connection failed: %s", exc)
        self.close()
        self.on_host_gone(self._clock())

    def _close_fd(self):
        self.sock.close()
        self.sock = None

    def shutdown(self):
        self.close()
        if self._sel is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
        self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def make_port(spec, on_data, on_host_connected, on_host_gone,
              clock=time.monotonic):
    """A port from a config value: ``unix-listen:PATH`` or a device path."""
    if spec.startswith("unix-listen:"):
        return UnixListenPort(spec[len("unix-listen:"):], on_data,
                              on_host_connected, on_host_gone, clock)
    return DevicePort(spec, on_data, on_host_connected, on_host_gone, clock)
