"""Which instances had a registered guest, kept across agent restarts.

A guest that hangs while the agent is down cannot answer the new agent's
sync, and looks exactly like a guest with no daemon installed (which must
stay quiet).  What tells them apart is whether its guest was registered
before: ``monitored.json`` in the agent's state directory maps each such
instance to ``{"interval_ms": ..., "action": ...}`` (the interval it was
granted, the action its guest recommended).  An instance created from an
entry must answer its first resync within the detection bound
(:class:`~guestha.agent.instance.Instance`), or it has a fault.

An entry is written when a guest registers and removed when it says exit
or its domain stops; the file is rewritten whole (write, fsync, rename),
from the loop's housekeeping, when something changed.
"""

import json
import logging
import os

LOG = logging.getLogger(__name__)


class MonitoredFile(object):
    """``monitored.json`` of ``state_dir``."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "monitored.json")
        self._unclaimed = self._load()
        self.dirty = False
        self._failing = False

    def _load(self):
        try:
            with open(self.path) as f:
                entries = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            LOG.error("cannot read %s (%s): instances monitored before this "
                      "start are not checked for a hang during it",
                      self.path, exc)
            return {}
        if not isinstance(entries, dict):
            return {}
        return {u: e for u, e in entries.items()
                if isinstance(e, dict)
                and isinstance(e.get("interval_ms"), int)}

    def claim(self, uuid):
        """The entry of ``uuid`` from before this start, once (its
        instance keeps it from now on), or None."""
        return self._unclaimed.pop(uuid, None)

    def forget(self, uuids):
        """Drop the unclaimed entries of ``uuids``: domains that are gone,
        or that are shut off (their next start boots a new guest, which
        has no daemon answering yet and cannot have hung)."""
        dropped = [u for u in uuids if self._unclaimed.pop(u, None)]
        if dropped:
            self.dirty = True
        return dropped

    def unclaimed(self):
        """The uuids of the entries no instance has claimed yet."""
        return set(self._unclaimed)

    def save(self, instances):
        """Write the entries of ``instances`` (uuid -> Instance) and those
        not claimed yet.  After a failure ``dirty`` stays set, so the
        loop's housekeeping tries again."""
        self.dirty = False
        entries = dict(self._unclaimed)
        for uuid, instance in instances.items():
            if instance.monitored:
                entries[uuid] = instance.monitored
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(entries, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._failing:
                LOG.error("cannot save %s: %s (a hang during the agent's "
                          "next restart may go unreported)", self.path, exc)
            self._failing = True
            self.dirty = True
            return
        if self._failing:
            LOG.info("%s saved again", self.path)
        self._failing = False
