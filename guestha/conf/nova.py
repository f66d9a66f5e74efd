# SPDX-License-Identifier: Apache-2.0
"""Options for talking to Nova: the ``[nova]`` group.

Authentication, the HTTP session and endpoint selection are keystoneauth1's
own options (as in nova.conf's service groups), so operators configure
guestha the way they configure every other OpenStack client; guestha adds
only the flavor cache and the microversion.
"""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "nova", title="Nova API",
        help="Credentials and endpoint for the Nova API. The controller "
             "reads server groups and servers and applies corrective "
             "actions: it needs them, with Nova's policy rights to show, "
             "reboot and stop servers of all projects (admin by default). "
             "On a compute host they are optional: the agent reads each "
             "instance's flavor extra specs (guestha:heartbeat, "
             "guestha:server_group_messaging, guestha:corrective_action) "
             "from the domain XML, where Nova writes them, and asks Nova's "
             "API (with the right to show flavor extra specs) only for a "
             "domain of an older Nova that does not; leave auth_type unset "
             "to never ask.")


# ConfigOpts.register_group keeps a shallow copy of the group it is given,
# sharing its option table; registering a fresh group each time keeps the
# options (and overrides) of two ConfigOpts apart, as tests need.
GROUP = _group()

# The embedded flavor with its extra specs appears in GET /servers/{id}
# from 2.47 on; earlier microversions give only the flavor's id.
MIN_MICROVERSION = "2.47"

OPTS = [
    cfg.StrOpt("api_microversion", default=MIN_MICROVERSION,
               help="Compute API microversion to request; at least %s, "
                    "the first one that embeds the flavor with its extra "
                    "specs in a server." % MIN_MICROVERSION),
    cfg.IntOpt("flavor_cache_ttl", default=300, min=0,
               help="Seconds for which an instance's guestha flavor "
                    "settings are cached. A flavor cannot change without a "
                    "resize, which restarts the domain; 0 disables the "
                    "cache."),
]

_DEFAULT_SERVICE_TYPE = "compute"
_DEFAULT_INTERFACES = ["internal", "public"]


def _adapter_opts():
    opts = ks_loading.get_adapter_conf_options(include_deprecated=False)
    # Nova's own defaults for its clients of other services: the service
    # type is known, and the internal endpoint is preferred.
    cfg.set_defaults(opts, service_type=_DEFAULT_SERVICE_TYPE,
                     valid_interfaces=_DEFAULT_INTERFACES)
    return opts


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)
    ks_loading.register_session_conf_options(conf, GROUP.name)
    ks_loading.register_auth_conf_options(conf, GROUP.name)
    conf.register_opts(_adapter_opts(), group=GROUP)


def list_opts():
    # The password plugin's options are listed for the sample only: the
    # auth plugin (auth_type) registers its own options when it is loaded.
    return {GROUP: (OPTS
                    + ks_loading.get_session_conf_options()
                    + ks_loading.get_auth_common_conf_options()
                    + ks_loading.get_auth_plugin_conf_options("password")
                    + _adapter_opts())}
