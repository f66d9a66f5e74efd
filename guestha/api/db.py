# SPDX-License-Identifier: Apache-2.0
"""What the REST API reads: the controllers' database, through the tables
:mod:`guestha.db.views` keeps (revision 003).

Read only.  On SQLite (``[server] ledger_path``, the controllers of one
host) the file is opened without the controllers' ``BEGIN IMMEDIATE``: in
WAL mode a reader neither waits for the controllers nor holds them up.
Items of a project the caller may not see are filtered out in the query,
so that limits and markers count only what the caller sees.

Lists are ordered so that a marker (the id of the last item of a page)
resumes them: instances by id, faults and actions newest first.  Each
collection is one table of what it is listed by (:class:`Collection`:
its query, its filters, its key and order), and one function lists them
all (:meth:`Reader.list`).
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


def _equals(column):
    return lambda value: column == value


def _open(value):
    return (faults.c.recovered_at.is_(None) if value
            else faults.c.recovered_at.is_not(None))


class Collection(object):
    """How one collection is listed.

    :ivar query: the select of its items (with their project).
    :ivar filters: ``{name: f(value) -> condition}``: the filters a list
        takes, each applied when its value is not None.
    :ivar key: the column a marker names (the items' id).
    :ivar newest: the time column of a list newest first (by time, then
        id, both descending), or None for a list by ``key``.
    :ivar convert: a row to the API's item.
    """

    def __init__(self, name, query, filters, key, newest, convert):
        self.name = name
        self.query = query
        self.filters = filters
        self.key = key
        self.newest = newest
        self.convert = convert


def _with_project(table):
    return sa.select(table, instance_states.c.project_id).select_from(
        table.outerjoin(instance_states,
                        instance_states.c.instance == table.c.instance))


INSTANCES = Collection(
    "instances", sa.select(instance_states, _open_faults),
    {"project_id": _equals(instance_states.c.project_id),
     "host": _equals(instance_states.c.host),
     "state": _equals(instance_states.c.state)},
    key=instance_states.c.instance, newest=None, convert=_instance)

FAULTS = Collection(
    "faults", _with_project(faults),
    {"project_id": _equals(instance_states.c.project_id),
     "instance_id": _equals(faults.c.instance),
     "open": _open,
     "kind": _equals(faults.c.kind),
     "host": _equals(faults.c.host)},
    key=faults.c.id, newest=faults.c.detected_at, convert=_fault)

ACTIONS = Collection(
    "actions", _with_project(actions),
    {"project_id": _equals(instance_states.c.project_id),
     "instance_id": _equals(actions.c.instance),
     "fault_id": _equals(actions.c.fault_id)},
    key=actions.c.id, newest=actions.c.at, convert=_action)


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

    # -- lists and items ---------------------------------------------------

    def list(self, collection, limit=1000, marker=None, **filters):
        """A page of ``collection`` (:data:`INSTANCES`, :data:`FAULTS`,
        :data:`ACTIONS`): the items that pass every filter given (a
        value of None: no filter), ``limit`` at most, after ``marker``.

        :returns: ``(items, next_marker)``.
        :raises BadMarker: a marker that names no item of the list.
        :raises TypeError: a filter the collection does not have.
        """
        unknown = set(filters) - set(collection.filters)
        if unknown:
            raise TypeError("%s cannot be filtered by %s" % (
                collection.name, ", ".join(sorted(unknown))))
        key, newest = collection.key, collection.newest

        def work(conn):
            query = collection.query
            for name, value in filters.items():
                if value is not None:
                    query = query.where(collection.filters[name](value))
            if newest is None:
                if marker is not None:
                    query = query.where(key > marker)
                query = query.order_by(key)
            else:
                if marker is not None:
                    at = conn.execute(sa.select(newest).where(
                        key == marker)).scalar()
                    if at is None:
                        raise BadMarker("marker %s is not in the list"
                                        % marker)
                    query = query.where(sa.or_(
                        newest < at, sa.and_(newest == at, key < marker)))
                query = query.order_by(newest.desc(), key.desc())
            return conn.execute(query.limit(limit + 1)).all()

        rows = self._run(work)
        more = len(rows) > limit
        rows = rows[:limit]
        return ([collection.convert(r) for r in rows],
                getattr(rows[-1], key.name) if more and rows else None)

    def get(self, collection, item_id):
        """The item ``item_id`` of ``collection``, or None."""
        query = collection.query.where(collection.key == item_id)
        row = self._run(lambda conn: conn.execute(query).first())
        return collection.convert(row) if row is not None else None

    def list_instances(self, project_id=None, host=None, state=None,
                       limit=1000, marker=None):
        """Instances by id."""
        return self.list(INSTANCES, limit, marker, project_id=project_id,
                         host=host, state=state)

    def get_instance(self, instance_id):
        return self.get(INSTANCES, instance_id)

    def list_faults(self, project_id=None, instance_id=None, open=None,
                    kind=None, host=None, limit=1000, marker=None):
        """Faults newest first (``open``: True for the unrecovered)."""
        return self.list(FAULTS, limit, marker, project_id=project_id,
                         instance_id=instance_id, open=open, kind=kind,
                         host=host)

    def get_fault(self, fault_id):
        return self.get(FAULTS, fault_id)

    def list_actions(self, project_id=None, instance_id=None, fault_id=None,
                     limit=1000, marker=None):
        """Action records newest first."""
        return self.list(ACTIONS, limit, marker, project_id=project_id,
                         instance_id=instance_id, fault_id=fault_id)
