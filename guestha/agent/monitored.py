# SPDX-License-Identifier: Apache-2.0
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

An entry holds only for the QEMU process it was written for.  A domain
started again while the agent was down (a host reboot, a Nova stop and
start, a Masakari recovery) boots a new guest, whose daemon may need
longer than the detection bound to register: that is not a hang.  So each
entry also records ``domain_id`` (libvirt's id of the running domain, new
at every start) and ``boot_id`` (the host's, since libvirt numbers domains
from 1 again after a host reboot); an entry whose domain runs with another
id, or that was written before the host's last boot, is dropped at claim.
An entry without them (written by an older agent) is honoured as before.
"""

import json
import logging
import os

LOG = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
#: What ties an entry to its QEMU process; not part of what an instance
#: keeps (it is written again, from the instance's domain, at each save).
_PROCESS_KEYS = ("domain_id", "boot_id")


def host_boot_id(path=BOOT_ID_PATH):
    """The host kernel's boot id (new at every boot), or None."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


class MonitoredFile(object):
    """``monitored.json`` of ``state_dir``; ``boot_id`` is the host's
    (:func:`host_boot_id` when not given)."""

    def __init__(self, state_dir, boot_id=None):
        self.path = os.path.join(state_dir, "monitored.json")
        self.boot_id = boot_id if boot_id is not None else host_boot_id()
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

    def claim(self, uuid, domain_id=None):
        """The entry of ``uuid`` from before this start, once (its
        instance keeps it from now on), or None; None too, and the entry
        dropped, when its domain runs as another QEMU process than the
        one the entry was written for (``domain_id``: the running
        domain's id, None if not known)."""
        entry = self._unclaimed.pop(uuid, None)
        if entry is None:
            return None
        booted = entry.get("boot_id")
        recorded_id = entry.get("domain_id")
        if (booted is not None and self.boot_id is not None
                and booted != self.boot_id):
            why = "the host rebooted"
        elif (recorded_id is not None and domain_id is not None
                and recorded_id != domain_id):
            why = "domain id %s, %s before" % (domain_id, recorded_id)
        else:
            return {k: v for k, v in entry.items()
                    if k not in _PROCESS_KEYS}
        self.dirty = True
        LOG.info("instance %s: its domain was started again while the "
                 "agent was down (%s): a new guest, not checked for a hang "
                 "during the agent's restart", uuid, why)
        return None

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
                info = getattr(instance, "info", None)
                entries[uuid] = dict(
                    instance.monitored, boot_id=self.boot_id,
                    domain_id=getattr(info, "domain_id", None))
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
