# SPDX-License-Identifier: Apache-2.0
"""A channel's conduct on plain values: misbehaviour, resets and their
back-off, good standing, with the time passed in."""

from guestha.agent import conduct as cm
from guestha.agent import instance as im


def conduct(**policy):
    return cm.ChannelConduct(im.Policy(**policy), 0.0)


def test_misbehaviour_within_a_minute_earns_a_reset_at_the_limit():
    c = conduct(misbehaviour_limit=3)
    assert c.misbehaved(1.0) == (1, False)
    assert c.misbehaved(2.0) == (2, False)
    assert c.misbehaved(3.0) == (3, True)


def test_misbehaviour_older_than_a_minute_does_not_count():
    c = conduct(misbehaviour_limit=2)
    assert c.misbehaved(0.0) == (1, False)
    assert c.misbehaved(61.0) == (1, False)


def test_a_reset_doubles_the_back_off_up_to_the_maximum_and_starts_over():
    c = conduct(misbehaviour_limit=1, reset_backoff_max=4.0)
    c.misbehaved(10.0)
    assert c.reset(10.0) == 1.0 and c.reset_until == 11.0
    assert c.misbehaviour.count == 0
    assert c.reset(11.0) == 2.0
    assert c.reset(13.0) == 4.0
    assert c.reset(17.0) == 4.0  # the maximum
    assert c.reset_until == 21.0


def test_good_behaviour_halves_the_back_off():
    c = conduct(reset_backoff_max=64.0)
    for now in (0.0, 1.0, 3.0, 7.0):
        c.reset(now)
    assert c.reset_backoff == 16.0 and c.reset_until == 15.0
    assert c.current_backoff(15.0 + cm.RESET_DECAY - 0.1) == 16.0
    assert c.current_backoff(15.0 + cm.RESET_DECAY) == 8.0
    assert c.current_backoff(15.0 + 3 * cm.RESET_DECAY) == 2.0
    assert c.current_backoff(15.0 + 10 * cm.RESET_DECAY) == 1.0


def test_good_standing_needs_a_quiet_decay_period():
    c = conduct()
    assert c.in_good_standing(0.0)
    c.misbehaved(5.0)
    assert not c.in_good_standing(5.0 + cm.RESET_DECAY - 0.1)
    assert c.in_good_standing(5.0 + cm.RESET_DECAY)
    c.reset(100.0)  # counts from the reopening
    assert not c.in_good_standing(101.0 + cm.RESET_DECAY - 0.1)
    assert c.in_good_standing(101.0 + cm.RESET_DECAY)


def test_the_budgets_follow_the_policy():
    c = conduct(max_bytes_per_second=100, max_messages_per_second=5)
    assert c.bytes.take(0.0, 200) and not c.bytes.take(0.0, 1)
    assert c.lines.take(0.0, 10) and not c.lines.take(0.0, 1)
    assert c.discards.take(0.0, cm.DISCARD_BURST)
    assert not c.discards.take(0.0, 1)
    assert all(c.errors.take(0.0) for _ in range(5))
    assert not c.errors.take(0.0)
