# SPDX-License-Identifier: Apache-2.0
"""A stand-in controller for functional tests, run as a child process.

    python -m guestha.testing.controller_stub --url URL --out events.jsonl

Serves the controller side of the RPC API (:mod:`guestha.rpc.api`) on the
real broker.  ``report_events`` appends one line per received event to
``--out``: ``{"dup": bool, "event": {...}}``, where ``dup`` says the id was
already accepted (by this or an earlier run on the same file), fsyncs, and
only then answers with the ids: the "durable responsibility" a real
controller takes.  Casts are appended to ``--casts`` when given.

Prints ``ready`` on stdout once it listens; SIGTERM stops it.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading

from oslo_config import cfg
import oslo_messaging

from guestha import rpc


class Endpoint(object):
    target = rpc.endpoint_target(rpc.CONTROLLER_NAMESPACE)

    def __init__(self, out_path, casts_path=None):
        self._lock = threading.Lock()
        self._seen = set()
        if os.path.exists(out_path):
            with open(out_path) as f:
                for line in f:
                    self._seen.add(json.loads(line)["event"]["id"])
        self._out = open(out_path, "a")
        self._casts = open(casts_path, "a") if casts_path else None

    def report_events(self, ctxt, host, events):
        with self._lock:
            for event in events:
                dup = event["id"] in self._seen
                self._seen.add(event["id"])
                self._out.write(json.dumps({"dup": dup, "event": event})
                                + "\n")
            self._out.flush()
            os.fsync(self._out.fileno())
        return {"accepted": [e["id"] for e in events]}

    def _cast(self, method, **kwargs):
        if self._casts is None:
            return
        with self._lock:
            self._casts.write(json.dumps(dict(kwargs, method=method)) + "\n")
            self._casts.flush()

    def relay_broadcast(self, ctxt, host, instance, payload_b64, seq):
        self._cast("relay_broadcast", host=host, instance=instance,
                   payload_b64=payload_b64, seq=seq)

    def query_status(self, ctxt, host, instance, seq):
        self._cast("query_status", host=host, instance=instance, seq=seq)

    def agent_alive(self, ctxt, host, instances):
        self._cast("agent_alive", host=host, instances=instances)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="transport URL")
    parser.add_argument("--out", required=True, help="events JSON lines")
    parser.add_argument("--casts", help="casts JSON lines")
    parser.add_argument("--name", default="stub-%d" % os.getpid())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="controller_stub %(levelname)s %(name)s: "
                               "%(message)s")

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())

    transport = rpc.get_transport(cfg.CONF, url=args.url)
    server = oslo_messaging.get_rpc_server(
        transport, rpc.controller_server_target(args.name),
        [Endpoint(args.out, args.casts)])
    server.start()
    print("ready", flush=True)
    stopping.wait()
    server.stop()
    server.wait()
    transport.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
