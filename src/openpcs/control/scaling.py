"""Slurm's power saving made real: instances launched when Slurm asks for nodes, terminated when it stops them.

Slurm decides, never openpcs: a job that needs powered-down nodes makes slurmctld run its ResumeProgram with
them, and a node idle for SuspendTime makes it run its SuspendProgram. Both hand the request to the control
plane (slurm.power_hook), which wakes the reconciler; here a resume launches one instance per node through
the fleet (the node agent registers it and starts its slurmd), and a suspend terminates the node's instance.
Slurm holds a job until all its nodes are up, so it never starts on part of them.

Level-triggered beside the requests: every SCAN_SECONDS the nodes Slurm is powering up that have no instance
are launched, instances of nodes Slurm has powered down are terminated, and instances of node groups that are
gone are terminated, so that a request lost in a crash is only late.

Launch failures show as PCS shows them: the node is powered down with reason "Failed to launch backing
instance (Error Code: X)", so its job goes to other nodes or waits. After each failure a node group's
launches wait a little longer (BACKOFF_SECONDS); after PROTECTED_MODE_FAILURES in a row it stops launching
(AWS ParallelCluster's protected mode): its power-saving nodes are drained with the reason and its errorInfo
says why, until the group is updated or PROTECTED_MODE_COOLDOWN_SECONDS pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..domain import ids, node_numbers
from ..providers.base import FAILED, GONE, RUNNING, ProviderError
from ..slurm import power_hook
from ..slurm.config import compress_hostlist, expand_hostlist
from ..slurm.nodes import node_flags
from ..store import events
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .failures import RuntimeFailure, RuntimePending

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("openpcs.scaling")

SCAN_SECONDS = 2.0
# After n launch failures in a row, a node group's next launch waits BACKOFF_SECONDS[n] (the last for more).
BACKOFF_SECONDS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
PROTECTED_MODE_FAILURES = 10
PROTECTED_MODE_COOLDOWN_SECONDS = 600.0
# Clusters whose slurmctld runs, so that their power requests can be acted on.
RUNNING_STATUSES = ("ACTIVE", "UPDATING", "UPDATE_FAILED")
# Node groups that may launch nodes.
LAUNCHING_STATUSES = ("CREATING", "ACTIVE", "UPDATING", "UPDATE_FAILED")
LAUNCH_FAILED_REASON = "Failed to launch backing instance (Error Code: {code})"
PROTECTED_REASON = "openpcs: protected mode"


@dataclass
class _Launches:
    """A node group's launch record: failures in a row, the last error code, and when it may launch again."""

    failures: int = 0
    code: str = ""
    retry_at: float = 0.0
    protected_since: float | None = None


class Scaler:
    def __init__(self, runtime: Runtime, cooldown: float = PROTECTED_MODE_COOLDOWN_SECONDS) -> None:
        self.runtime, self.cooldown = runtime, cooldown
        self.store, self.fleet, self.events = runtime.store, runtime.fleet, runtime.events
        self._launches: dict[str, _Launches] = {}
        self._last_scan: dict[str, float] = {}
        self._static_failures: dict[str, str] = {}  # node group id -> why its static nodes could not launch

    def static_failures(self, group: Resource) -> str | None:
        """Why the group's static nodes could not launch since the last call (they were launched here because
        Slurm powered them up), or None."""
        return self._static_failures.pop(group.id, None)

    def run(self) -> float | None:
        """Act on every cluster's power requests, watch its launches, and scan it when due. Returns how soon to
        look again (None: nothing is waiting)."""
        with self.store.read() as conn:
            clusters = [c for c in rows.clusters(conn) if c.status in RUNNING_STATUSES]
        soonest = None
        for cluster in clusters:
            try:
                soonest = _min(soonest, self._run_cluster(cluster))
            except (RuntimeFailure, RuntimePending) as exc:  # slurmctld busy or restarting: the next pass retries
                log.info("cluster %s: power saving waits: %s", cluster.id, exc)
                soonest = _min(soonest, 1.0)
        return soonest

    def _run_cluster(self, cluster: Resource) -> float | None:
        with self.store.read() as conn:
            groups = {g.name: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        requests = power_hook.take(self.runtime.layout.power_requests(cluster.id))
        # What Slurm powers up now decides (a request may be late, or the scan may have answered it already).
        rising = _powering_up(self.runtime.node_states(cluster)) if requests else set()
        for path, action, hostlist in requests:
            names = expand_hostlist(hostlist)
            if action == "resume":
                self._resume(cluster, groups, [n for n in names if n in rising],
                             "Slurm's ResumeProgram asked for it (a job needs it)")
            else:
                self._suspend(cluster, names)
            path.unlink(missing_ok=True)
        self._watch(cluster, groups)
        self._expire_protection(cluster, groups)
        if any(g.spec["scalingConfiguration"]["maxInstanceCount"] > g.spec["scalingConfiguration"]["minInstanceCount"]
               for g in groups.values()) or self._has_dynamic(cluster):
            due = self._last_scan.get(cluster.id, 0.0) + SCAN_SECONDS - time.monotonic()
            if due <= 0:
                self._scan(cluster, groups)
                self._last_scan[cluster.id] = time.monotonic()
                due = SCAN_SECONDS
            return due
        return None

    # -- Slurm's requests ---------------------------------------------------------------------------------

    def _resume(self, cluster: Resource, groups: dict[str, Resource], names: list[str], why: str) -> None:
        with self.store.read() as conn:
            have = {i.node_name for i in instance_rows.of_cluster(conn, cluster.id)}
        by_group: dict[str, list[str]] = {}
        for name in names:
            if name not in have:
                by_group.setdefault(name.rsplit("-", 1)[0], []).append(name)
        for group_name, wanted in by_group.items():
            group = groups.get(group_name)
            if group is None or group.status not in LAUNCHING_STATUSES:
                self._power_down(cluster, wanted, "openpcs: its node group is being deleted or is gone")
                continue
            launches = self._launches.setdefault(group.id, _Launches())
            if launches.protected_since is not None:
                self._power_down(cluster, wanted, LAUNCH_FAILED_REASON.format(code=launches.code), group.id)
                continue
            if time.monotonic() < launches.retry_at:
                log.info("%s: launches of %s wait %.1f s (backing off after %d failures)", group.id,
                         compress_hostlist(wanted), launches.retry_at - time.monotonic(), launches.failures)
                continue  # the scan launches them once the wait is over
            for name in wanted:
                self.events.emit(cluster.id, events.POWER_UP_REQUESTED, why, node_group_id=group.id, node=name)
            dynamic = [n for n in wanted if not node_numbers.is_static(group.spec, n)]
            static = [n for n in wanted if node_numbers.is_static(group.spec, n)]
            for names_, is_dynamic in ((dynamic, True), (static, False)):
                if not names_:
                    continue
                try:
                    _, refused = self.fleet.launch_new(cluster, group, names_, self.runtime.slurmd(cluster), why,
                                                       dynamic=is_dynamic, powered_up=True)
                    detail = ""
                except ProviderError as exc:
                    log.warning("%s: %s", group.id, exc.message)
                    refused, detail = {name: exc.code for name in names_}, exc.message
                if refused:
                    self.launch_failed(cluster, group, refused, detail)

    def _suspend(self, cluster: Resource, names: list[str]) -> None:
        wanted = set(names)
        with self.store.read() as conn:
            doomed = [i for i in instance_rows.of_cluster(conn, cluster.id) if i.node_name in wanted]
        group_of = {i.node_name: i.node_group_id for i in doomed}
        for name in names:
            self.events.emit(cluster.id, events.POWER_DOWN_REQUESTED, "Slurm's SuspendProgram powered it down",
                             node=name, node_group_id=group_of.get(name, ""))
        self._terminate(cluster, doomed, "Slurm powered its node down")

    # -- launches -----------------------------------------------------------------------------------------

    def _watch(self, cluster: Resource, groups: dict[str, Resource]) -> None:
        """Dynamic instances not yet registered: one whose bootstrap failed is a launch failure; one that runs
        ends its group's run of failures."""
        with self.store.read() as conn:
            launching = [i for i in instance_rows.of_cluster(conn, cluster.id) if i.dynamic and i.status == "pending"]
        if not launching:
            return
        statuses = self.fleet.look_at(launching, f"watch the launches of cluster {cluster.id}")
        if statuses is None:
            return
        by_id = {g.id: g for g in groups.values()}
        failed: dict[str, dict[str, str]] = {}
        for instance in launching:
            status = statuses[instance.id]
            if status.state in (FAILED, GONE):
                failed.setdefault(instance.node_group_id, {})[instance.node_name] = status.code or "InstanceGone"
                self.events.emit(cluster.id, events.LAUNCH_FAILED, status.detail, node_group_id=instance.node_group_id,
                                 node=instance.node_name, instance_id=instance.id)
            elif status.state == RUNNING and not self._protected(instance.node_group_id):
                self._launches.pop(instance.node_group_id, None)  # a launch worked: the run of failures ends
        for group_id, refused in failed.items():
            self._terminate(cluster, [i for i in launching if i.node_name in refused], "its bootstrap failed")
            if group_id in by_id:
                self.launch_failed(cluster, by_id[group_id], refused)
            else:
                self._power_down(cluster, list(refused), "openpcs: its node group is gone")

    def launch_failed(self, cluster: Resource, group: Resource, refused: dict[str, str], detail: str = "") -> None:
        """Nodes whose instance could not launch or register: powered down with PCS's reason (their jobs go to
        other nodes or wait), and counted towards the group's back-off and protected mode. A static node's
        failure is also kept for control.node_groups, whose change it fails (`static_failures`)."""
        for code in sorted(set(refused.values())):
            names = [name for name, c in refused.items() if c == code]
            self._power_down(cluster, names, LAUNCH_FAILED_REASON.format(code=code), group.id)
        static = [f"{name}: {LAUNCH_FAILED_REASON.format(code=code)}" + (f": {detail}" if detail else "")
                  for name, code in refused.items() if node_numbers.is_static(group.spec, name)]
        if static:
            self._static_failures[group.id] = "; ".join(static)
        launches = self._launches.setdefault(group.id, _Launches())
        launches.failures += len(refused)
        launches.code = list(refused.values())[-1]
        launches.retry_at = time.monotonic() + BACKOFF_SECONDS[min(launches.failures, len(BACKOFF_SECONDS) - 1)]
        if launches.failures >= PROTECTED_MODE_FAILURES and launches.protected_since is None:
            launches.protected_since = time.monotonic()
            message = self._protection_message(group, launches)
            log.warning("%s: %s", group.id, message)
            self.events.emit(cluster.id, events.PROTECTED_MODE, message, node_group_id=group.id)
            self._drain_idle_nodes(cluster, group, self.runtime.node_states(cluster))
            self._note(group, {"code": "ProtectedMode", "message": message})

    def _protected(self, group_id: str) -> bool:
        launches = self._launches.get(group_id)
        return launches is not None and launches.protected_since is not None

    def _note(self, group: Resource, notice: dict | None) -> None:
        """Show protected mode in the group's errorInfo (as a notice beside the errors the reconciler owns)."""
        with self.store.write() as conn:
            current = rows.by_id(conn, group.id)
            if current is None:
                return
            state = {key: value for key, value in current.state.items() if key != "notices"}
            if notice:
                state["notices"] = [notice]
            if state != current.state:
                rows.record_outcome(conn, current, current.status, state)

    def _protection_message(self, group: Resource, launches: _Launches) -> str:
        return (f"Node group {group.name} stopped launching instances after {launches.failures} consecutive launch "
                f"failures (last: Error Code: {launches.code}). It launches again after an "
                f"UpdateComputeNodeGroup, or {self.cooldown:.0f} s after it stopped.")

    def clear_protection(self, cluster: Resource, group: Resource, why: str = "the node group was updated") -> None:
        launches = self._launches.pop(group.id, None)
        if launches is None or launches.protected_since is None:
            return
        self._note(group, None)
        self.events.emit(cluster.id, events.PROTECTED_MODE_CLEARED, f"Launching again: {why}.", node_group_id=group.id)
        states = self.runtime.node_states(cluster)
        # Drained for protected mode; Slurm may have written a launch failure's reason over it since.
        drained = [name for name, (state, reason) in states.items()
                   if name.rsplit("-", 1)[0] == group.name and "DRAIN" in node_flags(state)
                   and reason.startswith((PROTECTED_REASON, LAUNCH_FAILED_REASON.split("(")[0]))]
        if drained:
            self.runtime.controller(cluster).scontrol("update", f"nodename={compress_hostlist(drained)}",
                                                      "state=undrain")

    def _expire_protection(self, cluster: Resource, groups: dict[str, Resource]) -> None:
        for group in groups.values():
            launches = self._launches.get(group.id)
            if launches and launches.protected_since is not None and \
                    time.monotonic() - launches.protected_since >= self.cooldown:
                self.clear_protection(cluster, group, f"{self.cooldown:.0f} s passed since it stopped")

    def _drain_idle_nodes(self, cluster: Resource, group: Resource, states: dict[str, tuple[str, str]]) -> None:
        """In protected mode, the group's power-saving nodes without an instance take no jobs: Slurm would only
        ask for them again. Done on entering it and at every scan while it lasts: a node whose power-down ends
        after the drain comes back IDLE (SlurmctldParameters=idle_on_node_suspend clears DRAIN)."""
        with self.store.read() as conn:
            have = {i.node_name for i in instance_rows.of_node_group(conn, group.id)}
        scaling = group.spec["scalingConfiguration"]
        idle = [f"{group.name}-{n}" for n in range(scaling["minInstanceCount"] + 1, scaling["maxInstanceCount"] + 1)
                if f"{group.name}-{n}" not in have and f"{group.name}-{n}" in states
                and "DRAIN" not in node_flags(states[f"{group.name}-{n}"][0])]
        if idle:
            launches = self._launches[group.id]
            self.runtime.controller(cluster).scontrol(
                "update", f"nodename={compress_hostlist(idle)}", "state=drain",
                f"reason={PROTECTED_REASON}: {launches.failures} consecutive launch failures "
                f"(Error Code: {launches.code})")

    # -- the level-triggered scan ---------------------------------------------------------------------------

    def _scan(self, cluster: Resource, groups: dict[str, Resource]) -> None:
        states = self.runtime.node_states(cluster)
        for group in groups.values():
            if self._protected(group.id):
                self._drain_idle_nodes(cluster, group, states)
        with self.store.read() as conn:
            instances = instance_rows.of_cluster(conn, cluster.id)
        have = {i.node_name for i in instances}
        group_ids = {g.id for g in groups.values()}
        powering_up = [name for name in _powering_up(states) if name not in have]
        if powering_up:
            self._resume(cluster, groups, powering_up, "Slurm is powering it up and it had no instance")
        powered_down = {name for name, (state, _) in states.items() if "POWERED_DOWN" in node_flags(state)}
        orphans = [i for i in instances if i.node_group_id not in group_ids
                   or (i.dynamic and i.status == "registered" and i.node_name in powered_down)]
        if orphans:
            self._terminate(cluster, orphans, "its node is powered down in Slurm, or its node group is gone")

    def _has_dynamic(self, cluster: Resource) -> bool:
        with self.store.read() as conn:
            return any(i.dynamic for i in instance_rows.of_cluster(conn, cluster.id))

    def _terminate(self, cluster: Resource, instances: list[instance_rows.Instance], why: str) -> None:
        try:
            self.fleet.terminate(cluster, instances, why)
        except ProviderError as exc:
            log.warning("cluster %s: %s; trying again later", cluster.id, exc.message)

    def _power_down(self, cluster: Resource, names: list[str], reason: str, group_id: str = "") -> None:
        if not names:
            return
        self.runtime.controller(cluster).scontrol("update", f"nodename={compress_hostlist(names)}",
                                                  "state=power_down_force", f"reason={reason}")
        for name in names:
            self.events.emit(cluster.id, events.POWERED_DOWN, reason, node_group_id=group_id, node=name)


def _powering_up(states: dict[str, tuple[str, str]]) -> set[str]:
    return {name for name, (state, _) in states.items() if "POWERING_UP" in node_flags(state)}


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
