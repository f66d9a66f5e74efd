# SPDX-License-Identifier: Apache-2.0
"""Options of the coordination between controllers: ``[coordination]``
(the shape of Masakari's and Cinder's)."""

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "coordination", title="Coordination",
        help="Coordination of several guestha-server processes through tooz: "
             "which one relays Nova's state changes to the agents, and which "
             "one takes over the work of a controller that died.")


# a fresh group per registration keeps two ConfigOpts (tests) apart
GROUP = _group()

OPTS = [
    cfg.StrOpt("backend_url", secret=True,
               help="The tooz backend of the controllers, e.g. "
                    "redis://redis.example.org:6379, "
                    "mysql://user:SECRET@dbhost/guestha or "
                    "etcd3+http://etcd.example.org:2379. Unset: the "
                    "controllers coordinate through the leases in the "
                    "ledger's database alone (the relay is the live "
                    "controller with the smallest server_id), which "
                    "suits one host or a shared database."),
    cfg.FloatOpt("heartbeat_interval", default=1.0, min=0.1, max=60,
                 help="Seconds between two heartbeats to the backend: "
                      "they keep this controller's locks (the relay's "
                      "among them) alive."),
    cfg.IntOpt("lock_timeout", default=10, min=2, max=3600,
               help="Seconds after which the locks of a controller that "
                    "stopped heartbeating (it died) expire, and another "
                    "controller becomes the relay."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
