"""The host's MariaDB server, which openpcs runs for Slurm accounting unless `serve --accounting-database`
names a server of the user's own.

It is started when the first cluster turns accounting on and stopped when none needs it any more; its
data stays under DATA/mariadb/data. Like Slurm's daemons it runs in its own session, recorded by PID and
start time (openpcs.processes), so it outlives `openpcs serve`, and a restarted server adopts it.

- Made with Debian's `mariadb-install-db` (scripts/setup.sh installs mariadb-server-core), into a scratch
  directory renamed into place, so an install cut short never looks done. Anonymous accounts and the test
  database are left out: only openpcs's own account and the clusters' accounts exist.
- openpcs manages it over a unix socket, logged in as the OS user it runs as, by MariaDB's unix_socket
  authentication: there is no administrator password to keep. slurmdbd logs in over TCP on 127.0.0.1, at a
  port of its own (control.ports), with a password per cluster (control.accounting).
- Slurm checks a few server settings when slurmdbd connects: innodb_lock_wait_timeout (900) and
  max_allowed_packet (16 MiB) are set as it recommends. innodb_buffer_pool_size stays at 256 MiB rather than
  its 4 GiB, which suits a site with millions of jobs; slurmdbd logs that it would prefer more.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import subprocess
import time

import pymysql

from . import processes
from .control.failures import RuntimeFailure
from .control.ports import Ports
from .layout import DataLayout
from .readiness import wait_ready

log = logging.getLogger("openpcs.mariadb")

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
SETTINGS = ("--skip-name-resolve", "--innodb-buffer-pool-size=256M", "--innodb-lock-wait-timeout=900",
            "--max-allowed-packet=16M")


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise RuntimeFailure("MariaDBNotInstalled", f"{name} is not installed, and accounting needs a MariaDB server. "
                                                    "Run the README's set-up command (scripts/setup.sh), which "
                                                    "installs Debian's mariadb-server-core, or start openpcs with "
                                                    "--accounting-database URL to use a server of your own.")
    return path


class MariaDBServer:
    def __init__(self, layout: DataLayout) -> None:
        self.home = layout.mariadb_dir()
        self.data = self.home / "data"
        self.socket = layout.mariadb_socket()
        self.record = self.home / "mariadb.json"
        self.log = layout.data_dir / "logs" / "mariadb" / "mariadb.log"
        self.ports = Ports(self.home / "ports.json")

    def ensure_running(self) -> int:
        """Install (the first time), start or adopt the server; its TCP port once it answers."""
        port = self.ports.daemon("mariadb")
        if processes.adopt(self.record) is not None:
            return port
        self._install()
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        log.info("starting MariaDB for accounting on 127.0.0.1:%d (data %s)", port, self.data)
        daemon = processes.spawn(
            [_binary("mariadbd"), "--no-defaults", f"--datadir={self.data}", f"--user={getpass.getuser()}",
             f"--port={port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
             f"--pid-file={self.home / 'mariadb.pid'}", f"--log-error={self.log}", *SETTINGS],
            self.record, self.home / "mariadb.out", cwd=self.home)
        wait_ready("MariaDB", daemon, self._answers, [self.log, self.home / "mariadb.out"], offset,
                   START_TIMEOUT_SECONDS)
        self._drop_anonymous_accounts()
        return port

    def alive(self) -> bool:
        return processes.adopt(self.record) is not None

    def connect(self) -> pymysql.connections.Connection:
        """A connection with every privilege, over the unix socket (the server must be running)."""
        return pymysql.connect(unix_socket=str(self.socket), user=getpass.getuser(), autocommit=True,
                               connect_timeout=10)

    def stop(self) -> None:
        if self.record.exists():
            log.info("stopping MariaDB: no cluster has accounting on")
        processes.stop(self.record, STOP_TIMEOUT_SECONDS)
        self.ports.release()
        shutil.rmtree(self.socket.parent, ignore_errors=True)  # nothing but the server's socket lives there

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            self.connect().close()
        except pymysql.MySQLError:
            return False
        return True

    def _install(self) -> None:
        """Create the server's data the first time."""
        if self.data.is_dir():
            return
        scratch = self.home / "data.installing"
        shutil.rmtree(scratch, ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        started = time.monotonic()
        done = subprocess.run([_binary("mariadb-install-db"), "--no-defaults", f"--datadir={scratch}",
                               f"--user={getpass.getuser()}", "--auth-root-authentication-method=socket",
                               "--skip-test-db"], capture_output=True, text=True, timeout=120, cwd=self.home)
        if done.returncode != 0:
            raise RuntimeFailure("MariaDBFailed", "mariadb-install-db could not create the accounting database "
                                                  f"server in {scratch}: {(done.stderr or done.stdout).strip()[-500:]}")
        scratch.rename(self.data)
        log.info("created the MariaDB server for accounting in %.1f s (%s)", time.monotonic() - started, self.data)

    def _drop_anonymous_accounts(self) -> None:
        """mariadb-install-db makes anonymous accounts (''@localhost, ''@<host name>), which would match a login
        before the clusters' own accounts do."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT user, host FROM mysql.user WHERE user = ''")
            for _, host in cursor.fetchall():
                cursor.execute("DROP USER ''@%s", (host,))
