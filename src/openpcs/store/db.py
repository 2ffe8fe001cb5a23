"""The store: every resource, instance, idempotency record and access key, in SQLite or PostgreSQL.

One code path for both engines (SQLAlchemy Core). Every API write is one transaction, and writes are
serialized — SQLite by BEGIN IMMEDIATE, PostgreSQL by a transaction-scoped advisory lock — so that the
checks a write makes (unique names, quotas, a parent's state) still hold when it commits.
Durability: SQLite runs in WAL mode; a committed transaction is in the WAL file before the client hears
of it, so it survives kill -9 of the server (synchronous=NORMAL loses nothing on a process crash).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import (
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
)

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
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

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
        self.engine.dispose()
