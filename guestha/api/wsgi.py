# SPDX-License-Identifier: Apache-2.0
"""The WSGI entry point for uWSGI, gunicorn or mod_wsgi::

    uwsgi --http-socket :9749 --module guestha.api.wsgi:application

The configuration files are those of ``GUESTHA_API_CONFIG`` (a
comma-separated list), else ``/etc/guestha/guestha.conf`` (and
``/etc/guestha/guestha.conf.d``), as oslo.config finds them for project
``guestha``.
"""

import os

from guestha.cmd import api as api_cmd


def init_application(argv=None):
    files = [f for f in os.environ.get("GUESTHA_API_CONFIG", "").split(",")
             if f]
    args = []
    for path in files:
        args.extend(["--config-file", path])
    conf = api_cmd.prepare(args if argv is None else argv)
    api_cmd.setup_logging(conf)
    return api_cmd.build_app(conf)


application = init_application()
