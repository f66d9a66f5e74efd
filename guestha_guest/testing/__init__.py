# SPDX-License-Identifier: Apache-2.0
"""Tools for testing against the guest side of the channel without a VM:
:class:`~guestha_guest.testing.simhost.SimHost` plays the host's side of
one guest daemon's channel (for an application against the guest daemon
without a compute host); :class:`~guestha_guest.testing.guestfarm.Farm`
plays many simulated guests in one loop (for the agent's tests and
benchmarks at scale).  Standard library only, like the rest of the guest
package."""
