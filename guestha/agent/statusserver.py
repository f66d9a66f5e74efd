# SPDX-License-Identifier: Apache-2.0
"""The agent's status socket: ``guestha-agent-status`` and the benchmarks
connect, and get the status document as one line of JSON.

The listener is one of the loop's sockets: the document is made in the
loop's thread (it reads every instance), and written from a short-lived
thread of its own, so that a slow reader never holds the loop.  The
client side is :mod:`guestha.agent.status`.
"""

import json
import os
import socket
import threading


class StatusServer(object):
    """Serves ``document()`` on the UNIX socket at ``path``.

    :param document: returns the status document (a JSON-serialisable
        dict); called in the loop's thread.
    """

    def __init__(self, path, document):
        self.path = path
        self._document = document
        self._listener = None

    def open(self, poller):
        """Listen (replacing a stale socket file), and have ``poller`` (an
        :class:`~guestha.agent.ioloop.Poller`) call us for each client."""
        path = self.path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o660)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        poller.register(listener, self._client)

    def close(self):
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _client(self, listener, mask):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        data = (json.dumps(self._document()) + "\n").encode()
        # writing may take a while for thousands of instances and a slow
        # reader: not in the loop's thread
        threading.Thread(target=_send_and_close, args=(conn, data),
                         daemon=True).start()


def _send_and_close(conn, data):
    try:
        conn.settimeout(5.0)
        conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
