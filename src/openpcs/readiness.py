"""Waiting for a daemon just started to be ready, and saying why it is not in its own words."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from . import processes
from .control.failures import RuntimeFailure

START_TIMEOUT_SECONDS = 15.0
# Lines of a daemon's log that say why it stopped (Slurm's "error:"/"fatal:", MariaDB's "[ERROR]").
_REASON = re.compile(r"\b(fatal|error):\s*(.*)|\[(ERROR)\]\s*(.*)")
# Lines that look like errors but never explain a failure to start.
_NOISE = ("pmix", "MPI", "Database settings not recommended values")


def wait_ready(name: str, daemon: processes.Daemon, ready: Callable[[], bool], logs: list[Path], offset: int = 0,
               timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Wait until `ready()`; RuntimeFailure quoting the logs if the daemon exits or is not ready in time (then it
    is stopped). `offset`: where the first log's lines from this start begin."""
    code = f"{name[0].upper()}{name[1:]}Failed"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not daemon.alive():
            raise RuntimeFailure(code, f"{name} did not start: {reason(logs, offset) or 'it exited without a message'}"
                                       f" (log: {logs[0]})")
        time.sleep(0.02)
    processes.terminate(daemon)
    why = reason(logs, offset) or "no error logged"
    raise RuntimeFailure(code, f"{name} did not answer within {timeout:.0f} s: {why} (log: {logs[0]})")


def reason(logs: list[Path], offset: int = 0) -> str:
    """A daemon's own words for why it stopped: its last error lines and its fatal one, since `offset` in the
    first log (the others are read whole)."""
    found: dict[str, list[str]] = {"fatal": [], "error": []}
    for log in logs:
        try:
            with open(log, "rb") as handle:
                handle.seek(offset if log == logs[0] else 0)
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        for match in _REASON.finditer(text):
            kind, words = (match.group(1), match.group(2)) if match.group(1) else ("error", match.group(4))
            found[kind].append(words.strip())
    # The errors usually name the cause ("Bad SelectTypeParameter: X"), the fatal line the consequence.
    errors = [line for line in dict.fromkeys(found["error"]) if not any(noise in line for noise in _NOISE)]
    return "; ".join(errors[-3:] + found["fatal"][-1:])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
