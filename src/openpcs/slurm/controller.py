"""A cluster's controller: its own munged and slurmctld, started or re-adopted, reconfigured and stopped.

Both run in the foreground of their own session (munged -F, slurmctld -D), recorded by PID and start
time (openpcs.processes), so they outlive `openpcs serve` and a restarted server adopts them. munged
runs with --force, which lets it run where it would otherwise refuse the permissions of a directory
on its socket's path (a private temp dir, say); munge authenticates each client's uid regardless.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import processes
from ..control.failures import RuntimeFailure
from ..files import write_private
from ..layout import DataLayout

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0
# Lines of a daemon's log that say why it stopped.
_REASON = re.compile(r"\b(fatal|error):\s*(.*)")


def binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise RuntimeFailure("SlurmNotInstalled", f"{name} is not installed. Run the README's set-up command "
                                                  "(scripts/setup.sh), which installs Slurm and munge.")
    return path


def slurm_version() -> str | None:
    """The Slurm that actually runs ("22.05.8"), whatever scheduler version the API was asked for."""
    path = shutil.which("slurmctld") or shutil.which("slurmctld", path="/usr/sbin:/usr/bin")
    if path is None:
        return None
    done = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30)
    return done.stdout.split()[-1] if done.returncode == 0 and done.stdout.split() else None


class SlurmController:
    def __init__(self, layout: DataLayout, cluster_id: str) -> None:
        self.layout, self.cluster_id = layout, cluster_id
        self.run_dir = layout.run_dir(cluster_id)
        self.log_dir = layout.log_dir(cluster_id)
        self.conf = layout.slurm_conf(cluster_id)

    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- configuration ------------------------------------------------------------------------------

    def read_config(self) -> dict[str, str]:
        """The configuration files as last written (empty before the first write)."""
        if not self.conf.parent.is_dir():
            return {}
        return {path.name: path.read_text() for path in self.conf.parent.glob("*.conf")}

    def check_config(self, files: dict[str, str]) -> None:
        """Have Slurm's parser read slurm.conf before it is used: RuntimeFailure with its words if it refuses."""
        with tempfile.TemporaryDirectory(prefix="openpcs-check-") as scratch:
            for name, content in files.items():
                Path(scratch, name).write_text(content)
            done = subprocess.run([binary("scontrol"), "show", "hostnames", "x"], capture_output=True, text=True,
                                  env={**os.environ, "SLURM_CONF": str(Path(scratch, "slurm.conf"))}, timeout=30)
        if done.returncode != 0:
            problems = [line.split(":", 1)[1].strip() for line in done.stderr.splitlines()
                        if line.startswith(("scontrol: error:", "scontrol: fatal:"))]
            raise RuntimeFailure("SlurmConfigurationRejected", "Slurm rejected the configuration: "
                                 + ("; ".join(problems) or done.stderr.strip()))

    def write_config(self, files: dict[str, str]) -> bool:
        """Write the rendered files; True if any changed. Written whole or not at all, as slurmctld reads."""
        changed = False
        for name, content in sorted(files.items()):
            path = self.conf.parent / name
            data = content.encode()
            if path.exists() and path.read_bytes() == data:
                continue
            write_private(path, data)
            changed = True
        return changed

    # -- daemons ------------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """munged, then slurmctld answering `scontrol ping`; each adopted if it already runs."""
        self._ensure_munged()
        if processes.adopt(self.run_dir / "slurmctld.json") is None:
            self._start_slurmctld()

    def restart_slurmctld(self) -> None:
        """Stop (it saves its state: running jobs carry on) and start again, e.g. for new node definitions."""
        processes.stop(self.run_dir / "slurmctld.json", STOP_TIMEOUT_SECONDS)
        self._start_slurmctld()

    def reconfigure(self) -> None:
        """Have slurmctld and every slurmd re-read the configuration."""
        self.scontrol("reconfigure")

    def daemons_alive(self) -> bool:
        """munged and slurmctld both run (by their records; no request to them)."""
        return all(processes.adopt(self.run_dir / record) is not None for record in ("munged.json", "slurmctld.json"))

    def running(self) -> bool:
        return processes.adopt(self.run_dir / "slurmctld.json") is not None and self.ping()

    def ping(self) -> bool:
        done = subprocess.run([binary("scontrol"), "ping"], env=self.env(), capture_output=True, text=True,
                              timeout=30)
        return done.returncode == 0 and "is UP" in done.stdout

    def stop(self) -> None:
        processes.stop(self.run_dir / "slurmctld.json", STOP_TIMEOUT_SECONDS)
        processes.stop(self.run_dir / "munged.json", STOP_TIMEOUT_SECONDS)

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args)

    def run(self, command: str, *args: str) -> str:
        """A Slurm client command against this cluster; its output, or RuntimeFailure with its error."""
        done = subprocess.run([binary(command), *args], env=self.env(), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeFailure("SlurmError", f"{command} {' '.join(args)} failed: "
                                               f"{(done.stderr or done.stdout).strip()}")
        return done.stdout

    def _ensure_munged(self) -> None:
        record = self.run_dir / "munged.json"
        if processes.adopt(record) is not None:
            return
        socket = self.layout.munge_socket(self.cluster_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        socket.parent.mkdir(parents=True, exist_ok=True)
        socket.unlink(missing_ok=True)
        log = self.log_dir / "munged.log"
        daemon = processes.spawn(
            [binary("munged"), "--foreground", "--force", f"--key-file={self.layout.munge_key(self.cluster_id)}",
             f"--socket={socket}", f"--pid-file={self.run_dir / 'munged.pid'}", f"--log-file={log}",
             f"--seed-file={self.run_dir / 'munged.seed'}"], record, self.log_dir / "munged.out")
        self._wait("munged", daemon, lambda: socket.exists(), [log, self.log_dir / "munged.out"])

    def _start_slurmctld(self) -> None:
        for directory in (self.layout.cluster_dir(self.cluster_id) / "state", self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        out = self.log_dir / "slurmctld.out"
        offset = out.stat().st_size if out.exists() else 0
        daemon = processes.spawn([binary("slurmctld"), "-D", "-f", str(self.conf)], self.run_dir / "slurmctld.json",
                                 out, env=self.env())
        self._wait("slurmctld", daemon, self.ping, [out], offset)

    def _wait(self, name: str, daemon: processes.Daemon, ready, logs: list[Path], offset: int = 0) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if ready():
                return
            if not daemon.alive():
                raise RuntimeFailure(f"{name.capitalize()}Failed",
                                     f"{name} did not start: {_reason(logs, offset) or 'it exited without a message'}"
                                     f" (log: {logs[0]})")
            time.sleep(0.02)
        processes.terminate(daemon)
        raise RuntimeFailure(f"{name.capitalize()}Failed", f"{name} did not answer within {START_TIMEOUT_SECONDS:.0f}"
                                                           f" s: {_reason(logs, offset) or 'no error logged'}")


def _reason(logs: list[Path], offset: int) -> str:
    """Slurm's own words for why a daemon stopped: its last error lines and its fatal one, since `offset`."""
    found: dict[str, list[str]] = {"fatal": [], "error": []}
    for log in logs:
        try:
            with open(log, "rb") as handle:
                handle.seek(offset if log == logs[0] else 0)
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        for match in _REASON.finditer(text):
            found[match.group(1)].append(match.group(2).strip())
    # The errors usually name the cause ("Bad SelectTypeParameter: X"), the fatal line the consequence.
    errors = [line for line in dict.fromkeys(found["error"]) if "pmix" not in line.lower() and "MPI" not in line]
    return "; ".join(errors[-3:] + found["fatal"][-1:])
