# SPDX-License-Identifier: Apache-2.0
"""Domain XML parsing, state normalisation and lifecycle events."""

import xml.etree.ElementTree as ET

import pytest

from guestha.agent import domain
from guestha.agent import events as ev

UUID = "3f1c8a52-6a0e-4c77-9b8e-2d4f5e6a7b8c"
SOCK = "/var/lib/guestha/channels/%s.sock" % UUID

GUESTHA_CHANNEL = """
    <channel type='unix'>
      <source mode='bind' path='%s'/>
      <target type='virtio' name='org.openstack.guestha.0'/>
      <alias name='channel1'/>
    </channel>""" % SOCK
QGA_CHANNEL = """
    <channel type='unix'>
      <source mode='bind'
          path='/var/lib/libvirt/qemu/org.qemu.guest_agent.0.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'
          state='connected'/>
    </channel>"""
SPICE_CHANNEL = """
    <channel type='spicevmc'>
      <target type='virtio' name='com.redhat.spice.0'/>
    </channel>"""
CONTROLLER = "<controller type='virtio-serial' index='0'/>"

NOVA_METADATA = """
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/%s">
      <nova:package version="31.0.0"/>
      <nova:name>vnf-1</nova:name>
      <nova:creationTime>2026-01-01 10:00:00</nova:creationTime>
      <nova:flavor name="m1.guestha">
        <nova:memory>512</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="b5e7a2f0c0f84a6a9c3f0e1d2c3b4a59">demo</nova:user>
        <nova:project
            uuid="6f70656e737461636b20342065766572">demo</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="a1b2c3d4-0000-4000-8000-000000000001"/>
    </nova:instance>
  </metadata>"""


def domain_xml(devices="", metadata="", uuid=UUID):
    return """<domain type='kvm' id='7'>
  <name>instance-0000002a</name>
  <uuid>%s</uuid>%s
  <memory unit='KiB'>524288</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <source file='/var/lib/nova/instances/%s/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>%s
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>""" % (uuid, metadata, uuid, devices)


# -- channel and controller ---------------------------------------------------

@pytest.mark.parametrize("devices", [
    CONTROLLER + GUESTHA_CHANNEL,                              # alone
    CONTROLLER + GUESTHA_CHANNEL + QGA_CHANNEL + SPICE_CHANNEL,  # first
    CONTROLLER + QGA_CHANNEL + GUESTHA_CHANNEL + SPICE_CHANNEL,  # middle
    CONTROLLER + QGA_CHANNEL + SPICE_CHANNEL + GUESTHA_CHANNEL,  # last
    QGA_CHANNEL + GUESTHA_CHANNEL + CONTROLLER,          # controller after
], ids=["alone", "first", "middle", "last", "controller-after"])
def test_guestha_channel_found_wherever_it_stands(devices):
    info = domain.parse_domain(domain_xml(devices), ev.RUNNING)

    assert info.channel_path == SOCK
    assert info.has_serial_controller is True


def test_domain_without_the_channel_but_with_a_controller():
    # the hw_qemu_guest_agent=yes case: hot-plug can work
    info = domain.parse_domain(domain_xml(CONTROLLER + QGA_CHANNEL),
                               ev.RUNNING)

    assert info.channel_path is None
    assert info.has_serial_controller is True


def test_domain_without_a_controller():
    info = domain.parse_domain(domain_xml(), ev.RUNNING)

    assert info.channel_path is None
    assert info.has_serial_controller is False


def test_other_controllers_are_not_a_virtio_serial_controller():
    info = domain.parse_domain(domain_xml(
        "<controller type='usb' index='0'/>"
        "<controller type='pci' index='0' model='pcie-root'/>"), ev.RUNNING)

    assert info.has_serial_controller is False


@pytest.mark.parametrize("channel", [
    # QEMU connects out instead of listening: not a guestha channel
    "<channel type='unix'><source mode='connect' path='/x.sock'/>"
    "<target type='virtio' name='org.openstack.guestha.0'/></channel>",
    # not a UNIX socket
    "<channel type='pty'>"
    "<target type='virtio' name='org.openstack.guestha.0'/></channel>",
    # a guestfwd channel with our name is not a virtio port
    "<channel type='unix'><source mode='bind' path='/x.sock'/>"
    "<target type='guestfwd' name='org.openstack.guestha.0'/></channel>",
    # another port name
    "<channel type='unix'><source mode='bind' path='/x.sock'/>"
    "<target type='virtio' name='org.openstack.guestha.1'/></channel>",
    # no path
    "<channel type='unix'><source mode='bind'/>"
    "<target type='virtio' name='org.openstack.guestha.0'/></channel>",
    # no mode: libvirt's default is connect
    "<channel type='unix'><source path='/x.sock'/>"
    "<target type='virtio' name='org.openstack.guestha.0'/></channel>",
], ids=["connect-mode", "pty", "guestfwd", "other-name", "no-path",
        "no-mode"])
def test_channels_that_are_not_the_guestha_channel(channel):
    info = domain.parse_domain(domain_xml(CONTROLLER + channel), ev.RUNNING)

    assert info.channel_path is None


def test_first_usable_guestha_channel_wins_over_an_unusable_one():
    unusable = ("<channel type='unix'><source mode='connect' path='/x'/>"
                "<target type='virtio' name='org.openstack.guestha.0'/>"
                "</channel>")
    info = domain.parse_domain(
        domain_xml(CONTROLLER + unusable + GUESTHA_CHANNEL), ev.RUNNING)

    assert info.channel_path == SOCK


# -- identity, state and Nova metadata ----------------------------------------

def test_uuid_name_and_state():
    info = domain.parse_domain(domain_xml(uuid=UUID.upper()), ev.PAUSED)

    assert info.uuid == UUID  # lower case, as Nova writes instance uuids
    assert info.name == "instance-0000002a"
    assert info.state == ev.PAUSED


@pytest.mark.parametrize("attribute, expected", [
    (" id='7'", 7), (" id='0'", 0), ("", None), (" id='-1'", None),
    (" id='x'", None)])
def test_domain_id_of_the_running_qemu_process(attribute, expected):
    # new at every start of the domain: what tells the agent, after its
    # own restart, whether the guest it monitored before still runs
    xml = domain_xml().replace(" id='7'", attribute, 1)
    assert domain.parse_domain(xml, ev.RUNNING).domain_id == expected


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_nova_metadata_of_any_namespace_version(version):
    info = domain.parse_domain(domain_xml(metadata=NOVA_METADATA % version),
                               ev.RUNNING)

    assert info.nova == {"name": "vnf-1", "flavor": "m1.guestha",
                         "project": "6f70656e737461636b20342065766572"}


def test_no_nova_metadata_outside_nova():
    info = domain.parse_domain(domain_xml(), ev.RUNNING)

    assert info.nova == {}


def test_metadata_of_other_applications_is_not_novas():
    other = ("<metadata><app:instance xmlns:app='http://example.com/app/1'>"
             "<app:name>x</app:name></app:instance></metadata>")
    info = domain.parse_domain(domain_xml(metadata=other), ev.RUNNING)

    assert info.nova == {}


def test_partial_nova_metadata_gives_what_is_there():
    partial = ("<metadata><nova:instance xmlns:nova="
               "'http://openstack.org/xmlns/libvirt/nova/1.1'>"
               "<nova:name>only-a-name</nova:name>"
               "</nova:instance></metadata>")
    info = domain.parse_domain(domain_xml(metadata=partial), ev.RUNNING)

    assert info.nova == {"name": "only-a-name"}


# What Nova 34 writes (nova.virt.libvirt.config, NOVA_NS version 1.1): the
# flavor with its extra specs, then the image with its properties.
NOVA_METADATA_WITH_EXTRA_SPECS = """
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="34.0.0"/>
      <nova:name>vnf-1</nova:name>
      <nova:flavor name="m1.guestha" id="3">
        <nova:memory>128</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
        <nova:extraSpecs>%s</nova:extraSpecs>
      </nova:flavor>
      <nova:image uuid="a1b2c3d4-0000-4000-8000-000000000001">
        <nova:properties>
          <nova:property name="hw_qemu_guest_agent">yes</nova:property>
        </nova:properties>
      </nova:image>
      <nova:owner>
        <nova:project
            uuid="6f70656e737461636b20342065766572">demo</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>"""


def test_flavor_extra_specs_from_novas_metadata():
    specs = ('<nova:extraSpec name="guestha:heartbeat">true</nova:extraSpec>'
             '<nova:extraSpec name="hw:cpu_policy">shared</nova:extraSpec>'
             '<nova:extraSpec name="guestha:corrective_action"> reboot '
             '</nova:extraSpec>')
    info = domain.parse_domain(
        domain_xml(metadata=NOVA_METADATA_WITH_EXTRA_SPECS % specs),
        ev.RUNNING)

    assert info.nova["extra_specs"] == {
        "guestha:heartbeat": "true", "hw:cpu_policy": "shared",
        "guestha:corrective_action": "reboot"}
    assert info.nova["flavor"] == "m1.guestha"


def test_a_flavor_without_extra_specs_says_so():
    # Nova writes an empty <nova:extraSpecs/>: known to have none
    info = domain.parse_domain(
        domain_xml(metadata=NOVA_METADATA_WITH_EXTRA_SPECS % ""),
        ev.RUNNING)

    assert info.nova["extra_specs"] == {}


def test_an_older_nova_writes_no_extra_specs():
    # no <nova:extraSpecs> at all: unknown, for the Nova API to tell
    info = domain.parse_domain(domain_xml(metadata=NOVA_METADATA % "1.1"),
                               ev.RUNNING)

    assert "extra_specs" not in info.nova


@pytest.mark.parametrize("text", [
    "", "<domain", "<network><uuid>%s</uuid></network>" % UUID,
    "<domain><name>no-uuid</name></domain>",
], ids=["empty", "truncated", "not-a-domain", "no-uuid"])
def test_unusable_xml_is_a_value_error(text):
    with pytest.raises(ValueError):
        domain.parse_domain(text, ev.RUNNING)


def test_domain_without_devices():
    info = domain.parse_domain(
        "<domain><name>bare</name><uuid>%s</uuid></domain>" % UUID,
        ev.STARTING)

    assert (info.channel_path, info.has_serial_controller) == (None, False)


# -- the hot-plug device XML --------------------------------------------------

def test_channel_xml_is_what_parse_domain_recognises():
    path = "/srv/guestha dir/it's & <odd>.sock"
    xml = domain.channel_xml(path)
    info = domain.parse_domain(domain_xml(CONTROLLER + xml), ev.RUNNING)

    assert info.channel_path == path


def test_channel_xml_shape():
    element = ET.fromstring(domain.channel_xml(SOCK))

    assert element.tag == "channel" and element.get("type") == "unix"
    assert element.find("source").attrib == {"mode": "bind", "path": SOCK}
    assert element.find("target").attrib == {
        "type": "virtio", "name": "org.openstack.guestha.0"}


# -- states -------------------------------------------------------------------

# (state, reason) -> expected; every reason libvirt 9-12 defines.
STATE_CASES = [
    ((0, 0), ev.STARTING),                   # NOSTATE
    ((1, 0), ev.RUNNING), ((1, 1), ev.RUNNING),  # UNKNOWN, BOOTED
    ((1, 2), ev.RUNNING),                    # MIGRATED (destination)
    ((1, 3), ev.RUNNING), ((1, 4), ev.RUNNING), ((1, 5), ev.RUNNING),
    ((1, 6), ev.RUNNING),                    # MIGRATION_CANCELED
    ((1, 7), ev.RUNNING), ((1, 8), ev.RUNNING), ((1, 9), ev.RUNNING),
    ((1, 10), ev.MIGRATING),                 # POSTCOPY
    ((1, 11), ev.MIGRATING),                 # POSTCOPY_FAILED
    ((2, 0), ev.RUNNING),                    # BLOCKED
    ((3, 0), ev.PAUSED), ((3, 1), ev.PAUSED),  # UNKNOWN, USER
    ((3, 2), ev.MIGRATING),                  # MIGRATION
    ((3, 3), ev.PAUSED), ((3, 4), ev.PAUSED),  # SAVE, DUMP
    ((3, 5), ev.PAUSED), ((3, 6), ev.PAUSED),  # IOERROR, WATCHDOG
    ((3, 7), ev.PAUSED),                     # FROM_SNAPSHOT
    ((3, 8), ev.SHUTTING_DOWN),              # SHUTTING_DOWN
    ((3, 9), ev.PAUSED),                     # SNAPSHOT
    ((3, 10), ev.CRASHED),                   # CRASHED
    ((3, 11), ev.STARTING),                  # STARTING_UP
    ((3, 12), ev.MIGRATING),                 # POSTCOPY
    ((3, 13), ev.MIGRATING),                 # POSTCOPY_FAILED
    ((3, 14), ev.PAUSED),                    # API_ERROR
    ((4, 0), ev.SHUTTING_DOWN), ((4, 1), ev.SHUTTING_DOWN),
    ((5, 0), ev.SHUTOFF), ((5, 1), ev.SHUTOFF), ((5, 2), ev.SHUTOFF),
    ((5, 3), ev.SHUTOFF), ((5, 4), ev.SHUTOFF), ((5, 5), ev.SHUTOFF),
    ((5, 6), ev.SHUTOFF), ((5, 7), ev.SHUTOFF),
    ((6, 0), ev.CRASHED), ((6, 1), ev.CRASHED),
    ((7, 0), ev.PMSUSPENDED),
    ((99, 0), ev.RUNNING),   # a state of a future libvirt: looked at
]


@pytest.mark.parametrize("state_reason,expected", STATE_CASES,
                         ids=["%d-%d" % c[0] for c in STATE_CASES])
def test_normalise_state(state_reason, expected):
    assert domain.normalise_state(*state_reason) == expected


def test_every_normalised_state_is_one_of_the_agents():
    for (state, reason), _expected in STATE_CASES:
        assert domain.normalise_state(state, reason) in ev.STATES


# (event, detail) -> (text, state)
EVENT_CASES = [
    ((0, 0), "lifecycle:defined:added", None),
    ((0, 1), "lifecycle:defined:updated", None),
    ((1, 0), "lifecycle:undefined:removed", None),
    ((2, 0), "lifecycle:started:booted", ev.RUNNING),
    ((2, 1), "lifecycle:started:migrated", ev.MIGRATING),
    ((2, 2), "lifecycle:started:restored", ev.RUNNING),
    ((2, 3), "lifecycle:started:from_snapshot", ev.RUNNING),
    ((2, 4), "lifecycle:started:wakeup", ev.RUNNING),
    ((3, 0), "lifecycle:suspended:paused", ev.PAUSED),
    ((3, 1), "lifecycle:suspended:migrated", ev.MIGRATING),
    ((3, 2), "lifecycle:suspended:ioerror", ev.PAUSED),
    ((3, 3), "lifecycle:suspended:watchdog", ev.PAUSED),
    ((3, 4), "lifecycle:suspended:restored", ev.PAUSED),
    ((3, 5), "lifecycle:suspended:from_snapshot", ev.PAUSED),
    ((3, 6), "lifecycle:suspended:api_error", ev.PAUSED),
    ((3, 7), "lifecycle:suspended:postcopy", ev.MIGRATING),
    ((3, 8), "lifecycle:suspended:postcopy_failed", ev.MIGRATING),
    ((4, 0), "lifecycle:resumed:unpaused", ev.RUNNING),
    ((4, 1), "lifecycle:resumed:migrated", ev.RUNNING),
    ((4, 2), "lifecycle:resumed:from_snapshot", ev.RUNNING),
    ((4, 3), "lifecycle:resumed:postcopy", ev.MIGRATING),
    ((4, 4), "lifecycle:resumed:postcopy_failed", ev.MIGRATING),
    ((5, 0), "lifecycle:stopped:shutdown", ev.SHUTOFF),
    ((5, 1), "lifecycle:stopped:destroyed", ev.SHUTOFF),
    ((5, 2), "lifecycle:stopped:crashed", ev.SHUTOFF),
    ((5, 3), "lifecycle:stopped:migrated", ev.SHUTOFF),
    ((5, 4), "lifecycle:stopped:saved", ev.SHUTOFF),
    ((5, 5), "lifecycle:stopped:failed", ev.SHUTOFF),
    ((5, 6), "lifecycle:stopped:from_snapshot", ev.SHUTOFF),
    ((6, 0), "lifecycle:shutdown:finished", ev.SHUTTING_DOWN),
    ((6, 1), "lifecycle:shutdown:guest", ev.SHUTTING_DOWN),
    ((6, 2), "lifecycle:shutdown:host", ev.SHUTTING_DOWN),
    ((7, 0), "lifecycle:pmsuspended:memory", ev.PMSUSPENDED),
    ((7, 1), "lifecycle:pmsuspended:disk", ev.PMSUSPENDED),
    ((8, 0), "lifecycle:crashed:panicked", ev.CRASHED),
    ((8, 1), "lifecycle:crashed:crashloaded", ev.CRASHED),
    # details and events of a future libvirt
    ((3, 42), "lifecycle:suspended:42", ev.PAUSED),
    ((42, 1), "lifecycle:42:1", None),
]


@pytest.mark.parametrize("event_detail,text,state", EVENT_CASES,
                         ids=[c[1] for c in EVENT_CASES])
def test_lifecycle_event(event_detail, text, state):
    assert domain.lifecycle_event(*event_detail) == (text, state)


def test_numbers_match_the_libvirt_binding():
    libvirt = pytest.importorskip("libvirt")
    pairs = {"NOSTATE": "VIR_DOMAIN_NOSTATE",
             "RUNNING": "VIR_DOMAIN_RUNNING",
             "BLOCKED": "VIR_DOMAIN_BLOCKED",
             "PAUSED": "VIR_DOMAIN_PAUSED",
             "SHUTDOWN": "VIR_DOMAIN_SHUTDOWN",
             "SHUTOFF": "VIR_DOMAIN_SHUTOFF",
             "CRASHED": "VIR_DOMAIN_CRASHED",
             "PMSUSPENDED": "VIR_DOMAIN_PMSUSPENDED"}
    for prefix in ("RUNNING_", "PAUSED_"):
        for name in dir(domain):
            if name.startswith(prefix):
                pairs[name] = "VIR_DOMAIN_" + name
    for name in dir(domain):
        if name.startswith("EVENT_"):
            pairs[name] = "VIR_DOMAIN_" + name
    checked = 0
    for ours, theirs in pairs.items():
        if hasattr(libvirt, theirs):  # older bindings lack the newest
            assert getattr(domain, ours) == getattr(libvirt, theirs), ours
            checked += 1
    assert checked >= 40


# What nova 34.0.0's own classes print (LibvirtConfigGuest with a
# LibvirtConfigGuestMetaNovaInstance whose flavor has extra specs,
# .to_xml()), verbatim, so that the parser is checked against Nova's
# generator and not only against a hand-written fixture.
NOVA_34_GENERATED = """<domain type="qemu">
  <uuid>3f1c8a52-6a0e-4c77-9b8e-2d4f5e6a7b8c</uuid>
  <name>instance-00000001</name>
  <memory>131072</memory>
  <vcpu>1</vcpu>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="34.0.0"/>
      <nova:name>vnf-1</nova:name>
      <nova:creationTime>2026-01-01 00:00:00</nova:creationTime>
      <nova:flavor name="m1.guestha" id="3">
        <nova:memory>128</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
        <nova:extraSpecs>
          <nova:extraSpec name="guestha:heartbeat">true</nova:extraSpec>
          <nova:extraSpec name="hw:cpu_policy">shared</nova:extraSpec>
          <nova:extraSpec name="guestha:corrective_action">reboot</nova:extraSpec>
        </nova:extraSpecs>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="u1">demo</nova:user>
        <nova:project uuid="6f70656e737461636b20342065766572">demo</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <os>
    <type>hvm</type>
  </os>
</domain>
"""  # noqa: E501 - verbatim

NOVA_34_SPECS = {"guestha:heartbeat": "true", "hw:cpu_policy": "shared",
                 "guestha:corrective_action": "reboot"}


def test_extra_specs_from_what_nova_34_generates():
    info = domain.parse_domain(NOVA_34_GENERATED, ev.RUNNING)

    assert info.nova == {"name": "vnf-1", "flavor": "m1.guestha",
                         "project": "6f70656e737461636b20342065766572",
                         "extra_specs": NOVA_34_SPECS}


def test_extra_specs_from_the_installed_novas_generator():
    # where Nova is importable (the cloud's environment): whatever version
    # is installed, its own classes write what the parser reads
    config = pytest.importorskip("nova.virt.libvirt.config")

    flavor = config.LibvirtConfigGuestMetaNovaFlavor()
    flavor.name, flavor.id = "m1.guestha", "3"
    flavor.extra_specs = dict(NOVA_34_SPECS)
    owner = config.LibvirtConfigGuestMetaNovaOwner()
    owner.userid, owner.username = "u1", "demo"
    owner.projectid, owner.projectname = "p1", "demo"
    meta = config.LibvirtConfigGuestMetaNovaInstance()
    meta.package, meta.name, meta.creationTime = "x", "vnf-1", 1767225600
    meta.flavor, meta.owner = flavor, owner
    guest = config.LibvirtConfigGuest()
    guest.virt_type, guest.name, guest.uuid = "qemu", "instance-1", UUID
    guest.memory, guest.vcpus, guest.os_type = 131072, 1, "hvm"
    guest.metadata.append(meta)

    info = domain.parse_domain(guest.to_xml(), ev.RUNNING)

    assert info.nova["extra_specs"] == NOVA_34_SPECS
