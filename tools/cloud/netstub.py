# SPDX-License-Identifier: Apache-2.0
"""A stand-in for Neutron's API that knows no port and no network.

Nova talks to the ``network`` service even for servers booted with no
network (``networks: none``): ``GET /servers/{id}`` lists the server's ports
for its security groups (HTTP 500 without a network endpoint) and
nova-compute asks for ports when it cleans an instance up.  Every such call
is a ``GET`` of a collection, answered here with an empty list.  guestha
never touches networking, which is why this stand-in serves its tests; it is
no Neutron and refuses anything but reads (HTTP 405).

    python -m tools.cloud.netstub --port 9696 [--host 127.0.0.1]
"""

import argparse
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/")
        base = "http://%s:%d" % self.server.server_address[:2]
        version = {"id": "v2.0", "status": "CURRENT",
                   "links": [{"rel": "self", "href": base + "/v2.0/"}]}
        if path == "":
            self._send(200, {"versions": [version]})
        elif path == "/v2.0":
            self._send(200, {"resources": []})
        elif path.startswith("/v2.0/"):
            parts = path[len("/v2.0/"):].split("/")
            name = parts[-1]
            if name.endswith(".json"):
                name = name[:-len(".json")]
            if len(parts) == 1:
                # a collection: /v2.0/ports, /v2.0/networks, /v2.0/extensions
                self._send(200, {name.replace("-", "_"): []})
            else:
                self._send(404, {"NeutronError": {
                    "type": "NotFound", "message": "%s not found" % path,
                    "detail": ""}})
        else:
            self._send(404, {"error": "not found"})

    def _refuse(self):
        self._send(405, {"NeutronError": {
            "type": "MethodNotAllowed",
            "message": "the harness's network stand-in only answers GET",
            "detail": ""}})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def log_message(self, fmt, *args):
        sys.stderr.write("netstub: %s %s\n" % (self.address_string(),
                                               fmt % args))
        sys.stderr.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9696)
    args = parser.parse_args(argv)
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
