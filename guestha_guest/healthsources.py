# SPDX-License-Identifier: Apache-2.0
"""The guest's health: what a challenge is answered with.

Two sources make it, both polled and cached so that a challenge is
answered at once from their last results: the health hooks (a
:class:`~guestha_guest.health.HookRunner`, scripts run as child processes)
and the critical applications on the local API (an
:class:`~guestha_guest.appapi.AppServer`).  The heartbeat paces them: the
hooks run once per granted interval (or every ``hook_period_ms``), and the
applications are asked to report after every challenge answered.
"""


class HealthSources(object):
    """The hooks and the applications, as one answer to a challenge.

    :param init: the :class:`~guestha_guest.protocol.Init` registered
        with: its interval paces the hooks until the host grants one, and
        its corrective action is recommended when unhealthy.
    :param hooks: a :class:`~guestha_guest.health.HookRunner` or None.
    :param apps: an :class:`~guestha_guest.appapi.AppServer` or None.
    :param hook_period_ms: run the hooks this often (0: every interval).
    """

    def __init__(self, init, hooks=None, apps=None, hook_period_ms=0):
        self.init = init
        self.hooks = hooks
        self.apps = apps
        self._hook_period_ms = hook_period_ms
        if hooks is not None:
            hooks.set_period(self._period_s(init.interval_ms))

    def _period_s(self, interval_ms):
        return (self._hook_period_ms or interval_ms) / 1000.0

    def __call__(self, now):
        """``(healthy, reason, action)`` from the sources' last results:
        the heartbeat's ``health`` callable."""
        reasons = []
        if self.hooks is not None:
            healthy, reason = self.hooks.result(now)
            if not healthy:
                reasons.append(reason or "unhealthy")
        if self.apps is not None:
            healthy, reason = self.apps.health(now)
            if not healthy:
                reasons.append(reason or "unhealthy")
        if not reasons:
            return True, None, None
        return False, "; ".join(reasons), self.init.corrective_action

    def registered(self, interval_ms):
        """The host granted ``interval_ms``: the hooks run at its pace."""
        if self.hooks is not None:
            self.hooks.set_period(self._period_s(interval_ms))

    def challenge_answered(self, now):
        """A challenge was answered: ask the applications to report."""
        if self.apps is not None:
            self.apps.send_checks(now)
