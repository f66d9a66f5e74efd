# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the tests against the real cloud (marker ``openstack``).

``cloud`` (session) brings the cloud harness up once (``bash
tools/cloud.sh up``; see doc/source/testing.rst) and yields a
:class:`Cloud`: one openstacksdk connection (one keystoneauth session, one
token) for every test, and the harness's status.  If the fixture brought
the cloud up it takes it down at the end, unless ``GUESTHA_CLOUD_KEEP=1``;
a cloud that was already up is left up.

These tests run only with ``GUESTHA_CLOUD_TESTS=1`` (a minute or two the
first time on a machine, and the machine's libvirtd for the server tests).
``GUESTHA_CLOUD_COMPUTE=0`` brings the cloud up without nova-compute (for
when libvirtd is someone else's): the tests that boot a server skip.
"""

import os

import pytest

from guestha.testing.cloud_rig import Cloud
from guestha.testing.cloud_rig import cloud_sh
from guestha.testing.cloud_rig import cloud_status

ENABLED = os.environ.get("GUESTHA_CLOUD_TESTS") == "1"
COMPUTE = os.environ.get("GUESTHA_CLOUD_COMPUTE", "1") != "0"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason="set GUESTHA_CLOUD_TESTS=1 to run the "
                            "tests against the real cloud (tools/cloud.sh)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.openstack)
            if not ENABLED:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cloud():
    was_up = cloud_status()["services"]["keystone"]["running"]
    args = ["up"] + ([] if COMPUTE else ["--no-compute"])
    proc = cloud_sh(*args, check=False)
    if proc.returncode:
        pytest.fail("tools/cloud.sh up failed (exit %d):\n%s\n%s" % (
            proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
    yield Cloud(COMPUTE)
    if not was_up and os.environ.get("GUESTHA_CLOUD_KEEP") != "1":
        cloud_sh("down", check=False)
