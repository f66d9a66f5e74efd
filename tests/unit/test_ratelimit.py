# SPDX-License-Identifier: Apache-2.0
"""Token buckets and window counters (guestha.ratelimit), on a fake clock."""

from guestha.ratelimit import TokenBucket
from guestha.ratelimit import WindowCounter


def test_a_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(rate=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True] * 3 + [False]
    assert bucket.take(100.5)           # 0.5 s at 2/s: one token
    assert not bucket.take(100.5)
    assert bucket.take(110.0, amount=3)  # refilled, but never above burst
    assert not bucket.take(110.0)


def test_a_bucket_ignores_a_clock_that_goes_back():
    bucket = TokenBucket(rate=1, burst=1, now=50.0)
    assert bucket.take(50.0)
    assert not bucket.take(40.0)
    assert bucket.take(51.0)


def test_a_window_counter_restarts_a_window_after_it_passed():
    counter = WindowCounter(window=10)
    assert [counter.add(t) for t in (0, 1, 10)] == [1, 2, 3]
    assert counter.add(10.5) == 1       # more than 10 s after the first
    assert counter.add(11) == 2
