# SPDX-License-Identifier: Apache-2.0
"""A retry schedule: how long to wait after failed attempts.

An exponential back-off with +-20% jitter, so that many clients do not
retry in step (the agents of a whole region after a broker restart, the
controllers after a sink's outage).  It counts the failures in a row and
when they started; time and randomness are passed in, and it does no I/O.
Used by the agent's reporter and the controller's sink dispatcher.
"""


class Backoff(object):
    """Consecutive failures and the wait after them.

    :param first: seconds to wait after the first failure.
    :param longest: the longest wait, however many failures.
    :param rng: ``random.random``-like, for the jitter (tests pin it).
    :param clock: monotonic seconds, for when the failures started.
    """

    def __init__(self, first, longest, rng, clock):
        if not 0 < first <= longest:
            raise ValueError("backoff must be (first, longest) with 0 < "
                             "first <= longest, not %r" % ((first, longest),))
        self.first = first
        self.longest = longest
        self._rng = rng
        self._clock = clock
        #: failed attempts in a row
        self.failures = 0
        #: when the first of them failed (clock seconds), or None
        self.failing_since = None

    def failed(self):
        """Count a failed attempt.

        :returns: seconds to wait before the next one.
        """
        self.failures += 1
        if self.failures == 1:
            self.failing_since = self._clock()
        return self.delay(self.failures)

    def succeeded(self):
        """An attempt went through: start again from ``first``.

        :returns: ``(failures, seconds failing)`` that this ends, or None
            if the last attempt had not failed.
        """
        ended = None
        if self.failures:
            ended = (self.failures, self._clock() - self.failing_since)
        self.failures = 0
        self.failing_since = None
        return ended

    def delay(self, failures):
        """The wait after ``failures`` consecutive failed attempts:
        ``first * 2**(failures-1)``, at most ``longest``, +-20% jitter."""
        return self.jitter(min(self.longest,
                               self.first * 2.0 ** min(failures - 1, 64)))

    def jitter(self, delay):
        """``delay`` +-20%."""
        return delay * (0.8 + 0.4 * self._rng())
