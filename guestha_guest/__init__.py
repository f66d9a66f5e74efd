# SPDX-License-Identifier: Apache-2.0
"""guestha guest side: the wire protocol and the reference guest daemon.

This package goes into the virtual machine.  It uses the Python standard
library only and runs on Python 3.8 and newer, so an image needs nothing but
``python3`` to run it (see ``doc/source/guest-daemon.rst``).
"""

import os as _os
import sys as _sys

_DIST = "guestha-"


def _installed_version():
    """The version of the installed ``guestha`` distribution.

    Read from the name of its metadata directory
    (``guestha-<version>.dist-info``, which the installer writes), found on
    ``sys.path`` as ``importlib.metadata`` would find it, without importing
    ``importlib.metadata``: that brings ``email``, ``zipfile``,
    ``pathlib`` and more, 2.5 MiB of the daemon's 20 MB under Python 3.11
    (doc/source/benchmarks.rst).  From a checkout or from the one-file
    bundle there is none: the version is only informational, so it never
    stops the daemon from starting.
    """
    for entry in _sys.path:
        try:
            names = _os.listdir(entry or ".")
        except OSError:  # not a directory (a zip file), or gone
            continue
        for name in sorted(names):
            for suffix in (".dist-info", ".egg-info"):
                if name.startswith(_DIST) and name.endswith(suffix):
                    # (an egg-info may add "-py3.X")
                    return name[len(_DIST):-len(suffix)].split("-")[0]
    return "0+unknown"


__version__ = _installed_version()
