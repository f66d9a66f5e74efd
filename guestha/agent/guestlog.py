# SPDX-License-Identifier: Apache-2.0
"""What a guest says, as it may reach the agent's log.

Theory of operation
-------------------
The guest is untrusted, and some of what it sends is worth logging: the
text of an ``error`` it reports, the name it registers under, why it ends
monitoring.  Two things keep that from becoming the guest's way into the
operator's log:

* :func:`sanitise`: every character that could forge or hide log content
  (C0 and C1 controls, DEL, the Unicode line and paragraph separators,
  bidirectional overrides and the other format characters, surrogates)
  is written as a visible escape, a backslash as two, and the result is
  cut to a bound.  What remains is printable text on one line.
* :class:`LogBudget`: one per channel, a token bucket of log lines the
  guest's traffic may cause; what goes beyond it is counted, and the next
  line that passes says how many were suppressed.
"""

import unicodedata

from guestha.ratelimit import TokenBucket

#: Characters of guest text kept in a log line (after escaping).
MAX_TEXT = 200

# categories written as escapes: controls (C0, C1, DEL), format characters
# (bidi overrides and isolates, zero-width joiners, ...), line and
# paragraph separators, surrogates, private use and unassigned
_ESCAPED_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def _escape(ch):
    code = ord(ch)
    if code < 0x100:
        return "\\x%02x" % code
    if code < 0x10000:
        return "\\u%04x" % code
    return "\\U%08x" % code


def sanitise(text, limit=MAX_TEXT):
    """``text`` (any object; None stays None) as one line of printable
    characters of at most ``limit`` characters plus an ellipsis."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    out = []
    size = 0
    for ch in text:
        if ch == "\\":
            piece = "\\\\"
        elif ch == " " or (ch.isprintable() and unicodedata.category(ch)
                           not in _ESCAPED_CATEGORIES):
            piece = ch
        else:
            # isprintable() is False for the separators other than the
            # space too (a no-break space is escaped: harmless, visible)
            piece = _escape(ch)
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


class LogBudget(object):
    """Log lines one channel's guest may cause: ``per_minute`` on average,
    bursts of as many.

    :meth:`allow` says whether to log now, and :attr:`suppressed` how many
    were not logged since the last one that was (to be said in it).
    """

    __slots__ = ("_bucket", "suppressed", "total_suppressed")

    def __init__(self, per_minute, now):
        self._bucket = TokenBucket(per_minute / 60.0, max(1, per_minute),
                                   now)
        self.suppressed = 0
        self.total_suppressed = 0

    def allow(self, now):
        if self._bucket.take(now):
            return True
        self.suppressed += 1
        self.total_suppressed += 1
        return False

    def take_suppressed(self):
        """The suffix of a log line that passed: how many did not."""
        n, self.suppressed = self.suppressed, 0
        if not n:
            return ""
        return " (%d earlier guest log line(s) suppressed)" % n
