# SPDX-License-Identifier: Apache-2.0
"""Options of rolling upgrades: ``[upgrade_levels]``, the RPC version caps
(as Nova's group of that name)."""

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "upgrade_levels", title="Upgrade levels",
        help="RPC version caps for rolling upgrades: while some controllers "
             "or agents still run an older guestha, cap what the newer ones "
             "send to the older API version, then remove the cap once every "
             "service is upgraded (see the upgrade documentation).")


# a fresh group per registration keeps two ConfigOpts (tests) apart
GROUP = _group()

OPTS = [
    cfg.StrOpt("guestha_controller",
               help="The highest RPC API version the agents use towards "
                    "the controllers (guestha-server), e.g. 1.0. Unset: "
                    "the newest this agent knows. Set it on the compute "
                    "hosts while any controller is older than them."),
    cfg.StrOpt("guestha_agent",
               help="The highest RPC API version the controllers use "
                    "towards the agents, e.g. 1.0. Unset: the newest "
                    "this controller knows. Set it on the controllers "
                    "while any agent is older than them."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
