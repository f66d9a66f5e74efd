# SPDX-License-Identifier: Apache-2.0
"""Nova's versioned notifications through the real RabbitMQ: what a Nova
configured with ``versioned_notifications_topics =
versioned_notifications,guestha_notifications`` publishes reaches every
controller's listener, and no queue of guestha's topic is left growing
unread (Nova's notifier declares and fills ``<topic>.<priority>`` whether
or not anyone reads it).  Queue depths are read with a passive declare,
which the broker answers from the queue itself (``rabbitmqctl
list_queues`` lags by its statistics interval)."""

import threading

import kombu
from oslo_config import cfg
import oslo_messaging
import pytest

from guestha.conf import server as server_conf
from guestha.server import notifications
from guestha.testing.server_harness import NovaNotifier
from guestha.testing.wait import wait_until

pytestmark = pytest.mark.functional

INSTANCE = "6b1c4f7e-4a3b-4a76-9d4e-0d3c2b1a0042"
ARRIVAL = 15.0


class Groups(object):
    """Records what the endpoint feeds the server-group directory."""

    def __init__(self):
        self.changes = []
        self._lock = threading.Lock()

    def on_instance_change(self, instance, state, event, host=None,
                           old_state=None, change_id=None, at=None):
        assert change_id, "a change goes with the notification's id"
        with self._lock:
            self.changes.append((event, instance, state, host))

    def update_group(self, group, members):
        pass

    def forget_instance(self, instance):
        pass

    def request_refresh(self):
        pass


def make_conf(url, **server_overrides):
    conf = cfg.ConfigOpts()
    server_conf.register_opts(conf)
    conf([], project="guestha-tests", default_config_files=[],
         default_config_dirs=[])
    for name, value in server_overrides.items():
        conf.set_override(name, value, "server")
    return conf


class Controller(object):
    """One controller's notification listeners, in this process."""

    def __init__(self, url, name, **server_overrides):
        self.conf = make_conf(url, **server_overrides)
        self.transport = oslo_messaging.get_notification_transport(
            self.conf, url=url)
        self.groups = Groups()
        self.listener = notifications.get_listener(
            self.conf, self.transport, self.groups,
            pool="guestha-server-%s" % name)
        self.listener.start()

    def close(self):
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()


def queue_depth(url, name):
    """Messages ready in queue ``name``, or None if there is no such
    queue."""
    amqp_url = url.replace("rabbit://", "amqp://", 1)
    with kombu.Connection(amqp_url) as conn:
        channel = conn.channel()
        try:
            return channel.queue_declare(queue=name, passive=True)\
                .message_count
        except conn.channel_errors:
            return None


@pytest.fixture
def cleanup(rabbit_vhost):
    # NovaNotifier overrides control_exchange on the global CONF, which
    # oslo.messaging registers when it first makes a transport with it
    oslo_messaging.get_notification_transport(
        cfg.CONF, url=rabbit_vhost).cleanup()
    items = []
    yield items
    for item in reversed(items):
        item.close()


def test_every_controller_gets_it_and_no_queue_grows(rabbit_vhost,
                                                     cleanup):
    a = Controller(rabbit_vhost, "a")
    cleanup.append(a)
    b = Controller(rabbit_vhost, "b")
    cleanup.append(b)
    nova = NovaNotifier(rabbit_vhost, host="compute-7")
    cleanup.append(nova)

    for _ in range(5):
        nova.instance_event("instance.power_off.end", INSTANCE, "stopped",
                            "compute-7")
    nova.error("instance.reboot.error", {"nova_object.data": {}})

    wait_until(lambda: [len(c.groups.changes) for c in (a, b)] == [5, 5],
               ARRIVAL, "5 notifications at each controller")
    assert a.groups.changes[0] == ("instance.power_off.end", INSTANCE,
                                   "stopped", "compute-7")
    # guestha's queues, the default ones of its topic included, empty out
    ours = ["guestha_notifications.info", "guestha_notifications.error",
            "guestha-server-a", "guestha-server-b"]
    wait_until(lambda: all(queue_depth(rabbit_vhost, q) == 0 for q in ours),
               ARRIVAL, "guestha's queues drained: %s" % ours)
    # Nova's default topic is Nova's default queue's business: filled,
    # since nothing in this test reads it (as the cloud showed)
    assert queue_depth(rabbit_vhost, "versioned_notifications.info") == 5


def test_without_the_drain_the_default_queue_grows(rabbit_vhost, cleanup):
    # what the drain is for: the pool's queue alone leaves Nova's default
    # queue of the topic growing
    a = Controller(rabbit_vhost, "a", drain_notification_queues=False)
    cleanup.append(a)
    nova = NovaNotifier(rabbit_vhost, host="compute-7")
    cleanup.append(nova)

    for _ in range(3):
        nova.instance_event("instance.power_off.end", INSTANCE, "stopped",
                            "compute-7")

    wait_until(lambda: len(a.groups.changes) == 3, ARRIVAL,
               "3 notifications at the controller")
    wait_until(lambda: queue_depth(rabbit_vhost, "guestha-server-a") == 0,
               ARRIVAL, "the pool's queue drained")
    assert queue_depth(rabbit_vhost, "guestha_notifications.info") == 3


def test_a_controller_listens_on_its_configured_topic(rabbit_vhost,
                                                      cleanup):
    a = Controller(rabbit_vhost, "a", notification_topic="ha_events")
    cleanup.append(a)
    nova = NovaNotifier(rabbit_vhost, host="compute-7",
                        topics=["versioned_notifications", "ha_events"])
    cleanup.append(nova)

    nova.instance_event("instance.pause.end", INSTANCE, "paused",
                        "compute-7")

    wait_until(lambda: a.groups.changes, ARRIVAL, "the notification")
    wait_until(lambda: queue_depth(rabbit_vhost, "ha_events.info") == 0,
               ARRIVAL, "ha_events.info drained")
