# SPDX-License-Identifier: Apache-2.0
"""The guestha datasource's transformer: an ALARM vertex of type
``guestha`` on the ``nova.instance`` vertex of the faulty instance.

The alarm's key is the instance and the fault id (one alarm per fault,
at most one open per instance, see :mod:`.driver`); a recovery deletes
it (``_ok_status``), as Vitrage does for every alarm that clears.  Its
properties: ``name`` ("guestha heartbeat <kind>"), ``severity``,
``reason``, ``recommended_action``, ``fault_id``, ``kind``,
``compute_host``, ``detected_at`` and the instance's uuid as
``instance_id``.
"""

import datetime

from oslo_log import log

from vitrage.common.constants import DatasourceProperties as DSProps
from vitrage.common.constants import EdgeLabel
from vitrage.common.constants import EntityCategory
from vitrage.common.constants import EventProperties as EventProps
from vitrage.common.constants import VertexProperties as VProps
from vitrage.datasources.alarm_transformer_base import AlarmTransformerBase
from vitrage.datasources.nova.instance import NOVA_INSTANCE_DATASOURCE
from vitrage.datasources import transformer_base as tbase
import vitrage.graph.utils as graph_utils

from guestha.vitrage_datasource import guestha as ds
from guestha.vitrage_datasource.guestha import driver

LOG = log.getLogger(__name__)

_METADATA = ("reason", "recommended_action", "fault_id", "kind",
             "compute_host", "detected_at", "instance_id", "event_id",
             "misses", "interval_ms")


def _vitrage_time(value, default):
    """guestha's event time (``%Y-%m-%dT%H:%M:%S.%f``, UTC) in the format
    of Vitrage's update timestamps."""
    if value:
        try:
            parsed = datetime.datetime.strptime(value,
                                                EventProps.TIME_FORMAT)
            return parsed.strftime(tbase.TIMESTAMP_FORMAT)
        except ValueError:
            LOG.debug("guestha: unexpected event time %r", value)
    return default


class GuesthaTransformer(AlarmTransformerBase):

    def _create_snapshot_entity_vertex(self, entity_event):
        return self._create_vertex(entity_event)

    def _create_update_entity_vertex(self, entity_event):
        return self._create_vertex(entity_event)

    def _create_vertex(self, entity_event):
        metadata = {key: entity_event[key] for key in _METADATA
                    if entity_event.get(key) is not None}
        if entity_event.get(driver.EVENT) == "fault":
            metadata[VProps.NAME] = entity_event["name"]
            metadata[VProps.SEVERITY] = entity_event["severity"]
        sample = entity_event[DSProps.SAMPLE_DATE]
        return graph_utils.create_vertex(
            self._create_entity_key(entity_event),
            vitrage_category=EntityCategory.ALARM,
            vitrage_type=entity_event[DSProps.ENTITY_TYPE],
            vitrage_sample_timestamp=sample,
            entity_state=self._get_alarm_state(entity_event),
            update_timestamp=_vitrage_time(
                entity_event.get(driver.UPDATE_TIME), sample),
            metadata=metadata)

    def _create_snapshot_neighbors(self, entity_event):
        return self._instance_neighbor(entity_event)

    def _create_update_neighbors(self, entity_event):
        return self._instance_neighbor(entity_event)

    def _instance_neighbor(self, entity_event):
        return [self._create_neighbor(
            entity_event,
            entity_event["instance_id"],
            NOVA_INSTANCE_DATASOURCE,
            EdgeLabel.ON,
            neighbor_category=EntityCategory.RESOURCE)]

    def _create_entity_key(self, entity_event):
        return tbase.build_key((EntityCategory.ALARM,
                                ds.GUESTHA_DATASOURCE,
                                entity_event["instance_id"],
                                entity_event["fault_id"]))

    def get_vitrage_type(self):
        return ds.GUESTHA_DATASOURCE

    def _ok_status(self, entity_event):
        return entity_event.get(driver.EVENT) == "recovery"
