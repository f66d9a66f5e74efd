# SPDX-License-Identifier: Apache-2.0
"""The openstack CLI plugin: ``openstack guestha instance|fault|action``.

:mod:`guestha.osc.plugin` is what python-openstackclient loads,
:mod:`guestha.osc.client` speaks the REST API (``guestha.api``), and
:mod:`guestha.osc.v1` holds the commands.  It needs the ``cli`` extra
(``pip install guestha[cli]``: osc-lib and python-openstackclient).
"""
