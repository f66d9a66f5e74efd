# SPDX-License-Identifier: Apache-2.0
"""Options of the controller's fault sinks: the ``[sinks]``, ``[vitrage]``
and ``[masakari]`` groups.

Authentication, the HTTP session and endpoint selection of the Vitrage and
Masakari clients are keystoneauth1's own options, as in
:mod:`guestha.conf.nova`.
"""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from guestha.records import FAULT_KINDS

#: Vitrage alarm severities the guestha datasource plugin maps (its
#: datasources_values file, etc/vitrage/datasources_values/guestha.yaml).
VITRAGE_SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
#: Masakari's VM notification events that start its instance recovery
#: flow (masakari/engine/instance_events.py), each with STOPPED_FAILED.
MASAKARI_VM_EVENTS = ("QEMU_GUEST_AGENT_ERROR", "LIFECYCLE")


def _sinks_group():
    return cfg.OptGroup(
        "sinks", title="Fault sinks",
        help="Where the controller sends the faults, recoveries, actions "
             "and refusals it handles. Each enabled sink has its own queue "
             "and thread: one that is down never delays another. Failed "
             "deliveries are retried with exponential back-off; an event "
             "that still fails after max_attempts or give_up_after is "
             "dropped and logged at ERROR with its id.")


def _vitrage_group():
    return cfg.OptGroup(
        "vitrage", title="Vitrage sink",
        help="The vitrage sink posts faults and recoveries to Vitrage's "
             "event API (POST /v1/event), where the guestha datasource "
             "plugin (guestha.vitrage_datasource, see etc/vitrage/) turns "
             "a fault into an alarm on the instance's nova.instance vertex "
             "and a recovery clears it. Credentials, session and endpoint "
             "are keystoneauth options; the service type is 'rca'.")


def _masakari_group():
    return cfg.OptGroup(
        "masakari", title="Masakari sink",
        help="The masakari sink sends each fault as a VM notification "
             "(POST /v1/notifications, type VM) so that Masakari's "
             "instance recovery flow acts on it; recoveries are not sent "
             "(Masakari has no notification that undoes one). Do not let "
             "both Masakari and guestha's corrective actions recover the "
             "same instances. Credentials, session and endpoint are "
             "keystoneauth options; the service type is 'instance-ha'.")


# ConfigOpts.register_group keeps a shallow copy of the group it is given,
# sharing its option table; registering fresh groups each time keeps the
# options (and overrides) of two ConfigOpts apart, as tests need.
GROUP = _sinks_group()
VITRAGE_GROUP = _vitrage_group()
MASAKARI_GROUP = _masakari_group()

OPTS = [
    cfg.ListOpt("enabled", default=["log"],
                help="Fault sinks to send events to, by name (stevedore "
                     "namespace guestha.fault_sinks): log, vitrage, "
                     "masakari, notifications. The log sink alone needs "
                     "no other service."),
    cfg.StrOpt("log_path", default="/var/log/guestha/events.jsonl",
               help="File the log sink appends to: one JSON object per "
                    "line and event (the event's fields and logged_at). "
                    "A rotated file (new inode) is noticed and the path "
                    "reopened before the next write. {server_id} in the "
                    "path stands for the controller's [server] server_id: "
                    "one file per controller, e.g. in a directory every "
                    "controller host mounts, so that a controller that "
                    "takes over a dead one's deliveries in doubt looks "
                    "for them in that controller's file (see "
                    "doc/source/server.rst)."),
    cfg.BoolOpt("log_fsync", default=True,
                help="fsync the log file after each batch of events, so "
                     "that an event the log sink has taken survives a "
                     "crash of the host."),
    cfg.IntOpt("queue_size", default=10000, min=1,
               help="Events each sink's queue holds. When it is full the "
                    "oldest is dropped and logged at ERROR."),
    cfg.FloatOpt("retry_min", default=1.0, min=0.01, max=3600,
                 help="Seconds before the first retry of a failed "
                      "delivery; doubles with each consecutive failure of "
                      "that sink (+-20% jitter) up to retry_max."),
    cfg.FloatOpt("retry_max", default=60.0, min=0.01, max=3600,
                 help="Longest wait between two delivery attempts of a "
                      "sink."),
    cfg.IntOpt("max_attempts", default=20, min=1,
               help="Failed delivery attempts after which an event is "
                    "dropped for that sink (logged at ERROR with its "
                    "id)."),
    cfg.FloatOpt("give_up_after", default=3600.0, min=1,
                 help="Seconds after it was handed to a sink after which "
                      "an event is dropped at its next failed attempt "
                      "(logged at ERROR with its id)."),
]

VITRAGE_OPTS = [
    cfg.DictOpt("severities",
                default={"missed": "CRITICAL", "channel-lost": "CRITICAL",
                         "unhealthy": "MAJOR",
                         "guest-exit-unexpected": "MAJOR"},
                help="Alarm severity per fault kind (kinds: %s; "
                     "severities: %s). A kind not listed gets the "
                     "plugin's default." % (", ".join(FAULT_KINDS),
                                            ", ".join(VITRAGE_SEVERITIES))),
    cfg.IntOpt("batch_size", default=50, min=1, max=500,
               help="Most events sent in one POST /v1/event (as one "
                    "guestha.instance.events event that the plugin "
                    "splits). Vitrage's API answers some 7 requests a "
                    "second whatever their size, so batching is what "
                    "keeps up with a burst of faults; 1 sends every "
                    "event on its own."),
]

MASAKARI_OPTS = [
    cfg.ListOpt("fault_kinds", default=list(FAULT_KINDS),
                help="Fault kinds sent to Masakari (%s); others are not "
                     "sent." % ", ".join(FAULT_KINDS)),
    cfg.StrOpt("vm_event", default="QEMU_GUEST_AGENT_ERROR",
               choices=MASAKARI_VM_EVENTS,
               help="The 'event' of the VM notification payload (with "
                    "vir_domain_event STOPPED_FAILED). Masakari recovers "
                    "the instance for either; QEMU_GUEST_AGENT_ERROR is "
                    "what its own in-guest (introspective) monitor "
                    "sends."),
]


def _adapter_opts(service_type):
    opts = ks_loading.get_adapter_conf_options(include_deprecated=False)
    cfg.set_defaults(opts, service_type=service_type,
                     valid_interfaces=["internal", "public"])
    return opts


_SERVICE_TYPES = {"vitrage": "rca", "masakari": "instance-ha"}


def register_opts(conf):
    conf.register_group(_sinks_group())
    conf.register_opts(OPTS, group=GROUP)
    for make_group, opts in ((_vitrage_group, VITRAGE_OPTS),
                             (_masakari_group, MASAKARI_OPTS)):
        group = make_group()
        conf.register_group(group)
        conf.register_opts(opts, group=group.name)
        ks_loading.register_session_conf_options(conf, group.name)
        ks_loading.register_auth_conf_options(conf, group.name)
        conf.register_opts(_adapter_opts(_SERVICE_TYPES[group.name]),
                           group=group.name)


def _client_opts(service_type):
    # The password plugin's options are listed for the sample only: the
    # auth plugin (auth_type) registers its own options when it is loaded.
    return (ks_loading.get_session_conf_options()
            + ks_loading.get_auth_common_conf_options()
            + ks_loading.get_auth_plugin_conf_options("password")
            + _adapter_opts(service_type))


def list_opts():
    return {
        GROUP: OPTS,
        VITRAGE_GROUP: VITRAGE_OPTS + _client_opts("rca"),
        MASAKARI_GROUP: MASAKARI_OPTS + _client_opts("instance-ha"),
    }
