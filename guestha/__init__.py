"""guestha: in-guest VM monitoring for OpenStack, host side.

The compute agent, the controller and the fault sinks live here.  The wire
protocol they speak is ``guestha_guest.protocol``, shared with the guest
daemon; the dependency points from this package to that one, never back.
"""
