# SPDX-License-Identifier: Apache-2.0
"""Whether a process id on this host names a live process (standard
library only: the controller's ledger and the test harness's VM
bookkeeping both ask, and neither should import the other)."""

import os


def alive(pid):
    """True if a process ``pid`` exists on this host (another user's
    included), False if there is none."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
