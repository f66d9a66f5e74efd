# SPDX-License-Identifier: Apache-2.0
"""How a guest behaves on its channel: its rate budgets, its misbehaviour,
and the back-off of the resets it earns.

Theory of operation
-------------------
A guest shares the agent's one I/O loop with every other guest of the
host, so each channel has budgets (token buckets, a burst of twice the
rate): the bytes and the lines it may send a second (``[agent]
max_bytes_per_second``, ``max_messages_per_second``), the lines that are
not the protocol it may send while synchronising (a resync discards a few
honestly: :data:`DISCARDS_PER_SECOND`, :data:`DISCARD_BURST`), and the
error replies the agent sends it for bad lines (one a second, five at
once).  Going over a budget, or sending a line that is not the protocol
once synchronised, is *misbehaviour*; ``misbehaviour_limit`` of it within
a minute earns a *reset*: the instance closes the channel and reopens it
after a back-off that doubles with each reset (up to
``reset_backoff_max``) and halves for every :data:`RESET_DECAY` seconds of
good behaviour.  A channel that misbehaved or was reset within
:data:`RESET_DECAY` seconds is not in good standing: its round trips do
not count in the agent-wide figures.

A :class:`ChannelConduct` does no I/O and keeps no channel: the instance
(:mod:`guestha.agent.instance`) takes from its buckets (directly, on the
path of every line), tells it of misbehaviour and resets, with the time
passed in, and closes and reopens the channel itself.
"""

from guestha.ratelimit import TokenBucket
from guestha.ratelimit import WindowCounter

#: Seconds of good behaviour (no misbehaviour, no reset) that halve a
#: channel's reset back-off, and after which its round trips count in the
#: agent-wide figures again.
RESET_DECAY = 60.0
#: Lines dropped while synchronising (stale, garbage) a guest may cause
#: without it counting as misbehaviour: a resync discards a few honestly.
DISCARDS_PER_SECOND = 1.0
DISCARD_BURST = 20.0


class ChannelConduct(object):
    """The budgets and the record of one channel's guest.

    :param policy: the operator's limits (an
        :class:`~guestha.agent.instance.Policy`).
    :param now: monotonic seconds (the buckets start full).
    """

    def __init__(self, policy, now):
        self.policy = policy
        self.bytes = TokenBucket(policy.max_bytes_per_second,
                                 2 * policy.max_bytes_per_second, now)
        self.lines = TokenBucket(policy.max_messages_per_second,
                                 2 * policy.max_messages_per_second, now)
        self.discards = TokenBucket(DISCARDS_PER_SECOND, DISCARD_BURST, now)
        self.errors = TokenBucket(1.0, 5.0, now)   # error replies we send
        self.misbehaviour = WindowCounter(60.0)
        self.reset_backoff = 1.0
        self.last_bad = None      # last misbehaviour or reset
        self.reset_until = None   # reopening time after the latest reset

    def misbehaved(self, now):
        """The guest misbehaved: how often in the last minute, and whether
        that earns a reset."""
        self.reset_backoff = self.current_backoff(now)
        self.last_bad = now
        count = self.misbehaviour.add(now)
        return count, count >= self.policy.misbehaviour_limit

    def reset(self, now):
        """The channel is reset now: the seconds until it reopens."""
        backoff = self.reset_backoff = self.current_backoff(now)
        self.last_bad = now
        self.reset_until = now + backoff
        self.reset_backoff = min(backoff * 2, self.policy.reset_backoff_max)
        self.misbehaviour = WindowCounter(60.0)
        return backoff

    def current_backoff(self, now):
        """The reset back-off, halved for every :data:`RESET_DECAY`
        seconds of good behaviour since the channel last misbehaved (or
        reopened after a reset)."""
        backoff = self.reset_backoff
        if self.last_bad is None or backoff <= 1.0:
            return backoff
        clean = now - max(self.last_bad, self.reset_until or 0.0)
        halvings = int(clean // RESET_DECAY) if clean > 0 else 0
        return max(1.0, backoff / 2.0 ** min(halvings, 64))

    def in_good_standing(self, now):
        """No misbehaviour or reset within :data:`RESET_DECAY` seconds."""
        if self.last_bad is None:
            return True
        return now - max(self.last_bad,
                         self.reset_until or 0.0) >= RESET_DECAY
