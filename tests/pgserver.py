"""A throwaway PostgreSQL server for tests.

Starts a real ``postgres`` (Debian's ``postgresql-NN`` packages, binaries under
``/usr/lib/postgresql/NN/bin``; the newest installed version is used) in a temporary
directory and stops it again by PID, removing the directory afterwards.

* The server listens **only** on a unix socket inside the temporary directory
  (``listen_addresses = ''``): no TCP at all, so nothing on any network address. The
  socket directory is mode 0700 and owned by the server's user, so only that user (and
  root) can connect; authentication is ``trust``.
* As root, ``initdb`` and ``postgres`` refuse to run, so both are run as the ``postgres``
  system user (created by Debian's package) through ``subprocess.Popen(user=, group=)``;
  the temporary directory is chowned to that user. As any other user they run as that user.
* Settings favour speed over durability (the data is thrown away): ``fsync = off``,
  ``synchronous_commit = off``, ``full_page_writes = off``, ``initdb --no-sync``.
* ``postgres`` is started directly (not through ``pg_ctl``), so the ``Popen`` PID *is* the
  postmaster PID; it is checked against ``postmaster.pid``. Stopping sends SIGINT (fast
  shutdown: SIGTERM would be a "smart" shutdown that waits for pooled client connections to
  go away), then SIGQUIT, then SIGKILL to the postmaster and its child PIDs. Nothing is ever
  killed by name.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

PG_LIB = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"  # the database superuser name (initdb -U)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (-1,)


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``postgres``."""
    candidates = [
        d
        for d in glob.glob(str(PG_LIB / "*" / "bin"))
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK)
    ]
    if not candidates:
        return None
    return Path(max(candidates, key=_version_key))


def postgres_available() -> bool:
    """Are the PostgreSQL server binaries installed (and, as root, is there a ``postgres`` user)?"""
    if find_bindir() is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return True


def _free_port() -> int:
    # Only used to name the unix socket (.s.PGSQL.<port>); the server does not listen on TCP.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _set_child_subreaper(on: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER); best effort, returns whether it worked."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1 if on else 0, 0, 0, 0) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class PostgresServer:
    """A throwaway PostgreSQL server in a temporary directory, for tests."""

    def __init__(self, base_dir: Path | None = None):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.bindir = find_bindir()
        self.tmpdir: Path | None = None
        self.datadir: Path | None = None
        self.sockdir: Path | None = None
        self.logfile: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.user = SUPERUSER
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._shm: tuple[int, int] | None = None  # (key, id) of the SysV segment, from postmaster.pid
        self._atexit_registered = False

    # -- helpers ---------------------------------------------------------------------------------

    def _run_as(self) -> dict:
        """Popen keyword arguments to run as the ``postgres`` OS user when we are root."""
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        # A clean environment: no PGDATA/PGHOST/... from the caller leaks in.
        return {"PATH": f"{self.bindir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "HOME": str(self.tmpdir)}

    def log_tail(self, lines: int = 40) -> str:
        if self.logfile is None or not self.logfile.exists():
            return "(no server log)"
        text = self.logfile.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _connect(self, dbname: str = "postgres", timeout: int = 5):
        import psycopg

        return psycopg.connect(
            host=str(self.sockdir),
            port=self.port,
            user=self.user,
            dbname=dbname,
            connect_timeout=timeout,
            autocommit=True,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("PostgresServer already started")
        if self.bindir is None:
            raise RuntimeError(f"PostgreSQL server binaries not found under {PG_LIB}/*/bin")
        run_as = self._run_as()
        if self.base_dir is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgtest-", dir=self.base_dir))
        try:
            self._start(run_as)
        except BaseException:
            self.stop()
            raise

    def _start(self, run_as: dict) -> None:
        assert self.tmpdir is not None
        self.datadir = self.tmpdir / "data"
        self.sockdir = self.tmpdir / "sock"
        self.logfile = self.tmpdir / "server.log"
        self.sockdir.mkdir(mode=0o700)
        if run_as:
            for p in (self.tmpdir, self.sockdir):
                os.chown(p, run_as["user"], run_as["group"])
            # The postgres user must be able to reach the directory through all its parents.
            probe = subprocess.run(
                ["test", "-x", str(self.tmpdir)], cwd="/", env=self._env(), **run_as, check=False
            )
            if probe.returncode != 0:
                raise RuntimeError(f"user 'postgres' cannot access {self.tmpdir}; choose another base_dir")
        sock_path = self.sockdir / ".s.PGSQL.65535"
        if len(str(sock_path).encode()) > 107:
            raise RuntimeError(f"socket path {sock_path} too long for a unix socket; use a shorter base_dir")

        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=self.tmpdir,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            **run_as,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {init.returncode}):\n{init.stdout[-4000:]}")

        self.port = _free_port()
        settings = {
            "listen_addresses": "",  # no TCP at all: unix socket only
            "port": str(self.port),
            "unix_socket_directories": str(self.sockdir),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "50",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]

        self._log = open(self.logfile, "ab")
        self._proc = subprocess.Popen(
            args,
            cwd=self.tmpdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no terminal Ctrl-C reaching it directly; we stop it ourselves
            **run_as,
        )
        self.pid = self._proc.pid
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {self._proc.returncode} during startup; server log:\n"
                    + self.log_tail()
                )
            try:
                with self._connect(timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except Exception as e:  # keep polling until the deadline
                last_error = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections within {START_TIMEOUT:.0f}s "
                    f"(last error: {last_error}); server log:\n" + self.log_tail()
                )
            time.sleep(0.05)
        self._read_pidfile()

    def _read_pidfile(self) -> None:
        assert self.datadir is not None
        lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        if pid != self.pid:
            raise RuntimeError(f"postmaster.pid says {pid}, but we started {self.pid}")
        if len(lines) > 6:
            parts = lines[6].split()
            if len(parts) == 2:
                with contextlib.suppress(ValueError):
                    self._shm = (int(parts[0]), int(parts[1]))

    def create_database(self, name: str) -> str:
        """Create database ``name``; return a SQLAlchemy URL for it (psycopg 3, unix socket)."""
        if self._proc is None:
            raise RuntimeError("PostgresServer not started")
        from psycopg import sql

        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def url(self, name: str = "postgres") -> str:
        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}@/{quote(name, safe='')}"
            f"?host={quote(str(self.sockdir), safe='/')}&port={self.port}"
        )

    def stop(self) -> None:
        """Stop the postmaster by PID (fast shutdown, then harder), then remove the temporary directory.

        Idempotent; safe to call after a failed start().
        """
        try:
            if self._proc is not None:
                self._stop_proc(self._proc)
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.tmpdir is not None and self.tmpdir.exists():
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    def _stop_proc(self, proc: subprocess.Popen) -> None:
        pid = proc.pid
        # SIGINT = fast shutdown (disconnect clients, checkpoint, exit); SIGQUIT = immediate shutdown.
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            # Last resort: SIGKILL the postmaster and the children it still has, all by PID.
            # Become a child subreaper for the moment, so the orphaned children are reparented
            # to us and we can reap them (rather than leave zombies to an init that may not reap).
            subreaper = _set_child_subreaper(True)
            try:
                kids = _children(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                for kid in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(kid, signal.SIGKILL)
                proc.wait(timeout=10)
                deadline = time.monotonic() + 5
                pending = set(kids)
                while pending and time.monotonic() < deadline:
                    for kid in list(pending):
                        if subreaper:
                            with contextlib.suppress(ChildProcessError):
                                if os.waitpid(kid, os.WNOHANG)[0] == 0:
                                    continue
                        elif _pid_alive(kid):
                            continue
                        pending.discard(kid)
                    if pending:
                        time.sleep(0.05)
            finally:
                if subreaper:
                    _set_child_subreaper(False)
            # A killed postmaster leaves its SysV shared memory segment; remove it by id.
            if self._shm is not None and shutil.which("ipcrm"):
                subprocess.run(["ipcrm", "-m", str(self._shm[1])], capture_output=True, check=False)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
