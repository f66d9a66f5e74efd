# SPDX-License-Identifier: Apache-2.0
"""``guestha-manage``: the controllers' database.

::

    guestha-manage --config-file /etc/guestha/guestha.conf db sync
    guestha-manage --config-file /etc/guestha/guestha.conf db version
    guestha-manage --config-file /etc/guestha/guestha.conf \\
        db import-ledger /var/lib/guestha/server-ledger.sqlite

``db sync`` brings the database of ``[database] connection`` (or the
SQLite file ``[server] ledger_path``) to the newest revision; run it on one
host, before the controllers of a new version start.  ``db
import-ledger`` copies a single host's SQLite ledger into the configured
(shared) database, so that nothing a controller accepted is forgotten when
the controllers move to it.
"""

import sys

from oslo_config import cfg
from oslo_log import log as logging

from guestha.conf import opts

LOG = logging.getLogger(__name__)


def _add_db_commands(subparsers):
    db = subparsers.add_parser("db", help="the controllers' database")
    actions = db.add_subparsers(dest="action")
    actions.required = True
    actions.add_parser("sync", help="migrate to the newest revision")
    actions.add_parser("version", help="print the current revision")
    imp = actions.add_parser("import-ledger",
                             help="copy a SQLite ledger into the database")
    imp.add_argument("path")


COMMAND = cfg.SubCommandOpt("command", title="Commands",
                            handler=_add_db_commands)


def prepare(argv, conf=cfg.CONF):
    opts.register_opts(conf)
    logging.register_options(conf)
    conf.register_cli_opt(COMMAND)
    conf(argv, project="guestha", prog="guestha-manage")
    return conf


def main(argv=None, conf=cfg.CONF):
    conf = prepare(sys.argv[1:] if argv is None else argv, conf)
    logging.setup(conf, "guestha")
    from guestha.db import api as db_api
    from guestha.db import migration

    url = db_api.connection_url(conf)
    engine = db_api.create_engine(url, conf=conf)
    shown = engine.url.render_as_string(hide_password=True)
    action = conf.command.action
    try:
        if action == "sync":
            migration.upgrade(engine)
            print("%s: at revision %s" % (shown, migration.current(engine)))
        elif action == "version":
            print(migration.current(engine) or "none")
        else:
            copied = migration.import_ledger(conf.command.path, engine)
            print("%s: copied from %s: %s" % (
                shown, conf.command.path, ", ".join(
                    "%d %s" % (n, table) for table, n in copied.items())))
    except (migration.MigrationError, *db_api.DB_ERRORS) as exc:
        LOG.error("guestha-manage db %s: %s: %s", action, shown, exc)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
