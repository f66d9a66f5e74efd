# SPDX-License-Identifier: Apache-2.0
"""guestha-server processes with no Nova, for the functional tests that
are not about Nova (issue 9: guestha/testing/fake_nova.py backs unit tests
only).

:class:`guestha.testing.server_harness.ServerProcess` writes a ``[nova]``
section for a Nova endpoint; these classes write none.  The controller
then asks no Nova: every call fails at once ("an auth plugin is
required"), which a test of fault delivery, the ledger, the sinks or the
metrics does not notice.  What the controller does WITH Nova (server
groups, states, reboots through nova-compute) is tested against the real
Nova of the cloud harness, in tests/cloud/test_scenarios.py.
"""

import re

from guestha.testing import server_harness


def drop_nova_section(conf_path):
    with open(conf_path) as f:
        text = f.read()
    text = re.sub(r"\[nova\]\n(.*\n)*?\n", "", text)
    assert "[nova]" not in text, text
    with open(conf_path, "w") as f:
        f.write(text)


class ServerProcess(server_harness.ServerProcess):
    """One guestha-server without ``[nova]``."""

    def __init__(self, workdir, url, server_id, **kwargs):
        super().__init__(workdir, url, server_id, None, **kwargs)
        drop_nova_section(self.conf_path)


class Servers(server_harness.Servers):
    """Every controller of a test (none with ``[nova]``)."""

    def __init__(self, workdir, url):
        super().__init__(workdir, url, None)

    def make(self, server_id, **kwargs):
        server = ServerProcess(self.workdir, self.url, server_id, **kwargs)
        self.all.append(server)
        return server
