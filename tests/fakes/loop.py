# SPDX-License-Identifier: Apache-2.0
"""A stand-in for the agent loop's ``post``: records what the libvirt
watcher posts, with the time it arrived, and lets a test wait for a record.
"""

import threading
import time


class RecordingLoop(object):
    def __init__(self):
        self.records = []  # (arrival time.monotonic(), record)
        self._cond = threading.Condition()

    def post(self, record):
        with self._cond:
            self.records.append((time.monotonic(), record))
            self._cond.notify_all()

    def mark(self):
        """A position: :meth:`wait_for` and :meth:`since` look after it."""
        with self._cond:
            return len(self.records)

    def since(self, mark=0, kind=None):
        with self._cond:
            return [r for _, r in self.records[mark:]
                    if kind is None or isinstance(r, kind)]

    def wait_for(self, predicate, timeout=2.0, since=0):
        """The first record after ``since`` for which ``predicate`` holds,
        as ``(arrival time, record)``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for arrived, record in self.records[since:]:
                    if predicate(record):
                        return arrived, record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "no matching record within %.1f s; got:\n%s" % (
                            timeout, "\n".join(
                                repr(r) for _, r in self.records[since:])))
                self._cond.wait(left)
