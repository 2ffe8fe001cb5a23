"""slurmctld's ResumeProgram and SuspendProgram: hand Slurm's power-saving requests to the control plane.

slurmctld runs `<python> -m openpcs.slurm.power_hook REQUESTS_DIR WAKE_ADDRESS resume|suspend HOSTLIST`
(through the cluster's etc/resume.sh and suspend.sh) when it wants nodes started or stopped. The hook writes
the request as a file (so a control plane that is down finds it when it starts), then nudges the reconciler
on its abstract unix socket, and exits: slurmctld waits for neither. `take` is the control plane's side.

Only the standard library is imported: this runs once per request, and Python's start is most of its cost.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

ACTIONS = ("resume", "suspend")


def request(directory: Path, wake_address: str, action: str, hostlist: str) -> Path:
    """Record one request (atomically: a reader never sees half of it) and nudge the reconciler."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}.{action}"
    partial = directory / f".{name}"
    partial.write_text(hostlist)
    partial.rename(directory / name)
    wake(wake_address)
    return directory / name


def wake(address: str) -> None:
    """Nudge the reconciler listening on `address`; nobody listening is fine (it looks at its next pass)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as nudge:
        try:
            nudge.sendto(b"w", address)
        except OSError:
            pass


def take(directory: Path) -> list[tuple[Path, str, str]]:
    """The waiting requests, oldest first: (file, action, hostlist). The caller removes each file once it has
    acted on it, so a request survives a crash in between."""
    try:
        entries = sorted(entry for entry in os.listdir(directory) if not entry.startswith("."))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        action = entry.rsplit(".", 1)[-1]
        if action in ACTIONS:
            path = directory / entry
            try:
                found.append((path, action, path.read_text().strip()))
            except FileNotFoundError:
                continue
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[2] not in ACTIONS:
        print("usage: python -m openpcs.slurm.power_hook REQUESTS_DIR WAKE_ADDRESS resume|suspend HOSTLIST",
              file=sys.stderr)
        return 2
    directory, address, action, hostlist = argv
    request(Path(directory), address.replace("@", "\0", 1), action, hostlist)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
