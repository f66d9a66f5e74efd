# SPDX-License-Identifier: Apache-2.0
"""guestha guest side: the wire protocol and the reference guest daemon.

This package goes into the virtual machine.  It uses the Python standard
library only and runs on Python 3.8 and newer, so an image needs nothing but
``python3`` to run it (see ``doc/source/guest-daemon.rst``).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("guestha")
except _metadata.PackageNotFoundError:
    # Run from a checkout or from the one-file bundle: the version is only
    # informational, so it must never stop the daemon from starting.
    __version__ = "0+unknown"
