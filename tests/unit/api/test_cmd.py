# SPDX-License-Identifier: Apache-2.0
"""guestha-api's own server: several requests at once, over a real
socket on the loopback."""

import concurrent.futures
import json
import threading
import urllib.request

from guestha.api import app as app_mod
from guestha.cmd import api as api_cmd
from tests.unit.api.test_app import ADMIN
from tests.unit.api.test_app import make_conf
from tests.unit.api.test_app import world  # noqa: F401 - a fixture


def test_the_threaded_server_answers_requests_at_once(world):  # noqa: F811
    conf = make_conf(world["path"], threads=4)
    server = api_cmd.make_server(conf, app_mod.make_app(conf),
                                 host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d/v1/instances" % server.server_address[1]

    def fetch(_):
        request = urllib.request.Request(url, headers=ADMIN)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return len(json.loads(resp.read())["instances"])

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(fetch, range(32))) == [3] * 32
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
