# SPDX-License-Identifier: Apache-2.0
"""All guestha option groups, for registration and for the sample config.

``list_opts`` is the ``oslo.config.opts`` entry point (namespace
``guestha``): oslo-config-generator calls it to write
``etc/guestha/guestha.conf.sample`` (``tox -e genconfig``).

To add an option group, write ``guestha/conf/<group>.py`` with
``register_opts(conf)`` and ``list_opts()`` (returning ``{group: [opts]}``
or a list of ``(group, [opts])`` pairs), add the module to
``_CONF_MODULES`` below, and regenerate the sample.
"""

from guestha.conf import actions
from guestha.conf import agent
from guestha.conf import api
from guestha.conf import coordination
from guestha.conf import database
from guestha.conf import libvirt
from guestha.conf import metrics
from guestha.conf import notifications
from guestha.conf import nova
from guestha.conf import reporting
from guestha.conf import server
from guestha.conf import sinks
from guestha.conf import upgrade_levels

# One entry per option group module, e.g. ``agent,`` after
# ``from guestha.conf import agent``.  Empty until the first host service
# has options.
_CONF_MODULES = (
    agent,
    libvirt,
    nova,
    reporting,
    server,
    actions,
    sinks,
    database,
    coordination,
    upgrade_levels,
    metrics,
    notifications,
    api,
)


def register_opts(conf, modules=_CONF_MODULES):
    """Register every group's options on ``conf``."""
    for module in modules:
        module.register_opts(conf)


def list_opts(modules=_CONF_MODULES):
    """Merge the options of every module into one list, by group.

    :returns: ``[(group, [opts]), ...]``, the format oslo-config-generator
        expects, in the order the modules are listed.  ``group`` is a name
        or an ``oslo_config.cfg.OptGroup``; a group whose options come from
        several modules is one pair, and keeps an ``OptGroup`` (it carries
        the group's help text) over a bare name.
    """
    groups = {}
    merged = {}
    for module in modules:
        module_opts = module.list_opts()
        if isinstance(module_opts, dict):
            module_opts = module_opts.items()
        for group, group_opts in module_opts:
            name = getattr(group, 'name', group)
            if isinstance(groups.get(name, ''), str):
                groups[name] = group
            merged.setdefault(name, []).extend(group_opts)
    return [(groups[name], group_opts) for name, group_opts in merged.items()]
