# SPDX-License-Identifier: Apache-2.0
"""The hot-plug decisions, made off the loop's thread.

Deciding whether an instance gets the guestha channel may ask Nova (HTTP,
slow, see :mod:`guestha.agent.hotplug`), so :class:`HotplugWorkers` makes
the decision in a small pool of threads, never in the loop's.  What it
decides goes on as records: an ``attach`` is handed to the libvirt
watcher (which reports a :class:`~guestha.agent.events.HotplugResult`
when done), anything else is posted to the loop as a ``HotplugResult``
straight away, and the flavor's settings the policy learnt on the way
as :class:`Features`.
"""

import concurrent.futures
import logging

from guestha.agent import events as ev

LOG = logging.getLogger(__name__)


class Features(object):
    """What Nova said about an instance's flavor (posted by a worker)."""

    __slots__ = ("instance", "features")

    def __init__(self, instance, features):
        self.instance = instance
        self.features = features


class HotplugWorkers(object):
    """Runs :meth:`HotplugPolicy.decide
    <guestha.agent.hotplug.HotplugPolicy.decide>` for the loop.

    :param policy: the :class:`~guestha.agent.hotplug.HotplugPolicy`.
    :param post: hands a record to the loop (any thread).
    :param clock: monotonic seconds, for the records' time.
    """

    def __init__(self, policy, post, clock, max_workers=4):
        self.policy = policy
        self._post = post
        self._clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="guestha-hotplug")

    def request(self, info, watcher):
        """Decide for the domain ``info`` in a worker; an ``attach`` goes
        to ``watcher`` (``request_hotplug``)."""
        self._pool.submit(self.decide, info, watcher)

    def decide(self, info, watcher):
        """The worker's part (Nova may be slow): decide, and post or hand
        on what was decided."""
        try:
            decision, arg = self.policy.decide(info)
        except Exception as exc:  # noqa: BLE001 - top of a worker task
            LOG.warning("instance %s: hot-plug decision failed: %s",
                        info.uuid, exc)
            self._post(ev.HotplugResult(info.uuid, "error", str(exc), None,
                                        self._clock()))
            return
        if info.nova:
            try:
                # from the domain XML, or cached by the Nova client since
                # decide() asked
                features = self.policy.features(info)
            except Exception:  # noqa: BLE001 - informational only
                features = None
            if features:
                self._post(Features(info.uuid, dict(features)))
        if decision == "attach":
            watcher.request_hotplug(info.uuid, arg)
        else:
            self._post(ev.HotplugResult(info.uuid, "not_enabled", arg, None,
                                        self._clock()))

    def shutdown(self, wait=False):
        self._pool.shutdown(wait=wait)
