"""The local provider: each instance is a slurmd on this host, brought up by the node agent.

A launch starts one agent (openpcs.agent) for the batch, in its own session; the agent registers each
instance through the API and starts its slurmd, which then lives on its own (recorded by PID and start
time in the instance's directory), so neither survives nor needs `openpcs serve`. Instances are
oversubscribed: their CPUs and memory are their instance type's, not a share of this host's.
"""

from __future__ import annotations

import fcntl
import shutil
import sys
import time
import uuid
from pathlib import Path

from .. import processes
from ..layout import DataLayout

# An agent that has not taken an instance's lock this long after its launch is presumed lost.
AGENT_GRACE_SECONDS = 30.0


class LocalProvider:
    def __init__(self, layout: DataLayout) -> None:
        self.layout = layout
        self.agents = layout.data_dir / "agents"  # one record per running agent, for stopping it by PID
        self._launched: dict[str, float] = {}

    def launch(self, instance_ids: list[str], log: Path) -> None:
        """Start an agent for these instances (their bootstrap.json is written)."""
        if not instance_ids:
            return
        directories = [str(self.layout.instance_dir(i)) for i in instance_ids]
        # Run in the log dir, as slurmd and its slurmstepd (which inherit it) do: a core dump lands there.
        processes.spawn([sys.executable, "-m", "openpcs.agent", *directories],
                        self.agents / f"{uuid.uuid4().hex}.json", log, cwd=log.parent)
        now = time.monotonic()
        self._launched.update({instance_id: now for instance_id in instance_ids})

    def status(self, instance_id: str) -> tuple[str, str]:
        """("running" | "starting" | "failed" | "absent", detail)."""
        directory = self.layout.instance_dir(instance_id)
        if processes.adopt(directory / "slurmd.json") is not None:
            return "running", ""
        failure = directory / "failure.txt"
        if failure.exists():
            return "failed", failure.read_text(errors="replace").strip()
        if _locked(directory / "agent.lock"):
            return "starting", ""
        launched = self._launched.get(instance_id)
        if launched is not None and time.monotonic() - launched < AGENT_GRACE_SECONDS and self._agents_running():
            return "starting", ""
        return "absent", ""

    def _agents_running(self) -> bool:
        return any([processes.adopt(record) is not None for record in self.agents.glob("*.json")])

    def relaunch(self, instance_id: str) -> None:
        """Forget a failure so that the next launch tries again."""
        (self.layout.instance_dir(instance_id) / "failure.txt").unlink(missing_ok=True)

    def stop(self, instance_id: str) -> None:
        """Stop the instance's slurmd and keep the instance: a launch brings it up again."""
        processes.stop(self.layout.instance_dir(instance_id) / "slurmd.json")

    def terminate(self, instance_id: str) -> None:
        directory = self.layout.instance_dir(instance_id)
        processes.stop(directory / "slurmd.json")
        shutil.rmtree(directory, ignore_errors=True)
        self._launched.pop(instance_id, None)


def _locked(path: Path) -> bool:
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
