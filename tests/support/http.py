# SPDX-License-Identifier: Apache-2.0
"""A real HTTP server on a free loopback port, run in a thread for the
length of a ``with`` block: for tests of the HTTP clients of guestha's
sinks and of the cloud harness's stubs."""

import contextlib
import http.server
import threading


@contextlib.contextmanager
def serving(handler, **attributes):
    """Serve ``handler`` (a BaseHTTPRequestHandler class) on 127.0.0.1 at a
    free port; yields the server, with ``attributes`` set on it (the
    handler reads them as ``self.server.<name>``) and ``url`` its root."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    server.url = "http://127.0.0.1:%d" % server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
