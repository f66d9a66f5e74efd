# SPDX-License-Identifier: Apache-2.0
"""Options of the compute agent's libvirt connection: the ``[libvirt]``
group."""

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "libvirt", title="libvirt connection",
        help="How the compute agent watches this host's domains through "
             "libvirt: lifecycle and device events, with a periodic full "
             "reconcile in case an event was missed.")


# ConfigOpts.register_group keeps a shallow copy of the group it is given,
# sharing its option table; registering a fresh group each time keeps the
# options (and overrides) of two ConfigOpts apart, as tests need.
GROUP = _group()

OPTS = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt connection URI; the one nova-compute uses "
                    "([libvirt] connection_uri in nova.conf). The agent "
                    "opens it read-write: hot-plugging the guestha channel "
                    "is a write."),
    cfg.IntOpt("keepalive_interval", default=5, min=0,
               help="Seconds between keepalive probes on the libvirt "
                    "connection; 0 disables them. With keepalive_count, "
                    "how soon a hung libvirtd is noticed."),
    cfg.IntOpt("keepalive_count", default=3, min=0,
               help="Keepalive probes that may go unanswered before the "
                    "connection counts as lost and is reopened."),
    cfg.FloatOpt("reconnect_interval", default=5.0, min=0.1,
                 help="Seconds between attempts to reopen a lost libvirt "
                      "connection. Instance state is kept meanwhile; a "
                      "reconcile follows every reconnect."),
    cfg.FloatOpt("reconcile_interval", default=60.0, min=1.0,
                 help="Seconds between full reconciles (list every active "
                      "domain and read its XML), each with +/-10% jitter. "
                      "A reconcile also follows every (re)connect."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
