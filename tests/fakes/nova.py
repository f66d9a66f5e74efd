# SPDX-License-Identifier: Apache-2.0
"""The fake Nova is :mod:`guestha.testing.fake_nova` (issue 10); its
names stay importable from here for the unit tests of the agent's
hot-plug and of the controller's actions, until they import it from there.
"""

from guestha.testing.fake_nova import DEFAULT_PROJECT  # noqa: F401
from guestha.testing.fake_nova import FakeNova  # noqa: F401
from guestha.testing.fake_nova import nova_conf  # noqa: F401
