# SPDX-License-Identifier: Apache-2.0
"""Options of the REST API (guestha-api): the ``[api]`` group.

Keystone's own options are keystonemiddleware's ``[keystone_authtoken]``
group, the policy file's are oslo.policy's ``[oslo_policy]``.
"""

from oslo_config import cfg

#: The default port of guestha-api (guestha-agent's metrics are on 9747,
#: guestha-server's on 9748).
DEFAULT_PORT = 9749


def _group():
    return cfg.OptGroup(
        "api", title="REST API",
        help="guestha-api, the REST API of the controllers: the monitored "
             "instances and their state, faults and corrective actions, "
             "read from the controllers' database ([database] connection, "
             "or [server] ledger_path). Run it behind uWSGI or mod_wsgi "
             "(guestha.api.wsgi), or on its own with the guestha-api "
             "command.")


def _opts():
    return [
        cfg.StrOpt("auth_strategy", default="keystone",
                   choices=[("keystone", "tokens checked by "
                             "keystonemiddleware ([keystone_authtoken])"),
                            ("noauth", "no authentication: the X-Project-Id "
                             "and X-Roles headers of the request are "
                             "believed; for tests and demos only")],
                   help="How requests are authenticated."),
        cfg.HostAddressOpt("host", default="0.0.0.0",
                           help="Address the guestha-api command listens "
                                "on (not used under uWSGI or mod_wsgi)."),
        cfg.PortOpt("port", default=DEFAULT_PORT,
                    help="Port the guestha-api command listens on (not "
                         "used under uWSGI or mod_wsgi); register it in "
                         "Keystone's catalog as the guestha endpoint."),
        cfg.IntOpt("threads", default=8, min=1, max=256,
                   help="Requests the guestha-api command serves at once "
                        "(one thread each). A larger installation runs "
                        "guestha.api.wsgi under uWSGI instead."),
        cfg.IntOpt("max_limit", default=1000, min=1,
                   help="Most items one list request returns; a request's "
                        "limit above it is cut to it, and a list without "
                        "a limit returns this many. The answer's 'next' "
                        "marker fetches the rest."),
    ]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(_opts(), group="api")


def list_opts():
    return [(_group(), _opts())]
