# SPDX-License-Identifier: Apache-2.0
"""``guestha-api``: the REST API in a small threaded HTTP server, for an
installation too small for uWSGI (see :mod:`guestha.api.wsgi` for the
others)."""

import logging as std_logging
import signal
import socketserver
import sys
import threading
from wsgiref import simple_server

from oslo_config import cfg
from oslo_log import log as logging

from guestha.conf import opts

LOG = logging.getLogger(__name__)


def prepare(argv, conf=cfg.CONF):
    opts.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project="guestha", prog="guestha-api")
    return conf


def setup_logging(conf):
    logging.setup(conf, "guestha")


def build_app(conf):
    from guestha.api import app
    return app.make_app(conf)


class _Handler(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        LOG.info("%s %s", self.address_string(), fmt % args)


class ThreadedWSGIServer(socketserver.ThreadingMixIn,
                         simple_server.WSGIServer):
    """wsgiref's server, one thread per request, at most ``threads`` at
    once (the others wait in the listen backlog)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, threads, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(threads)
        simple_server.WSGIServer.__init__(self, address, *args, **kwargs)

    def process_request(self, request, client_address):
        self._slots.acquire()
        try:
            socketserver.ThreadingMixIn.process_request(
                self, request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            socketserver.ThreadingMixIn.process_request_thread(
                self, request, client_address)
        finally:
            self._slots.release()


def make_server(conf, application, host=None, port=None):
    host = conf.api.host if host is None else host
    port = conf.api.port if port is None else port
    server = ThreadedWSGIServer((host, port), conf.api.threads,
                                _Handler)
    server.set_app(application)
    return server


def main(argv=None):
    conf = prepare(sys.argv[1:] if argv is None else argv)
    setup_logging(conf)
    # wsgiref writes its own lines to stderr otherwise
    std_logging.getLogger("wsgiref").setLevel(std_logging.WARNING)
    application = build_app(conf)
    try:
        server = make_server(conf, application)
    except OSError as exc:
        LOG.error("guestha-api cannot listen on %s:%s: %s", conf.api.host,
                  conf.api.port, exc)
        return 1

    def _stop(signum, frame):
        LOG.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    LOG.info("guestha-api listening on http://%s:%d/ (auth_strategy %s)",
             server.server_address[0], server.server_address[1],
             conf.api.auth_strategy)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    LOG.info("guestha-api stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
