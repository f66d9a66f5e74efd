# SPDX-License-Identifier: Apache-2.0
"""Options of the ``notifications`` fault sink: the ``[notifications_sink]``
group (see :mod:`guestha.sinks.notifications`)."""

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "notifications_sink", title="Notifications sink",
        help="The notifications sink publishes each fault and recovery as "
             "a versioned oslo.messaging notification (event types "
             "guestha.instance.fault and guestha.instance.recovery, "
             "priority info, driver messagingv2) for any consumer: "
             "Ceilometer and Aodh event alarms, VNF managers. The payload "
             "is documented in doc/source/sinks.rst.")


def _opts():
    return [
        cfg.ListOpt("topics", default=["notifications"],
                    help="Topics to publish on. 'notifications' is what "
                         "Ceilometer's notification agent reads by "
                         "default (and so Aodh event alarms see); add "
                         "'versioned_notifications' for consumers of "
                         "Nova's versioned topic. Not "
                         "guestha_notifications: that topic carries "
                         "Nova's notifications to guestha."),
        cfg.StrOpt("transport_url", secret=True,
                   help="The message bus to publish on; unset: the "
                        "notification transport of the controller "
                        "([oslo_messaging_notifications] transport_url, "
                        "else [DEFAULT] transport_url)."),
        cfg.StrOpt("publisher_id",
                   help="publisher_id of the notifications; unset: "
                        "guestha-server:<[server] server_id>."),
        cfg.BoolOpt("lookup_project", default=True,
                    help="Ask Nova ([nova] credentials) for the project of "
                         "an instance, for project_id in the payload; "
                         "cached per instance. When Nova does not answer, "
                         "the notification goes out with project_id null "
                         "rather than late."),
    ]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(_opts(), group="notifications_sink")


def list_opts():
    return [(_group(), _opts())]
