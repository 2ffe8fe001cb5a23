"""A cluster's controller: its own munged and slurmctld, started or re-adopted, reconfigured and stopped.

Every Slurm program comes from the cluster's build (slurm.builds), by absolute path. The build that last
ran the cluster is recorded in slurm-build.json beside its state: Slurm reads saved state only from
recent releases (24.11 cannot read 22.05's), so a cluster moved to another release starts from empty
state, and the old state is kept aside (`set_aside_state`).

Both run in the foreground of their own session (munged -F, slurmctld -D), recorded by PID and start
time (openpcs.processes), so they outlive `openpcs serve` and a restarted server adopts them. munged
runs with --force, which lets it run where it would otherwise refuse the permissions of a directory
on its socket's path (a private temp dir, say); munge authenticates each client's uid regardless.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from .. import processes
from ..control.failures import ControllerBusy, RuntimeFailure, RuntimePending
from ..files import write_private
from ..layout import DataLayout
from ..readiness import wait_ready
from .builds import SlurmBuild
from .config import RENDERED_FILES

log = logging.getLogger("openpcs.slurm")

STOP_TIMEOUT_SECONDS = 15.0
# A slurmctld that runs but does not answer (starting, saving state, reconfiguring, busy) is waited for this
# long before a command against it counts as failed. Its own errors (a refused update) fail at once.
CONTROLLER_PATIENCE_SECONDS = 30.0
# A reconfigure answers within a second; one that has not after this long is stuck (see reconfigure).
RECONFIGURE_PATIENCE_SECONDS = 15.0
# Every slurmd, slurmstepd and Slurm command of the cluster has its credentials made and checked by the cluster's one
# munged. With munge's default of 2 threads, a job starting on 2,048 nodes backed it up until it warned "restart with
# --num-threads=10" and task launches timed out.
MUNGED_THREADS = 16
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                "Zero Bytes were transmitted or received", "Slurm backup controller in standby mode")


def munged_binary() -> str:
    """munge is the distribution's (it is not part of Slurm's build)."""
    path = shutil.which("munged") or shutil.which("munged", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise RuntimeFailure("MungeNotInstalled", "munged is not installed. Run the README's set-up command "
                                                  "(scripts/setup.sh), which installs munge and Slurm.")
    return path


class SlurmController:
    def __init__(self, layout: DataLayout, cluster_id: str, build: SlurmBuild | None) -> None:
        """`build` may be None only to stop the cluster's daemons (by PID, no Slurm program needed)."""
        self.layout, self.cluster_id, self.build = layout, cluster_id, build
        self.run_dir = layout.run_dir(cluster_id)
        self.log_dir = layout.log_dir(cluster_id)
        self.conf = layout.slurm_conf(cluster_id)
        self.state_dir = layout.cluster_dir(cluster_id) / "state"
        self.build_record = layout.cluster_dir(cluster_id) / "slurm-build.json"

    def binary(self, name: str) -> str:
        if self.build is None:
            raise RuntimeFailure("SlurmVersionUnavailable", f"cluster {self.cluster_id} has no Slurm build")
        return self.build.binary(name)

    # -- the build that runs it ---------------------------------------------------------------------

    def recorded_build(self) -> dict[str, str] | None:
        """The build that last ran the cluster; None before its first start."""
        try:
            return orjson.loads(self.build_record.read_bytes())
        except FileNotFoundError:
            return None

    def build_changed(self) -> bool:
        """True if the cluster last ran on another Slurm build than its own (saved state made by a cluster
        of an earlier openpcs, which recorded none, came from Debian 12's Slurm 22.05.8)."""
        recorded = self.recorded_build()
        if recorded is None:
            return self.state_dir.is_dir() and any(self.state_dir.iterdir())
        return self.build is not None and recorded["version"] != self.build.version

    def set_aside_state(self) -> Path | None:
        """Move saved state of another release aside (Slurm cannot read it) and record the current build."""
        recorded = self.recorded_build()
        old = recorded["version"] if recorded else "22.05.8"
        kept = None
        if self.build is not None and _release(old) != self.build.release and self.state_dir.is_dir():
            kept = self.state_dir.with_name(f"state-slurm-{old}")
            shutil.rmtree(kept, ignore_errors=True)
            self.state_dir.rename(kept)
            log.warning("cluster %s: its saved Slurm state is from Slurm %s, which Slurm %s cannot read. It starts "
                        "with empty state: jobs it had queued or running are gone (their processes end with their "
                        "nodes); accounting records, if any, stay. The old state is kept in %s.",
                        self.cluster_id, old, self.build.version, kept)
        if self.build is not None:
            write_private(self.build_record, orjson.dumps(self.build.as_dict()))
        return kept

    def forget_cluster_id(self) -> None:
        """Let slurmctld take its cluster id from the accounting database at its next start. A cluster that ran
        without accounting made up an id of its own (state/clustername); slurmdbd hands out another one when it
        first sees the cluster, and slurmctld then stops with "CLUSTER ID MISMATCH" (measured). Removing the file is
        the override Slurm's message names; the id matters only to federations, which openpcs does not make."""
        (self.state_dir / "clustername").unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands against this cluster: its configuration, its build's commands
        first on PATH (for programs that call Slurm's commands by name)."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        if self.build is not None:
            env["PATH"] = f"{self.build.bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    # -- configuration ------------------------------------------------------------------------------

    def read_config(self) -> dict[str, str]:
        """The rendered configuration files as last written (empty before the first write)."""
        found = {name: self.conf.with_name(name) for name in RENDERED_FILES}
        return {name: path.read_text() for name, path in found.items() if path.exists()}

    def check_config(self, files: dict[str, str]) -> None:
        """Have Slurm's parser read slurm.conf before it is used: RuntimeFailure with its words if it refuses."""
        with tempfile.TemporaryDirectory(prefix="openpcs-check-") as scratch:
            for name, content in files.items():
                Path(scratch, name).write_text(content)
            done = subprocess.run([self.binary("scontrol"), "show", "hostnames", "x"], capture_output=True, text=True,
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
        """munged, then slurmctld answering `scontrol ping`; each adopted if it already runs (and then waited
        for: one adopted after a crash of the server may still be starting or saving its state)."""
        self.ensure_munged()
        daemon = processes.adopt(self.run_dir / "slurmctld.json")
        if daemon is None:
            self._start_slurmctld()
            return
        deadline = time.monotonic() + CONTROLLER_PATIENCE_SECONDS
        while not self.ping():
            if not daemon.alive():
                self._start_slurmctld()
                return
            if time.monotonic() > deadline:
                log.warning("cluster %s: slurmctld (pid %d) runs but has not answered for %.0f s; restarting it (its "
                            "state is saved first)", self.cluster_id, daemon.pid, CONTROLLER_PATIENCE_SECONDS)
                self.restart_slurmctld()
                return
            time.sleep(0.05)

    def restart_slurmctld(self) -> None:
        """Stop (it saves its state: running jobs carry on) and start again, e.g. for new node definitions."""
        processes.stop(self.run_dir / "slurmctld.json", STOP_TIMEOUT_SECONDS)
        self._start_slurmctld()

    def reconfigure(self) -> None:
        """Have slurmctld and every slurmd re-read the configuration.

        Slurm 24.11.5 was seen (once, in a full test run, on a cluster whose nodes were registering) to never
        finish a reconfigure: it stopped answering every request, its listeners quiesced, until a SIGTERM
        arrived minutes later. So a reconfigure that gets no answer within RECONFIGURE_PATIENCE_SECONDS restarts
        slurmctld instead, which applies the same files (its state is saved first; jobs carry on)."""
        try:
            self.run("scontrol", "reconfigure", patience=RECONFIGURE_PATIENCE_SECONDS)
        except ControllerBusy as busy:
            log.warning("cluster %s: slurmctld did not finish its reconfigure; restarting it (%s)", self.cluster_id,
                        busy.message)
            self.restart_slurmctld()
            return
        self._mark_applied()

    def change_partitions(self, commands: tuple[tuple[str, ...], ...]) -> bool:
        """Apply partition changes (config.ReloadPlan.partition_commands) without a reconfigure; False if slurmctld
        refused one (a setting scontrol cannot change, a partition still in use): a reconfigure applies them all."""
        for command in commands:
            try:
                self.run("scontrol", *command)
            except RuntimeFailure as refused:
                log.info("cluster %s: reconfiguring instead: %s", self.cluster_id, refused.message)
                return False
        self._mark_applied()
        return True

    def applied_config(self) -> dict[str, str]:
        """The files slurmctld last read (at its start or a reconfigure), which may differ from those on disk
        if the server died between writing and applying them; those on disk if none is recorded."""
        try:
            return orjson.loads((self.run_dir / "applied-config.json").read_bytes())
        except FileNotFoundError:
            return self.read_config()

    def _mark_applied(self) -> None:
        write_private(self.run_dir / "applied-config.json", orjson.dumps(self.read_config()))

    def daemons_alive(self) -> bool:
        """munged and slurmctld both run (by their records; no request to them)."""
        return all(processes.adopt(self.run_dir / record) is not None for record in ("munged.json", "slurmctld.json"))

    def running(self) -> bool:
        return self.alive() and self.ping()

    def alive(self) -> bool:
        """slurmctld runs, answering or not (busy): what it is asked waits for it rather than going around it."""
        return processes.adopt(self.run_dir / "slurmctld.json") is not None

    def ping(self) -> bool:
        """slurmctld answers `scontrol ping` within 30 s (a busy one may not: MessageTimeout grows with the cluster)."""
        try:
            done = subprocess.run([self.binary("scontrol"), "ping"], env=self.env(), capture_output=True, text=True,
                                  timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and "is UP" in done.stdout

    def stop(self) -> None:
        processes.stop(self.run_dir / "slurmctld.json", STOP_TIMEOUT_SECONDS)
        processes.stop(self.run_dir / "munged.json", STOP_TIMEOUT_SECONDS)

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args)

    def run(self, command: str, *args: str, patience: float = CONTROLLER_PATIENCE_SECONDS) -> str:
        """A Slurm client command against this cluster; its output, or RuntimeFailure with its error.

        While slurmctld runs but cannot be reached, the command is tried again for `patience` seconds, then
        ControllerBusy (the reconciler looks again later); if slurmctld is not running at all, RuntimePending: the
        next pass starts it and asks again."""
        deadline = time.monotonic() + patience
        while True:
            try:
                done = subprocess.run([self.binary(command), *args], env=self.env(), capture_output=True, text=True,
                                      timeout=60)
                problem = (done.stderr or done.stdout).strip()
            except subprocess.TimeoutExpired:
                done, problem = None, "no answer within 60 s"
            if done is not None and done.returncode == 0:
                return done.stdout
            unreachable = done is None or any(words in problem for words in _UNREACHABLE)
            if not unreachable:
                raise RuntimeFailure("SlurmError", f"{command} {' '.join(args)} failed: {problem}")
            if not self.alive():
                raise RuntimePending(retry_after=0.5)
            if time.monotonic() > deadline:
                raise ControllerBusy(f"{command} {' '.join(args)}: slurmctld runs but did not answer for "
                                     f"{patience:.0f} s: {problem}")
            time.sleep(0.2)

    def ensure_munged(self) -> None:
        """The cluster's munged, started or adopted (slurmdbd needs it before slurmctld starts)."""
        record = self.run_dir / "munged.json"
        if processes.adopt(record) is not None:
            return
        socket = self.layout.munge_socket(self.cluster_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        socket.parent.mkdir(parents=True, exist_ok=True)
        socket.unlink(missing_ok=True)
        log = self.log_dir / "munged.log"
        daemon = processes.spawn(
            [munged_binary(), "--foreground", "--force", f"--num-threads={MUNGED_THREADS}",
             f"--key-file={self.layout.munge_key(self.cluster_id)}",
             f"--socket={socket}", f"--pid-file={self.run_dir / 'munged.pid'}", f"--log-file={log}",
             f"--seed-file={self.run_dir / 'munged.seed'}"], record, self.log_dir / "munged.out", cwd=self.log_dir,
            autogroup_nice=processes.SERVICE_AUTOGROUP_NICE)
        wait_ready("munged", daemon, lambda: socket.exists(), [log, self.log_dir / "munged.out"])

    def _start_slurmctld(self) -> None:
        if self.build_changed():
            self.set_aside_state()
        for directory in (self.state_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if self.recorded_build() is None and self.build is not None:
            write_private(self.build_record, orjson.dumps(self.build.as_dict()))
        out = self.log_dir / "slurmctld.out"
        offset = out.stat().st_size if out.exists() else 0
        # Its working directory is its log dir: a core dump lands there, never where serve was started.
        daemon = processes.spawn([self.binary("slurmctld"), "-D", "-f", str(self.conf)],
                                 self.run_dir / "slurmctld.json", out, env=self.env(), cwd=self.log_dir,
                                 autogroup_nice=processes.SERVICE_AUTOGROUP_NICE)
        wait_ready("slurmctld", daemon, self.ping, [out], offset)
        self._mark_applied()


def _release(version: str) -> str:
    return ".".join(version.split(".")[:2])
