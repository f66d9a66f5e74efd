# SPDX-License-Identifier: Apache-2.0
"""One WSGI entry point for every API of the cloud harness, under gunicorn.

gunicorn leaves its own command line in ``sys.argv``, and some services
parse ``sys.argv`` when their application loads (masakari-api re-parses it
and drops ``[keystone_authtoken]`` unless ``--config-file`` is on it).  So
this module sets ``sys.argv`` from ``GUESTHA_CLOUD_WSGI_ARGV`` (a JSON
list) and then imports the real application named by
``GUESTHA_CLOUD_WSGI_APP`` (``module:attribute``).
"""

import importlib
import json
import os
import sys

sys.argv = json.loads(os.environ.get("GUESTHA_CLOUD_WSGI_ARGV", "[]")) or [
    "wsgi"]
_module, _, _attr = os.environ["GUESTHA_CLOUD_WSGI_APP"].partition(":")
application = getattr(importlib.import_module(_module), _attr or "application")
