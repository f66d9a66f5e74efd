# SPDX-License-Identifier: Apache-2.0
"""The commands of ``openstack guestha``: their options, the requests
they make and what they print, against the API on a real HTTP server."""

import json

from osc_lib import exceptions
import pytest

from guestha.osc.v1 import action
from guestha.osc.v1 import fault
from guestha.osc.v1 import instance
from tests.unit.osc import conftest
from tests.unit.osc import world as data

ALL = sorted(row[0] for row in data.INSTANCES)


def ids(rows):
    return sorted(row["ID"] for row in rows)


def test_instance_list_all_pages(admin):
    rows = admin.json(instance.ListInstance, [])
    # the API pages by 2: the command followed ``next`` to the end
    assert ids(rows) == ALL
    assert list(rows[0]) == ["ID", "Project ID", "Host", "State",
                             "Open Faults", "Updated At"]
    by_id = {row["ID"]: row for row in rows}
    for uuid, project, host, state, _reason, _ms in data.INSTANCES:
        assert by_id[uuid]["Project ID"] == project
        assert by_id[uuid]["Host"] == host
        assert by_id[uuid]["State"] == state
    assert by_id[data.uid(2)]["Open Faults"] == 1
    assert by_id[data.uid(1)]["Open Faults"] == 0


def test_instance_list_long(admin):
    rows = admin.json(instance.ListInstance, ["--long"])
    by_id = {row["ID"]: row for row in rows}
    assert by_id[data.uid(5)]["Interval (ms)"] == 500
    assert by_id[data.uid(5)]["Name"] == "vm-5"
    assert by_id[data.uid(4)]["Reason"] == "no virtio-serial controller"


@pytest.mark.parametrize("argv,expected", [
    (["--host", "host-a"], [data.uid(1), data.uid(2)]),
    (["--state", "faulted"], [data.uid(2)]),
    (["--state", "unregistered"], [data.uid(3)]),
    (["--project", data.P2], [data.uid(4), data.uid(5)]),
    (["--host", "host-b", "--project", data.P1], [data.uid(3)]),
    (["--host", "nowhere"], []),
])
def test_instance_list_filters(admin, argv, expected):
    assert ids(admin.json(instance.ListInstance, argv)) == expected


def test_instance_list_limit_and_marker(admin):
    first = admin.json(instance.ListInstance, ["--limit", "2"])
    assert len(first) == 2
    second = admin.json(instance.ListInstance,
                        ["--limit", "2", "--marker", first[-1]["ID"]])
    assert len(second) == 2
    rest = admin.json(instance.ListInstance,
                      ["--marker", second[-1]["ID"]])
    assert sorted(ids(first) + ids(second) + ids(rest)) == ALL


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_instance_list_bad_limit(admin, limit, capsys):
    with pytest.raises(SystemExit):
        admin.text(instance.ListInstance, ["--limit", limit])
    assert "not a positive integer" in capsys.readouterr().err


def test_instance_list_table_and_value(admin):
    table = admin.text(instance.ListInstance, ["--state", "refused"])
    lines = table.splitlines()
    assert lines[0].startswith("+") and "| ID " in lines[1]
    assert data.uid(4) in lines[3] and "refused" in lines[3]
    value = admin.text(instance.ListInstance,
                       ["-f", "value", "-c", "ID", "-c", "State"])
    assert sorted(value.split("\n")[:-1]) == sorted(
        "%s %s" % (row[0], row[3]) for row in data.INSTANCES)


def test_instance_list_member_sees_own_project(member_p1):
    rows = member_p1.json(instance.ListInstance, [])
    assert ids(rows) == sorted(
        row[0] for row in data.INSTANCES if row[1] == data.P1)


def test_instance_show(admin):
    shown = admin.json(instance.ShowInstance, [data.uid(2)])
    assert shown["id"] == data.uid(2)
    assert shown["project_id"] == data.P1
    assert shown["state"] == "faulted"
    assert shown["host"] == "host-a"
    assert shown["open_faults"] == 1
    # every field of the API's object, in a stable order
    assert list(shown) == sorted(shown)
    text = admin.text(instance.ShowInstance, [data.uid(2)])
    assert "| state " in text and "faulted" in text


def test_instance_show_unknown(admin):
    with pytest.raises(exceptions.CommandError) as exc:
        admin.text(instance.ShowInstance, [data.uid(999)])
    assert str(exc.value) == "No instance with ID %s" % data.uid(999)


def test_instance_show_other_project_is_unknown(member_p1):
    # another project's instance: as if it did not exist
    with pytest.raises(exceptions.CommandError) as exc:
        member_p1.text(instance.ShowInstance, [data.uid(4)])
    assert str(exc.value) == "No instance with ID %s" % data.uid(4)


def test_fault_list(admin):
    rows = admin.json(fault.ListFault, [])
    assert ids(rows) == sorted(f[0] for f in data.FAULTS)
    assert list(rows[0]) == ["ID", "Instance ID", "Host", "Kind", "Open",
                             "Detected At", "Recovered At"]
    by_id = {row["ID"]: row for row in rows}
    assert by_id[data.uid(101)]["Open"] is False
    assert by_id[data.uid(101)]["Recovered At"]
    assert by_id[data.uid(102)]["Open"] is True
    assert by_id[data.uid(102)]["Recovered At"] is None
    assert by_id[data.uid(102)]["Host"] == "host-a"


@pytest.mark.parametrize("argv,expected", [
    (["--open"], [data.uid(102), data.uid(103)]),
    (["--closed"], [data.uid(101)]),
    (["--kind", "missed"], [data.uid(102), data.uid(103)]),
    (["--instance", data.uid(1)], [data.uid(101)]),
    (["--instance", data.uid(5), "--open"], [data.uid(103)]),
    (["--host", "host-b"], [data.uid(103)]),
    (["--host", "host-a", "--closed"], [data.uid(101)]),
    (["--limit", "1", "--kind", "missed"], None),
])
def test_fault_list_filters(admin, argv, expected):
    rows = admin.json(fault.ListFault, argv)
    if expected is None:
        assert len(rows) == 1 and rows[0]["Kind"] == "missed"
    else:
        assert ids(rows) == expected


def test_fault_list_open_closed_exclusive(admin, capsys):
    with pytest.raises(SystemExit):
        admin.text(fault.ListFault, ["--open", "--closed"])
    assert "not allowed with" in capsys.readouterr().err


def test_fault_list_long_and_member(admin, member_p1):
    rows = admin.json(fault.ListFault, ["--long"])
    by_id = {row["ID"]: row for row in rows}
    assert by_id[data.uid(103)]["Project ID"] == data.P2
    assert by_id[data.uid(102)]["Action"] == "reboot"
    assert ids(member_p1.json(fault.ListFault, [])) == [
        data.uid(101), data.uid(102)]


def test_fault_show(admin, member_p1):
    shown = admin.json(fault.ShowFault, [data.uid(102)])
    assert shown["id"] == data.uid(102)
    assert shown["instance_id"] == data.uid(2)
    assert shown["kind"] == "missed"
    assert shown["open"] is True
    with pytest.raises(exceptions.CommandError) as exc:
        member_p1.text(fault.ShowFault, [data.uid(103)])
    assert str(exc.value) == "No fault with ID %s" % data.uid(103)


def test_action_list(admin, member_p1):
    rows = admin.json(action.ListAction, [])
    assert list(rows[0]) == ["ID", "Instance ID", "Fault ID", "Action",
                             "Outcome", "Server", "At"]
    by_fault = {row["Fault ID"]: row for row in rows}
    assert sorted(by_fault) == [data.uid(101), data.uid(102)]
    assert by_fault[data.uid(101)]["Outcome"] == "applied"
    assert by_fault[data.uid(102)]["Outcome"] == "refused: cap"
    assert by_fault[data.uid(102)]["Instance ID"] == data.uid(2)
    only = admin.json(action.ListAction, ["--instance", data.uid(1)])
    assert [row["Fault ID"] for row in only] == [data.uid(101)]
    by_fault = admin.json(action.ListAction, ["--fault", data.uid(102)])
    assert [row["Outcome"] for row in by_fault] == ["refused: cap"]
    assert len(member_p1.json(action.ListAction, [])) == 2
    assert len(admin.json(action.ListAction, ["--limit", "1"])) == 1


def test_yaml_output(admin):
    text = admin.text(instance.ShowInstance, [data.uid(1), "-f", "yaml"])
    assert "state: monitored" in text
    assert json.dumps(data.uid(1))[1:-1] in text


def test_no_role_is_refused_with_the_apis_message(api_url):
    # a caller with no role at all may not list: the API's 403 and its
    # message, with the URL
    nobody = conftest.Runner(api_url, roles=None, project=data.P1)
    with pytest.raises(exceptions.CommandError) as exc:
        nobody.text(instance.ListInstance, [])
    message = str(exc.value)
    assert message.startswith(
        "The guestha API answered 403 Forbidden to GET %sv1/instances"
        % api_url)
    assert "policy does not allow guestha:instance:list" in message
