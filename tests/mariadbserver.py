"""A throwaway MariaDB server for tests: a user's own server, as `serve --accounting-database` expects one.

Debian's mariadbd (scripts/setup.sh installs mariadb-server-core) in a temporary directory, on a free
loopback port and a unix socket in that directory, with an administrator account that has a password (the
test gives it to openpcs in a URL). Started directly, so the Popen PID is the server's; stopped by that PID
(SIGTERM, then SIGKILL), and its directory removed.
"""

from __future__ import annotations

import getpass
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql

ADMIN = "admin"


class MariaDBServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="openpcs-test-mariadb-"))
        self.socket = self.root / "mariadb.sock"
        self.admin_password = secrets.token_urlsafe(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mysql://{ADMIN}:{self.admin_password}@127.0.0.1:{self.port}"

    def start(self) -> MariaDBServer:
        user = getpass.getuser()
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.root / 'data'}", f"--user={user}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"], check=True,
                       capture_output=True)
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.root / 'data'}", f"--user={user}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--log-error={self.root / 'error.log'}",
             "--skip-name-resolve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.as_root() as cursor:
                    cursor.execute("DELETE FROM mysql.global_priv WHERE user = ''")
                    cursor.execute("FLUSH PRIVILEGES")
                    cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (ADMIN, self.admin_password))
                    cursor.execute("GRANT ALL ON *.* TO %s@'%%' WITH GRANT OPTION", (ADMIN,))
                return self
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not start: {(self.root / 'error.log').read_text()}") from None
                time.sleep(0.1)

    @contextmanager
    def as_root(self) -> Iterator[pymysql.cursors.Cursor]:
        connection = pymysql.connect(unix_socket=str(self.socket), user=getpass.getuser(), autocommit=True)
        with connection, connection.cursor() as cursor:
            yield cursor

    def databases(self) -> set[str]:
        with self.as_root() as cursor:
            cursor.execute("SHOW DATABASES")
            return {row[0] for row in cursor.fetchall()}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

