# SPDX-License-Identifier: Apache-2.0
"""The agent's reports of each instance's monitoring state to the
controllers (``state`` events, :func:`guestha.records.make_state`), so
that the REST API shows every instance the agent watches, monitored or not.

Theory of operation
-------------------
The instances' state machine (:mod:`guestha.agent.instance`) is not
touched: every ``interval`` seconds (2 by default) the loop hands its
instances to :meth:`StateReporter.tick`, which reads each one's view
(:func:`view`: the reported state, why, the interval, the project and
name from Nova's domain metadata) and compares it with what it reported
last.  A view that changed is reported once it has held for ``settle``
seconds, so that an instance passing through a state on its way (a guest
that registers a moment after its channel opened, an agent's restart
resyncing every guest) costs no report; an instance that left the host
is reported ``gone`` at the next look.  At most ``max_per_tick`` reports
a pass, so that a first pass over thousands of instances spreads its
outbox inserts over a few seconds rather than holding up the loop.

Only instances guestha has to do with are reported: the flavor asks for
it (Nova's extra specs in the domain XML), the domain has the channel, or
the agent monitored it.  One that stops having to do with guestha after a
report is reported ``unmonitored``.

The reports go through the reporter's outbox, like faults: in order, and
delivered after a broker outage.  After an agent restart every instance
is reported again (the controllers store the same state twice, which is
harmless).

States (the ``state`` of the record, :data:`guestha.records.INSTANCE_STATES`):
``unregistered`` (the flavor asks for guestha, no guest registered),
``refused`` (the channel cannot be hot-plugged: no virtio-serial
controller), ``registered`` (the guest registered, no challenge answered
yet), ``monitored``, ``faulted`` (a fault is open), ``suspended``,
``exited`` (the guest ended monitoring), ``stopped`` (shut off),
``unmonitored`` and ``gone``.
"""

import logging

from guestha.agent import instance as inst_mod
from guestha import nova as nova_mod
from guestha import records

LOG = logging.getLogger(__name__)

#: Seconds between two looks at the instances: a change is reported
#: ``SETTLE`` to ``SETTLE + INTERVAL`` seconds after it happened.  Each
#: look reads every instance: at 1,000 instances, looking every second
#: was about 0.1% of a core, 2% of the agent's CPU
#: (doc/source/benchmarks.rst).
INTERVAL = 2.0
#: Seconds a changed state must hold before it is reported.
SETTLE = 2.0
#: Most reports one look sends (the rest at the next).
MAX_PER_TICK = 500

_WAITING = (inst_mod.CONNECTING, inst_mod.SYNCING, inst_mod.WAITING)
#: The reason of ``refused`` until the hot-plug's own message (which says
#: what fixes it, guestha.agent.virt) is in the instance's note.
_NO_CONTROLLER = ("the domain has no virtio-serial controller, so the "
                  "guestha channel cannot be hot-plugged; set the image "
                  "property hw_qemu_guest_agent=yes and rebuild")


class View(object):
    """What is reported of one instance; two views are the same report
    when state, interval and project agree (the reason is words)."""

    __slots__ = ("state", "reason", "interval_ms", "project_id", "name")

    def __init__(self, state, reason=None, interval_ms=None,
                 project_id=None, name=None):
        self.state = state
        self.reason = reason
        self.interval_ms = interval_ms
        self.project_id = project_id
        self.name = name

    def key(self):
        return (self.state, self.interval_ms, self.project_id)

    def __repr__(self):
        return "View(%s, %r)" % (self.state, self.reason)


def _features(instance, nova):
    features = getattr(instance, "features", None) or {}
    if not features and nova.get("extra_specs") is not None:
        features = nova_mod.features_from_extra_specs(nova["extra_specs"])
    return features


def view(instance):
    """The state to report of ``instance`` (an
    :class:`~guestha.agent.instance.Instance`), or None when guestha has
    nothing to do with it."""
    info = instance.info
    nova = (info.nova if info is not None else None) or {}
    state = instance.state
    features = _features(instance, nova)
    asks = bool(features.get("heartbeat")
                or features.get("server_group_messaging"))
    has_channel = info is not None and info.channel_path is not None
    if not (asks or has_channel or instance.monitored
            or state in (inst_mod.MONITORED, inst_mod.EXITED)):
        return None
    note = instance.note
    fault = instance.fault
    if state == inst_mod.STOPPED:
        name, reason = "stopped", note or "the domain is shut off"
    elif state == inst_mod.SUSPENDED:
        name, reason = "suspended", note
    elif fault is not None:
        name, reason = "faulted", "fault %s open%s" % (
            fault.get("kind"), "; %s" % note if note else "")
    elif state == inst_mod.MONITORED:
        if getattr(instance, "answered_since_init", 1):
            name, reason = "monitored", note
        else:
            name, reason = "registered", "no challenge answered yet"
    elif state == inst_mod.EXITED:
        name, reason = "exited", note or "the guest ended monitoring"
    elif state in _WAITING:
        name, reason = "unregistered", (
            note or "the channel is there; no guest daemon registered")
    elif (not has_channel and info is not None
            and not info.has_serial_controller):
        name, reason = "refused", (
            note if note and "virtio-serial" in note else _NO_CONTROLLER)
    else:
        name, reason = "unregistered", (
            note or "the flavor asks for guestha; no channel yet")
    return View(name, reason, instance.interval_ms, nova.get("project"),
                nova.get("name"))


def _inputs(instance):
    """What :func:`view` reads of ``instance``: while it is the same, so
    is the view (the domain info and the features are replaced, never
    changed in place)."""
    return (instance.state, instance.info, instance.note,
            getattr(instance, "features", None), instance.monitored,
            instance.fault, instance.interval_ms,
            bool(getattr(instance, "answered_since_init", 1)))


class _Seen(object):
    __slots__ = ("reported", "candidate", "since", "inputs")

    def __init__(self):
        self.reported = None   # the View last reported, or None
        self.candidate = None  # a View waiting to settle
        self.since = None
        # the inputs of the reported view, while no other is waiting
        self.inputs = None


class StateReporter(object):
    """Reports instance states; lives in the agent loop's thread.

    :param host: this compute host.
    :param submit: called with each state record (the reporter's
        ``submit``: the outbox).
    :param wallclock: epoch seconds, for the records' ``at``.
    """

    def __init__(self, host, submit, wallclock, interval=INTERVAL,
                 settle=SETTLE, max_per_tick=MAX_PER_TICK):
        self.host = host
        self.submit = submit
        self.wallclock = wallclock
        self.interval = interval
        self.settle = settle
        self.max_per_tick = max_per_tick
        self.sent = 0
        self._seen = {}
        self._next = None

    def tick(self, now, instances):
        """Look at ``instances`` (uuid -> Instance) if a look is due at
        ``now`` (the loop's monotonic clock); returns the reports sent."""
        if self._next is not None and now < self._next:
            return 0
        self._next = now + self.interval
        budget = self.max_per_tick
        sent = 0
        for uuid in [u for u in self._seen if u not in instances]:
            if budget <= 0:
                break
            seen = self._seen.pop(uuid)
            if seen.reported is not None and seen.reported.state != "gone":
                gone = View("gone", "no longer on this host",
                            project_id=seen.reported.project_id,
                            name=seen.reported.name)
                if self._send(uuid, gone):
                    sent += 1
                    budget -= 1
        for uuid, instance in instances.items():
            if budget <= 0:
                break
            seen = self._seen.get(uuid)
            try:
                inputs = _inputs(instance)
                if seen is not None and seen.inputs == inputs:
                    continue  # as reported, and nothing it shows changed
                current = view(instance)
            except (AttributeError, TypeError, KeyError) as exc:
                LOG.warning("instance %s: cannot read its state for the "
                            "controllers: %s", uuid, exc)
                continue
            if seen is None:
                if current is None:
                    continue
                seen = self._seen[uuid] = _Seen()
            if current is None:
                if seen.reported is None:
                    del self._seen[uuid]
                    continue
                current = View("unmonitored",
                               "no longer asks for guestha",
                               project_id=seen.reported.project_id,
                               name=seen.reported.name)
            if seen.reported is not None and (
                    current.key() == seen.reported.key()):
                seen.candidate = seen.since = None
                seen.inputs = inputs
                continue
            seen.inputs = None
            if seen.candidate is None or (
                    current.key() != seen.candidate.key()):
                seen.candidate, seen.since = current, now
            if now - seen.since < self.settle:
                continue
            if self._send(uuid, current):
                seen.reported = current
                seen.candidate = seen.since = None
                seen.inputs = inputs
                if current.state == "unmonitored":
                    del self._seen[uuid]
                sent += 1
                budget -= 1
        self.sent += sent
        return sent

    def _send(self, uuid, current):
        details = {k: v for k, v in (
            ("project_id", current.project_id), ("name", current.name),
            ("interval_ms", current.interval_ms)) if v is not None}
        try:
            record = records.make_state(uuid, self.host, current.state,
                                        current.reason, self.wallclock(),
                                        details=details)
        except ValueError as exc:  # a domain uuid Nova would not make
            LOG.debug("instance %s: no state report: %s", uuid, exc)
            return True  # as if sent: not tried again at every look
        self.submit(record)
        LOG.debug("instance %s: state %s reported (%s)", uuid,
                  current.state, current.reason)
        return True
