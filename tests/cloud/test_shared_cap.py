# SPDX-License-Identifier: Apache-2.0
"""The corrective-action cap counted once for the whole cloud (issue 11),
on the real Nova, marker openstack.

Three ``guestha-server`` processes (distinct ``server_id``) on ONE ledger
in the MariaDB of the machine (127.0.0.1:3306, a database of the test's
own, migrated by ``guestha-manage db sync`` and dropped at the end) with
tooz on the machine's Redis (127.0.0.1:6379, a key namespace of the
test's own), ``[actions] max_actions = 1``, the cloud's Nova; the real
agent of guestha/testing/cloud_rig.py, whose calls RabbitMQ hands to the three
in turn.  A server of flavor guestha.heartbeat is hung twice inside the cap's
window (``kill -STOP`` of its daemon, ``kill -CONT`` after the first recovery):

* the first fault: one controller accepts it (and hands it over to the
  controller that owes earlier events of the instance, if one does);
  exactly one applies the hard reboot through Nova;
* the controller that applied it is then stopped (SIGTERM), so that the
  second fault surely goes to another controller: that one refuses it,
  ``refused: cap``, from the count in the shared database;
* Nova's instance actions: exactly one reboot.

The controllers' logs say which controller accepted which event; the
test prints it.  About a minute, most of it the server's boot under TCG.

Runs with GUESTHA_CLOUD_TESTS=1 and nova-compute (not
GUESTHA_CLOUD_COMPUTE=0).
"""

import collections
import re
import time
import uuid as uuidlib

import pytest

from guestha.db import migration
from guestha.testing import cloud_rig as riglib
from guestha.testing import processes as procs
from guestha.testing import server_harness
from guestha.testing.server_harness import read_jsonl

MARIADB = ("127.0.0.1", 3306)
REDIS = ("127.0.0.1", 6379)
CONTROLLERS = ("cap-a", "cap-b", "cap-c")
#: How long "no second reboot" is watched after the capped fault.
QUIET = 3 * riglib.INTERVAL


def _mariadb(sql):
    import pymysql
    conn = pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root",
                           connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.commit()
    finally:
        conn.close()


class SharedStore(object):
    """A database of the test's own in the machine's MariaDB, migrated,
    and a Redis key namespace of its own for tooz."""

    def __init__(self, workdir):
        self.workdir = workdir
        tag = uuidlib.uuid4().hex[:10]
        self.database = "ghcl_cap_%s" % tag
        self.namespace = "ghcl_cap_%s" % tag
        self.url = ("mysql+pymysql://root@%s:%d/%s?charset=utf8mb4"
                    % (MARIADB + (self.database,)))
        self.backend_url = "redis://%s:%d?namespace=%s" % (
            REDIS + (self.namespace,))

    def create(self):
        _mariadb("CREATE DATABASE %s CHARACTER SET utf8mb4" % self.database)
        out = server_harness.manage(self.url, self.workdir, "db", "sync")
        assert "at revision %s" % migration.head() in out
        return self

    def groups(self):
        return {"database": {"connection": self.url, "max_retries": "-1",
                             "retry_interval": "1"},
                "coordination": {"backend_url": self.backend_url,
                                 "lock_timeout": "3",
                                 "heartbeat_interval": "0.5"}}

    def drop(self):
        _mariadb("DROP DATABASE IF EXISTS %s" % self.database)

    def forget_keys(self):
        import redis
        client = redis.Redis(host=REDIS[0], port=REDIS[1],
                             socket_timeout=5)
        try:
            keys = client.keys(self.namespace + "*")
            if keys:
                client.delete(*keys)
        finally:
            client.close()


class SharedController(riglib.Controller):
    """The rig's controller (the cloud's Nova, the log sink, reboots,
    ``max_actions`` 1) on the shared ledger and tooz."""

    def __init__(self, workdir, url, name, store):
        super().__init__(workdir, url, name, server_id="ghcloud-%s" % name,
                         sink_log="events-%s.jsonl" % name)
        with open(self.conf_path, "a") as f:
            for group, values in store.groups().items():
                f.write(self._section(group, values))

    def accepted(self, uuid):
        """``[(type, event id)]`` this controller accepted for ``uuid``,
        from its log (each new event is logged once, by the controller
        whose ledger write made it new; it may hand the event over to
        the controller that owes earlier events of the instance, which
        then delivers it and acts on it)."""
        return re.findall(r"instance %s: (\w+) (\S+) from"
                          % re.escape(uuid), self.log_text())


def _need_compute(cloud):
    if not cloud.compute_enabled:
        pytest.skip("the cloud runs without nova-compute "
                    "(GUESTHA_CLOUD_COMPUTE=0)")


@pytest.fixture(scope="module")
def gha(cloud):
    """The rig's agent; its own controller is not started (the test's
    three are)."""
    _need_compute(cloud)
    rig = riglib.GuestHA(cloud)
    try:
        rig.agent.start()
    except BaseException:
        rig.close()
        raise
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def hb_booting(gha):
    """A server of flavor guestha.heartbeat, created (its boot goes on
    while the controllers start)."""
    return gha.create("cap")


@pytest.fixture
def store(gha):
    store = SharedStore(gha.workdir).create()
    yield store
    procs.teardown(store.drop, store.forget_keys)


@pytest.fixture
def controllers(gha, store):
    made = collections.OrderedDict(
        (name, SharedController(gha.workdir, gha.url, name, store))
        for name in CONTROLLERS)
    # stopped all at once at the end (an idle one takes up to 5 s)
    every = server_harness.Servers(gha.workdir, gha.url, None)
    every.all = list(made.values())
    try:
        for server in made.values():
            server.start()
        yield made
    finally:
        procs.teardown(every.stop_all, every.kill_all)


def _records(controllers, uuid, type_, since=0.0):
    """``[(controller name, record)]`` of ``uuid`` at the three log
    sinks."""
    return [(name, r) for name, server in controllers.items()
            for r in read_jsonl(server.sink_log)
            if r.get("instance") == uuid and r.get("type") == type_
            and (r.get("detected_at_ts") or r.get("at_ts") or 0) >= since]


def _diag(gha, controllers, uuid):
    return lambda: "%s\n%s" % (gha.diagnostics(uuid), "\n".join(
        "--- %s ---\n%s" % (name, server.tail(1200))
        for name, server in controllers.items()))


def _hang_and_wait(controllers, server, diag):
    """SIGSTOP the guest daemon; its fault and the action on it, each as
    ``(controller name, record)``."""
    since = time.time()
    riglib.guest_ok(server.id, "kill -STOP $(guestha-daemon-pid)")
    name, fault = riglib.wait_for(
        lambda: _records(controllers, server.id, "fault", since),
        "a missed fault", timeout=30, diag=diag)[0]
    assert fault["kind"] == "missed", fault
    action = riglib.wait_for(
        lambda: [(n, a) for n, a in _records(controllers, server.id,
                                             "action")
                 if a["fault_id"] == fault["id"]],
        "the action on fault %s" % fault["id"], timeout=30, diag=diag)[0]
    return (name, fault), action


def _wait_recovery(controllers, uuid, fault, diag):
    return riglib.wait_for(
        lambda: [(n, r) for n, r in _records(controllers, uuid, "recovery")
                 if r.get("fault_id") == fault["id"]],
        "the recovery of fault %s" % fault["id"], timeout=30, diag=diag)[0]


def _acceptors(controllers, uuid, event_id):
    return [name for name, server in controllers.items()
            if any(i == event_id for _, i in server.accepted(uuid))]


def test_cap_counted_once_for_three_controllers_on_the_real_nova(
        gha, hb_booting, controllers):
    started = time.monotonic()
    server, _ = gha.wait_active(hb_booting)
    diag = _diag(gha, controllers, server.id)
    gha.wait_monitored(server.id)
    reboots_before = len(gha.reboots(server))

    # -- the first fault: one controller reboots through Nova ------------
    (got1, fault1), (acted1, action1) = _hang_and_wait(
        controllers, server, diag)
    assert (action1["action"], action1["step"], action1["outcome"]) == (
        "reboot", "hard", "applied"), action1
    riglib.wait_for(lambda: len(gha.reboots(server)) > reboots_before,
                    "Nova's reboot instance action", timeout=30, diag=diag)
    gha.wait_active(server)
    gha.wait_monitored(server.id)
    _wait_recovery(controllers, server.id, fault1, diag)
    [first] = _acceptors(controllers, server.id, fault1["id"])
    assert got1 == acted1, (got1, acted1)

    # -- the second fault reaches another controller: refused by the cap --
    stopping = time.monotonic()
    assert controllers[acted1].stop() == 0
    stop_s = time.monotonic() - stopping
    try:
        (got2, fault2), (acted2, action2) = _hang_and_wait(
            controllers, server, diag)
    finally:
        riglib.guest_ok(server.id, "kill -CONT $(guestha-daemon-pid)")
    assert action2["outcome"] == "refused: cap", action2
    [second] = _acceptors(controllers, server.id, fault2["id"])
    assert got2 == acted2 != acted1, (got2, acted2, acted1)
    gha.wait_monitored(server.id)
    _wait_recovery(controllers, server.id, fault2, diag)
    time.sleep(QUIET)

    # -- exactly one reboot at Nova, one action applied -------------------
    reboots = gha.reboots(server)
    assert len(reboots) == reboots_before + 1, [
        (a.action, a.start_time) for a in reboots]
    actions = sorted((a["fault_id"] == fault2["id"], n, a["outcome"])
                     for n, a in _records(controllers, server.id, "action"))
    assert actions == [(False, acted1, "applied"),
                       (True, acted2, "refused: cap")], actions

    accepted = {name: ["%s %s" % kv for kv in s.accepted(server.id)]
                for name, s in controllers.items()}
    print("shared cap: fault %s accepted by %s, rebooted by %s; fault %s "
          "accepted by %s, refused: cap by %s; 1 reboot at Nova; accepted "
          "per controller: %s; %.1f s (%.1f s of it stopping %s)" % (
              fault1["id"], first, acted1, fault2["id"], second, acted2,
              accepted, time.monotonic() - started, stop_s, acted1))
