"""Deep health checks an instance runs on itself before its slurmd takes jobs (deepHealthChecks.onStart).

PCS allows the profiles only on GPU instances (as DCGM's diagnostic levels). The node agent runs the checks
of the node group's profile after registering: QUICK checks that the instance's Slurm runs and finds its
GPUs, MEDIUM adds that its spool takes writes and the controller answers, LONG adds Slurm's view of its
hardware and an exercise of CPU and memory. Each profile takes longer than the one before. A check that
fails names itself; an instance `openpcs inject ... unhealthy` marked fails them all.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

UNHEALTHY_MARKER = "unhealthy"
FAILED_PREFIX = "deep health check failed"


def _not_marked(directory: Path, boot: dict, answer: dict) -> str | None:
    if (directory / UNHEALTHY_MARKER).exists():
        return "the instance is marked unhealthy (openpcs inject)"
    return None


def _slurmd_runs(directory: Path, boot: dict, answer: dict) -> str | None:
    done = subprocess.run([boot["slurmd"], "-V"], capture_output=True, timeout=10)
    return None if done.returncode == 0 else f"slurmd -V exited {done.returncode}"


def _gpus_found(directory: Path, boot: dict, answer: dict) -> str | None:
    """slurmd -G loads the node's GRES as slurmd would, and fails if a GPU's device is missing."""
    done = subprocess.run([boot["slurmd"], "-N", answer["nodeID"], "-G", "-f", boot["slurmConf"]],
                          capture_output=True, timeout=30)
    if done.returncode != 0 or b"Name=gpu" not in done.stdout + done.stderr:
        return "slurmd -G found no usable GPU: " + (done.stderr.decode(errors="replace").strip().splitlines()
                                                     or ["no output"])[-1]
    return None


def _spool_writable(directory: Path, boot: dict, answer: dict) -> str | None:
    probe = Path(boot["spoolDir"]) / f".health-{answer['nodeID']}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"the spool dir takes no writes: {exc}"
    return None


def _controller_answers(directory: Path, boot: dict, answer: dict) -> str | None:
    for endpoint in answer.get("endpoints", []):
        if endpoint.get("type") == "SLURMCTLD":
            try:
                socket.create_connection((endpoint["privateIpAddress"], int(endpoint["port"])), timeout=5).close()
            except OSError as exc:
                return f"slurmctld at {endpoint['privateIpAddress']}:{endpoint['port']} does not answer: {exc}"
    return None


def _hardware_seen(directory: Path, boot: dict, answer: dict) -> str | None:
    done = subprocess.run([boot["slurmd"], "-C"], capture_output=True, timeout=30)
    return None if done.returncode == 0 and b"NodeName=" in done.stdout else "slurmd -C found no hardware"


def _cpu_and_memory(directory: Path, boot: dict, answer: dict) -> str | None:
    block = bytes(range(256)) * (64 * 1024 * 1024 // 256)  # 64 MiB
    expected = hashlib.sha256(block).digest()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if hashlib.sha256(block).digest() != expected:
            return "memory or CPU returned different results for the same work"
    return None


Check = Callable[[Path, dict, dict], "str | None"]
QUICK = (_not_marked, _slurmd_runs, _gpus_found)
MEDIUM = (*QUICK, _spool_writable, _controller_answers)
PROFILES: dict[str, tuple[Check, ...]] = {
    "QUICK": QUICK, "MEDIUM": MEDIUM, "LONG": (*MEDIUM, _hardware_seen, _cpu_and_memory)}


def run(profile: str, directory: Path, boot: dict, answer: dict) -> str | None:
    """What is wrong with the instance by the profile's checks, or None if it passed them (or the profile is
    NONE)."""
    for check in PROFILES.get(profile, ()):
        try:
            problem = check(directory, boot, answer)
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"{check.__name__.strip('_')}: {exc}"
        if problem:
            return f"{FAILED_PREFIX} ({profile}): {problem}"
    return None
