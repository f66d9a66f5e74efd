# SPDX-License-Identifier: Apache-2.0
"""A clock the test moves by hand, for code that takes ``clock=`` (a
callable returning seconds)."""


class ManualClock(object):
    """Returns :attr:`now` until the test changes it."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
        return self.now
