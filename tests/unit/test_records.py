# SPDX-License-Identifier: Apache-2.0
"""The event records (guestha.records): built, checked, backported."""

import datetime
import json
import subprocess
import sys
import uuid

import pytest

from guestha import records

INSTANCE = "5b0e7d9e-3c1a-4b6f-8e2d-1f0a9c8b7d6e"
FAULT_ID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
# 2024-03-01T12:00:00.123456Z
AT = 1709294400.123456


def fault(**overrides):
    kwargs = dict(instance=INSTANCE, host="compute-1", kind="missed",
                  reason="no answer to challenge 7", action="reboot",
                  detected_at=AT, interval_ms=1000, misses=2)
    kwargs.update(overrides)
    return records.make_fault(**kwargs)


def test_fault_record():
    event = fault(details={"state": "monitored"})

    assert str(uuid.UUID(event["id"], version=4)) == event["id"]
    assert event == {
        "version": "1.0", "id": event["id"], "type": "fault",
        "instance": INSTANCE, "host": "compute-1", "kind": "missed",
        "reason": "no answer to challenge 7", "action": "reboot",
        "detected_at": "2024-03-01T12:00:00.123456+00:00",
        "detected_at_ts": AT, "interval_ms": 1000, "misses": 2,
        "details": {"state": "monitored"},
    }
    assert json.loads(json.dumps(event)) == event
    assert datetime.datetime.fromisoformat(
        event["detected_at"]).timestamp() == pytest.approx(AT, abs=1e-6)


def test_every_record_has_its_own_id():
    assert fault()["id"] != fault()["id"]


def test_recovery_record():
    event = records.make_recovery(INSTANCE, "compute-1", FAULT_ID, AT + 5,
                                  details={"why": "answered"}, kind="missed")
    assert event["type"] == "recovery"
    assert event["fault_id"] == FAULT_ID
    assert event["kind"] == "missed"
    assert event["recovered_at"] == "2024-03-01T12:00:05.123456+00:00"
    assert event["recovered_at_ts"] == AT + 5
    assert event["details"] == {"why": "answered"}
    assert records.make_recovery(INSTANCE, "h", FAULT_ID, AT)["kind"] is None


def test_state_record():
    event = records.make_state(INSTANCE, "compute-1", "monitored",
                               "guest registered", AT)
    assert (event["type"], event["state"], event["at_ts"]) == (
        "state", "monitored", AT)
    assert event["at"] == "2024-03-01T12:00:00.123456+00:00"


def test_action_none_and_unregistered_interval_are_allowed():
    event = fault(action=None, interval_ms=None, misses=None,
                  kind="channel-lost")
    assert (event["action"], event["interval_ms"], event["misses"]) == (
        None, None, None)


def test_an_upper_case_uuid_is_stored_canonical():
    assert fault(instance=INSTANCE.upper())["instance"] == INSTANCE


def test_a_long_reason_is_cut_not_refused():
    assert len(fault(reason="x" * 5000)["reason"]) == records.MAX_REASON


@pytest.mark.parametrize("overrides, message", [
    ({"kind": "hung"}, "kind must be one of missed, unhealthy"),
    ({"action": "migrate"}, "action must be one of none, log, reboot"),
    ({"instance": "not-a-uuid"}, "instance is not a uuid"),
    ({"instance": "{%s}" % INSTANCE}, "not a canonical uuid"),
    ({"instance": INSTANCE.replace("-", "")}, "not a canonical uuid"),
    ({"instance": None}, "instance must be a uuid string"),
    ({"host": ""}, "host must be a non-empty string"),
    ({"reason": 42}, "reason must be a string or None"),
    ({"detected_at": "now"}, "detected_at must be epoch seconds"),
    ({"detected_at": float("nan")}, "detected_at must be epoch seconds"),
    ({"detected_at": -1}, "detected_at must be epoch seconds"),
    ({"detected_at": True}, "detected_at must be epoch seconds"),
    ({"interval_ms": 1.5}, "interval_ms must be an integer >= 0"),
    ({"misses": -1}, "misses must be an integer >= 0"),
    ({"misses": False}, "misses must be an integer >= 0"),
    ({"details": ["x"]}, "details must be a dict"),
    ({"details": {"t": object()}}, "details must be JSON-serializable"),
])
def test_bad_fault_inputs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{")):
        fault(**overrides)


def test_bad_recovery_and_state_inputs_are_refused():
    with pytest.raises(ValueError, match="fault_id is not a uuid"):
        records.make_recovery(INSTANCE, "h", "fault-7", AT)
    with pytest.raises(ValueError, match="kind must be one of"):
        records.make_recovery(INSTANCE, "h", FAULT_ID, AT, kind="bad")
    with pytest.raises(ValueError, match="state must be a short"):
        records.make_state(INSTANCE, "h", "Monitored!", None, AT)


def test_validate_event_accepts_every_record_after_the_wire():
    for event in (fault(), records.make_recovery(INSTANCE, "h", FAULT_ID, AT),
                  records.make_state(INSTANCE, "h", "exited", None, AT)):
        wire = json.loads(json.dumps(event))
        assert records.validate_event(wire) == event


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(version="2.0"), "unsupported event version"),
    (lambda e: e.update(type="alarm"), "type must be one of"),
    (lambda e: e.pop("misses"), "fault event lacks misses"),
    (lambda e: e.update(id="x"), "id is not a uuid"),
    (lambda e: e.update(kind="hung"), "kind must be one of"),
    (lambda e: e.update(detected_at_ts=None), "detected_at_ts must be"),
    (lambda e: e.update(details=None), "details must be a dict"),
])
def test_validate_event_refuses_malformed_records(change, message):
    event = fault()
    change(event)
    with pytest.raises(ValueError, match=message):
        records.validate_event(event)
    with pytest.raises(ValueError, match="must be a dict"):
        records.validate_event([event])


# -- rolling upgrades ---------------------------------------------------------

def newer(event, version="1.1"):
    """``event`` as an agent of a newer minor version sends it: with a
    field this version does not know."""
    return dict(event, version=version, confidence={"score": 0.9})


def test_a_record_of_a_newer_minor_version_is_accepted_as_is():
    event = newer(fault())
    assert records.validate_event(event) is event
    assert event["confidence"] == {"score": 0.9}  # kept, not checked
    assert records.validate_event(newer(fault(), "1.27"))


@pytest.mark.parametrize("version", ["2.0", "0.9", "1", "1.x", None, 1.1])
def test_a_record_of_another_major_version_is_refused(version):
    with pytest.raises(ValueError, match="unsupported event version"):
        records.validate_event(dict(fault(), version=version))


def test_a_newer_minor_record_still_has_its_known_fields_checked():
    event = newer(fault())
    event["kind"] = "hung"
    with pytest.raises(ValueError, match="kind must be one of"):
        records.validate_event(event)


def test_backport_event_sends_the_caps_version_without_newer_fields():
    event = newer(fault(), "1.3")
    old = records.backport_event(event, "1.0")
    assert old == fault_fields(event) and old["version"] == "1.0"
    plain = fault()
    assert records.backport_event(plain, "1.0") is plain
    with pytest.raises(ValueError):
        records.backport_event(plain, "2.0")


def fault_fields(event):
    keys = set(fault())
    return dict({k: v for k, v in event.items() if k in keys},
                version="1.0")


def test_records_need_no_oslo_messaging():
    # the agent's fault tracking, the sinks and the REST API build and
    # read records; oslo.messaging (and eventlet under it) is the RPC's
    code = ("import sys, guestha.records, guestha.conf.sinks, "
            "guestha.conf.actions; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('oslo_messaging', 'eventlet')))")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_one_spelling_of_the_vocabularies():
    from guestha.conf import actions as actions_conf
    from guestha.conf import sinks as sinks_conf
    from guestha_guest import protocol

    assert records.ACTIONS is protocol.ACTIONS is actions_conf.ACTIONS
    assert sinks_conf.FAULT_KINDS is records.FAULT_KINDS
