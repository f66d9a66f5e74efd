# SPDX-License-Identifier: Apache-2.0
"""guestha.api.wsgi, as uWSGI or mod_wsgi load it: a fresh interpreter
imports the module with GUESTHA_API_CONFIG set and serves a request
through ``application``."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

SERVE_ONE = """
import io, json, sys
from guestha.api import wsgi
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/instances",
           "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
           "wsgi.input": io.BytesIO(), "HTTP_X_PROJECT_ID": "p",
           "HTTP_X_ROLES": "admin", "QUERY_STRING": ""}
status = []
body = b"".join(wsgi.application(
    environ, lambda s, h, exc_info=None: status.append(s)))
print(json.dumps({"status": status[0], "body": body.decode()}))
"""


def test_the_wsgi_module_serves_with_its_config(tmp_path):
    conf = tmp_path / "api.conf"
    conf.write_text("[DEFAULT]\nuse_stderr = false\n"
                    "[server]\nledger_path = %s\n"
                    "[api]\nauth_strategy = noauth\n"
                    % (tmp_path / "missing.sqlite"))
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SERVE_ONE], cwd=ROOT,
        env=dict(os.environ, GUESTHA_API_CONFIG=str(conf)),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # the configuration was read: the ledger it names is not there yet
    assert answer["status"].startswith("503")
    assert "missing.sqlite" in json.loads(answer["body"])["error"][
        "message"]
