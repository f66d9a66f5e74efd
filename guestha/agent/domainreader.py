# SPDX-License-Identifier: Apache-2.0
"""What the domains are, read from libvirt and posted to the agent's loop:
after their events, at every reconcile, and when the loop asks a state.

Used only from the libvirt watcher's thread (:mod:`guestha.agent.virt`).
Event callbacks only note what happened, with the time; after each turn
of libvirt's event loop the watcher calls
:meth:`DomainReader.handle_pending`, which re-reads each noted domain's
live state and XML (so a :class:`~guestha.agent.events.DomainUpdate`
always carries a full :class:`~guestha.agent.events.DomainInfo`, whatever
the event) and posts it.  A stop is posted as
:class:`~guestha.agent.events.DomainGone` even if the domain runs again by
the time it is read, so the loop sees the restart (a restarted domain has
lost its hot-plugged channel); the start's own event brings the update.

Events can be missed (while disconnected, or by a libvirt bug), so
:meth:`DomainReader.reconcile` lists the active domains, posts an update
for each and then the full list (:class:`~guestha.agent.events.Reconciled`),
from which the loop drops what it missed the end of; the next one is due
``reconcile_interval`` later (+/-10% jitter, so that the agents of a
cloud do not all hit their libvirtd at the same second).
"""

import logging
import random
import time

import libvirt

from guestha.agent import domain
from guestha.agent import events as ev

# The watcher's logger: these are the watcher's messages, as before the
# reading had a class of its own.
LOG = logging.getLogger("guestha.agent.virt")

_AGENT_STATES = {1: "connected", 2: "disconnected"}
_AGENT_REASONS = {0: "unknown", 1: "domain_started", 2: "channel"}


def parse(uuid, xml, state, reason):
    """A domain's XML and state as a
    :class:`~guestha.agent.events.DomainInfo`, or None (logged) if the XML
    is of no use."""
    try:
        return domain.parse_domain(xml, domain.normalise_state(state, reason))
    except ValueError as exc:
        LOG.warning("instance %s: cannot use its domain XML: %s", uuid, exc)
        return None


class DomainReader(object):
    """Reads the domains of ``link``'s connection and posts what they are.

    :param link: the :class:`~guestha.agent.libvirtconn.LibvirtConnection`.
    :param post: hands a record to the agent's loop.
    :param reconcile_interval: mean seconds between reconciles.
    :param clock: the monotonic clock for the records' ``at`` and for the
        next reconcile.
    :param rng: a :class:`random.Random` for the reconcile's jitter.
    """

    def __init__(self, link, post, reconcile_interval=60.0,
                 clock=time.monotonic, rng=None):
        self._link = link
        self._post = post
        self.reconcile_interval = reconcile_interval
        self._clock = clock
        self._random = rng if rng is not None else random.Random()
        self._pending = []
        #: when the next reconcile is due (clock seconds), or None
        self.next_reconcile = None
        #: ``(domains, seconds)`` of the last complete reconcile.
        self.last_reconcile = None
        # uuid -> (what it was parsed from, the DomainInfo): a reconcile
        # parses again only the domains whose XML or state changed (the
        # parse is most of a reconcile's CPU; the same inputs give the
        # same DomainInfo)
        self._parsed = {}

    # -- domain events --------------------------------------------------------

    def callbacks(self):
        """The domain event callbacks, for
        :meth:`~guestha.agent.libvirtconn.LibvirtConnection.connect`."""
        return [
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle,
             None),
            (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, None),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
             self._on_device_added, None),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
             self._on_device_removed, None),
            (getattr(libvirt, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE", None),
             self._on_agent_lifecycle, "agent lifecycle"),
        ]

    def _note(self, dom, event, event_state):
        self._pending.append((dom, dom.UUIDString(), event, event_state,
                              self._clock()))

    def _on_lifecycle(self, conn, dom, event, detail, opaque):
        text, state = domain.lifecycle_event(event, detail)
        self._note(dom, text, state)

    def _on_reboot(self, conn, dom, opaque):
        self._note(dom, "reboot", None)

    def _on_device_added(self, conn, dom, alias, opaque):
        self._note(dom, "device_added:%s" % alias, None)

    def _on_device_removed(self, conn, dom, alias, opaque):
        self._note(dom, "device_removed:%s" % alias, None)

    def _on_agent_lifecycle(self, conn, dom, state, reason, opaque):
        self._note(dom, "agent_lifecycle:%s:%s" % (
            _AGENT_STATES.get(state, state),
            _AGENT_REASONS.get(reason, reason)), None)

    def forget_pending(self):
        """The connection was dropped: a reconcile after the reconnect
        covers the noted events."""
        self._pending = []

    def handle_pending(self):
        """Post what each domain noted since the last call is now."""
        pending, self._pending = self._pending, []
        for dom, uuid, event, event_state, at in pending:
            if not self._link.usable:
                return
            self.refresh(dom, uuid, event, event_state, at)

    def refresh(self, dom, uuid, event, event_state, at):
        """Post what a domain is now, after ``event`` (seen at ``at``)."""
        if event_state == ev.SHUTOFF:
            # Gone, whatever the domain is by now: a quick restart then
            # still reads as a stop and a start (its STARTED event follows)
            self._post(ev.DomainGone(uuid, event, at))
            return
        try:
            state, reason = dom.state()
            if state == domain.SHUTOFF:
                if event_state is not None:
                    # started, resumed...: but stopped again since
                    self._post(ev.DomainGone(uuid, event, at))
                # else: a stopped domain was (un)defined; nothing runs
                return
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                self._link.failed(exc, "reading the domain after %s" % event,
                                  uuid)
            elif event_state is not None:
                self._post(ev.DomainGone(uuid, event, at))
            # else: gone after an event that says nothing of running (an
            # undefine, a device): its stop, if it ran, was posted already
            return
        info = parse(uuid, xml, state, reason)
        if info is not None:
            LOG.debug("instance %s: %s: %s", uuid, event, info.state)
            self._post(ev.DomainUpdate(info, event, at))

    # -- reconcile ------------------------------------------------------------

    def reconcile_due(self, now):
        """True if a reconcile is due at ``now``."""
        return self.next_reconcile is not None and now >= self.next_reconcile

    def reconcile(self, after_connect):
        """Post every active domain, then the list of them."""
        started = time.monotonic()
        self.next_reconcile = self._clock() + self.reconcile_interval * (
            self._random.uniform(0.9, 1.1))
        try:
            doms = self._link.conn.listAllDomains(
                libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            self._link.failed(exc, "listing the domains")
            return
        uuids = set()
        for dom in doms:
            uuid = dom.UUIDString()
            at = self._clock()
            try:
                state, reason = dom.state()
                xml = dom.XMLDesc(0) if state != domain.SHUTOFF else None
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # gone since the listing: its event follows
                if self._link.failed(exc, "reading the domain", uuid):
                    # no Reconciled: a partial list would drop instances
                    return
                uuids.add(uuid)  # active, though unreadable: keep it
                continue
            if xml is None:
                continue  # stopped since the listing
            uuids.add(uuid)
            info = self._parse_once(uuid, xml, state, reason)
            if info is not None:
                self._post(ev.DomainUpdate(info, "reconcile", at))
        for uuid in [u for u in self._parsed if u not in uuids]:
            del self._parsed[uuid]
        self._post(ev.Reconciled(frozenset(uuids), self._clock()))
        elapsed = time.monotonic() - started
        self.last_reconcile = (len(uuids), elapsed)
        log = LOG.info if after_connect or elapsed > 1.0 else LOG.debug
        log("reconciled %d active domain(s) with libvirt in %.1f ms",
            len(uuids), elapsed * 1000)

    def _parse_once(self, uuid, xml, state, reason):
        """:func:`parse`, or the DomainInfo of the last reconcile if the
        domain's XML and state are the same as then."""
        key = (state, reason, len(xml), hash(xml))
        last = self._parsed.get(uuid)
        if last is not None and last[0] == key:
            return last[1]
        info = parse(uuid, xml, state, reason)
        if info is None:
            self._parsed.pop(uuid, None)
        else:
            self._parsed[uuid] = (key, info)
        return info

    # -- the loop's state queries ---------------------------------------------

    def state(self, uuid, token):
        """Post a domain's state now, with ``token``; nothing if libvirt
        fails (the loop's confirmation times out and it reports the fault
        as unconfirmed)."""
        at = self._clock()
        try:
            state, reason = self._link.conn.lookupByUUIDString(uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                self._post(ev.DomainState(uuid, None, token, at))
            else:
                self._link.failed(exc, "reading the domain state", uuid)
            return
        self._post(ev.DomainState(uuid, domain.normalise_state(state, reason),
                                  token, at))
