"""The compute agent (guestha-agent): watches the domains of one compute
host through libvirt, speaks the guestha protocol on each domain's channel
and reports faults to the controller over oslo.messaging."""
