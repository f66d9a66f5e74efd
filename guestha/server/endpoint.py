# SPDX-License-Identifier: Apache-2.0
"""The controller's RPC endpoint: the methods the agents call and cast
(:mod:`guestha.rpc.api`).

``report_events`` answers only after the ledger has committed the batch:
the answer is the controller's promise that every id in ``accepted`` will
reach the sinks (and, for a fault, the corrective-action worker), even if
this process dies the next moment.  Events new to the ledger are then
handed to the sinks and the worker; events the ledger already held (the
agent sent them again after losing an answer) are accepted again but not
handed on a second time.

When the ledger's database fails (it restarts, the connection drops), the
call raises :class:`LedgerUnavailable`: the agent accepts nothing and
drops nothing, and sends the batch again later, to this controller or
another.
"""

import logging
import uuid

import oslo_messaging

from guestha.db import api as db_api
from guestha import rpc

LOG = logging.getLogger(__name__)


class LedgerUnavailable(Exception):
    """The ledger could not store a batch; the agent keeps it and sends
    it again."""


def _uuid_or_none(value):
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


class ControllerEndpoint(object):
    """The agents' view of a controller.

    :param ledger: :class:`~guestha.server.ledger.Ledger`.
    :param dispatch: called with each new event, to hand it to the sinks
        and, a fault, to the action worker
        (:meth:`~guestha.server.deliveries.Deliveries.dispatch`).
    :param groups: :class:`~guestha.server.groups.ServerGroups`.
    """

    target = rpc.endpoint_target(rpc.CONTROLLER_NAMESPACE)

    def __init__(self, ledger, dispatch, groups):
        self.ledger = ledger
        self.dispatch = dispatch
        self.groups = groups

    @oslo_messaging.expected_exceptions(LedgerUnavailable)
    def report_events(self, ctxt, host, events):
        if not isinstance(events, list):
            LOG.warning("report_events from %s: events is not a list "
                        "(ignored)", host)
            return {"accepted": [], "rejected": {}}
        try:
            result = self.ledger.accept(events)
        except db_api.DB_ERRORS as exc:
            LOG.error("report_events from %s: %d event(s) not accepted: "
                      "the ledger failed: %s", host, len(events), exc)
            raise LedgerUnavailable("the controller's ledger failed: %s"
                                    % exc)
        for event_id, reason in result.rejected.items():
            LOG.warning("report_events from %s: event %s rejected: %s",
                        host, event_id, reason)
        if result.duplicates:
            LOG.debug("report_events from %s: %d event(s) accepted before",
                      host, len(result.duplicates))
        for event in result.new:
            LOG.info("instance %s: %s %s from %s%s", event["instance"],
                     event["type"], event["id"], host,
                     ": %s" % event["kind"] if event["type"] == "fault"
                     else "")
            self.dispatch(event)
        accepted_ids = result.accepted_ids
        accepted = []
        for event in events:
            event_id = event.get("id") if isinstance(event, dict) else None
            if event_id in accepted_ids:
                accepted.append(event_id)
                accepted_ids.discard(event_id)
        return {"accepted": accepted, "rejected": result.rejected}

    def relay_broadcast(self, ctxt, host, instance, payload_b64, seq):
        instance = _uuid_or_none(instance)
        if instance is None or not isinstance(payload_b64, str):
            LOG.warning("relay_broadcast from %s: malformed (dropped)",
                        host)
            return
        self.groups.relay_broadcast(host, instance, payload_b64, seq)

    def query_status(self, ctxt, host, instance, seq):
        instance = _uuid_or_none(instance)
        if instance is None:
            LOG.warning("query_status from %s: malformed (dropped)", host)
            return
        self.groups.query_status(host, instance, seq)

    def agent_alive(self, ctxt, host, instances):
        if not isinstance(instances, list):
            return
        self.groups.on_agent_alive(host, instances)
