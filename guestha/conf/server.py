# SPDX-License-Identifier: Apache-2.0
"""Options of the controller: the ``[server]`` group."""

import socket

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "server", title="Controller",
        help="The guestha controller (guestha-server): its identity among "
             "the controllers that run at once, the durable ledger of the "
             "events it accepts from the compute agents, Nova's "
             "notifications, and server-group messaging.")


# a fresh group per registration keeps two ConfigOpts (tests) apart: see
# guestha/conf/libvirt.py
GROUP = _group()

OPTS = [
    cfg.StrOpt("server_id", default=socket.gethostname(),
               sample_default="<hostname>",
               help="Name of this controller process: its RPC server name, "
                    "its notification pool (guestha-server-<server_id>) "
                    "and its lease in the ledger. Every guestha-server "
                    "sharing a ledger needs its own; a second process "
                    "with a name in use by a live one refuses to start. "
                    "To run several on one host, set it per process, e.g. "
                    "with the environment variable "
                    "OS_SERVER__SERVER_ID."),
    cfg.StrOpt("ledger_path", default="/var/lib/guestha/server-ledger.sqlite",
               help="The ledger: a SQLite file in which the controllers of "
                    "this host record every event they accept before "
                    "answering the agent, and its delivery to each fault "
                    "sink. Several guestha-server processes on one host "
                    "share it; controllers on different hosts cannot "
                    "share a SQLite file: they share a database, "
                    "[database] connection, which replaces this file."),
    cfg.FloatOpt("lease_seconds", default=30.0, min=3.0, max=3600,
                 help="A controller renews its lease in the ledger every "
                      "third of this. When a controller's lease is this "
                      "old (or its process is gone), another one takes "
                      "over the events it accepted but had not yet "
                      "delivered."),
    cfg.IntOpt("ledger_retention", default=86400, min=600,
               help="Seconds for which delivered events are kept in the "
                    "ledger. An agent that sends an event again within "
                    "this time (after a lost answer) is recognised; the "
                    "event is not delivered twice."),
    cfg.FloatOpt("drain_timeout", default=10.0, min=0, max=600,
                 help="On stop, seconds to wait for the fault sinks to "
                      "deliver what they hold. What is still undelivered "
                      "stays in the ledger for the next start."),
    cfg.StrOpt("notification_topic", default="guestha_notifications",
               help="Topic of Nova's versioned notifications that guestha "
                    "reads: add it to nova.conf's [notifications] "
                    "versioned_notifications_topics on every Nova node, "
                    "e.g. versioned_notifications,guestha_notifications. "
                    "A topic of guestha's own, so that guestha can drain "
                    "its default queues (drain_notification_queues) "
                    "without taking notifications from other consumers."),
    cfg.BoolOpt("drain_notification_queues", default=True,
                help="Also consume, and drop, the default queues "
                     "(<notification_topic>.<priority>) that Nova's "
                     "notifier declares and fills whether or not anyone "
                     "reads them, so that they do not grow; each "
                     "controller gets every notification in its own pool "
                     "queue. Turn it off only if something else consumes "
                     "those queues (e.g. notification_topic is "
                     "versioned_notifications and another service reads "
                     "it)."),
    cfg.StrOpt("notification_exchange", default="nova",
               help="Exchange on which Nova publishes its notifications "
                    "(Nova's control_exchange)."),
    cfg.FloatOpt("group_refresh_interval", default=60.0, min=1.0,
                 help="Seconds between full reads of the server groups "
                      "from Nova (with +/-10% jitter). Nova's "
                      "server_group and instance.delete notifications "
                      "trigger a read in between."),
    cfg.FloatOpt("broadcasts_per_second", default=20.0, min=0.1,
                 help="Server-group broadcasts one instance may send per "
                      "second (bursts of twice this); beyond it they are "
                      "refused with rate_limited."),
    cfg.FloatOpt("status_queries_per_second", default=5.0, min=0.1,
                 help="Server-group status queries one instance may send "
                      "per second (bursts of twice this)."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
