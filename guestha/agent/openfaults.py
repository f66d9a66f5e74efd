# SPDX-License-Identifier: Apache-2.0
"""The open faults the agent starts with, and follows as it reports.

An instance's fault is open until its recovery is reported.  The outbox
keeps the open faults for the next start, in the transaction that writes
the fault or recovery event itself (see :mod:`guestha.agent.outbox`):
there is no moment at which one is saved and the other not.
:class:`OpenFaults` is the same table in memory: read from the outbox at
the start (after moving an older agent's ``<state_dir>/faults.json`` into
it), then kept up to date by :meth:`OpenFaults.follow` with every event
the agent reports.  A returning instance (a domain seen again) starts with
its open fault, so that its recovery names it.
"""

import json
import logging
import os
import sqlite3

LOG = logging.getLogger(__name__)

#: An older agent's file of open faults, in its state directory.
FAULTS_JSON = "faults.json"


class OpenFaults(dict):
    """``{instance uuid: {"id": fault id, "kind": kind}}``."""

    @classmethod
    def load(cls, outbox, state_dir):
        """The open faults of ``outbox`` (an
        :class:`~guestha.agent.outbox.Outbox`, or None for none), with an
        older agent's ``faults.json`` in ``state_dir`` moved into it."""
        faults = cls()
        if outbox is None:
            return faults
        path = os.path.join(state_dir, FAULTS_JSON)
        try:
            outbox.adopt_faults_json(path)
        except (sqlite3.Error, OSError) as exc:
            LOG.error("cannot move the open faults of %s into the outbox "
                      "%s (%s): using the file as it is, and trying again "
                      "at the next start", path, outbox.path, exc)
            faults.update(_read_faults_json(path))
        try:
            faults.update(outbox.open_faults())
        except sqlite3.Error as exc:
            LOG.error("cannot read the open faults in the outbox %s (%s): "
                      "faults open before this start are forgotten",
                      outbox.path, exc)
        if faults:
            LOG.info("%d open fault(s) from before this start: %s",
                     len(faults), ", ".join(sorted(faults)))
        return faults

    def follow(self, event):
        """An event the agent reports: a fault opens, its recovery closes
        it (the outbox does the same in the event's transaction)."""
        kind = event.get("type")
        if kind == "fault":
            self[event["instance"]] = {"id": event["id"],
                                       "kind": event.get("kind")}
        elif kind == "recovery":
            fault = self.get(event["instance"])
            if fault is not None and fault["id"] == event["fault_id"]:
                del self[event["instance"]]


def _read_faults_json(path):
    """An older agent's open faults file, read only."""
    try:
        with open(path) as f:
            faults = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        LOG.error("cannot read %s (%s): open faults from before this start "
                  "are forgotten", path, exc)
        return {}
    return faults if isinstance(faults, dict) else {}
