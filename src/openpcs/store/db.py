"""The store: every resource, instance, idempotency record and access key, in SQLite or PostgreSQL.

One code path for both engines (SQLAlchemy Core). Every API write is one transaction, and writes are
serialized — SQLite by BEGIN IMMEDIATE, PostgreSQL by a transaction-scoped advisory lock — so that the
checks a write makes (unique names, quotas, a parent's state) still hold when it commits.
Durability: SQLite runs in WAL mode; a committed transaction is in the WAL file before the client hears
of it, so it survives kill -9 of the server (synchronous=NORMAL loses nothing on a process crash).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine, make_url

metadata = MetaData()

resources = Table(
    "resources", metadata,
    # seq orders resources by creation, so a List page boundary never moves under concurrent writes.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("cluster_id", String(32), nullable=False),  # '' for clusters themselves
    Column("name", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    # Bumped by every API write; a reconciler commits its result only if nothing changed meanwhile.
    Column("generation", Integer, nullable=False),
    Column("spec", Text, nullable=False),   # what the user asked for (API members), JSON
    Column("state", Text, nullable=False),  # what the service observed and assigned, JSON
    Column("tags", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("modified_at", Float, nullable=False),
    UniqueConstraint("kind", "cluster_id", "name", name="uq_resource_name"),
)

instances = Table(
    "instances", metadata,
    Column("id", String(32), primary_key=True),
    Column("cluster_id", String(32), nullable=False, index=True),
    Column("node_group_id", String(32), nullable=False, index=True),
    Column("node_name", String(64), nullable=False),
    # The bootstrap id is a secret held by the instance; only its SHA-256 is stored.
    Column("bootstrap_hash", String(64), nullable=False, unique=True),
    Column("status", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("registered_at", Float),
    Column("access_key_id", String(32)),  # the instance's key (access_keys), scoped to registering
    # Launched because Slurm's power saving asked for its node (above minInstanceCount), not to keep a static node.
    Column("dynamic", Boolean),
)

events = Table(
    "events", metadata,
    # What happened to a cluster's nodes and instances (control.events writes them, `openpcs events` reads them).
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("cluster_id", String(32), nullable=False, index=True),
    Column("node_group_id", String(32), nullable=False),  # '' for an event of the cluster as a whole
    Column("type", String(64), nullable=False),
    Column("node", String(64), nullable=False),
    Column("instance_id", String(32), nullable=False),
    Column("reason", Text, nullable=False),
)

# How long a clientToken is remembered (AWS's window): the dispatcher honours it, the reconciler purges after it.
IDEMPOTENCY_WINDOW_SECONDS = 8 * 3600

idempotency = Table(
    "idempotency", metadata,
    Column("operation", String(64), primary_key=True),
    Column("token", String(128), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

access_keys = Table(
    "access_keys", metadata,
    Column("access_key_id", String(32), primary_key=True),
    Column("secret_access_key", String(64), nullable=False),
    Column("description", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    # None: any operation. Otherwise the one operation the key may call, e.g. an instance's
    # "pcs:RegisterComputeNodeGroupInstance".
    Column("scope", String(128)),
)

settings = Table(
    "settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(value: str) -> Any:
    return orjson.loads(value)


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


class Store:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = self._engine()
        metadata.create_all(self.engine)
        self._add_new_columns()
        self._readers = threading.local()
        self._all_readers: list[Reader] = []

    def _add_new_columns(self) -> None:
        """Bring a store made by an older openpcs up to date: columns added since are all nullable."""
        existing = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                have = {column["name"] for column in existing.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')

    def _engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True)
        database = self.url.database
        if database and database != ":memory:":
            # The database holds secrets (access keys): create it private.
            fd = os.open(database, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # let SQLAlchemy's begin event emit BEGIN itself
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One serialized read-check-write transaction; commits on success, rolls back on any error."""
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7420001)"))
            yield conn

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """Reads for the hot path (see Reader); every statement sees one consistent snapshot."""
        reader = getattr(self._readers, "reader", None)
        if reader is None:
            reader = self._readers.reader = Reader(self.engine, self.is_sqlite)
            self._all_readers.append(reader)
        yield reader

    def setting(self, key: str, default_factory: Any) -> str:
        """The value of a setting, created once (by whichever process gets there first) if missing."""
        with self.write() as conn:
            value = conn.execute(
                settings.select().with_only_columns(settings.c.value).where(settings.c.key == key)
            ).scalar_one_or_none()
            if value is None:
                value = default_factory()
                conn.execute(settings.insert().values(key=key, value=value))
            return value

    def close(self) -> None:
        for reader in self._all_readers:
            reader.close()
        self.engine.dispose()


class _Row:
    """A result row: columns by attribute, or all of them as `_mapping`, like SQLAlchemy's rows."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None


class _Result:
    def __init__(self, rows: list[_Row]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[_Row]:
        return iter(self._rows)

    def all(self) -> list[_Row]:
        return self._rows

    def first(self) -> _Row | None:
        return self._rows[0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return next(iter(self._rows[0]._mapping.values()))

    def scalar_one_or_none(self) -> Any:
        return self.scalar_one() if self._rows else None


class Reader:
    """Read-only statements without SQLAlchemy's per-call machinery, for the API's hot path.

    The same SQLAlchemy Core statements as everywhere else, compiled once per statement for this engine's
    dialect and run on a DB-API connection this thread keeps in autocommit mode: no pool checkout, no
    BEGIN/ROLLBACK round, and each statement still reads one consistent snapshot. (Profiling showed
    SQLAlchemy's execute path and transaction bookkeeping at half the server's CPU per GetCluster.)
    """

    _CACHE_LIMIT = 512

    def __init__(self, engine: Engine, is_sqlite: bool) -> None:
        self._engine, self._is_sqlite = engine, is_sqlite
        self._compiled: dict[Any, Any] = {}
        self._dbapi: Any = None

    def _connection(self) -> Any:
        if self._dbapi is None:
            proxied = self._engine.raw_connection()
            if not self._is_sqlite:
                proxied.driver_connection.autocommit = True
            self._dbapi = proxied
        return self._dbapi

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> _Result:
        cached = self._compiled.get(statement)
        if cached is None:
            if len(self._compiled) >= self._CACHE_LIMIT:
                self._compiled.clear()
            compiled = statement.compile(dialect=self._engine.dialect, compile_kwargs={"render_postcompile": True})
            cached = self._compiled[statement] = (compiled, str(compiled))
        compiled, sql = cached
        values = compiled.construct_params(params)
        if compiled.positiontup is not None:
            values = [values[name] for name in compiled.positiontup]
        try:
            rows, names = self._run(sql, values)
        except self._engine.dialect.loaded_dbapi.OperationalError:
            self.close()  # a dropped connection (e.g. PostgreSQL restarted): retry once on a new one
            rows, names = self._run(sql, values)
        return _Result([_Row(dict(zip(names, row, strict=True))) for row in rows])

    def _run(self, sql: str, values: Any) -> tuple[list[tuple], list[str]]:
        cursor = self._connection().cursor()
        try:
            cursor.execute(sql, values)
            return cursor.fetchall(), [column[0] for column in cursor.description]
        finally:
            cursor.close()

    def close(self) -> None:
        if self._dbapi is not None:
            try:
                self._dbapi.invalidate()
            finally:
                self._dbapi = None
