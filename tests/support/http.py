# SPDX-License-Identifier: Apache-2.0
"""HTTP servers for tests: a real one on a free loopback port, run in a
thread for the length of a ``with`` block (:func:`serving`), for tests of
the HTTP clients of guestha's sinks and of the cloud harness's stubs; and
a wait for one in a child process, guestha-api, to answer
(:func:`wait_answering`)."""

import contextlib
import http.server
import threading
import urllib.error
import urllib.request

from guestha.testing.wait import wait_until


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


def wait_answering(url, process, timeout=60.0, details=None):
    """Wait until ``url`` answers 200 (an HTTP error or a refused
    connection is "not yet"), while ``process`` (a ``Popen`` serving it)
    runs.

    :param details: a callable returning text (the server's log) for the
        failure message.
    :raises AssertionError: when the process exits or ``timeout`` seconds
        pass first.
    """
    def answers():
        if process.poll() is not None:
            raise AssertionError("%s exited (%s) before answering at %s%s" % (
                process.args[0] if isinstance(process.args, list)
                else process.args, process.returncode, url,
                "" if details is None else ":\n" + details()))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(answers, timeout, "an answer at %s" % url, interval=0.1,
               details=details)
