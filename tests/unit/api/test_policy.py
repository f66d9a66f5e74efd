# SPDX-License-Identifier: Apache-2.0
"""The REST API's policy defaults, rule by rule, and their registration
for oslopolicy-sample-generator."""

from importlib import metadata

from oslo_config import cfg
from oslo_context import context
import pytest

from guestha.api import policy

P1, P2 = "p1" * 16, "p2" * 16
RULES = (policy.INSTANCE_LIST, policy.INSTANCE_GET, policy.FAULT_LIST,
         policy.FAULT_GET, policy.ACTION_LIST)


@pytest.fixture(scope="module")
def enforcer():
    conf = cfg.ConfigOpts()
    conf([], project="guestha-test")
    return policy.get_enforcer(conf)


def ctx(project, *roles):
    return context.RequestContext(project_id=project, roles=list(roles))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("who,target,allowed", [
    (ctx(P1, "admin"), P2, True),       # an admin: any project
    (ctx(P1, "member"), P1, True),      # a member: their own
    (ctx(P1, "reader"), P1, True),      # a reader: their own
    (ctx(P1, "member"), P2, False),     # not another's
    (ctx(P1, "reader"), "", False),     # nor an item of no known project
    (ctx(P1), P1, False),               # no role: nothing
    (ctx(None, "reader"), "", False),   # no project: nothing
    (ctx(P1, "manager"), P1, False),    # an unrelated role: nothing
])
def test_defaults(enforcer, rule, who, target, allowed):
    assert enforcer.enforce(rule, {"project_id": target}, who) is allowed


def test_only_an_admin_sees_every_project(enforcer):
    target = {"project_id": P1}
    assert enforcer.enforce(policy.ALL_PROJECTS, target, ctx(P1, "admin"))
    for roles in (("member", "reader"), ("reader",)):
        assert not enforcer.enforce(policy.ALL_PROJECTS, target,
                                    ctx(P1, *roles))


def test_an_operator_can_override_a_rule(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('"guestha:instance:list": "role:admin"\n')
    conf_file = tmp_path / "guestha.conf"
    conf_file.write_text("[oslo_policy]\npolicy_file = %s\n" % path)
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(conf_file)], project="guestha-test")
    enforcer = policy.get_enforcer(conf)
    assert not enforcer.enforce(policy.INSTANCE_LIST, {"project_id": P1},
                                ctx(P1, "member"))
    assert enforcer.enforce(policy.INSTANCE_GET, {"project_id": P1},
                            ctx(P1, "member"))


def test_every_rule_is_documented_and_registered_for_the_generator():
    names = [rule.name for rule in policy.list_rules()]
    assert len(names) == len(set(names))
    assert set(RULES) | {policy.ALL_PROJECTS} <= set(names)
    for rule in policy.list_rules():
        assert rule.description
    points = {ep.name: ep.value for ep in metadata.entry_points(
        group="oslo.policy.policies")}
    assert points.get("guestha") == "guestha.api.policy:list_rules"
