# SPDX-License-Identifier: Apache-2.0
"""The monitored-before-restart record (guestha/agent/monitored.py) and how
the loop keeps it true: entries of domains that are gone or shut off are
dropped (their next boot is a new guest, not a hang), and a failed save is
tried again."""

import json
import os

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent import loop as loop_mod
from guestha.agent import monitored as monitored_mod

A = "5b0e7d9e-3c1a-4b6f-8e2d-00000000000a"
B = "5b0e7d9e-3c1a-4b6f-8e2d-00000000000b"
C = "5b0e7d9e-3c1a-4b6f-8e2d-00000000000c"


def write(tmp_path, *uuids):
    (tmp_path / "monitored.json").write_text(json.dumps(
        {u: {"interval_ms": 200, "action": "reboot"} for u in uuids}))


def saved(tmp_path):
    return set(json.loads((tmp_path / "monitored.json").read_text()))


def make_loop(tmp_path):
    return loop_mod.AgentLoop("h", im.Policy(), reporter=None,
                              state_dir=str(tmp_path))


def close(loop):
    loop.sel.close()
    loop._workers.shutdown(wait=False)


def test_a_domain_shut_off_at_first_sight_loses_its_entry(tmp_path):
    # e.g. the host rebooted: the agent comes up before Nova starts the
    # domain again, which then boots a new guest that cannot answer a
    # resync yet; it must not be taken for a guest that hung
    write(tmp_path, A)
    loop = make_loop(tmp_path)
    try:
        info = ev.DomainInfo(A, "vm", ev.SHUTOFF, None, True, {})
        loop._handle(ev.DomainUpdate(info, "reconcile", 0.0), 0.0)
        info = ev.DomainInfo(A, "vm", ev.RUNNING, None, True, {})
        loop._handle(ev.DomainUpdate(info, "lifecycle:started", 0.0), 1.0)
        assert loop.instances[A].monitored is None
        assert loop._monitored.dirty
        loop._housekeeping(1.0)
        assert saved(tmp_path) == set()
    finally:
        close(loop)


def test_entries_of_domains_gone_while_the_agent_was_down_are_dropped(
        tmp_path):
    write(tmp_path, A, B, C)
    loop = make_loop(tmp_path)
    try:
        info = ev.DomainInfo(A, "vm", ev.RUNNING, None, True, {})
        loop._handle(ev.DomainUpdate(info, "reconcile", 0.0), 0.0)
        # B runs but was not seen yet; C is gone (deleted, migrated away)
        loop._handle(ev.Reconciled(frozenset([A, B]), 0.0), 0.0)
        assert loop._monitored.unclaimed() == {B}
        loop._housekeeping(0.0)
        assert saved(tmp_path) == {A, B}
    finally:
        close(loop)


def test_a_failed_save_is_tried_again(tmp_path, monkeypatch):
    f = monitored_mod.MonitoredFile(str(tmp_path))
    f.dirty = True
    real_replace = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(monitored_mod.os, "replace", full)
    f.save({A: type("I", (), {"monitored": {"interval_ms": 100}})()})
    assert f.dirty  # the loop's housekeeping will try again
    monkeypatch.setattr(monitored_mod.os, "replace", real_replace)
    f.save({A: type("I", (), {"monitored": {"interval_ms": 100}})()})
    assert not f.dirty
    assert saved(tmp_path) == {A}


# -- an entry holds for the QEMU process it was written for -----------------

BOOT = "0c5e1a4e-8d7f-4d1e-9a53-6f1f3b2d0001"


def write_entry(tmp_path, **process):
    (tmp_path / "monitored.json").write_text(json.dumps(
        {A: dict({"interval_ms": 200, "action": "reboot"}, **process)}))


def first_sight(tmp_path, domain_id, boot_id=BOOT):
    """The instance the agent makes of A, running as ``domain_id``."""
    loop = loop_mod.AgentLoop("h", im.Policy(), reporter=None,
                              state_dir=str(tmp_path))
    loop._monitored.boot_id = boot_id
    try:
        info = ev.DomainInfo(A, "vm", ev.RUNNING, None, True, {},
                             domain_id=domain_id)
        loop._handle(ev.DomainUpdate(info, "reconcile", 0.0), 0.0)
        loop._housekeeping(0.0)
        return loop.instances[A]
    finally:
        close(loop)


def test_the_same_qemu_process_keeps_its_entry(tmp_path):
    write_entry(tmp_path, domain_id=7, boot_id=BOOT)
    inst = first_sight(tmp_path, 7)
    assert inst.monitored == {"interval_ms": 200, "action": "reboot"}
    assert inst._restart_interval_ms == 200  # a hang is looked for
    assert saved(tmp_path) == {A}


def test_a_domain_started_again_while_the_agent_was_down_is_a_new_guest(
        tmp_path):
    # Nova stop/start or a Masakari recovery: a new QEMU process boots a
    # guest whose daemon may need longer than the bound to register
    write_entry(tmp_path, domain_id=7, boot_id=BOOT)
    inst = first_sight(tmp_path, 8)
    assert inst.monitored is None
    assert inst._restart_interval_ms is None  # no resync deadline
    assert saved(tmp_path) == set()


def test_an_entry_from_before_the_host_rebooted_is_dropped(tmp_path):
    # libvirt numbers domains from 1 again after a host reboot: the same
    # id proves nothing then
    write_entry(tmp_path, domain_id=1, boot_id=BOOT)
    inst = first_sight(tmp_path, 1, boot_id=BOOT.replace("1", "2"))
    assert inst.monitored is None
    assert saved(tmp_path) == set()


def test_an_entry_of_an_older_agent_is_honoured(tmp_path):
    write_entry(tmp_path)  # no domain_id, no boot_id
    inst = first_sight(tmp_path, 8)
    assert inst.monitored == {"interval_ms": 200, "action": "reboot"}
    assert inst._restart_interval_ms == 200


def test_saved_entries_name_their_qemu_process(tmp_path):
    f = monitored_mod.MonitoredFile(str(tmp_path), boot_id=BOOT)
    info = ev.DomainInfo(A, "vm", ev.RUNNING, None, True, {}, domain_id=9)
    f.save({A: type("I", (), {"monitored": {"interval_ms": 100},
                              "info": info})()})
    entry = json.loads((tmp_path / "monitored.json").read_text())[A]
    assert entry == {"interval_ms": 100, "domain_id": 9, "boot_id": BOOT}


def test_host_boot_id(tmp_path):
    path = tmp_path / "boot_id"
    path.write_text(BOOT + "\n")
    assert monitored_mod.host_boot_id(str(path)) == BOOT
    assert monitored_mod.host_boot_id(str(tmp_path / "missing")) is None
