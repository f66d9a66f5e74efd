# SPDX-License-Identifier: Apache-2.0
"""Token buckets, for what one guest may send and how often we complain.

Time is an argument, so tests drive a fake clock.
"""


class TokenBucket(object):
    """``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst, now):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now, amount=1.0):
        """Take ``amount`` tokens if there are enough; True if taken."""
        if now > self.stamp:
            self.tokens = min(self.burst,
                              self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class WindowCounter(object):
    """Counts events in a sliding window of ``window`` seconds (coarse:
    the count resets when a window has passed since its first event)."""

    __slots__ = ("window", "count", "start")

    def __init__(self, window):
        self.window = window
        self.count = 0
        self.start = None

    def add(self, now):
        if self.start is None or now - self.start > self.window:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count
