# SPDX-License-Identifier: Apache-2.0
"""The engine of the controllers' database, through oslo.db.

``[database] connection`` names it (oslo.db's option group, as in Nova or
Masakari): unset, it is the SQLite file ``[server] ledger_path``, for one
controller host; ``mysql+pymysql://...`` for several (MariaDB, Galera).

oslo.db brings what a controller needs from a database that may restart
under it: connections tested on checkout and reopened after the server
came back, the first connection retried (``[database] max_retries``), and
errors translated into :mod:`oslo_db.exception` classes
(``DBConnectionError``, ``DBDeadlock``), which :data:`DB_ERRORS` lists
with what the drivers raise themselves.
"""

import os
import sqlite3

from oslo_db import exception as db_exc
from oslo_db.sqlalchemy import engines
from oslo_db.sqlalchemy import exc_filters
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc


def _driver_errors():
    """The base exception classes of the MySQL drivers installed.

    SQLAlchemy wraps what a driver raises in a statement, but not what it
    raises in the ``engine_connect`` event: there it sets the session's
    isolation level on each connection it hands out (``SET SESSION
    TRANSACTION ISOLATION LEVEL``, ``COMMIT``), and a database that goes
    away at that moment raises the driver's own ``OperationalError``
    (seen at a MariaDB restart).  It is a database failure like any
    other; a caller that let it through lost what it was writing.
    """
    found = []
    try:
        import pymysql
        found.append(pymysql.err.Error)
    except ImportError:
        pass
    try:
        import MySQLdb
        found.append(MySQLdb.Error)
    except ImportError:
        pass
    return tuple(found)


#: What a database that is down, restarting or busy raises: the caller
#: did not get its transaction, and may try again.
DB_ERRORS = (db_exc.DBError, sa_exc.SQLAlchemyError,
             sqlite3.Error) + _driver_errors()

#: Seconds SQLite waits for another process's write transaction.
SQLITE_BUSY_TIMEOUT = 30


def connection_url(conf):
    """``[database] connection``, or the SQLite file ``[server]
    ledger_path`` when it is unset."""
    url = conf.database.connection
    if url:
        return url
    return sqlite_url(conf.server.ledger_path)


def sqlite_url(path):
    return "sqlite:///%s" % os.path.abspath(path)


def is_sqlite(url):
    return sa.engine.make_url(url).get_backend_name() == "sqlite"


def create_engine(url, conf=None):
    """An engine for ``url`` (a URL, or a path: a SQLite file).

    SQLite: WAL journal, ``synchronous = FULL`` (a commit is on disk before
    the answer, power cut included), and ``BEGIN IMMEDIATE`` for every
    transaction, so that two processes never deadlock upgrading a read
    lock to a write lock (they wait ``busy_timeout`` for each other).
    MySQL: READ COMMITTED, so that a row locked and read with ``FOR
    UPDATE`` is the newest committed one (the action cap, take-over).
    """
    if "://" not in url:
        url = sqlite_url(url)
    # oslo.db's default sql_mode ([database] mysql_sql_mode)
    kwargs = {"mysql_sql_mode": "TRADITIONAL"}
    if conf is not None:
        group = conf.database
        kwargs = dict(max_retries=group.max_retries,
                      retry_interval=group.retry_interval,
                      max_pool_size=group.max_pool_size,
                      max_overflow=group.max_overflow,
                      pool_timeout=group.pool_timeout,
                      connection_recycle_time=group.connection_recycle_time,
                      mysql_sql_mode=group.mysql_sql_mode,
                      mysql_wsrep_sync_wait=group.mysql_wsrep_sync_wait,
                      connection_parameters=group.connection_parameters)
    sqlite = is_sqlite(url)
    if sqlite:
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)),
                        exist_ok=True)
    if sqlite:
        # not oslo.db's engine: its listeners begin every SQLite
        # transaction with a plain (deferred) BEGIN; its translation of
        # errors into oslo_db.exception classes all the same
        engine = sa.create_engine(url)
        exc_filters.register_engine(engine)
        _sqlite_setup(engine)
        return engine
    engine = engines.create_engine(url, **kwargs)
    return engine.execution_options(isolation_level="READ COMMITTED")


def _sqlite_setup(engine):
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, record):
        # transactions are explicit (the "begin" listener below)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = %d" % (SQLITE_BUSY_TIMEOUT * 1000))
        mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(
                "SQLite refused the WAL journal (%s); is the file on a "
                "network file system?" % mode)
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_deadlock(exc):
    return isinstance(exc, db_exc.DBDeadlock)
