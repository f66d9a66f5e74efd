# SPDX-License-Identifier: Apache-2.0
"""The retry schedule of the reporter and the sink dispatcher, on a fake
clock with pinned jitter."""

import pytest

from guestha.backoff import Backoff
from tests.support.clock import ManualClock


def test_waits_double_up_to_the_longest():
    backoff = Backoff(0.5, 4.0, rng=lambda: 0.5, clock=ManualClock(100.0))

    waits = [backoff.failed() for _ in range(6)]

    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 6


@pytest.mark.parametrize("rng, factor", [(0.0, 0.8), (1.0, 1.2)])
def test_jitter_is_twenty_percent_either_way(rng, factor):
    backoff = Backoff(1.0, 30.0, rng=lambda: rng, clock=ManualClock(100.0))

    assert backoff.delay(3) == pytest.approx(4.0 * factor)
    assert backoff.jitter(10.0) == pytest.approx(10.0 * factor)


def test_many_failures_do_not_overflow():
    backoff = Backoff(0.5, 30.0, rng=lambda: 0.5, clock=ManualClock(100.0))

    assert backoff.delay(10000) == 30.0


def test_success_ends_the_failures_and_says_how_long_they_lasted():
    clock = ManualClock(100.0)
    backoff = Backoff(0.5, 30.0, rng=lambda: 0.5, clock=clock)
    assert backoff.succeeded() is None  # nothing failed

    backoff.failed()
    clock.now += 7.0
    backoff.failed()
    ended = backoff.succeeded()

    assert ended == (2, 7.0)
    assert backoff.failures == 0 and backoff.failing_since is None
    assert backoff.failed() == 0.5  # from the first wait again


@pytest.mark.parametrize("first, longest", [(0, 1), (-1, 1), (2, 1)])
def test_a_schedule_that_cannot_work_is_refused(first, longest):
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first, longest, rng=lambda: 0.5, clock=ManualClock(100.0))
