# SPDX-License-Identifier: Apache-2.0
"""The child processes of the functional tests.

Every child process is registered with a :class:`Processes`, whose
:meth:`~Processes.kill_all` (a fixture's teardown) kills whatever is left,
stopped processes too, even after a failure.  They are started by
``guestha/testing/processes.py``: each in a process group of its own (a stop
reaches what it started) and killed with the test process, however that ends.
"""

import os
import signal
import sys
import tempfile

from guestha.testing import processes as procs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PYTHON = sys.executable


def short_tempdir(prefix="ghft-"):
    """A directory for UNIX sockets: pytest's tmp_path can be longer than
    the 107 bytes a socket address allows."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def file_tail(path, chars=4000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError as exc:
        return "(cannot read %s: %s)" % (path, exc)


class Processes(object):
    """Every child process of a test, so that teardown can end them all."""

    def __init__(self):
        self._procs = []

    def spawn(self, argv, log_path, **kwargs):
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        env.update(kwargs.pop("env", {}))
        with open(log_path, "ab") as log:
            proc = procs.spawn(
                argv, stdout=kwargs.pop("stdout", log), stderr=log, cwd=ROOT,
                env=env, **kwargs)
        self._procs.append(proc)
        return proc

    def running(self):
        return [proc for proc in self._procs if proc.poll() is None]

    def kill_all(self):
        """SIGKILL every process (and its group) still there."""
        for proc in self._procs:
            procs.signal_group(proc, signal.SIGKILL)
        for proc in self._procs:
            procs.kill(proc)
        self._procs = []


def terminate(proc, timeout=15.0):
    """SIGTERM (the clean stop), then SIGKILL; returns the exit code."""
    return terminate_all([proc], timeout)[0]


def terminate_all(processes, timeout=15.0):
    """:func:`terminate` several processes at once (their clean stops
    take seconds each); returns their exit codes."""
    return procs.stop_all(processes, timeout)
