# SPDX-License-Identifier: Apache-2.0
"""A small cloud as guestha's controllers would have recorded it: five
instances of two projects on two hosts, three faults (one recovered) and
two corrective actions, written into a real ledger through
:class:`~guestha.server.ledger.Ledger` (:func:`fill_ledger`), for
guestha.api to serve to the CLI's tests (unit and functional)."""

import uuid

from oslo_config import cfg

from guestha.conf import opts
from guestha import records
from tests.support import ledger as ledger_support

P1 = "0d0a6c4e5d6e4f3c9a1b2c3d4e5f6a71"
P2 = "0d0a6c4e5d6e4f3c9a1b2c3d4e5f6a72"
T0 = 1_800_000_000.0
#: Items per page of the API under test: small, so that every list
#: command has to follow ``next``.
PAGE = 2


def uid(n):
    return str(uuid.UUID(int=0x6a000000 + n))


# instance, project, host, state, reason, interval_ms
INSTANCES = [
    (uid(1), P1, "host-a", "monitored", None, 1000),
    (uid(2), P1, "host-a", "faulted", "missed 3 heartbeats", 1000),
    (uid(3), P1, "host-b", "unregistered",
     "flavor asks for heartbeat, guest never registered", None),
    (uid(4), P2, "host-b", "refused",
     "no virtio-serial controller", None),
    (uid(5), P2, "host-b", "registered", None, 500),
]
# fault id, instance, kind, recommended action, recovered
FAULTS = [
    (uid(101), uid(1), "unhealthy", "reboot", True),
    (uid(102), uid(2), "missed", "reboot", False),
    (uid(103), uid(5), "missed", None, False),
]
# fault id, action, outcome
ACTIONS = [
    (uid(101), "reboot", "applied"),
    (uid(102), "reboot", "refused: cap"),
]
PROJECT_OF = {row[0]: row[1] for row in INSTANCES}
HOST_OF = {row[0]: row[2] for row in INSTANCES}


def fill_ledger(path, projects=None):
    """What the controllers would have accepted from the agents of
    host-a and host-b, through the ledger's own API.

    :param projects: {:data:`P1`: id, :data:`P2`: id}, the projects to
        put the instances in instead (a real Keystone's).
    """
    projects = projects or {}
    events = []
    for n, (instance, project, host, state, reason, ms) in enumerate(
            INSTANCES):
        details = {"project_id": projects.get(project, project),
                   "name": "vm-%d" % (n + 1)}
        if ms is not None:
            details["interval_ms"] = ms
        events.append(records.make_state(instance, host, state, reason,
                                         T0 + n, details=details))
    faults = {}
    for n, (fault_id, instance, kind, action, recovered) in enumerate(
            FAULTS):
        fault = records.make_fault(instance, HOST_OF[instance], kind,
                                   "%s on %s" % (kind, instance), action,
                                   T0 + 10 + n, 1000, 3)
        fault["id"] = fault_id
        faults[fault_id] = fault
        events.append(fault)
        if recovered:
            events.append(records.make_recovery(
                instance, HOST_OF[instance], fault_id, T0 + 20 + n,
                kind=kind))
    ledger_support.fill_ledger(path, events, [
        dict(fault=faults[fault_id], action=action, outcome=outcome,
             reason="the guest recommends it", at=T0 + 40 + n)
        for n, (fault_id, action, outcome) in enumerate(ACTIONS)],
        server_id="ctl-1", now=T0, accepted_at=T0 + 30)


def api_conf(ledger_path, **api_opts):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="guestha-osc-test")
    conf.set_override("ledger_path", ledger_path, group="server")
    conf.set_override("auth_strategy", "noauth", group="api")
    for name, value in api_opts.items():
        conf.set_override(name, value, group="api")
    return conf
