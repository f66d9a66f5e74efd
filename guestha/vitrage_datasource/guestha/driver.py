# SPDX-License-Identifier: Apache-2.0
"""The guestha datasource's driver: turns guestha events posted to
Vitrage's event API into entity events for the transformer.

One alarm per fault (its key is the instance and the fault id), so that
Vitrage's alarm history has each fault with its start and end.  guestha's
agent has at most one open fault per instance: when a new fault arrives
for an instance whose previous fault is still open here (its recovery was
lost), the driver clears the old alarm first, so an instance never keeps
an alarm that nothing would clear.  A recovery clears its fault's alarm.
A fault or recovery of a fault already closed (recovered or superseded;
out of order through several guestha controllers or retries) is ignored.
What the driver remembers is in memory: after a restart of vitrage-graph
a recovery still clears its alarm (the key needs no memory), but a new
fault no longer supersedes an alarm raised before the restart.

A fault that ends within the request that brings it (its recovery, or a
newer fault of the same instance, later in the same batch) raises no
alarm: it is over already, and an alarm raised and cleared within one
request would race in vitrage-persistor, whose threads may write the
clear before the raise and leave ``alarm list`` showing it active for
ever (seen with Vitrage 15.0.1).  Such faults are logged here and kept by
guestha's other sinks (the log sink has every event).
"""

import collections
import uuid

from oslo_config import cfg
from oslo_log import log

from vitrage.common.constants import DatasourceAction
from vitrage.datasources.driver_base import DriverBase

from guestha.vitrage_datasource import guestha as ds

CONF = cfg.CONF
LOG = log.getLogger(__name__)

#: Keys the entity events carry for the transformer.
EVENT = "guestha_event"          # "fault" or "recovery"
UPDATE_TIME = "update_time"

_KIND_OF = {ds.FAULT_EVENT: "fault", ds.RECOVERY_EVENT: "recovery"}


def _uuid(value):
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _text(value, limit=1024):
    return None if value is None else str(value)[:limit]


class GuesthaDriver(DriverBase):

    def __init__(self):
        super(GuesthaDriver, self).__init__()
        self._open = {}                                 # instance -> fault
        self._closed = collections.OrderedDict()        # fault ids
        try:
            self._remember = CONF[ds.GUESTHA_DATASOURCE].remember_closed
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            self._remember = 10000

    def get_all(self, datasource_action):
        # Push only: the alarms live in Vitrage's graph (and database).
        return self.make_pickleable([], ds.GUESTHA_DATASOURCE,
                                    datasource_action)

    def get_changes(self, datasource_action):
        return self.make_pickleable([], ds.GUESTHA_DATASOURCE,
                                    datasource_action)

    @staticmethod
    def get_event_types():
        return list(ds.EVENT_TYPES)

    @staticmethod
    def should_delete_outdated_entities():
        return False

    def enrich_event(self, event, event_type):
        """``event`` is the event API's payload: ``{"type", "time",
        "details"}``; returns a list of entity events (maybe empty)."""
        if event_type == ds.BATCH_EVENT:
            items = (event.get("details") or {}).get("events")
            if not isinstance(items, list):
                LOG.warning("guestha: %s without an events list, ignored",
                            event_type)
                return []
        else:
            items = [event]
        records = [r for r in map(self._parse, items) if r is not None]
        transient = self._transient(records)
        entities = []
        for record in records:
            entities.extend(self._entities(record,
                                           record["fault_id"] in transient))
        return self.make_pickleable(entities, ds.GUESTHA_DATASOURCE,
                                    DatasourceAction.UPDATE)

    @staticmethod
    def _transient(records):
        """Ids of the faults that end within ``records``."""
        last_fault = {}
        recovered = set()
        for n, record in enumerate(records):
            if record[EVENT] == "fault":
                last_fault[record["instance_id"]] = n
            else:
                recovered.add(record["fault_id"])
        return {r["fault_id"] for n, r in enumerate(records)
                if r[EVENT] == "fault" and (
                    r["fault_id"] in recovered
                    or last_fault[r["instance_id"]] != n)}

    @staticmethod
    def _parse(item):
        """An entity event from one posted event, or None."""
        what = _KIND_OF.get(item.get("type")) if isinstance(item, dict) \
            else None
        details = item.get("details") if what else None
        if not isinstance(details, dict):
            LOG.warning("guestha: not a guestha fault or recovery, ignored: "
                        "%s", item)
            return None
        instance = _uuid(details.get("instance_id"))
        fault_id = _uuid(details.get("fault_id"))
        if instance is None or fault_id is None:
            LOG.warning("guestha: %s without a valid instance_id and "
                        "fault_id, ignored: %s", what, details)
            return None
        record = {
            EVENT: what,
            "instance_id": instance,
            "fault_id": fault_id,
            "event_id": _text(details.get("event_id")),
            "compute_host": _text(details.get("compute_host"), 255),
            UPDATE_TIME: _text(item.get("time"), 64),
        }
        if what == "recovery":
            record["recovered_at"] = _text(details.get("recovered_at"), 64)
            return record
        kind = _text(details.get("kind"), 64) or "unknown"
        severity = str(details.get("severity") or "").upper()
        if severity not in ds.SEVERITIES:
            severity = ds.DEFAULT_SEVERITIES.get(kind, ds.FALLBACK_SEVERITY)
        record.update({
            "name": ds.ALARM_NAME_FORMAT % kind,
            "kind": kind,
            "severity": severity,
            "reason": _text(details.get("reason")),
            "recommended_action": _text(details.get("recommended_action"),
                                        64),
            "detected_at": _text(details.get("detected_at"), 64),
            "misses": details.get("misses"),
            "interval_ms": details.get("interval_ms"),
        })
        return record

    def _entities(self, record, transient):
        """What ``record`` does to the graph: a list of entity events."""
        instance, fault_id = record["instance_id"], record["fault_id"]
        if fault_id in self._closed:
            LOG.info("guestha: instance %s: %s of fault %s, which is "
                     "already closed, ignored", instance, record[EVENT],
                     fault_id)
            return []
        if record[EVENT] == "recovery":
            self._close(fault_id)
            if self._open.get(instance) == fault_id:
                del self._open[instance]
            return [record]
        entities = []
        previous = self._open.pop(instance, None)
        if previous is not None and previous != fault_id:
            LOG.info("guestha: instance %s: fault %s supersedes fault %s, "
                     "whose alarm is cleared", instance, fault_id, previous)
            self._close(previous)
            entities.append({EVENT: "recovery", "instance_id": instance,
                             "fault_id": previous,
                             "compute_host": record["compute_host"],
                             UPDATE_TIME: record[UPDATE_TIME]})
        if transient:
            LOG.info("guestha: instance %s: %s fault %s ended within the "
                     "same request, no alarm (%s)", instance,
                     record["kind"], fault_id, record["reason"])
            self._close(fault_id)
        else:
            self._open[instance] = fault_id
            entities.append(record)
        return entities

    def _close(self, fault_id):
        if self._remember <= 0:
            return
        self._closed[fault_id] = True
        self._closed.move_to_end(fault_id)
        while len(self._closed) > self._remember:
            self._closed.popitem(last=False)
