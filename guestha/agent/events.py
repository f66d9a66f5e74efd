# SPDX-License-Identifier: Apache-2.0
"""What the libvirt thread tells the agent's I/O loop.

The libvirt watcher (:mod:`guestha.agent.virt`) runs in its own thread and
never touches instance state: it posts these plain, immutable records to
the loop, which owns all state.  Times are ``time.monotonic()`` values taken
when the watcher saw the event.  They stay inside the agent's process: the
events the agent reports to the controllers are the records of
:mod:`guestha.records`.
"""

# Domain states, normalised from libvirt's state and reason.
RUNNING = "running"
PAUSED = "paused"            # virsh suspend, or paused by an I/O error
MIGRATING = "migrating"      # paused or running for a migration
SHUTTING_DOWN = "shutting_down"
SHUTOFF = "shutoff"
CRASHED = "crashed"
PMSUSPENDED = "pmsuspended"  # guest suspended to RAM/disk
STARTING = "starting"        # started, not yet reported running
STATES = (RUNNING, PAUSED, MIGRATING, SHUTTING_DOWN, SHUTOFF, CRASHED,
          PMSUSPENDED, STARTING)


class _Record(object):
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError("too many arguments")
        values = dict(zip(names, args))
        values.update(kwargs)
        for name in names:
            object.__setattr__(self, name, values.get(name))

    def __setattr__(self, name, value):
        raise AttributeError("%s is immutable" % type(self).__name__)

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self):
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (n, getattr(self, n)) for n in self.__slots__))


class DomainInfo(_Record):
    """What the agent needs to know of one domain, from its live XML.

    ``uuid``: the domain uuid, which Nova sets to the instance uuid.
    ``channel_path``: the host-side UNIX socket of the guestha channel
    (``None`` if the domain has no such channel).  ``has_serial_controller``:
    whether a virtio-serial controller exists (needed for hot-plug).
    ``nova``: Nova's metadata from the XML (``{"name":..., "flavor":...,
    "project":...}``, empty outside Nova).  ``domain_id``: libvirt's id of
    the running domain (the ``id`` attribute of the live XML's
    ``<domain>``), new at every start of its QEMU process; ``None`` when
    the XML has none (not running).
    """

    __slots__ = ("uuid", "name", "state", "channel_path",
                 "has_serial_controller", "nova", "domain_id")


class DomainUpdate(_Record):
    """A domain appeared or changed (lifecycle event or reconcile).

    ``event``: a short text for logs and reports, such as
    ``"lifecycle:suspended:paused"`` or ``"reconcile"``.
    """

    __slots__ = ("info", "event", "at")


class DomainGone(_Record):
    """A domain was undefined or destroyed and no longer runs here."""

    __slots__ = ("uuid", "event", "at")


class Reconciled(_Record):
    """The full list of active domains, so the loop can drop the ones it
    missed the end of.  ``uuids`` is a frozenset."""

    __slots__ = ("uuids", "at")


class LibvirtStatus(_Record):
    """The libvirt connection went up (``connected=True``) or down."""

    __slots__ = ("connected", "uri", "at", "error")


class HotplugResult(_Record):
    """Outcome of a request to add the guestha channel to a domain.

    ``outcome``: ``"attached"``, ``"not_enabled"`` (the flavor does not ask
    for guestha), ``"no_controller"`` (the domain has no virtio-serial
    controller: ``message`` says what fixes it), ``"error"``.
    """

    __slots__ = ("uuid", "outcome", "message", "channel_path", "at")


class DomainState(_Record):
    """Answer to a state query (used to confirm a fault before reporting):
    ``state`` is one of :data:`STATES`, or ``None`` if the domain is gone.
    """

    __slots__ = ("uuid", "state", "token", "at")
