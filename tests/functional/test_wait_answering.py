# SPDX-License-Identifier: Apache-2.0
"""tests/support/http.py's wait_answering, against a real server and real
child processes (it is what the functional and cloud tests wait on
guestha-api with)."""

import http.server
import subprocess
import sys

import pytest

from guestha.testing.ports import free_port
from tests.support.http import serving
from tests.support.http import wait_answering

pytestmark = pytest.mark.functional


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_returns_once_the_url_answers_200(child):
    with serving(Answers, status=200) as server:
        wait_answering(server.url + "/", child, timeout=10)


def test_an_error_status_or_no_listener_is_not_an_answer(child):
    with serving(Answers, status=503) as server:
        with pytest.raises(AssertionError, match="timed out(.|\n)*the log"):
            wait_answering(server.url + "/", child, timeout=0.3,
                           details=lambda: "the log")
    with pytest.raises(AssertionError, match="timed out"):
        wait_answering("http://127.0.0.1:%d/" % free_port(), child,
                       timeout=0.3)


def test_a_process_that_exited_fails_at_once_with_its_log():
    proc = subprocess.Popen([sys.executable, "-c", "exit(4)"])
    proc.wait()
    with pytest.raises(AssertionError, match="exited \\(4\\)(.|\n)*last"):
        wait_answering("http://127.0.0.1:%d/" % free_port(), proc,
                       timeout=30, details=lambda: "last words")
