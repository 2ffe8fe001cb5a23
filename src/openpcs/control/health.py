"""Health monitoring and repair of node groups' instances, as their instanceHealthChecks say.

Every health pass (control.reconciler) gives each registered instance a verdict from what the provider says
of it (gone, not answering, failing its health checks) and what Slurm says of its node (DOWN, FAIL), then acts
by the group's healthMonitoring.repairAction. A node Slurm only flags as not responding is left to Slurm, which
sets it DOWN once it has been silent for SlurmdTimeout: a busy node misses a ping and answers the next (at the end
of a 16,384-task array on 512 nodes, 12 missed one and were replaced while Slurm kept them in service).

- REPLACE drains the node, lets its jobs finish, then gives it a new instance under the same node name;
- AUTO repairs at once a node that can no longer run jobs (its instance gone, its slurmd not answering,
  Slurm has it DOWN), and replaces the rest (failing its health checks, drained by Slurm because a job could not
  be killed or its prolog failed) as REPLACE does;
- ISOLATE drains the node and keeps its instance for inspection;
- NONE only records the verdict.

Without instanceHealthChecks (or with healthMonitoring NONE) a group is repaired as AUTO would. A node an
administrator drained is left alone; one an administrator set DOWN is repaired as broken. A static node's
repair is a new instance; a dynamic node is powered down instead (Slurm powers it up again, on a new
instance, when a job needs it). What is under way is kept in Slurm itself, as the node's reason (REPLACING,
ISOLATED), so a restart of the control plane carries on where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..domain import node_numbers
from ..providers.base import GONE, IMPAIRED, UNRESPONSIVE
from ..slurm.config import compress_hostlist
from ..slurm.nodes import node_flags, node_is_busy
from ..store import events
from ..store import instances as instance_rows
from ..store.resources import Resource

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("openpcs.health")

# Reasons openpcs gives a node in Slurm: being drained to be replaced; its instance taken away, a new one
# coming (control.node_groups returns a node DOWN with an openpcs reason to service once that runs); kept
# for inspection.
REPLACING = "openpcs: replacing"
REPLACED = "openpcs: replaced"
ISOLATED = "openpcs: isolated"
# Reasons Slurm itself gives a node it drains because the node failed a job (slurmctld's node_mgr.c, proc_req.c,
# agent.c and job_mgr.c, and slurm_strerror's words for a step that could not be killed). Such a node takes no more
# jobs until someone acts: it is repaired like one failing its health checks. Any other reason is an
# administrator's, and that node is left alone.
SLURM_DRAIN_REASONS = ("Kill task failed", "batch job complete failure", "Prolog error", "Epilog error",
                       "Job env setup error", "Prolog/Epilog failure", "Duplicate jobid")
# A node whose new instance just registered may still be flagged not responding from its previous instance.
SETTLE_SECONDS = 5.0
_POWER_FLAGS = {"POWERING_UP", "POWERING_DOWN", "POWERED_DOWN", "POWER_DOWN"}


@dataclass(frozen=True)
class Verdict:
    instance: instance_rows.Instance
    problem: str
    can_run_jobs: bool  # still able to run jobs (failing health checks), or not (gone, silent, DOWN)


def repair_action(group: Resource) -> str:
    monitoring = (group.spec.get("instanceHealthChecks") or {}).get("healthMonitoring") or {}
    if monitoring.get("mode") == "STANDARD":
        return monitoring.get("repairAction") or "AUTO"
    return "AUTO"


class Health:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store, self.fleet, self.events = runtime.store, runtime.fleet, runtime.events
        self._seen: dict[tuple[str, str], str] = {}  # (group id, instance id) -> the problem last recorded for it

    def check(self, cluster: Resource, group: Resource) -> None:
        with self.store.read() as conn:
            instances = [i for i in instance_rows.of_node_group(conn, group.id) if i.status == "registered"]
        if not instances:
            return
        statuses = self.fleet.look_at(instances, f"judge the health of {group.id}'s instances")
        if statuses is None:
            return
        states = self.runtime.node_states(cluster)
        action = repair_action(group)
        for instance in instances:
            state, reason = states.get(instance.node_name, ("", ""))
            flags = node_flags(state)
            if not state or _POWER_FLAGS & flags or reason.startswith(ISOLATED):
                continue
            if "DRAIN" in flags and not reason.startswith(("openpcs", *SLURM_DRAIN_REASONS)):
                continue  # an administrator drained it: its jobs finish, it stays for inspection
            if reason.startswith(REPLACING):
                if not node_is_busy(state):
                    self.replace(cluster, group, instance, reason[len(REPLACING) + 2:])
                continue
            if reason.startswith("openpcs") or (time.time() - (instance.registered_at or 0.0) < SETTLE_SECONDS):
                flags = flags - {"NOT_RESPONDING", "DOWN"}  # openpcs's own doing, or left from the previous instance
            verdict = _verdict(instance, statuses[instance.id], flags, reason)
            if verdict is not None:
                self._act(cluster, group, verdict, action)
        live = {(group.id, i.id) for i in instances}
        self._seen = {key: value for key, value in self._seen.items() if key[0] != group.id or key in live}

    def _act(self, cluster: Resource, group: Resource, verdict: Verdict, action: str) -> None:
        instance, node = verdict.instance, verdict.instance.node_name
        if self._seen.get((group.id, instance.id)) != verdict.problem:
            self._seen[(group.id, instance.id)] = verdict.problem
            self.events.emit(cluster.id, events.HEALTH, f"{verdict.problem} (repairAction {action})",
                             node_group_id=group.id, node=node, instance_id=instance.id)
        if action == "NONE":
            return
        controller = self.runtime.controller(cluster)
        if action == "ISOLATE":
            controller.scontrol("update", f"nodename={node}", "state=drain",
                                f"reason={_reason(ISOLATED, verdict.problem)}")
            self.events.emit(cluster.id, events.REPAIR, f"isolated for inspection: {verdict.problem}",
                             node_group_id=group.id, node=node, instance_id=instance.id)
        elif action == "AUTO" and not verdict.can_run_jobs:
            self.replace(cluster, group, instance, verdict.problem)
        else:
            controller.scontrol("update", f"nodename={node}", "state=drain",
                                f"reason={_reason(REPLACING, verdict.problem)}")
            self.events.emit(cluster.id, events.REPAIR, f"draining, to replace once its jobs end: {verdict.problem}",
                             node_group_id=group.id, node=node, instance_id=instance.id)
            if not node_is_busy(self.runtime.node_states(cluster).get(node, ("", ""))[0]):
                self.replace(cluster, group, instance, verdict.problem)

    def isolate(self, cluster: Resource, group: Resource,
                instances: list[tuple[instance_rows.Instance, str]]) -> None:
        """Drain the nodes of instances that failed their deep health checks, and keep the instances."""
        states = self.runtime.node_states(cluster)
        for instance, problem in instances:
            if states.get(instance.node_name, ("", ""))[1].startswith(ISOLATED):
                continue
            self.runtime.controller(cluster).scontrol("update", f"nodename={instance.node_name}", "state=drain",
                                                      f"reason={_reason(ISOLATED, problem)}")
            self.events.emit(cluster.id, events.REPAIR, f"isolated for inspection: {problem}",
                             node_group_id=group.id, node=instance.node_name, instance_id=instance.id)

    def replace(self, cluster: Resource, group: Resource, instance: instance_rows.Instance, problem: str) -> None:
        """Take the instance away: Slurm sets the node DOWN (its jobs, if any, are requeued or end), and a static
        node gets a new instance under the same name (control.node_groups launches it, and returns the node to
        service once it runs), while a dynamic one is powered down."""
        node = instance.node_name
        controller = self.runtime.controller(cluster)
        static = node_numbers.is_static(group.spec, node)
        controller.scontrol("update", f"nodename={node}", "state=down" if static else "state=power_down_force",
                            f"reason={_reason(REPLACED, problem)}")
        self.fleet.terminate(cluster, [instance], f"repair: {problem}")
        self._seen.pop((group.id, instance.id), None)
        self.events.emit(cluster.id, events.REPAIR,
                         f"{'replacing its instance' if static else 'powered down'}: {problem}",
                         node_group_id=group.id, node=node, instance_id=instance.id)
        log.warning("%s: %s %s (%s)", group.id, "replacing" if static else "powering down",
                    compress_hostlist([node]), problem)


def _verdict(instance: instance_rows.Instance, status, flags: set[str], reason: str) -> Verdict | None:  # noqa: ANN001
    if status.state == GONE:
        return Verdict(instance, f"its instance is gone ({status.detail})", False)
    if status.state == IMPAIRED:
        return Verdict(instance, status.detail, status.code != UNRESPONSIVE)
    if "DOWN" in flags or "FAIL" in flags:
        return Verdict(instance, f"Slurm has it {'DOWN' if 'DOWN' in flags else 'FAIL'}"
                                 + (f" ({reason})" if reason else ""), False)
    if "DRAIN" in flags and reason.startswith(SLURM_DRAIN_REASONS):
        return Verdict(instance, f"Slurm drained it ({reason})", True)
    return None


def _reason(prefix: str, problem: str) -> str:
    return f"{prefix}: {problem}"[:200].replace('"', "'")
