# SPDX-License-Identifier: Apache-2.0
"""Options of the controllers' database: oslo.db's ``[database]`` group.

Unset, ``connection`` means the SQLite file ``[server] ledger_path`` (one
controller host).  Several controller hosts share one database, e.g.
``mysql+pymysql://guestha:SECRET@db.example.org/guestha?charset=utf8mb4``.
"""

import copy

from oslo_db import options as db_options

GROUP = "database"


def register_opts(conf):
    db_options.set_defaults(conf)


def list_opts():
    opts = copy.deepcopy(db_options.database_opts)
    for opt in opts:
        if opt.name == "connection":
            opt.help = (
                "The database of the controllers' ledger (an SQLAlchemy "
                "URL). Unset: the SQLite file [server] ledger_path, for "
                "the controllers of one host. For several controller "
                "hosts, one database they all share, e.g. "
                "mysql+pymysql://guestha:SECRET@dbhost/guestha"
                "?charset=utf8mb4, migrated with 'guestha-manage db "
                "sync' before the controllers start.")
    return {GROUP: opts}
