"""The local provider: each instance is a slurmd on this host, brought up by the node agent.

A launch writes each new instance's bootstrap.json (0600) and starts one agent (openpcs.agent) for the
batch, in its own session; the agent registers each instance through the API and starts its slurmd, which
then lives on its own (recorded by PID and start time in the instance's directory), so neither survives nor
needs `openpcs serve`. Instances are oversubscribed: their CPUs and memory are their instance type's, not a
share of this host's.

Faults for tests and rehearsals (`openpcs inject`) act here as they would on real hosts: an instance that
dies (its processes killed, the instance gone), one that stops answering (its slurmd stopped with SIGSTOP:
impaired), one that fails its health checks, and launches a node group's next launches refuse with an
error code, as EC2 refuses RunInstances.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import sys
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from .. import processes
from ..files import write_private
from ..health_checks import FAILED_PREFIX, UNHEALTHY_MARKER
from ..layout import DataLayout
from .base import (
    DEEP_HEALTH_CHECK_FAILED,
    FAILED,
    GONE,
    HEALTH_CHECK_FAILED,
    IMPAIRED,
    PENDING,
    RUNNING,
    STOPPED,
    UNRESPONSIVE,
    InstanceStatus,
    LaunchRequest,
    ProviderError,
)

# The node agent's command; the instance directories it brings up follow it.
AGENT = (sys.executable, "-m", "openpcs.agent")
# Markers in an instance's directory.
DEAD = "dead"            # the instance died: it never runs again
UNHEALTHY = UNHEALTHY_MARKER  # its health checks fail
FAILURE = "failure.txt"  # why its bootstrap failed (written by the agent)


class LocalProvider:
    def __init__(self, layout: DataLayout) -> None:
        self.layout = layout
        self.agents = layout.data_dir / "agents"  # one record per running agent, for stopping it by PID

    # -- the Provider interface ------------------------------------------------------------------------------

    def launch(self, requests: Sequence[LaunchRequest]) -> dict[str, str]:
        refused = self._injected_launch_failures(requests)
        unhealthy = self._injected_unhealthy_nodes(requests)
        by_cluster: dict[str, list[str]] = {}
        for request in requests:
            if request.instance_id in refused:
                continue
            directory = self.layout.instance_dir(request.instance_id)
            if request.bootstrap is not None:
                try:
                    write_private(directory / "bootstrap.json", orjson.dumps(dict(request.bootstrap)))
                    if request.node_name in unhealthy.get(request.cluster_id, ()):
                        (directory / UNHEALTHY).touch()
                except OSError as exc:
                    raise ProviderError("InternalError", f"could not write the bootstrap data of {request.instance_id}"
                                                         f": {exc.strerror or exc} ({exc.filename})") from exc
            elif (directory / DEAD).exists() or not (directory / "bootstrap.json").exists():
                refused[request.instance_id] = "InstanceTerminated"
                continue
            (directory / FAILURE).unlink(missing_ok=True)  # a launch tries again
            by_cluster.setdefault(request.cluster_id, []).append(str(directory))
        for cluster_id, directories in by_cluster.items():
            log = self.layout.log_dir(cluster_id) / "agent.log"
            # Run in the log dir, as slurmd and its slurmstepd (which inherit it) do: a core dump lands there.
            processes.spawn([*AGENT, *directories], self.agents / f"{uuid.uuid4().hex}.json", log, cwd=log.parent,
                            autogroup_nice=processes.SERVICE_AUTOGROUP_NICE)
        return refused

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceStatus]:
        launching = None
        answer = {}
        for instance_id in instance_ids:
            directory = self.layout.instance_dir(instance_id)
            if not directory.exists() or (directory / DEAD).exists():
                answer[instance_id] = InstanceStatus(GONE, "the instance no longer exists")
                continue
            slurmd = processes.adopt(directory / "slurmd.json")
            if slurmd is not None:
                if slurmd.stopped():
                    answer[instance_id] = InstanceStatus(IMPAIRED, "its slurmd does not answer (stopped)",
                                                         UNRESPONSIVE)
                elif (directory / UNHEALTHY).exists():
                    answer[instance_id] = InstanceStatus(IMPAIRED, "it fails its health checks", HEALTH_CHECK_FAILED)
                else:
                    answer[instance_id] = InstanceStatus(RUNNING)
                continue
            failure = directory / FAILURE
            if failure.exists():
                detail = failure.read_text(errors="replace").strip()
                answer[instance_id] = InstanceStatus(FAILED, detail, DEEP_HEALTH_CHECK_FAILED if detail.startswith(
                    FAILED_PREFIX) else "BootstrapFailure")
                continue
            if _locked(directory / "agent.lock"):
                answer[instance_id] = InstanceStatus(PENDING)
                continue
            if launching is None:
                launching = self._being_launched()
            if str(directory) in launching:  # its agent has not come to it yet (2,048 take it about 50 s)
                answer[instance_id] = InstanceStatus(PENDING)
                continue
            answer[instance_id] = InstanceStatus(STOPPED, "its slurmd does not run")
        return answer

    def stop(self, instance_ids: Sequence[str]) -> None:
        processes.stop_all([self.layout.instance_dir(i) / "slurmd.json" for i in instance_ids])

    def terminate(self, instance_ids: Sequence[str]) -> None:
        directories = [self.layout.instance_dir(i) for i in instance_ids]
        processes.stop_all([directory / "slurmd.json" for directory in directories])  # stopped ones are continued
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)

    def _being_launched(self) -> set[str]:
        """The instance directories a running agent was started for: it brings each up, or writes why not."""
        found: set[str] = set()
        for record in self.agents.glob("*.json"):
            if processes.adopt(record) is not None:
                found.update((processes.recorded_argv(record) or [])[len(AGENT):])
        return found

    # -- faults ----------------------------------------------------------------------------------------------

    def kill(self, instance_id: str) -> None:
        """The instance dies: its processes are killed at once and it never runs again."""
        directory = self.layout.instance_dir(instance_id)
        (directory / DEAD).touch()
        self._continue(directory)
        processes.stop(directory / "slurmd.json", timeout=0)

    def freeze(self, instance_id: str) -> None:
        """The instance stops answering: its slurmd is stopped (SIGSTOP), as a hung host would be."""
        daemon = processes.adopt(self.layout.instance_dir(instance_id) / "slurmd.json")
        if daemon is None:
            raise LookupError("its slurmd does not run")
        processes.signal_session(daemon, signal.SIGSTOP)  # the recorded unshare, its namespace's shell and slurmd

    def make_unhealthy(self, instance_id: str) -> None:
        """The instance fails its health checks from now on."""
        (self.layout.instance_dir(instance_id) / UNHEALTHY).touch()

    def inject_launch_failures(self, cluster_id: str, node_group_id: str, code: str, times: int) -> None:
        """The node group's next `times` launches are refused with `code`."""
        with self._faults(cluster_id) as faults:
            faults.setdefault("launchFailures", {})[node_group_id] = {"code": code, "remaining": times}

    def make_next_unhealthy(self, cluster_id: str, node: str) -> None:
        """The node's next instance fails its health checks (its deep health checks on start, if it has them)."""
        with self._faults(cluster_id) as faults:
            faults.setdefault("unhealthyNodes", []).append(node)

    def _injected_unhealthy_nodes(self, requests: Sequence[LaunchRequest]) -> dict[str, set[str]]:
        """cluster id -> the nodes among `requests` whose new instance is to be unhealthy (taken off the list)."""
        found: dict[str, set[str]] = {}
        for cluster_id in {r.cluster_id for r in requests if r.bootstrap is not None}:
            if not self.layout.faults(cluster_id).exists():
                continue
            with self._faults(cluster_id) as faults:
                names = {r.node_name for r in requests if r.cluster_id == cluster_id}
                found[cluster_id] = names & set(faults.get("unhealthyNodes", []))
                faults["unhealthyNodes"] = [n for n in faults.get("unhealthyNodes", []) if n not in found[cluster_id]]
        return found

    def _injected_launch_failures(self, requests: Sequence[LaunchRequest]) -> dict[str, str]:
        refused: dict[str, str] = {}
        for cluster_id in {r.cluster_id for r in requests}:
            if not self.layout.faults(cluster_id).exists():
                continue
            with self._faults(cluster_id) as faults:
                failures = faults.get("launchFailures", {})
                for request in requests:
                    fault = failures.get(request.node_group_id)
                    if request.cluster_id == cluster_id and request.bootstrap is not None and fault:
                        refused[request.instance_id] = fault["code"]
                        fault["remaining"] -= 1
                        if fault["remaining"] <= 0:
                            del failures[request.node_group_id]
        return refused

    @contextmanager
    def _faults(self, cluster_id: str):  # noqa: ANN202 - a context manager of the faults dict
        """The cluster's faults file, read and written under a lock (`openpcs inject` writes it too)."""
        path = self.layout.faults(cluster_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            faults = orjson.loads(path.read_bytes()) if path.exists() else {}
            yield faults
            write_private(path, orjson.dumps(faults))

    @staticmethod
    def _continue(directory: Path) -> None:
        daemon = processes.adopt(directory / "slurmd.json")
        if daemon is not None and daemon.stopped():
            processes.signal_session(daemon, signal.SIGCONT)


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
