# SPDX-License-Identifier: Apache-2.0
"""Tools for testing an application against the guest daemon without a
compute host: :class:`~guestha_guest.testing.simhost.SimHost` plays the
host's side of the channel.  Standard library only, like the rest of the
guest package."""
