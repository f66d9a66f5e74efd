# SPDX-License-Identifier: Apache-2.0
"""Several controllers on one store (issue 11): three guestha-server
processes as three controller hosts on MariaDB with tooz on Redis, and
the same three on the single-node default, one SQLite file.

A storm of faults and recoveries from four agents goes on while another
controller's log sink cannot write for 2 s, while one controller (the
relay) is SIGKILLed and restarted, and, on MariaDB, while the database
restarts.  Then:

* every event an agent sent is at the log sink exactly once, over the
  three controllers' files (``events-{server_id}.jsonl`` in one
  directory, as ``[sinks] log_path`` names them): the deliveries the
  killed controller had in flight (marked in flight before its sink got
  them, not yet done) are in doubt and sent again with ``"redelivered":
  true`` and the killed controller's name, and the log sink that gets
  them writes only those not in the killed controller's file; at most
  one batch of the log sink is in doubt;
* over the three files, ordered by the time each line was written
  (``logged_at``), the events of one instance are in the order the agent
  sent them, although an agent's consecutive calls reach different
  controllers, and through the kill: an instance's new events follow the
  controller that owes its earliest undelivered one (handed over to it),
  and the dead one's are taken over in ledger order;
* each Nova state change reaches the peers once, in Nova's order: one
  relay, before and after the relay was killed, and a change sent right
  after the kill, while no relay is elected, is recorded by the others
  in the ledger and told by the next relay;
* the corrective-action cap holds cloud-wide: faults of one instance
  spread over the three controllers reboot it ``max_actions`` times.

See shared_controllers.py for what runs where.  The run takes about a minute.
"""

import collections
import contextlib
import os
import re
import time
import uuid

from oslo_config import cfg
import pytest
import sqlalchemy as sa

from guestha.db import migration
from guestha import records
from guestha import rpc
from guestha.rpc import api
from guestha.sinks.log import LogSink
from guestha.testing.fake_nova import FakeNova
from guestha.testing import server_harness
from guestha.testing.server_harness import FakeAgents
from guestha.testing.server_harness import NovaNotifier
from guestha.testing.server_harness import read_jsonl
from guestha.testing import shared_controllers
from guestha.testing.wait import wait_until as wait_for

pytestmark = pytest.mark.functional

CONTROLLERS = ("ctl-1", "ctl-2", "ctl-3")
A = "aaaaaaaa-0000-4000-8000-0000000000a1"   # peer-1
B = "bbbbbbbb-0000-4000-8000-0000000000b2"   # peer-2
GROUP = "788608ec-ebdc-45c5-bc7f-e5f24ab9aaaa"
CAPPED = "cccccccc-0000-4000-8000-0000000000c3"
PEERS = ("peer-1", "peer-2")
MESSAGING = {"guestha:heartbeat": "true",
             "guestha:server_group_messaging": "true"}
MAX_ACTIONS = 3


@pytest.fixture
def nova():
    with FakeNova() as fake:
        fake.add_server(A, flavor_extra_specs=MESSAGING, host="peer-1")
        fake.add_server(B, flavor_extra_specs=MESSAGING, host="peer-2")
        fake.add_server_group(GROUP, "vnf", members=[A, B])
        fake.add_server(CAPPED, host="compute-9",
                        flavor_extra_specs={"guestha:heartbeat": "true"})
        yield fake


class Store(object):
    """Where the controllers keep the ledger, and how they coordinate."""

    def __init__(self, kind, workdir):
        self.kind = kind
        self.workdir = workdir
        self.db = self.redis = None
        self.database = "guestha_test_%s" % uuid.uuid4().hex[:10]
        if kind == "mariadb":
            for part in (shared_controllers.MariaDB, shared_controllers.Redis):
                if not part.available():
                    pytest.skip("%s is not installed" % part.__name__)
            self.db = shared_controllers.MariaDB(workdir).install().start()
            self.db.execute("CREATE DATABASE %s CHARACTER SET utf8mb4"
                            % self.database)
            self.redis = shared_controllers.Redis(workdir).start()
            self.url = self.db.url(self.database)
            self.sync()
        else:
            self.url = "sqlite:///%s/ledger.sqlite" % workdir

    def groups(self):
        if self.kind == "mariadb":
            return {"database": {"connection": self.url,
                                 "max_retries": "-1",
                                 "retry_interval": "1"},
                    "coordination": {"backend_url": self.redis.url,
                                     "lock_timeout": "3",
                                     "heartbeat_interval": "0.5"}}
        return {"server": {"ledger_path": self.url[len("sqlite:///"):]}}

    def sync(self):
        """``guestha-manage db sync``, as an operator runs it before the
        controllers start."""
        out = server_harness.manage(self.url, self.workdir, "db", "sync")
        assert "at revision %s" % migration.head() in out

    def engine(self):
        return sa.create_engine(self.url)

    def close(self):
        if self.db is not None:
            try:
                self.db.execute("DROP DATABASE IF EXISTS %s" % self.database)
            finally:
                self.db.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(params=["mariadb", "sqlite"])
def store(request, tmp_path):
    store = Store(request.param, str(tmp_path))
    yield store
    store.close()


@pytest.fixture
def controllers(store, rabbit_vhost, tmp_path, nova):
    hostnames = (shared_controllers.can_unshare_uts()
                 and store.kind == "mariadb")
    made = {}
    for server_id in CONTROLLERS:
        groups = store.groups()
        groups.setdefault("server", {}).update(lease_seconds="3")
        # each its own file, each file readable by all: what a
        # controller takes over in doubt it looks for in the dead one's
        groups["sinks"] = {"log_path": os.path.join(
            str(tmp_path), "events-{server_id}.jsonl")}
        # reboots (a stopped instance refuses a second stop); no hard
        # reboot follows within the test
        groups["actions"] = {"allowed_max": "reboot",
                             "soft_reboot_timeout": "600",
                             "max_actions": str(MAX_ACTIONS),
                             "window": "600"}
        made[server_id] = shared_controllers.HostServer(
            str(tmp_path), rabbit_vhost, server_id, nova.endpoint,
            hostname=("%s.example.org" % server_id) if hostnames else None,
            **groups)
    yield made
    for server in made.values():
        server.stop()
    for server in made.values():
        server.kill()


def pending(store):
    engine = store.engine()
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM deliveries "
                "WHERE state IN ('pending', 'inflight', 'handed')"
            ).scalar()
    except sa.exc.OperationalError:
        return None   # the database is restarting
    finally:
        engine.dispose()


def stuck(store):
    """What is still pending, by owner and target, and the leases: the
    message of a failure."""
    engine = store.engine()
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT e.server, d.sink, d.state, d.attempts, count(*), "
                "min(e.received), max(e.received) FROM deliveries d "
                "JOIN events e ON e.id = d.event_id "
                "WHERE d.state IN ('pending', 'inflight', 'handed') "
                "GROUP BY e.server, d.sink, d.state, d.attempts").all()
            leases = conn.exec_driver_sql(
                "SELECT id, hostname, pid, heartbeat FROM servers").all()
    finally:
        engine.dispose()
    return "owed (owner, target, state, attempts, rows, received): %s; " \
        "leases at %.1f: %s" % (rows, time.time(), leases)


def redispatched(server):
    """How many events ``server`` dispatched again (taken over from a
    dead controller, or owed from its own last run), from its log."""
    text = server.log_text()
    taken = sum(int(n) for n in re.findall(
        r"took over (\d+) undelivered event", text))
    owed = sum(int(n) for n in re.findall(
        r"dispatching (\d+) event\(s\) owed from the last run", text))
    settled = sum(int(n) for n in re.findall(
        r"dispatching (\d+) event\(s\) whose commit failed", text))
    return taken + owed + settled


def skipped_redelivered(server):
    """How many redelivered events ``server``'s log sink found written
    and skipped, from its log."""
    return sum(int(n) for n in re.findall(
        r"log sink: (\d+) redelivered event\(s\) already written",
        server.log_text()))


@contextlib.contextmanager
def unwritable(path):
    """The log sink cannot open ``path`` meanwhile (a directory is in
    its place: the sink sees the file rotated, and opening it fails), and
    finds its file back after."""
    away = path + ".away"
    moved = os.path.exists(path)
    if moved:
        os.rename(path, away)
    os.mkdir(path)
    try:
        yield
    finally:
        os.rmdir(path)
        if moved:
            os.rename(away, path)


def handed_over(server):
    """How many new events ``server`` handed to the controller that owed
    earlier events of their instance, from its log."""
    return sum(int(n) for n in re.findall(
        r"handed (\d+) new event\(s\) to", server.log_text()))


def written_in_order(files, order):
    """The records of every file in ``files`` that the storm sent, in the
    order they were written: by ``logged_at``, then by place in their
    file."""
    merged = []
    for n, (_, lines) in enumerate(sorted(files.items())):
        merged.extend((_epoch(r["logged_at"]), n, i, r)
                      for i, r in enumerate(lines) if r["id"] in order)
    merged.sort(key=lambda item: item[:3])
    return [r for _, _, _, r in merged]


def late_events(records, order):
    """Records of ``records`` (one sink file) that come after a record of
    the same instance that the agent sent later."""
    newest = {}
    late = []
    for record in records:
        index = order[record["id"]]
        if index < newest.get(record["instance"], -1):
            late.append(record["id"])
        newest[record["instance"]] = max(index,
                                         newest.get(record["instance"], -1))
    return late


def test_a_storm_through_a_killed_relay_and_a_database_restart(
        store, controllers, rabbit_vhost, nova):
    for server in controllers.values():
        server.start()
    wait_for(lambda: sum(s.is_relay() for s in controllers.values()) == 1,
             15, "one relay")
    peers = FakeAgents(rabbit_vhost, PEERS)
    notifier = NovaNotifier(rabbit_vhost, host="peer-2")
    transport = rpc.get_transport(cfg.CONF, url=rabbit_vhost)
    storm = shared_controllers.Storm(transport, agents=4, instances=8,
                                     cycles=45, batch=4, pause=0.04)
    try:
        # -- one relay: a state change is told once ------------------------
        notifier.instance_event("instance.power_off.end", B, "stopped",
                                "peer-2")
        wait_for(lambda: peers.of("deliver_notification"), 15,
                 "the first state change")

        # -- the storm, and the database restarting in it ------------------
        started = time.monotonic()
        storm.start()
        # one controller's log sink stops for 2 s (its file cannot be
        # opened: a full disk, a bad permission) and keeps what reaches
        # it: the instances it owes events of follow it meanwhile
        stalled = [s for s in controllers.values() if not s.is_relay()][0]
        wait_for(lambda: storm.progress() > storm.total() // 24, 60,
                 "the storm under way")
        with unwritable(stalled.sink_log):
            time.sleep(2.0)
        wait_for(lambda: storm.progress() > storm.total() // 6, 60,
                 "a sixth of the storm")
        if store.db is not None:
            assert storm.progress() < storm.total() // 2
            store.db.stop()
            time.sleep(1.0)   # down for a moment, agents keep calling
            store.db.start()

        # -- the relay killed in it, and restarted -------------------------
        wait_for(lambda: storm.progress() > storm.total() // 3, 60,
                 "a third of the storm")
        assert storm.progress() < storm.total() * 2 // 3
        relay, = [s for s in controllers.values() if s.is_relay()]
        relay.signal()   # SIGKILL
        killed_at = time.time()
        others = [s for s in controllers.values() if s is not relay]
        # a state change while nobody relays: recorded by the others,
        # told by the next relay
        notifier.instance_event("instance.power_on.end", B, "active",
                                "peer-2")
        in_gap = not any(s.is_relay() for s in others)
        wait_for(lambda: sum(s.is_relay() for s in others) == 1, 30,
                 "another relay")
        notifier.instance_event("instance.pause.end", B, "paused",
                                "peer-2")
        relay.start()

        # -- the cap, cloud-wide -------------------------------------------
        capper = api.ControllerAPI(transport, "compute-9", timeout=10)
        cap_faults = [records.make_fault(CAPPED, "compute-9", "unhealthy",
                                         "bad %d" % n, "reboot", time.time(),
                                         1000, 0)
                      for n in range(4 * MAX_ACTIONS)]
        # one call each: spread over the three, each once the last one's
        # action is recorded and delivered (else it would follow the
        # controller that owes it, and act there)
        for n, fault in enumerate(cap_faults):
            wait_for(lambda f=fault: _report(capper, f), 60,
                     "the cap's fault accepted")
            wait_for(lambda n=n: _settled(store, controllers, n + 1), 60,
                     "the cap's action recorded and delivered")

        assert storm.join(150), "the agents did not finish"
        duration = time.monotonic() - started
        assert storm.errors == [] and storm.rejected == []
        assert storm.progress() == storm.total()
        try:
            wait_for(lambda: pending(store) == 0, 60,
                     "every delivery done")
        except AssertionError:
            print(stuck(store))
            raise
        wait_for(lambda: len(peers.of("deliver_notification")) >= 2, 15,
                 "the second state change")
        wait_for(lambda: len(peers.of("deliver_notification")) >= 3, 15,
                 "the third state change")
        time.sleep(1.0)   # a doubled notification would come by now
    finally:
        notifier.close()
        peers.close()
        transport.cleanup()

    if store.db is not None:   # the restart was felt, and survived
        assert sum(storm.failures.values()) > 0
    # every event at the log sink exactly once, over the three files
    files = {s.server_id: read_jsonl(s.sink_log)
             for s in controllers.values()}
    sent = storm.events
    order = {e["id"]: i for i, e in enumerate(sent)}
    seen = collections.Counter(r["id"] for records in files.values()
                               for r in records if r["id"] in order)
    assert set(seen) == set(order), "events missing at the sink"
    twice = sorted(i for i, n in seen.items() if n > 1)
    assert twice == [], "at the log sink more than once: %s" % twice[:5]
    # what was written flagged was in doubt and not in the killed
    # controller's file: only its deliveries were in doubt, one batch of
    # its one sink at most (marked in flight before the sink had it,
    # done right after), and settled once
    flagged = [r for records in files.values() for r in records
               if r.get("redelivered")]
    assert {r["redelivered_from"] for r in flagged} <= {relay.server_id}
    assert all(_epoch(r["logged_at"]) > killed_at for r in flagged)
    skipped = sum(skipped_redelivered(s) for s in controllers.values())
    assert len(flagged) + skipped <= LogSink.max_batch
    # in order per instance over the three files, as written
    late = late_events(written_in_order(files, order), order)
    print("%s: %d events in %.1f s, %d failed calls resent, %d at the sink "
          "twice; in doubt after the kill: %d found written and skipped, "
          "%d written flagged; %d handed over, %d dispatched again; %d "
          "out of order per instance over the files" % (
              store.kind, len(sent), duration, sum(storm.failures.values()),
              len(twice), skipped, len(flagged),
              sum(handed_over(s) for s in controllers.values()),
              sum(redispatched(s) for s in controllers.values()), len(late)))
    assert late == [], "out of order per instance: %s" % late[:5]

    # one relay: each state change told once, to peer-1 (A)
    told = [(k["instance"], k["state"], k["event"])
            for h, k in peers.of("deliver_notification")]
    assert told == [
        (B, "stopped", "instance.power_off.end"),
        (B, "active", "instance.power_on.end"),
        (B, "paused", "instance.pause.end")], told
    print("%s: a state change sent while no relay was elected: %s, told "
          "once" % (store.kind, in_gap))

    # the cap: MAX_ACTIONS reboots of CAPPED, whichever controller acted
    reboots = [a for a in nova.actions if a[0] == CAPPED]
    assert len(reboots) == MAX_ACTIONS, reboots
    outcomes = collections.Counter(
        r["outcome"] for records in files.values() for r in records
        if r["type"] == "action" and r["instance"] == CAPPED)
    assert outcomes["applied"] == MAX_ACTIONS
    assert outcomes["refused: cap"] == len(cap_faults) - MAX_ACTIONS
    acting = {r["server"] for records in files.values() for r in records
              if r["type"] == "action" and r["instance"] == CAPPED}
    assert len(acting) > 1, "the cap's faults all went to one controller"


def _settled(store, controllers, actions):
    """Whether ``actions`` action records of CAPPED are in the log sink's
    files and nothing of CAPPED is owed to a sink."""
    written = sum(1 for s in controllers.values() for r in read_jsonl(
        s.sink_log) if r["type"] == "action" and r["instance"] == CAPPED)
    if written < actions:
        return False
    engine = store.engine()
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM deliveries d JOIN events e "
                "ON e.id = d.event_id WHERE e.instance = '%s' AND d.state "
                "IN ('pending', 'inflight', 'handed') AND d.sink = 'log'"
                % CAPPED).scalar() == 0
    except sa.exc.OperationalError:
        return False   # the database is restarting
    finally:
        engine.dispose()


def _report(client, fault):
    try:
        answer = client.report_events([fault])
    except Exception:  # a failed call: send it again
        return False
    return fault["id"] in answer["accepted"]


def _epoch(iso):
    import datetime
    return datetime.datetime.fromisoformat(iso).timestamp()


def test_a_single_hosts_ledger_moves_into_mariadb(tmp_path):
    """From one controller host to several: ``db sync`` on an empty
    MariaDB database, then ``db import-ledger`` of a SQLite ledger of
    version 1 with its rows; a controller on MariaDB then takes over what
    the old controller still owed, in the order it arrived."""
    from guestha.server.ledger import Ledger
    from tests.unit.db import test_migration as v1

    store = Store("mariadb", str(tmp_path))   # migrated from empty
    try:
        old = str(tmp_path / "server-ledger.sqlite")
        events = v1.faults(4)
        v1.write_v1(old, events, done={events[0]["id"]})
        out = server_harness.manage(store.url, store.workdir, "db",
                                    "import-ledger", old)
        assert "4 events, 8 deliveries" in out
        ledger = Ledger(store.url, "ctl-new", sinks=("log",))
        try:
            ledger.register()
            work = ledger.claim_orphans()
            assert [e["id"] for e, _ in work] == [
                e["id"] for e in events[1:]]
            assert ledger.accept(events).new == []
        finally:
            ledger.close()
    finally:
        store.close()
