# SPDX-License-Identifier: Apache-2.0
"""Validators of guestha's flavor extra specs, for Nova's API.

Nova accepts any extra spec in a namespace it does not know, so without
this plugin ``openstack flavor set --property guestha:heartbeat=ture``
succeeds and the flavor silently enables nothing.  Installed where
nova-api runs (``pip install guestha`` into Nova's environment), the
``nova.api.extra_spec_validators`` entry point ``guestha`` makes Nova
(microversion 2.86 and later, when the request asks for validation)
refuse such a value, and, since the ``guestha`` namespace is then
registered, any ``guestha:*`` key that is not listed here.

The interface is Nova's (``nova/api/validation/extra_specs/``): the
entry point names a module whose ``register()`` returns
``nova.api.validation.extra_specs.base.ExtraSpecValidator`` objects.  Nova
is not a dependency of guestha: this module imports it only inside
:func:`register`, so it imports (and its :data:`VALIDATORS` can be
checked) without Nova installed.
"""

from guestha_guest.protocol import ACTIONS

#: What :func:`register` gives Nova, as ``ExtraSpecValidator`` keyword
#: arguments.  The keys match :mod:`guestha.nova`'s, which a test
#: checks; booleans are checked as Nova checks them
#: (``oslo_utils.strutils.bool_from_string``, strict), the same values the
#: agent reads as true.
VALIDATORS = (
    {
        "name": "guestha:heartbeat",
        "description": (
            "Whether guestha monitors instances of this flavor: the "
            "compute agent hot-plugs the guestha channel and heartbeats "
            "the guest daemon."),
        "value": {
            "type": bool,
            "description": "Whether to enable the heartbeat.",
        },
    },
    {
        "name": "guestha:server_group_messaging",
        "description": (
            "Whether instances of this flavor take part in guestha's "
            "server-group messaging (broadcasts, status and Nova state "
            "notifications among the members of their server group)."),
        "value": {
            "type": bool,
            "description": "Whether to enable server-group messaging.",
        },
    },
    {
        "name": "guestha:corrective_action",
        "description": (
            "The most intrusive corrective action guestha's controller may "
            "take on a fault of an instance of this flavor; it narrows, "
            "never widens, the controller's [actions] allowed_max."),
        "value": {
            "type": str,
            "description": "One of guestha's corrective actions.",
            "enum": list(ACTIONS),
        },
    },
)


def register():
    """Nova's plugin interface: the validators of the ``guestha``
    namespace.

    :raises ImportError: Nova is not installed (only nova-api calls this).
    """
    from nova.api.validation.extra_specs import base

    return [base.ExtraSpecValidator(**dict(spec, value=dict(spec["value"])))
            for spec in VALIDATORS]
