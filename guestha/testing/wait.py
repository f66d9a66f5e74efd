# SPDX-License-Identifier: Apache-2.0
"""Waiting, in real time, for something another process or thread does.

For functional and cloud tests, where the thing waited for happens in a
real process. Unit tests do not wait: they move a
:class:`tests.support.clock.ManualClock` instead.
"""

import time


def wait_until(predicate, timeout, what, interval=0.02, details=None):
    """Call ``predicate`` every ``interval`` seconds until it returns
    something true, and return that.

    :param what: what is waited for, for the failure message.
    :param details: a callable returning text (logs, a process's state)
        to append to the failure message.
    :raises AssertionError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = "timed out after %.1f s waiting for %s" % (timeout,
                                                                 what)
            if details is not None:
                message = "%s\n%s" % (message, details())
            raise AssertionError(message)
        time.sleep(interval)
