# SPDX-License-Identifier: Apache-2.0
"""Who may read what through the REST API: oslo.policy rules with their
defaults in code.

An operator overrides a rule in the policy file (``[oslo_policy]
policy_file``, ``/etc/guestha/policy.yaml`` by default); ``oslopolicy-
sample-generator --namespace guestha`` writes every rule with its default
(entry point ``oslo.policy.policies``).

The defaults: an admin (role ``admin``) sees every project; a member or
reader of a project (``member`` implies ``reader`` in Keystone) sees that
project's instances, with their faults and actions, and nothing of other
projects.  An instance of another project is answered 404, as one that
does not exist, so that a project cannot learn which instance ids exist
elsewhere.
"""

from oslo_policy import policy

ADMIN = "role:admin"
PROJECT_READER = "(role:reader or role:member) and project_id:%(project_id)s"
ADMIN_OR_PROJECT_READER = "rule:admin_api or (%s)" % PROJECT_READER

ALL_PROJECTS = "guestha:all_projects"
INSTANCE_LIST = "guestha:instance:list"
INSTANCE_GET = "guestha:instance:get"
FAULT_LIST = "guestha:fault:list"
FAULT_GET = "guestha:fault:get"
ACTION_LIST = "guestha:action:list"

_BASE = [
    policy.RuleDefault(
        "admin_api", ADMIN,
        description="An administrator of the cloud."),
    policy.RuleDefault(
        "project_reader", PROJECT_READER,
        description="A member or reader of the project that owns the "
                    "item."),
]


def _rule(name, description, path, check_str=ADMIN_OR_PROJECT_READER):
    return policy.DocumentedRuleDefault(
        name=name, check_str=check_str, description=description,
        operations=[{"path": path, "method": "GET"}],
        scope_types=["project"])


_RULES = [
    _rule(ALL_PROJECTS,
          "See the instances, faults and actions of every project (else a "
          "list shows those of the caller's project only, and an item of "
          "another project is 404).",
          "/v1/instances", check_str="rule:admin_api"),
    _rule(INSTANCE_LIST, "List monitored instances.", "/v1/instances"),
    _rule(INSTANCE_GET, "Show a monitored instance.",
          "/v1/instances/{instance_id}"),
    _rule(FAULT_LIST, "List faults.", "/v1/faults"),
    _rule(FAULT_GET, "Show a fault.", "/v1/faults/{fault_id}"),
    _rule(ACTION_LIST, "List corrective actions.", "/v1/actions"),
]


def list_rules():
    """The rules and their defaults (the ``oslo.policy.policies`` entry
    point)."""
    return _BASE + _RULES


def get_enforcer(conf=None):
    """An enforcer with the defaults registered (also the
    ``oslo.policy.enforcer`` entry point, for oslopolicy-policy-generator).
    """
    if conf is None:
        from oslo_config import cfg
        conf = cfg.CONF
        conf([], project="guestha")
    enforcer = policy.Enforcer(conf)
    enforcer.register_defaults(list_rules())
    return enforcer
