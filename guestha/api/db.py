# SPDX-License-Identifier: Apache-2.0
"""What the REST API reads: the controllers' database, through the tables
:mod:`guestha.db.views` keeps (revision 003).

Read only.  On SQLite (``[server] ledger_path``, the controllers of one
host) the file is opened without the controllers' ``BEGIN IMMEDIATE``: in
WAL mode a reader neither waits for the controllers nor holds them up.
Items of a project the caller may not see are filtered out in the query,
so that limits and markers count only what the caller sees.

Lists are ordered so that a marker (the id of the last item of a page)
resumes them: instances by id, faults and actions newest first.
"""

import datetime
import os

import sqlalchemy as sa
from sqlalchemy import event

from guestha.db import api as db_api
from guestha.db import migration
from guestha.db.models import actions
from guestha.db.models import faults
from guestha.db.models import instance_states

#: What a failing database raises.
DB_ERRORS = db_api.DB_ERRORS + (migration.MigrationError,)


class DatabaseUnavailable(Exception):
    """The database cannot answer (not there, not migrated, down)."""


class BadMarker(ValueError):
    """A marker that names no item of the list."""


def iso(ts):
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(
        ts, tz=datetime.timezone.utc).isoformat(timespec="microseconds")


def _reader_engine(url, conf=None):
    if not db_api.is_sqlite(url):
        return db_api.create_engine(url, conf=conf)
    engine = sa.create_engine(url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = %d"
                    % (db_api.SQLITE_BUSY_TIMEOUT * 1000))
        cur.close()

    return engine


_open_faults = (
    sa.select(sa.func.count()).where(
        faults.c.instance == instance_states.c.instance,
        faults.c.recovered_at.is_(None))
    .correlate(instance_states).scalar_subquery().label("open_faults"))


def _instance(row):
    return {"id": row.instance, "project_id": row.project_id,
            "name": row.name, "host": row.host, "state": row.state,
            "reason": row.reason, "interval_ms": row.interval_ms,
            "open_faults": row.open_faults, "updated_at": iso(row.at)}


def _fault(row):
    return {"id": row.id, "instance_id": row.instance,
            "project_id": row.project_id, "host": row.host,
            "kind": row.kind, "reason": row.reason, "action": row.action,
            "interval_ms": row.interval_ms, "misses": row.misses,
            "open": row.recovered_at is None,
            "detected_at": iso(row.detected_at),
            "recovered_at": iso(row.recovered_at),
            "recovery_id": row.recovery_id, "server": row.server}


def _action(row):
    return {"id": row.id, "instance_id": row.instance,
            "project_id": row.project_id, "fault_id": row.fault_id,
            "host": row.host, "kind": row.kind, "action": row.action,
            "step": row.step, "recommended": row.recommended,
            "allowed": row.allowed, "outcome": row.outcome,
            "reason": row.reason, "server": row.server, "at": iso(row.at)}


class Reader(object):
    """Queries of the REST API.

    :param url: ``[database] connection``, or a SQLite URL.
    :param conf: for ``[database]``'s engine options.

    Every ``list_*`` takes ``project_id``: None for every project (an
    admin), else only that project's items; ``limit`` and ``marker``; and
    returns ``(items, next_marker)``, ``next_marker`` None on the last
    page.
    """

    def __init__(self, url, conf=None):
        self.url = url
        self._engine = _reader_engine(url, conf)
        self._checked = False

    @classmethod
    def from_conf(cls, conf):
        return cls(db_api.connection_url(conf), conf=conf)

    def close(self):
        self._engine.dispose()

    def _connect(self):
        if not self._checked:
            path = (sa.engine.make_url(self.url).database
                    if db_api.is_sqlite(self.url) else None)
            if path and path != ":memory:" and not os.path.exists(path):
                raise DatabaseUnavailable(
                    "the controllers' database %s does not exist yet: "
                    "start guestha-server first (or set [database] "
                    "connection as the controllers have it)" % path)
            try:
                migration.check(self._engine)
            except migration.MigrationError as exc:
                raise DatabaseUnavailable(str(exc)) from None
            except db_api.DB_ERRORS as exc:
                raise DatabaseUnavailable(
                    "the controllers' database failed: %s" % exc) from None
            self._checked = True
        return self._engine.connect()

    def _run(self, query_fn):
        try:
            with self._connect() as conn:
                return query_fn(conn)
        except db_api.DB_ERRORS as exc:
            raise DatabaseUnavailable(
                "the controllers' database failed: %s" % exc) from None

    @staticmethod
    def _page(rows, limit, key, convert):
        more = len(rows) > limit
        rows = rows[:limit]
        return ([convert(r) for r in rows],
                key(rows[-1]) if more and rows else None)

    # -- instances ---------------------------------------------------------

    def _instances_query(self):
        return sa.select(instance_states, _open_faults)

    def list_instances(self, project_id=None, host=None, state=None,
                       limit=1000, marker=None):
        query = self._instances_query()
        if project_id is not None:
            query = query.where(instance_states.c.project_id == project_id)
        if host is not None:
            query = query.where(instance_states.c.host == host)
        if state is not None:
            query = query.where(instance_states.c.state == state)
        if marker is not None:
            query = query.where(instance_states.c.instance > marker)
        query = query.order_by(instance_states.c.instance).limit(limit + 1)
        rows = self._run(lambda conn: conn.execute(query).all())
        return self._page(rows, limit, lambda r: r.instance, _instance)

    def get_instance(self, instance_id):
        query = self._instances_query().where(
            instance_states.c.instance == instance_id)
        row = self._run(lambda conn: conn.execute(query).first())
        return _instance(row) if row is not None else None

    # -- faults ------------------------------------------------------------

    def _faults_query(self):
        return sa.select(faults, instance_states.c.project_id).select_from(
            faults.outerjoin(instance_states,
                             instance_states.c.instance == faults.c.instance))

    @staticmethod
    def _newest_first(query, table, time_column, marker_time, marker):
        if marker is not None:
            query = query.where(sa.or_(
                time_column < marker_time,
                sa.and_(time_column == marker_time, table.c.id < marker)))
        return query.order_by(time_column.desc(), table.c.id.desc())

    def _marker_time(self, conn, table, time_column, marker):
        if marker is None:
            return None
        value = conn.execute(sa.select(time_column).where(
            table.c.id == marker)).scalar()
        if value is None:
            raise BadMarker("marker %s is not in the list" % marker)
        return value

    def list_faults(self, project_id=None, instance_id=None, open=None,
                    kind=None, host=None, limit=1000, marker=None):
        def work(conn):
            query = self._faults_query()
            if project_id is not None:
                query = query.where(
                    instance_states.c.project_id == project_id)
            if instance_id is not None:
                query = query.where(faults.c.instance == instance_id)
            if open is not None:
                query = query.where(faults.c.recovered_at.is_(None) if open
                                    else faults.c.recovered_at.is_not(None))
            if kind is not None:
                query = query.where(faults.c.kind == kind)
            if host is not None:
                query = query.where(faults.c.host == host)
            query = self._newest_first(
                query, faults, faults.c.detected_at,
                self._marker_time(conn, faults, faults.c.detected_at,
                                  marker), marker)
            return conn.execute(query.limit(limit + 1)).all()

        return self._page(self._run(work), limit, lambda r: r.id, _fault)

    def get_fault(self, fault_id):
        query = self._faults_query().where(faults.c.id == fault_id)
        row = self._run(lambda conn: conn.execute(query).first())
        return _fault(row) if row is not None else None

    # -- actions -----------------------------------------------------------

    def list_actions(self, project_id=None, instance_id=None, fault_id=None,
                     limit=1000, marker=None):
        def work(conn):
            query = sa.select(actions, instance_states.c.project_id) \
                .select_from(actions.outerjoin(
                    instance_states,
                    instance_states.c.instance == actions.c.instance))
            if project_id is not None:
                query = query.where(
                    instance_states.c.project_id == project_id)
            if instance_id is not None:
                query = query.where(actions.c.instance == instance_id)
            if fault_id is not None:
                query = query.where(actions.c.fault_id == fault_id)
            query = self._newest_first(
                query, actions, actions.c.at,
                self._marker_time(conn, actions, actions.c.at, marker),
                marker)
            return conn.execute(query.limit(limit + 1)).all()

        return self._page(self._run(work), limit, lambda r: r.id, _action)
