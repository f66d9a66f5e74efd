# SPDX-License-Identifier: Apache-2.0
"""What a libvirt domain means to guestha: its XML, its state, its events.

Pure functions, no libvirt calls, so that they are tested against XML
fixtures and every state/reason pair without a hypervisor.  The libvirt
watcher (:mod:`guestha.agent.virt`) feeds them what libvirt returns.

States.  libvirt reports a domain's state as a ``(state, reason)`` pair and
a lifecycle event as an ``(event, detail)`` pair.  The agent needs less: is
the guest running (so a missed heartbeat is a fault), paused or migrating
for a reason outside the guest (so it is not), or gone.  The tables below
map both pairs onto :data:`guestha.agent.events.STATES`.  The numbers are
libvirt's public ABI (``libvirt-domain.h``, stable since they were added);
they are spelled out here so that this module needs no libvirt binding, and
a test checks them against the binding's constants.

Why post-copy counts as migrating even when libvirt says "running": during
post-copy the guest runs on the destination while its memory is still
being pulled from the source, so any page fault may stall it; a stall is
the migration's doing, not the guest's.
"""

import xml.etree.ElementTree as ET

from guestha.agent import events as ev
from guestha_guest.protocol.messages import PORT_NAME

#: The virtio-serial port name the guest daemon opens.
CHANNEL_NAME = PORT_NAME

#: Nova writes its metadata in this namespace, followed by a version
#: ("1.0", "1.1", "1.2", ...); any version is accepted.
NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"

# -- domain states (virDomainState) and their reasons -------------------------

NOSTATE = 0
RUNNING = 1
BLOCKED = 2
PAUSED = 3
SHUTDOWN = 4
SHUTOFF = 5
CRASHED = 6
PMSUSPENDED = 7

# virDomainRunningReason
RUNNING_UNKNOWN = 0
RUNNING_BOOTED = 1
RUNNING_MIGRATED = 2
RUNNING_RESTORED = 3
RUNNING_FROM_SNAPSHOT = 4
RUNNING_UNPAUSED = 5
RUNNING_MIGRATION_CANCELED = 6
RUNNING_SAVE_CANCELED = 7
RUNNING_WAKEUP = 8
RUNNING_CRASHED = 9
RUNNING_POSTCOPY = 10
RUNNING_POSTCOPY_FAILED = 11

# virDomainPausedReason
PAUSED_UNKNOWN = 0
PAUSED_USER = 1
PAUSED_MIGRATION = 2
PAUSED_SAVE = 3
PAUSED_DUMP = 4
PAUSED_IOERROR = 5
PAUSED_WATCHDOG = 6
PAUSED_FROM_SNAPSHOT = 7
PAUSED_SHUTTING_DOWN = 8
PAUSED_SNAPSHOT = 9
PAUSED_CRASHED = 10
PAUSED_STARTING_UP = 11
PAUSED_POSTCOPY = 12
PAUSED_POSTCOPY_FAILED = 13
PAUSED_API_ERROR = 14

# The normalised state of each libvirt state, for any reason not listed in
# _BY_REASON.
_BY_STATE = {
    # NOSTATE: the domain exists but its state is not known yet (a start
    # in progress); not a reason to monitor, not a reason to forget it.
    NOSTATE: ev.STARTING,
    RUNNING: ev.RUNNING,
    # BLOCKED: a vCPU waits on a resource (Xen's idle domains); the guest
    # runs and should answer.
    BLOCKED: ev.RUNNING,
    PAUSED: ev.PAUSED,
    SHUTDOWN: ev.SHUTTING_DOWN,
    SHUTOFF: ev.SHUTOFF,
    CRASHED: ev.CRASHED,
    PMSUSPENDED: ev.PMSUSPENDED,
}

_BY_REASON = {
    (RUNNING, RUNNING_POSTCOPY): ev.MIGRATING,
    # the migration failed in post-copy: the guest may lack pages until
    # libvirt recovers the migration, which is no fault of the guest's
    (RUNNING, RUNNING_POSTCOPY_FAILED): ev.MIGRATING,
    (PAUSED, PAUSED_MIGRATION): ev.MIGRATING,
    (PAUSED, PAUSED_POSTCOPY): ev.MIGRATING,
    (PAUSED, PAUSED_POSTCOPY_FAILED): ev.MIGRATING,
    (PAUSED, PAUSED_SHUTTING_DOWN): ev.SHUTTING_DOWN,
    (PAUSED, PAUSED_CRASHED): ev.CRASHED,
    (PAUSED, PAUSED_STARTING_UP): ev.STARTING,
}


def normalise_state(state, reason):
    """The :data:`guestha.agent.events.STATES` value of libvirt's
    ``(state, reason)``, as ``virDomainGetState`` returns them.

    A state libvirt may add later counts as running, so that it is looked
    at (and confirmed with libvirt before any fault) rather than ignored.
    """
    normalised = _BY_REASON.get((state, reason))
    if normalised is None:
        normalised = _BY_STATE.get(state, ev.RUNNING)
    return normalised


# -- lifecycle events (virDomainEventType) and their details ------------------

EVENT_DEFINED = 0
EVENT_UNDEFINED = 1
EVENT_STARTED = 2
EVENT_SUSPENDED = 3
EVENT_RESUMED = 4
EVENT_STOPPED = 5
EVENT_SHUTDOWN = 6
EVENT_PMSUSPENDED = 7
EVENT_CRASHED = 8

# (name, normalised state of the domain right after the event, or None when
# the event says nothing about whether it runs); details: {detail: (name,
# state or None for the event's)}.
_EVENTS = {
    EVENT_DEFINED: ("defined", None, {
        0: ("added", None), 1: ("updated", None), 2: ("renamed", None),
        3: ("from_snapshot", None)}),
    EVENT_UNDEFINED: ("undefined", None, {
        0: ("removed", None), 1: ("renamed", None)}),
    EVENT_STARTED: ("started", ev.RUNNING, {
        0: ("booted", None),
        # an incoming migration: the domain is started paused here and
        # resumed (RESUMED/MIGRATED) when the migration completes
        1: ("migrated", ev.MIGRATING),
        2: ("restored", None), 3: ("from_snapshot", None),
        4: ("wakeup", None)}),
    EVENT_SUSPENDED: ("suspended", ev.PAUSED, {
        0: ("paused", None), 1: ("migrated", ev.MIGRATING),
        2: ("ioerror", None), 3: ("watchdog", None), 4: ("restored", None),
        5: ("from_snapshot", None), 6: ("api_error", None),
        7: ("postcopy", ev.MIGRATING), 8: ("postcopy_failed", ev.MIGRATING)}),
    EVENT_RESUMED: ("resumed", ev.RUNNING, {
        0: ("unpaused", None), 1: ("migrated", None),
        2: ("from_snapshot", None), 3: ("postcopy", ev.MIGRATING),
        4: ("postcopy_failed", ev.MIGRATING)}),
    EVENT_STOPPED: ("stopped", ev.SHUTOFF, {
        0: ("shutdown", None), 1: ("destroyed", None), 2: ("crashed", None),
        3: ("migrated", None), 4: ("saved", None), 5: ("failed", None),
        6: ("from_snapshot", None)}),
    EVENT_SHUTDOWN: ("shutdown", ev.SHUTTING_DOWN, {
        0: ("finished", None), 1: ("guest", None), 2: ("host", None)}),
    EVENT_PMSUSPENDED: ("pmsuspended", ev.PMSUSPENDED, {
        0: ("memory", None), 1: ("disk", None)}),
    EVENT_CRASHED: ("crashed", ev.CRASHED, {
        0: ("panicked", None), 1: ("crashloaded", None)}),
}


def lifecycle_event(event, detail):
    """Name and meaning of a libvirt lifecycle event.

    :returns: ``(text, state)``: ``text`` such as
        ``"lifecycle:suspended:paused"`` for logs and reports, and the
        normalised state the domain is in right after the event, or None
        when the event does not say (DEFINED, UNDEFINED, and events libvirt
        may add later).
    """
    entry = _EVENTS.get(event)
    if entry is None:
        return "lifecycle:%d:%d" % (event, detail), None
    name, state, details = entry
    detail_name, detail_state = details.get(detail, ("%d" % detail, None))
    if detail_state is not None:
        state = detail_state
    return "lifecycle:%s:%s" % (name, detail_name), state


# -- the domain XML -----------------------------------------------------------

def parse_domain(xml_text, state):
    """What the agent needs of one domain, from its (live) XML.

    :param xml_text: ``virDomainGetXMLDesc`` output.
    :param state: the normalised state (:func:`normalise_state`).
    :raises ValueError: the text is not a domain's XML.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError("not valid domain XML: %s" % exc)
    if root.tag != "domain":
        raise ValueError("not a domain's XML: the root is <%s>" % root.tag)
    uuid = (root.findtext("uuid") or "").strip().lower()
    if not uuid:
        raise ValueError("domain XML without a <uuid>")
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    return ev.DomainInfo(
        uuid=uuid,
        name=(root.findtext("name") or "").strip(),
        state=state,
        channel_path=_channel_path(devices),
        has_serial_controller=any(
            c.get("type") == "virtio-serial"
            for c in devices.findall("controller")),
        nova=_nova_metadata(root.find("metadata")),
        domain_id=_domain_id(root.get("id")))


def _domain_id(text):
    """libvirt's id of a running domain (a new one at every start of its
    QEMU process), or None: inactive XML has none, or ``id='-1'``."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _channel_path(devices):
    """The host-side socket of the guestha channel, or None.

    Only a ``bind`` source counts: QEMU then listens and the agent connects.
    A ``connect`` source (libvirt's default when ``mode`` is absent) would
    have QEMU connect to a listener of its own, which is not how guestha
    works.
    """
    for channel in devices.findall("channel"):
        target = channel.find("target")
        if (channel.get("type") != "unix" or target is None
                or target.get("type") != "virtio"
                or target.get("name") != CHANNEL_NAME):
            continue
        source = channel.find("source")
        if source is None or source.get("mode") != "bind":
            continue
        path = source.get("path")
        if path:
            return path
    return None


def _nova_metadata(metadata):
    """``{"name":..., "flavor":..., "project":..., "extra_specs": {...}}``
    from Nova's metadata element, with only the keys found; empty outside
    Nova.

    ``extra_specs`` are the flavor's, as Nova embeds them in
    ``<nova:flavor>``: ``<nova:extraSpecs><nova:extraSpec
    name="guestha:heartbeat">true</nova:extraSpec></nova:extraSpecs>``
    (nova.virt.libvirt.config.LibvirtConfigGuestMetaNovaFlavorExtraSpecs,
    namespace version 1.1 in Nova 34).  The key is absent when Nova wrote
    no ``<nova:extraSpecs>`` (an older Nova), present and empty for a
    flavor without extra specs."""
    if metadata is None:
        return {}
    for element in metadata:
        ns, _, local = element.tag[1:].partition("}")
        if local == "instance" and element.tag.startswith(
                "{" + NOVA_NS_PREFIX):
            return _nova_instance("{%s}" % ns, element)
    return {}


def _nova_instance(ns, instance):
    nova = {}
    name = instance.findtext(ns + "name")
    if name:
        nova["name"] = name.strip()
    flavor = instance.find(ns + "flavor")
    if flavor is not None and flavor.get("name"):
        nova["flavor"] = flavor.get("name")
    project = instance.find("%sowner/%sproject" % (ns, ns))
    if project is not None and project.get("uuid"):
        nova["project"] = project.get("uuid")
    extra_specs = None if flavor is None else flavor.find(ns + "extraSpecs")
    if extra_specs is not None:
        # Nova writes <nova:extraSpecs> always (empty when the flavor has
        # none) since it started to write it at all; its absence means an
        # older Nova, whose flavor settings only its API can tell
        nova["extra_specs"] = {
            spec.get("name"): (spec.text or "").strip()
            for spec in extra_specs.findall(ns + "extraSpec")
            if spec.get("name")}
    return nova


def channel_xml(path):
    """The device XML that hot-plugs the guestha channel with its host-side
    socket at ``path`` (QEMU listens there; the agent connects)."""
    channel = ET.Element("channel", type="unix")
    ET.SubElement(channel, "source", mode="bind", path=path)
    ET.SubElement(channel, "target", type="virtio", name=CHANNEL_NAME)
    return ET.tostring(channel, encoding="unicode")
