# SPDX-License-Identifier: Apache-2.0
"""Bounds on what a host (or a broken peer) can make the guest do: log
lines in its journal (:class:`RateLimitedLog`) and error replies on its
channel (:class:`ReplyBudget`)."""

import time


class RateLimitedLog(object):
    """At most ``burst`` messages per ``period`` seconds per key, so a host
    (or a broken peer) cannot flood the guest's journal."""

    def __init__(self, logger, burst=5, period=60.0, clock=time.monotonic):
        self._log = logger
        self._burst = burst
        self._period = period
        self._clock = clock
        self._seen = {}

    def warning(self, key, fmt, *args):
        now = self._clock()
        start, count = self._seen.get(key, (now, 0))
        if now - start > self._period:
            start, count = now, 0
        count += 1
        self._seen[key] = (start, count)
        if count <= self._burst:
            self._log.warning(fmt, *args)
        elif count == self._burst + 1:
            self._log.warning("%s: further messages suppressed for %d s",
                              key, self._period)


class ReplyBudget(object):
    """A token bucket: at most ``rate`` error replies a second, bursts of
    ``burst``, so a broken host cannot make us flood the channel back."""

    def __init__(self, rate=2.0, burst=10.0):
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = None

    def allow(self, now):
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens
                               + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
