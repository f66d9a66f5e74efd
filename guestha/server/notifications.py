# SPDX-License-Identifier: Apache-2.0
"""Nova's versioned notifications: what they tell the controller.

Nova publishes them on each topic of nova.conf's ``[notifications]
versioned_notifications_topics`` (default ``versioned_notifications``) of
its exchange (``nova``), priority ``info`` (``error`` for failures), with
oslo.messaging's ``messagingv2`` driver; each payload is a serialized Nova
object
(``{"nova_object.name": ..., "nova_object.data": {...}}``).  The
controller reads:

``instance.update``
    ``state`` (the vm_state), ``host`` and ``state_update.old_state``; sent
    on state changes only when nova.conf has ``[notifications]
    notify_on_state_change`` set.
``instance.<action>.end``
    the state after the action (power_off, power_on, pause, reboot,
    live_migration_post, delete, ...): Nova's default source of state
    changes.
``server_group.create``, ``server_group.add_member``, ``server_group.delete``
    the group's ``uuid`` and ``members``.

Every controller listens in its own pool (``guestha-server-<server_id>``),
so each gets every notification and keeps its own cache of states and
membership complete (status answers come from any controller); each
records the state changes in the ledger, keyed by the message id (the
same in every pool), and only the relaying controller (see
:mod:`guestha.server.coordination`) tells the agents what is recorded
and untold, so a peer hears of a change once, also when it came while
no relay was elected.  A shared pool would hand each
notification to one controller only, and the others' caches would go
stale.

Queues.  guestha reads its own topic, ``[server] notification_topic``
(default ``guestha_notifications``), which the operator adds to Nova's
``versioned_notifications_topics``; reading Nova's default topic instead
would take nothing from its other consumers, but would leave its queue to
them.  Nova's notifier (oslo.messaging's rabbit driver) declares and fills
a default queue per topic and priority, ``<topic>.<priority>``, whether
or not anyone reads it; the pools' queues are separate, bound to the same
routing key.  So that the default queues of guestha's topic do not grow
unread, the controllers also consume them (:class:`DrainEndpoint`, no
pool: the controllers share each default queue and each message is
dropped once), for every priority, unless ``[server]
drain_notification_queues`` is off (when something else reads them).
"""

import datetime
import logging
import re
import threading

import oslo_messaging
from oslo_messaging.notify import dispatcher as notify_dispatcher

LOG = logging.getLogger(__name__)

_INSTANCE_END = re.compile(r"instance\.[a-z_]+\.end\Z")
GROUP_EVENTS = ("server_group.create", "server_group.add_member",
                "server_group.delete")
#: Events that are not an ``.end`` but change what the peers see.
INSTANCE_EVENTS = ("instance.update", "instance.evacuate")


class InstanceChange(object):
    __slots__ = ("event", "instance", "state", "old_state", "host",
                 "task_state")

    def __init__(self, event, instance, state, old_state=None, host=None,
                 task_state=None):
        self.event = event
        self.instance = instance
        self.state = state
        self.old_state = old_state
        self.host = host
        self.task_state = task_state

    def __repr__(self):
        return "InstanceChange(%s, %s, %s)" % (self.event, self.instance,
                                               self.state)


class GroupChange(object):
    """``members`` is None for a deleted group."""

    __slots__ = ("event", "group", "members")

    def __init__(self, event, group, members):
        self.event = event
        self.group = group
        self.members = members

    def __repr__(self):
        return "GroupChange(%s, %s, %s)" % (self.event, self.group,
                                            self.members)


def _data(payload):
    """The fields of a Nova object payload (``nova_object.data``)."""
    if isinstance(payload, dict) and isinstance(
            payload.get("nova_object.data"), dict):
        return payload["nova_object.data"]
    return None


def wanted(event_type):
    return (event_type in INSTANCE_EVENTS or event_type in GROUP_EVENTS
            or bool(_INSTANCE_END.match(event_type or "")))


def parse(event_type, payload):
    """What a notification says, or None if nothing the controller uses.

    :returns: :class:`InstanceChange`, :class:`GroupChange` or None.
    """
    if not wanted(event_type):
        return None
    data = _data(payload)
    if data is None:
        LOG.warning("%s: not a versioned notification payload (skipped)",
                    event_type)
        return None
    if event_type in GROUP_EVENTS:
        group = data.get("uuid")
        if not isinstance(group, str):
            return None
        members = None
        if event_type != "server_group.delete":
            members = [m for m in data.get("members") or ()
                       if isinstance(m, str)]
        return GroupChange(event_type, group, members)
    instance = data.get("uuid")
    state = data.get("state")
    if not isinstance(instance, str) or not isinstance(state, str):
        LOG.warning("%s: payload without uuid or state (skipped)",
                    event_type)
        return None
    old_state = None
    update = _data(data.get("state_update"))
    if update is not None:
        old_state = update.get("old_state")
    return InstanceChange(event_type, instance, state, old_state=old_state,
                          host=data.get("host"),
                          task_state=data.get("task_state"))


def nova_time(timestamp):
    """Epoch seconds of a notification's ``timestamp`` (oslo.messaging
    writes ``str(utcnow())``: UTC, naive), or None."""
    if not isinstance(timestamp, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


class NotificationEndpoint(object):
    """The listener's endpoint: feeds the server-group directory."""

    filter_rule = oslo_messaging.NotificationFilter(
        event_type=r"^(instance|server_group)\.")

    def __init__(self, groups):
        self.groups = groups

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        try:
            self.handle(event_type, payload, metadata)
        except Exception:  # oslo.messaging's thread: log, never requeue
            LOG.exception("%s from %s: handling failed", event_type,
                          publisher_id)
        return oslo_messaging.NotificationResult.HANDLED

    def handle(self, event_type, payload, metadata=None):
        """What ``event_type`` says, handed to the directory.

        :param metadata: oslo.messaging's: ``message_id`` (the same in
            every controller's pool) keys the state change in the ledger,
            and ``timestamp`` (Nova's) orders it.
        """
        change = parse(event_type, payload)
        if change is None:
            return None
        if isinstance(change, GroupChange):
            self.groups.update_group(change.group, change.members)
            self.groups.request_refresh()
            return change
        metadata = metadata or {}
        self.groups.on_instance_change(
            change.instance, change.state, change.event, host=change.host,
            old_state=change.old_state,
            change_id=metadata.get("message_id"),
            at=nova_time(metadata.get("timestamp")))
        if change.event == "instance.delete.end":
            self.groups.forget_instance(change.instance)
            self.groups.request_refresh()
        return change


class DrainEndpoint(object):
    """The endpoint of the default queues of guestha's topic: acknowledges
    and drops (the pool's queue brought the same notification), for every
    priority Nova may use."""

    def __init__(self):
        self._lock = threading.Lock()
        self.drained = 0

    def _drop(self, ctxt, publisher_id, event_type, payload, metadata):
        with self._lock:
            self.drained += 1
        return oslo_messaging.NotificationResult.HANDLED


for _priority in notify_dispatcher.PRIORITIES:
    setattr(DrainEndpoint, _priority, DrainEndpoint._drop)
del _priority


class Listeners(object):
    """Several notification listeners started, stopped and waited for
    together, as one."""

    def __init__(self, listeners):
        self.listeners = list(listeners)

    def start(self):
        for listener in self.listeners:
            listener.start()

    def stop(self):
        # at once: an idle consumer notices a stop only when its current
        # poll times out
        stoppers = [threading.Thread(target=listener.stop,
                                     name="stop-notifications-%d" % n)
                    for n, listener in enumerate(self.listeners)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()

    def wait(self):
        for listener in self.listeners:
            listener.wait()


def get_listener(conf, transport, groups, pool):
    """The notification listeners: this controller's pool, and (unless
    ``[server] drain_notification_queues`` is off) the drain of the
    topic's default queues; oslo.messaging's default, threading,
    executor (no ``executor=``: naming it is deprecated).

    :returns: :class:`Listeners`, with ``start``, ``stop`` and ``wait``.
    """
    target = oslo_messaging.Target(
        topic=conf.server.notification_topic,
        exchange=conf.server.notification_exchange)
    listeners = [oslo_messaging.get_notification_listener(
        transport, [target], [NotificationEndpoint(groups)], pool=pool,
        allow_requeue=False)]
    if conf.server.drain_notification_queues:
        listeners.append(oslo_messaging.get_notification_listener(
            transport, [target], [DrainEndpoint()], allow_requeue=False))
    return Listeners(listeners)
