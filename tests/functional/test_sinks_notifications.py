# SPDX-License-Identifier: Apache-2.0
"""The notifications sink on the real RabbitMQ: a real oslo.messaging
notification listener receives guestha.instance.fault and
guestha.instance.recovery with the documented payload (issue 12).

The project of the instance, which the sink asks Nova for
(``[notifications_sink] lookup_project``), is left out here (no Nova:
``project_id`` null); tests/cloud/test_scenarios.py (scenario 11) has the
sink ask the real Nova for a real server's project."""

import threading

from oslo_config import cfg
import oslo_messaging

from guestha.conf import opts
from guestha import records
from guestha.sinks import base
from guestha.sinks import notifications as notif
from guestha.testing.wait import wait_until

INSTANCE = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"


class Endpoint(object):
    """A consumer's endpoint: every notification, as received."""

    def __init__(self):
        self.received = []
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.received.append((publisher_id, event_type, payload,
                                  metadata))


def test_a_real_listener_receives_the_fault_and_the_recovery(rabbit_vhost):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="guestha-tests", default_config_files=[],
         default_config_dirs=[])
    conf.set_override("transport_url", rabbit_vhost,
                      group="notifications_sink")
    conf.set_override("server_id", "ctl-n", group="server")
    conf.set_override("enabled", ["notifications"], group="sinks")
    conf.set_override("lookup_project", False, group="notifications_sink")

    # the consumer: its own transport, Ceilometer's way
    transport = oslo_messaging.get_notification_transport(conf,
                                                          url=rabbit_vhost)
    endpoint = Endpoint()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic="notifications")],
        [endpoint], executor="threading")
    listener.start()
    [sink] = base.load_sinks(conf)
    dispatcher = base.SinkDispatcher([sink])
    dispatcher.start()
    try:
        fault = records.make_fault(
            instance=INSTANCE, host="compute-1", kind="missed",
            reason="no answer to 3 challenges", action="reboot",
            detected_at=1.7e9, interval_ms=1000, misses=3)
        recovery = records.make_recovery(
            instance=INSTANCE, host="compute-1", fault_id=fault["id"],
            recovered_at=1.7e9 + 9, kind="missed", reason="answers again")
        dispatcher.submit(fault)
        dispatcher.submit(recovery)
        wait_until(lambda: len(endpoint.received) >= 2, 30,
                   "the listener to receive both notifications")
    finally:
        dispatcher.stop(timeout=5)
        listener.stop()
        listener.wait()
        transport.cleanup()

    (pub1, type1, payload1, meta1), (pub2, type2, payload2, _) = \
        endpoint.received
    assert (pub1, type1) == ("guestha-server:ctl-n", "guestha.instance.fault")
    assert (pub2, type2) == ("guestha-server:ctl-n",
                             "guestha.instance.recovery")
    assert payload1 == notif.payload_of(fault, None)
    assert payload1["guestha_object.version"] == "1.0"
    data = payload1["guestha_object.data"]
    assert data["instance_id"] == INSTANCE and data["project_id"] is None
    assert data["fault_id"] == fault["id"] and data["kind"] == "missed"
    assert data["action"] == "reboot"
    assert data["detected_at"] == fault["detected_at"]
    assert payload2["guestha_object.name"] == "InstanceRecoveryPayload"
    assert payload2["guestha_object.data"]["fault_id"] == fault["id"]
    assert payload2["guestha_object.data"]["project_id"] is None
    assert meta1["message_id"] == sink.message_of(fault)["message_id"]
