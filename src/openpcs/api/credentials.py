"""Access keys the service holds, and the AWS shared-credentials file clients read them from.

Keys live in the store (a private file, or PostgreSQL), so every server on one database honours the
same keys; `openpcs credentials` adds and revokes them. The server caches them and re-reads the store
at most once a second, and at once when an unknown key shows up, so a new key works immediately and a
revoked one stops working within a second.
"""

from __future__ import annotations

import configparser
import io
import secrets
import string
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, select, update

from ..files import write_private
from ..store.db import Store, access_keys

PROFILE = "openpcs"
REFRESH_SECONDS = 1.0
_KEY_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    description: str
    created_at: float
    revoked_at: float | None
    scope: str | None = None  # the one operation the key may call ("pcs:RegisterComputeNodeGroupInstance")


def create_key(store: Store, description: str) -> AccessKey:
    with store.write() as conn:
        return insert_key(conn, description)


def insert_key(conn: Connection, description: str, scope: str | None = None) -> AccessKey:
    key = AccessKey("AKOP" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
                    "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)), description, time.time(), None,
                    scope)
    conn.execute(access_keys.insert().values(
        access_key_id=key.access_key_id, secret_access_key=key.secret_access_key,
        description=description, created_at=key.created_at, scope=scope))
    return key


def delete_keys(conn: Connection, access_key_ids: list[str]) -> None:
    if access_key_ids:
        conn.execute(delete(access_keys).where(access_keys.c.access_key_id.in_(access_key_ids)))


def list_keys(store: Store) -> list[AccessKey]:
    with store.read() as conn:
        rows = conn.execute(select(access_keys).order_by(access_keys.c.created_at)).all()
    return [AccessKey(**row._mapping) for row in rows]


def revoke_key(store: Store, access_key_id: str) -> bool:
    with store.write() as conn:
        result = conn.execute(update(access_keys).where(
            access_keys.c.access_key_id == access_key_id, access_keys.c.revoked_at.is_(None)
        ).values(revoked_at=time.time()))
    return result.rowcount == 1


def write_credentials_file(path: Path, key: AccessKey, region: str, profile: str = PROFILE) -> None:
    """Add or replace `profile` in an AWS shared-credentials file, keeping it mode 0600."""
    config = configparser.ConfigParser()
    if path.exists():
        config.read(path)
    config[profile] = {"aws_access_key_id": key.access_key_id,
                       "aws_secret_access_key": key.secret_access_key, "region": region}
    text = io.StringIO()
    config.write(text)
    write_private(path, text.getvalue().encode())


class KeyCache:
    """access key id -> secret (and scope), for the request path."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys: dict[str, AccessKey] = {}
        self._loaded = 0.0
        self._lock = threading.Lock()

    def _reload(self) -> None:
        with self._lock:
            self._keys = {k.access_key_id: k for k in list_keys(self._store) if k.revoked_at is None}
            self._loaded = time.monotonic()

    def secret(self, access_key_id: str) -> str | None:
        stale = time.monotonic() - self._loaded > REFRESH_SECONDS
        if stale or access_key_id not in self._keys and time.monotonic() - self._loaded > 0.05:
            self._reload()
        key = self._keys.get(access_key_id)
        return key.secret_access_key if key else None

    def scope(self, access_key_id: str) -> str | None:
        """The one operation a key may call, or None for any; asked only after the key signed a request."""
        key = self._keys.get(access_key_id)
        return key.scope if key else None
