"""Running a script on a node: HyperPod's lifecycle scripts now, PCS's nodeLifecycleActions next.

The script runs as the agent does (root, as on a real instance), in its own directory so that it finds the files
beside it, with its output appended to a log; a script that is not executable runs under bash, as HyperPod's
on_create.sh scripts expect. A failure is told with the tail of its output, which is what an operator needs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TAIL_LINES = 15
TAIL_CHARACTERS = 1500
DEFAULT_TIMEOUT_SECONDS = 1800.0


def run(script: Path, log: Path, env: dict[str, str], args: tuple[str, ...] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS) -> str | None:
    """None if the script succeeded; else what went wrong, with the tail of its output."""
    if not script.is_file():
        return f"{script.name} does not exist"
    command = [str(script)] if os.access(script, os.X_OK) else ["/bin/bash", str(script)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        start = output.tell()
        try:
            done = subprocess.run([*command, *args], cwd=script.parent, stdout=output, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **env}, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{script.name} did not finish within {timeout:.0f} s{_tail(log, start)}"
        except OSError as exc:
            return f"{script.name} could not be run: {exc.strerror or exc}"
    if done.returncode != 0:
        return f"{script.name} exited with status {done.returncode}{_tail(log, start)}"
    return None


def _tail(log: Path, start: int) -> str:
    with open(log, "rb") as output:
        output.seek(start)
        text = output.read().decode(errors="replace")
    lines = text.rstrip("\n").splitlines()[-TAIL_LINES:]
    tail = "\n".join(lines)[-TAIL_CHARACTERS:]
    return f": {tail}" if tail else " (it wrote nothing)"
