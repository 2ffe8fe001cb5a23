"""Runs and watches `openpcs serve`'s API worker processes (openpcs.worker) on one listening socket.

A worker that dies is started again. One that exits by itself (not by a signal) during its first
seconds has a problem that a restart will not fix (a store it cannot open, say), so the whole server
stops with its message. SIGINT or
SIGTERM stops the workers gracefully: each finishes the requests it has and closes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from .api.http import LISTEN_BACKLOG

log = logging.getLogger("openpcs.supervisor")

# A worker that exits by itself sooner than this after its start failed to start: do not start it again.
STARTUP_SECONDS = 5.0
# Workers drain their requests for up to 10 s (api.http.SHUTDOWN_GRACE_SECONDS); then they are killed.
STOP_TIMEOUT_SECONDS = 15.0


class WorkerFailed(Exception):
    pass


class Workers:
    def __init__(self, count: int, sock: socket.socket, config: dict[str, Any],
                 on_write: Callable[[], None] | None) -> None:
        self.count, self.sock = count, sock
        self.wake_read, self.wake_write = os.pipe() if on_write else (None, None)
        if self.wake_write is not None:
            # A worker must never block on a full pipe: a pending nudge is as good as another one.
            fcntl.fcntl(self.wake_write, fcntl.F_SETFL, fcntl.fcntl(self.wake_write, fcntl.F_GETFL) | os.O_NONBLOCK)
            threading.Thread(target=self._relay, args=(on_write,), name="write-nudges", daemon=True).start()
        self.config = {**config, "listen_fd": sock.fileno(), "wake_fd": self.wake_write,
                       "supervisor_pid": os.getpid()}
        self.running: dict[int, tuple[subprocess.Popen, float]] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM. Raises WorkerFailed if a worker cannot start."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self._stop.set())
        self.sock.listen(LISTEN_BACKLOG)  # from here on, connections wait for the first free worker
        try:
            for slot in range(self.count):
                self._start(slot)
            while not self._stop.wait(0.2):
                self._restart_exited()
        finally:
            self._stop_all()

    def _start(self, slot: int) -> None:
        fds = [self.sock.fileno()] + ([self.wake_write] if self.wake_write is not None else [])
        # Spawned from the main thread: PR_SET_PDEATHSIG follows the thread that started the child.
        process = subprocess.Popen([sys.executable, "-m", "openpcs.worker"], stdin=subprocess.PIPE, pass_fds=fds)
        with process.stdin:
            process.stdin.write(orjson.dumps(self.config))  # not in argv, which anyone may read
        self.running[slot] = (process, time.monotonic())

    def _restart_exited(self) -> None:
        for slot, (process, started) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            if code >= 0 and time.monotonic() - started < STARTUP_SECONDS:  # an exit, not a kill (OOM, admin)
                raise WorkerFailed(f"an API worker exited with status {code} while starting; its messages are "
                                   "above. Fix the cause and start openpcs again.")
            log.warning("API worker %d exited with status %s; starting another", process.pid, code)
            self._start(slot)

    def _stop_all(self) -> None:
        processes = [process for process, _ in self.running.values()]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()

    def _relay(self, on_write: Callable[[], None]) -> None:
        while os.read(self.wake_read, 512):
            on_write()
