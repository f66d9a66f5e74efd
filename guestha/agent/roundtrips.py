# SPDX-License-Identifier: Apache-2.0
"""The challenges' round trips, all instances together.

Every answered challenge adds its round trip (from the challenge's
sending to the answer's processing) to a ring of the latest 20,000: the
status document's percentiles come from it.  Once a metrics exporter asks
(:meth:`RoundTrips.histogram`), a histogram counts every round trip from
then on; the ring is folded into it in batches (at each scrape, and by
:meth:`RoundTrips.fold_if_due` before the ring overwrites what was not
folded), never per answer, which would cost every round.
"""

import collections
import itertools

#: Round trips kept for the status's percentiles.
RING = 20000


class RoundTrips(object):

    def __init__(self, ring=RING):
        self._ring = collections.deque(maxlen=ring)
        #: answered challenges since the start
        self.answers = 0
        self._hist = None
        self._folded = 0

    def record(self, seconds):
        self._ring.append(seconds)
        self.answers += 1

    def summary(self):
        """Percentiles (ms) of the latest round trips, or None."""
        rtts = sorted(self._ring)
        if not rtts:
            return None

        def pct(q):
            return round(1000.0 * rtts[min(len(rtts) - 1,
                                           int(q * len(rtts)))], 3)
        return {"samples": len(rtts), "p50": pct(0.50), "p99": pct(0.99),
                "max": round(1000.0 * rtts[-1], 3)}

    def histogram(self):
        """The :class:`guestha.metrics.RttHistogram` of every round trip
        since the first call (made then), up to date."""
        if self._hist is None:
            from guestha import metrics
            self._hist = metrics.RttHistogram()
            # the round trips before the first scrape are not counted
            self._folded = self.answers
        self._fold()
        return self._hist

    def fold_if_due(self):
        """Fold into the histogram, if there is one, before the ring
        overwrites round trips not folded yet."""
        if (self._hist is not None
                and self.answers - self._folded > self._ring.maxlen // 2):
            self._fold()

    def _fold(self):
        new = min(self.answers - self._folded, len(self._ring))
        self._folded = self.answers
        if new > 0:
            self._hist.add(list(itertools.islice(reversed(self._ring), new)))
