# SPDX-License-Identifier: Apache-2.0
"""Domains in libvirtd's test driver, for the agent to watch.

``test+unix:///default`` (:data:`URI`) is libvirt's test driver served by
libvirtd: one state shared by every connection, with lifecycle events
across connections.  :class:`Domains` defines domains whose guestha
channel points at a guest's socket and changes their state with plain
libvirt calls, as Nova would; the agent learns of it through events.
:func:`write_node` writes a node file instead: each connection to it gets
a private copy of its domains (one simulated compute host each).

The test driver's state is shared with whatever else uses libvirtd, and
an agent serves every domain it sees: :func:`foreign_agents` finds other
agents on it (they would connect to these tests' channels too).
"""

import os
import subprocess
import uuid as uuidlib

from guestha_guest import protocol as p

#: libvirtd's test driver: one state for all connections (see above).
URI = "test+unix:///default"
#: Names of the domains these tests define; anything else in the shared
#: test driver (the built-in "test" domain, other suites' domains) is not
#: theirs to touch.
DOMAIN_PREFIX = "ghft-"


def libvirtd_pid():
    """The pid of the running libvirtd, or None."""
    out = subprocess.run(["pgrep", "-x", "libvirtd"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.split()
    return int(out[0]) if out else None


def foreign_agents(exclude=()):
    """Other guestha agents that watch the shared test driver, as
    ``[(pid, config files)]``.

    An agent monitors every domain of its libvirt connection, so an agent
    of another test run or of a benchmark on ``test+unix:///default``
    connects to this test's channel sockets too, and a guest (like QEMU)
    serves one host at a time: whichever agent connects first has it.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = [a.decode("utf-8", "replace")
                        for a in f.read().split(b"\0") if a]
            cwd = os.readlink("/proc/%s/cwd" % name)
        except OSError:
            continue  # gone, or not ours to look at
        if "--status" in argv:
            continue
        # by its configuration, not its command (an agent may run under a
        # profiler): any process configured for the test driver
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1])
                   if a == "--config-file"]
        configs += [a.split("=", 1)[1] for a in argv
                    if a.startswith("--config-file=")]
        for config in configs:
            try:
                with open(os.path.join(cwd, config)) as f:
                    text = f.read()
                watches = URI in text and "[agent]" in text
            except OSError:
                watches = True  # cannot tell: assume the worst
            if watches:
                found.append((int(name), configs))
                break
    return found


# -- domains in libvirtd's test driver ----------------------------------------

DOMAIN_XML = """\
<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
{metadata}  <devices>
{devices}  </devices>
</domain>
"""

#: The ``<metadata>`` element of :data:`DOMAIN_XML`, around ``{content}``.
METADATA_XML = """\
  <metadata>
{content}
  </metadata>
"""

#: A virtio-serial controller and the guestha channel, served at ``{path}``.
CHANNEL_XML = """\
    <controller type='virtio-serial'/>
    <channel type='unix'>
      <source mode='bind' path='{path}'/>
      <target type='virtio' name='{port}'/>
    </channel>
"""


def domain_xml(name, uuid, channel_path, metadata=None):
    """A test-driver domain whose guestha channel is served at
    ``channel_path``; with ``channel_path`` None, a domain with no
    virtio-serial controller and no channel.  ``metadata``: the XML of
    its ``<metadata>`` (Nova's ``<nova:instance>``, say), if any."""
    devices = "" if channel_path is None else CHANNEL_XML.format(
        path=channel_path, port=p.PORT_NAME)
    return DOMAIN_XML.format(
        name=name, uuid=uuid, devices=devices,
        metadata="" if metadata is None else METADATA_XML.format(
            content=metadata))


def remove_domain(dom):
    """Destroy ``dom`` if it runs, then undefine it; what is already gone
    is no error."""
    import libvirt
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefine()
    except libvirt.libvirtError:
        pass


def write_node(path, domains):
    """A test-driver node file with running domains ``[(name, uuid,
    channel socket path)]``; returns the libvirtd URI that loads it: each
    connection to it gets a private copy of these domains (one per
    simulated compute host)."""
    with open(path, "w") as f:
        f.write("<node>\n")
        for name, uuid, channel in domains:
            f.write(domain_xml(name, uuid, channel))
        f.write("</node>\n")
    return "test+unix://" + path


class Domains(object):
    """Test-driver domains of one test: defined, started, paused, resumed,
    destroyed from the test process's own libvirt connection."""

    def __init__(self):
        import libvirt
        self._libvirt = libvirt
        self.conn = libvirt.open(URI)
        self._mine = {}  # uuid -> virDomain

    def define(self, channel_path, start=True):
        """A new domain (``ghft-<random>``, a random uuid4) whose guestha
        channel is served at ``channel_path``; returns its uuid."""
        uuid = str(uuidlib.uuid4())
        name = "%s%s" % (DOMAIN_PREFIX, uuid[:13])
        dom = self.conn.defineXML(domain_xml(name, uuid, channel_path))
        self._mine[uuid] = dom
        if start:
            dom.create()
        return uuid

    def suspend(self, uuid):
        self._mine[uuid].suspend()

    def resume(self, uuid):
        self._mine[uuid].resume()

    def destroy(self, uuid):
        self._mine[uuid].destroy()

    def state(self, uuid):
        return self._mine[uuid].state()[0]

    def others(self):
        """How many active domains of the shared driver are not this
        test's (the built-in "test" domain, other suites' domains); None
        if libvirtd does not answer."""
        try:
            doms = self.conn.listAllDomains(
                self._libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except self._libvirt.libvirtError:
            return None
        return len([d for d in doms if d.UUIDString() not in self._mine])

    def remove(self, uuid):
        remove_domain(self._mine.pop(uuid))

    def close(self):
        """Destroy and undefine every domain of this test."""
        for uuid in list(self._mine):
            self.remove(uuid)
        try:
            self.conn.close()
        except self._libvirt.libvirtError:
            pass
