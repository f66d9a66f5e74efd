# SPDX-License-Identifier: Apache-2.0
"""An instance's entry in the agent's status document (the status socket,
``guestha-agent --status``): what it is doing and why, as JSON values.

Read from the :class:`~guestha.agent.instance.Instance` and its parts
(its :class:`~guestha.agent.faults.FaultTracker` and
:class:`~guestha.agent.conduct.ChannelConduct`), never changing them.  The
``note`` says the most pressing reason first: a recovery held back, then a
reset's back-off, then the instance's own note.
"""

import datetime


def describe(instance, now, wallclock):
    """The status entry of ``instance`` at ``now`` (monotonic seconds),
    ``wallclock`` being the epoch time at ``now``."""
    last = None
    if instance.last_answer is not None:
        t, healthy, reason = instance.last_answer
        last = {"ago_s": round(now - t, 3), "healthy": healthy,
                "reason": reason}
    note = instance.note
    conduct = instance.conduct
    backoff = None
    if conduct.reset_until is not None and conduct.reset_until > now:
        wait = conduct.reset_until - now
        backoff = {"until": _iso(wallclock + wait),
                   "remaining_s": round(wait, 3),
                   "resets": instance.counters["resets"]}
        note = "in back-off until %s, %d reset(s)%s" % (
            backoff["until"], backoff["resets"], "; " + note if note else "")
    held = None
    faults = instance.faults
    if faults.release_at is not None:
        held = {"why": faults.held,
                "until": _iso(wallclock + faults.release_at - now),
                "faults_in_window": len(faults.opened)}
        note = "recovery held back until %s: %d faults within %.0f s" % (
            held["until"], held["faults_in_window"],
            faults.policy.fault_window)
    resync = None
    if instance.restart_interval_ms is not None:
        deadline = instance.resync_deadline
        resync = {"monitored_before_ms": instance.restart_interval_ms,
                  "deadline_in_s": None if deadline is None
                  else round(deadline - now, 3)}
    rtt = None
    if instance.rtt is not None:
        count, latest, mean, worst = instance.rtt
        rtt = {"samples": count, "last": round(1000.0 * latest, 3),
               "mean": round(1000.0 * mean, 3),
               "max": round(1000.0 * worst, 3)}
    counters = dict(instance.counters)
    counters["log_suppressed"] = instance.log_suppressed
    hb = instance.hb
    return {"instance": instance.uuid,
            "name": instance.info.name if instance.info else None,
            "state": instance.state,
            "heartbeat": hb.state if hb else None,
            "interval_ms": instance.interval_ms,
            "note": note, "last_answer": last,
            "fault": faults.fault, "counters": counters,
            "rtt_ms": rtt,
            "standing": ("good" if conduct.in_good_standing(now)
                         else "misbehaving"),
            "reset_backoff_s": conduct.current_backoff(now),
            "backoff": backoff, "recovery_held": held,
            "restart_resync": resync,
            "monitored": instance.monitored,
            "output_queued_bytes": instance.output_queued}


def _iso(ts):
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="seconds")
