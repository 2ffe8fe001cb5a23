"""Where each cluster's job accounting is stored: a database and a database user of its own, on the host's
MariaDB server that openpcs runs (openpcs.mariadb) or on the MySQL or MariaDB server that `serve
--accounting-database mysql://ADMIN:PASSWORD@HOST[:PORT]` names.

Both are named `openpcs_<cluster id>`. The user's password is a generated secret kept in the cluster's
`accounting.password` (0600) and written only into its slurmdbd.conf (0600). The database outlives the
cluster's accounting being turned off (its records stay for when it is turned on again) and is dropped only
when the cluster itself is deleted, after its daemons have stopped.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pymysql

from ..files import write_private
from ..layout import DataLayout
from ..mariadb import MariaDBServer
from .failures import RuntimeFailure

log = logging.getLogger("openpcs.accounting")

DEFAULT_MYSQL_PORT = 3306


@dataclass(frozen=True)
class Storage:
    """What a cluster's slurmdbd.conf needs to reach its database."""
    host: str
    port: int
    user: str
    password: str
    database: str


@dataclass(frozen=True)
class ExternalServer:
    host: str
    port: int
    admin_user: str
    admin_password: str


def parse_server_url(url: str) -> ExternalServer:
    """mysql://ADMIN:PASSWORD@HOST[:PORT] (or mariadb://); ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not parts.username:
        raise ValueError("give the server as mysql://ADMIN:PASSWORD@HOST[:PORT], where ADMIN may create databases "
                         "and users")
    try:
        port = parts.port or DEFAULT_MYSQL_PORT
    except ValueError:
        raise ValueError("the port in the URL must be a number from 1 to 65535") from None
    # libmysqlclient, which slurmdbd uses, reads "localhost" as "the default unix socket": say where, by address.
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    return ExternalServer(host, port, unquote(parts.username), unquote(parts.password or ""))


class AccountingDatabases:
    def __init__(self, layout: DataLayout, server_url: str | None = None) -> None:
        self.layout = layout
        self.external = parse_server_url(server_url) if server_url else None
        self.managed = MariaDBServer(layout)

    @property
    def runs_server(self) -> bool:
        """True if openpcs runs the server (no --accounting-database)."""
        return self.external is None

    def ensure(self, cluster_id: str) -> Storage:
        """The cluster's database and user, created if missing (the managed server started if need be)."""
        host, port = self._server()
        name = database_name(cluster_id)
        password = self._password(cluster_id)
        with self._admin() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
            # The password is set every time: the file is the truth, whatever the server was told before.
            cursor.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (name, password))
            cursor.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (name, password))
            cursor.execute(f"GRANT ALL ON `{name}`.* TO %s@'%%'", (name,))
        return Storage(host, port, name, password, name)

    def registered(self, cluster_id: str) -> bool:
        """True once slurmctld has added its cluster to the database (its slurmdbd made the tables first)."""
        name = database_name(cluster_id)
        with self._admin() as cursor:
            cursor.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND "
                           "table_name = 'cluster_table'", (name,))
            if not cursor.fetchone()[0]:
                return False
            cursor.execute(f"SELECT COUNT(*) FROM `{name}`.cluster_table WHERE name = %s AND deleted = 0",
                           (cluster_id,))
            return bool(cursor.fetchone()[0])

    def drop(self, cluster_id: str) -> None:
        """Drop the cluster's database and user, if it ever had them; its slurmdbd must have stopped."""
        if not self.layout.accounting_password(cluster_id).exists():
            return
        name = database_name(cluster_id)
        if self.runs_server:
            self.managed.ensure_running()
        with self._admin() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (name,))
        log.info("dropped the accounting database %s of deleted cluster %s", name, cluster_id)

    def release_server(self) -> None:
        """No cluster has accounting on: stop the managed server (its data stays)."""
        if self.runs_server:
            self.managed.stop()

    def server_alive(self) -> bool:
        return self.external is not None or self.managed.alive()

    def _server(self) -> tuple[str, int]:
        if self.external is not None:
            return self.external.host, self.external.port
        return "127.0.0.1", self.managed.ensure_running()

    @contextmanager
    def _admin(self) -> Iterator[pymysql.cursors.Cursor]:
        """A cursor with the right to create databases and users; RuntimeFailure with the server's words."""
        try:
            if self.external is None:
                connection = self.managed.connect()
            else:
                connection = pymysql.connect(host=self.external.host, port=self.external.port,
                                             user=self.external.admin_user, password=self.external.admin_password,
                                             autocommit=True, connect_timeout=10)
            with connection, connection.cursor() as cursor:
                yield cursor
        except pymysql.MySQLError as exc:
            where = (f"{self.external.host}:{self.external.port} (--accounting-database)" if self.external
                     else f"openpcs's MariaDB server ({self.managed.socket})")
            raise RuntimeFailure("AccountingDatabaseUnavailable",
                                 f"The accounting database server at {where} refused: {exc.args[-1]}") from exc

    def _password(self, cluster_id: str) -> str:
        path = self.layout.accounting_password(cluster_id)
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24).encode())
        return path.read_text().strip()


def database_name(cluster_id: str) -> str:
    """The cluster's database and user name. Cluster ids are [a-z0-9_]: safe between backquotes."""
    return f"openpcs_{cluster_id}"
