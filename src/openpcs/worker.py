"""One API worker process: serves the API on the listening socket its supervisor handed down.

`openpcs serve` binds the socket once and runs several of these, so that requests use more than one
core (one Python process serves about one core's worth). Each worker has its own connections to the
store; after each write it nudges the supervisor's reconciler through a pipe. A worker dies with its
supervisor, even one killed with SIGKILL, so that no worker outlives it holding the port.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from pathlib import Path

import orjson

PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the supervisor died before the line above took effect
        sys.exit(0)


def _nudger(wake_fd: int | None):
    def nudge() -> None:
        try:
            os.write(wake_fd, b"w")
        except BlockingIOError:
            pass  # the pipe is full of nudges the reconciler has yet to read: it will look anyway

    return nudge if wake_fd is not None else (lambda: None)


def main(config: dict) -> None:
    _die_with(config["supervisor_pid"])
    from .api.http import Server
    from .api.server import configure_logging
    from .app import build_api

    configure_logging(config["log_level"])
    sock = socket.socket(fileno=config["listen_fd"])
    app, store = build_api(Path(config["data_dir"]), config["database"], config["max_clusters"],
                           config["scheduler_versions"], _nudger(config["wake_fd"]))
    try:
        Server(app, sock).run()
    finally:
        store.close()


if __name__ == "__main__":
    main(orjson.loads(sys.stdin.buffer.read()))  # on stdin, not argv: a database URL may hold a password
