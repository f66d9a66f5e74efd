# SPDX-License-Identifier: Apache-2.0
"""The commands of the guestha API v1 (entry points
``openstack.guestha.v1``)."""
