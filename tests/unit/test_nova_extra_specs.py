# SPDX-License-Identifier: Apache-2.0
"""The Nova extra-spec validator plugin, checked without Nova installed
(its declared validators' shape, and register() against a stand-in of
Nova's base module), and against Nova's own classes when Nova is
importable (the cloud's environment)."""

import configparser
import importlib
import os
import re
import subprocess
import sys
import types

import pytest

from guestha import nova as nova_mod
from guestha import nova_extra_specs
from guestha_guest.protocol import ACTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_the_module_imports_without_nova():
    # a fresh interpreter in which "import nova" fails
    code = ("import sys; sys.modules['nova'] = None; "
            "import guestha.nova_extra_specs as m; "
            "print(len(m.VALIDATORS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_register_needs_nova(monkeypatch):
    monkeypatch.setitem(sys.modules, "nova", None)
    with pytest.raises(ImportError):
        nova_extra_specs.register()


def test_the_validators_are_guesthas_keys():
    by_name = {v["name"]: v for v in nova_extra_specs.VALIDATORS}
    assert set(by_name) == {nova_mod.HEARTBEAT,
                            nova_mod.SERVER_GROUP_MESSAGING,
                            nova_mod.CORRECTIVE_ACTION}
    assert by_name[nova_mod.HEARTBEAT]["value"]["type"] is bool
    assert by_name[nova_mod.SERVER_GROUP_MESSAGING]["value"]["type"] \
        is bool
    action = by_name[nova_mod.CORRECTIVE_ACTION]["value"]
    assert action["type"] is str and action["enum"] == list(ACTIONS)


@pytest.mark.parametrize("spec", nova_extra_specs.VALIDATORS,
                         ids=lambda s: s["name"])
def test_each_validator_has_the_shape_nova_wants(spec):
    # nova.api.validation.extra_specs.base.ExtraSpecValidator: name,
    # description, value {type in (int, str, bool), description}
    assert set(spec) <= {"name", "description", "value", "deprecated",
                         "parameters"}
    assert re.fullmatch(r"guestha:[a-z_]+", spec["name"])
    assert spec["description"].strip()
    assert spec["value"]["type"] in (int, str, bool)
    assert spec["value"]["description"].strip()


def test_the_agent_reads_as_true_what_nova_accepts_as_true():
    strutils = pytest.importorskip("oslo_utils.strutils")
    assert nova_mod.TRUE_VALUES == set(strutils.TRUE_STRINGS)
    for value in strutils.TRUE_STRINGS:
        assert nova_mod.features_from_extra_specs(
            {nova_mod.HEARTBEAT: value.upper()})["heartbeat"]
    for value in strutils.FALSE_STRINGS:
        assert not nova_mod.features_from_extra_specs(
            {nova_mod.HEARTBEAT: value})["heartbeat"]


def test_register_builds_novas_validators(monkeypatch):
    made = []

    class ExtraSpecValidator(object):
        def __init__(self, **kwargs):
            made.append(kwargs)

    base = types.ModuleType("nova.api.validation.extra_specs.base")
    base.ExtraSpecValidator = ExtraSpecValidator
    for name in ("nova", "nova.api", "nova.api.validation",
                 "nova.api.validation.extra_specs"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, base.__name__, base)
    sys.modules["nova.api.validation.extra_specs"].base = base

    validators = nova_extra_specs.register()

    assert len(validators) == 3
    assert [m["name"] for m in made] == [
        v["name"] for v in nova_extra_specs.VALIDATORS]
    made[0]["value"]["type"] = str  # a copy: the declaration is intact
    assert nova_extra_specs.VALIDATORS[0]["value"]["type"] is bool


def test_the_entry_point_is_registered():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    entries = setup["entry_points"]["nova.api.extra_spec_validators"]
    assert [e.strip() for e in entries.strip().splitlines()] == [
        "guestha = guestha.nova_extra_specs"]
    importlib.import_module("guestha.nova_extra_specs")


# -- against Nova itself, where it is installed (the cloud's venv) ----------

def test_novas_validation_refuses_typos_and_unknown_keys():
    base = pytest.importorskip("nova.api.validation.extra_specs.base")
    from nova import exception

    validators = {v.name: v for v in nova_extra_specs.register()}
    assert all(isinstance(v, base.ExtraSpecValidator)
               for v in validators.values())
    heartbeat = validators["guestha:heartbeat"]
    heartbeat.validate("guestha:heartbeat", "true")
    heartbeat.validate("guestha:heartbeat", "Yes")
    with pytest.raises(exception.ValidationError):
        heartbeat.validate("guestha:heartbeat", "ture")
    action = validators["guestha:corrective_action"]
    action.validate("guestha:corrective_action", "reboot")
    with pytest.raises(exception.ValidationError):
        action.validate("guestha:corrective_action", "restart")
