"""Compute node groups made real: their static nodes launched and kept, their surplus taken away.

A group's nodes are `<group name>-<n>`, n = 1..maxInstanceCount. The first minInstanceCount are static: this
module launches them (through the fleet) and keeps them running. (A HyperPod instance group lists its nodes,
all static: domain.node_numbers.) The rest are Slurm power-saving nodes that
control.scaling launches and stops when Slurm asks. Lowering minInstanceCount or maxInstanceCount, or deleting
the group, drains the nodes taken away, waits for their jobs (control.draining), then terminates them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..domain import instance_types, node_numbers
from ..providers.base import DEEP_HEALTH_CHECK_FAILED, FAILED, GONE, RUNNING, STOPPED, InstanceStatus, ProviderError
from ..slurm.config import compress_hostlist
from ..slurm.nodes import POWER_DOWN_BEGUN, POWERING_DOWN, POWERING_UP, node_flags, node_is_busy, node_is_up
from ..store import events
from ..store import instances as instance_rows
from ..store.resources import Resource
from .draining import DRAIN_POLL_SECONDS
from .failures import RuntimeFailure, RuntimePending
from .fleet import deep_health_check
from .health import ISOLATED

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("openpcs.runtime")

# How long a node group may wait for its nodes before it fails with what Slurm says of them: two minutes, and more
# for each node, since nodes on one host start one after another (PER_NODE is several times what each took at 2,048).
NODES_TIMEOUT_SECONDS = 120.0
NODES_TIMEOUT_PER_NODE_SECONDS = 0.1
# How often to ask Slurm for the state of nodes coming up: each ask is an RPC that slurmctld answers between the
# nodes' registrations, and its answer grows with the node count, so many nodes are asked after less often.
NODES_POLL_SECONDS = 0.2
NODES_POLL_PER_NODE_SECONDS = 0.001


def nodes_timeout(count: int) -> float:
    return NODES_TIMEOUT_SECONDS + NODES_TIMEOUT_PER_NODE_SECONDS * count


def nodes_poll(count: int) -> float:
    return max(NODES_POLL_SECONDS, NODES_POLL_PER_NODE_SECONDS * count)


class NodeGroups:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store, self.fleet, self.drains = runtime.store, runtime.fleet, runtime.drains
        self._waiting_since: dict[str, float] = {}
        self._actions_done: dict[str, set[str]] = {}  # group id -> node action requests done (_node_actions)

    def converge(self, cluster: Resource, group: Resource) -> dict[str, Any]:
        """Nodes defined in Slurm up to maxInstanceCount; minInstanceCount of them launched and IDLE."""
        instance_type(group)  # refuse an unknown type before anything starts
        scaling = group.spec["scalingConfiguration"]
        wanted, most = scaling["minInstanceCount"], scaling["maxInstanceCount"]
        defined = set(node_numbers.defined_numbers(group.spec))
        with self.store.read() as conn:
            current = instance_rows.of_node_group(conn, group.id)
        # Static nodes above a lowered minimum (or taken out of a group that lists its nodes), and power-saving
        # nodes above a lowered maximum, go.
        lowered = [i for i in current if not i.dynamic and not node_numbers.is_static(group.spec, i.node_name)]
        beyond = [i for i in current if i.dynamic and node_numbers.number(i.node_name) not in defined]
        listed = node_numbers.listed(group.spec) is not None
        why = "; ".join(text for text, items in (
            ("taken out of its group" if listed else f"minInstanceCount lowered to {wanted}", lowered),
            (f"maxInstanceCount lowered to {most}", beyond)) if items)
        self._retire(cluster, group, lowered + beyond, why)
        self.runtime.sync_config(cluster)
        # Retired static nodes below maxInstanceCount stay defined, as power-saving nodes now: powered down (which
        # also lifts their drain), as Slurm would leave a dynamic node it had stopped.
        kept = [i.node_name for i in lowered if node_numbers.number(i.node_name) in defined]
        if kept:
            self._power_down(cluster, kept)
        self.runtime.scaler.clear_protection(cluster, group)  # an update is the operator's word to try again
        done = self._node_actions(cluster, group)
        static = self._ensure_static(cluster, group)
        self._wait_for_nodes(cluster, group, static)
        state = {key: value for key, value in group.state.items() if key not in ("errorInfo", "notices")}
        if done:
            state["nodeActionsDone"] = done
        return state

    def heal(self, cluster: Resource, group: Resource) -> None:
        """Keep an ACTIVE group's static nodes running: start again a slurmd that stopped (crashed, killed, the
        host restarted), replace an instance that failed or is gone. RuntimeFailure says what cannot come back."""
        self.runtime.health.check(cluster, group)  # first, so that a node it takes away is launched again below
        self._ensure_static(cluster, group)
        with self.store.read() as conn:
            dynamic = [i for i in instance_rows.of_node_group(conn, group.id) if i.dynamic and i.status == "registered"]
        self._start_stopped(cluster, group, dynamic)

    def remove(self, cluster: Resource, group: Resource) -> None:
        with self.store.read() as conn:
            issued = instance_rows.of_node_group(conn, group.id)
        self._retire(cluster, group, issued, "its node group is being deleted")
        self._waiting_since.pop(group.id, None)
        self._actions_done.pop(group.id, None)
        self.runtime.sync_config(cluster)  # the group has no instances left: its nodes leave the configuration

    def _node_actions(self, cluster: Resource, group: Resource) -> list[str]:
        """Reboots and replacements of single nodes asked for through the API (HyperPod's BatchRebootClusterNodes
        and BatchReplaceClusterNodes), each done once: a reboot stops the node's daemons and starts them again on
        the same instance; a replacement takes the instance away (control.health), and _ensure_static gives the
        node a new one under the same name. Returns the requests done, for the group's state."""
        asked = group.spec.get("nodeActions") or {}
        done = self._actions_done.setdefault(group.id, set())
        done |= set(group.state.get("nodeActionsDone") or [])
        todo = {instance_id: a for instance_id, a in asked.items() if a["request"] not in done}
        if todo:
            with self.store.read() as conn:
                instances = {i.id: i for i in instance_rows.of_node_group(conn, group.id)}
            reboot = [instances[i] for i, a in todo.items() if a["action"] == "reboot" and i in instances]
            if reboot:
                log.info("%s: rebooting %s", group.id, compress_hostlist([i.node_name for i in reboot]))
                self.fleet.stop(reboot)
                self.fleet.start_again(cluster, reboot)  # one it cannot start again is repaired as a stopped one
            for instance_id, action in todo.items():
                if action["action"] == "replace" and instance_id in instances:
                    self.runtime.health.replace(cluster, group, instances[instance_id],
                                                "a replacement was asked for through the API")
            done |= {a["request"] for a in todo.values()}
        return sorted(a["request"] for a in asked.values() if a["request"] in done)

    def _ensure_static(self, cluster: Resource, group: Resource) -> list[str]:
        """Launch the static nodes that have no instance, and start again those whose slurmd stopped; returns the
        static node names. A node Slurm has powered down is powered up instead: Slurm's ResumeProgram then has it
        launched (control.scaling), after the request, as Slurm wants of a node it powers up."""
        static = [f"{group.name}-{n}" for n in node_numbers.static_numbers(group.spec)]
        with self.store.read() as conn:
            have = {i.node_name: i for i in instance_rows.of_node_group(conn, group.id)}
        missing = [name for name in static if name not in have]
        launch_now = self._power_up(cluster, missing)
        failed = self.runtime.scaler.static_failures(group)
        if failed:
            raise RuntimeFailure("InstanceLaunchFailed", failed)
        if launch_now:
            launched, refused = self.fleet.launch_new(cluster, group, launch_now, self.runtime.slurmd(cluster),
                                                      f"a static node of {group.name} ({len(static)} in all)")
            if refused:
                self.runtime.scaler.launch_failed(cluster, group, refused)
                raise RuntimeFailure("InstanceLaunchFailed", "; ".join(
                    f"{name}: Failed to launch backing instance (Error Code: {code})"
                    for name, code in refused.items()))
        self._start_stopped(cluster, group, [have[name] for name in static if name in have])
        return static

    def _start_stopped(self, cluster: Resource, group: Resource, instances: list[instance_rows.Instance]) -> None:
        """Start again the instances whose node's daemons stopped. Those whose bootstrap failed are set DOWN in
        Slurm with the reason and terminated, and RuntimeFailure names them; the next look launches new ones. (A
        registered instance that is gone is control.health's to repair.) One that failed its deep health checks
        is repaired as their repairAction says: kept for inspection, its node drained (ISOLATE), or replaced by
        a new instance (RuntimePending while it comes up)."""
        statuses = self._describe(instances)
        unhealthy = [i for i in instances if statuses[i.id].code == DEEP_HEALTH_CHECK_FAILED]
        if unhealthy:
            instances = [i for i in instances if i not in unhealthy]
            failures = [(i, statuses[i.id].detail) for i in unhealthy]
            if deep_health_check(group)["repairAction"] == "ISOLATE":
                self.runtime.health.isolate(cluster, group, failures)
            else:
                for instance, problem in failures:
                    self.fleet.events.emit(cluster.id, events.LAUNCH_FAILED, problem, node_group_id=group.id,
                                           node=instance.node_name, instance_id=instance.id)
                self.fleet.terminate(cluster, unhealthy, "repair: it failed its deep health checks on start")
                raise RuntimePending(retry_after=NODES_POLL_SECONDS)  # the next look launches new instances
        stopped = [i for i in instances if statuses[i.id].state == STOPPED]
        broken = [(i, statuses[i.id]) for i in instances
                  if statuses[i.id].state == FAILED or (statuses[i.id].state == GONE and i.status != "registered")]
        if stopped:
            log.warning("cluster %s: %s had stopped; starting again", cluster.id,
                        compress_hostlist([i.node_name for i in stopped]))
        self._return_to_service(cluster, [i for i in instances if statuses[i.id].state == RUNNING])
        refused = self.fleet.start_again(cluster, stopped)
        broken += [(i, InstanceStatus(GONE, f"it could not be started again ({refused[i.node_name]})"))
                   for i in stopped if i.node_name in refused]
        if not broken:
            return
        controller = self.runtime.controller(cluster)
        for instance, status in broken:
            self.fleet.events.emit(cluster.id, events.LAUNCH_FAILED, status.detail, node_group_id=group.id,
                                   node=instance.node_name, instance_id=instance.id)
            reason = f"openpcs: {status.detail}"[:200].replace('"', "'")
            controller.scontrol("update", f"nodename={instance.node_name}", "state=down", f"reason={reason}")
        self.fleet.terminate(cluster, [i for i, _ in broken], "its bootstrap failed or it is gone")
        raise RuntimeFailure("NodeRegistrationFailed", "; ".join(
            f"{instance.node_name} ({instance.id}): {status.detail}" for instance, status in broken))

    def _return_to_service(self, cluster: Resource, running: list[instance_rows.Instance]) -> None:
        """Nodes openpcs set DOWN when it took their instance away (a repair, a failed bootstrap) return to service
        once the new one runs: Slurm keeps a node set DOWN that way (ReturnToService=1), as it keeps one an
        administrator set DOWN."""
        if not running:
            return
        states = self.runtime.node_states(cluster)
        back = [i.node_name for i in running if "DOWN" in _flags(states, i.node_name)
                and states[i.node_name][1].startswith("openpcs:") and not states[i.node_name][1].startswith(ISOLATED)]
        if back:
            self.runtime.controller(cluster).scontrol("update", f"nodename={compress_hostlist(back)}", "state=resume")
            log.info("cluster %s: %s back in service on new instances", cluster.id, compress_hostlist(back))

    def _describe(self, instances: list[instance_rows.Instance]) -> dict[str, InstanceStatus]:
        try:
            return self.fleet.describe(instances)
        except ProviderError as exc:
            raise RuntimeFailure(exc.code, exc.message) from exc

    def _power_down(self, cluster: Resource, names: list[str]) -> None:
        """Power down nodes whose instances are gone, and wait until Slurm has begun to: it does so in a thread
        of its own, and a power-down still pending when the group is ACTIVE could stop a node raised again."""
        hostlist = compress_hostlist(names)
        self.runtime.controller(cluster).scontrol("update", f"nodename={hostlist}", "state=power_down_force")
        deadline = time.monotonic() + nodes_timeout(len(names))
        while True:
            states = self.runtime.node_states(cluster)
            pending = [n for n in names if not POWER_DOWN_BEGUN & _flags(states, n)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeFailure("NodesNotPoweredDown", f"Slurm did not power down {hostlist} within "
                                                            f"{nodes_timeout(len(names)):.0f} s")
            time.sleep(nodes_poll(len(names)))

    def _power_up(self, cluster: Resource, names: list[str]) -> list[str]:
        """Of static nodes about to launch, those Slurm has powered down (or is powering down: minInstanceCount
        lowered, then raised again) ignore a slurmd that registers: ask Slurm to power them up (`resume` ends a
        power-down and lifts the drain openpcs set when it retired the node) and leave their launch to its
        ResumeProgram. Returns the others, to launch now."""
        if not names:
            return []
        controller = self.runtime.controller(cluster)
        states = self.runtime.node_states(cluster)
        flags = {name: _flags(states, name) for name in names}
        if any(flag & POWERING_DOWN and not flag & POWER_DOWN_BEGUN for flag in flags.values()):
            raise RuntimePending(retry_after=NODES_POLL_SECONDS)  # asked to power down, not begun: ends neither way
        stopping = [name for name, flag in flags.items() if POWERING_DOWN & flag
                    or ("DRAIN" in flag and states[name][1].startswith("openpcs:"))]
        if stopping:
            controller.scontrol("update", f"nodename={compress_hostlist(stopping)}", "state=resume")
        # Asked once: a node asked again while its power-up is pending or under way is powered up twice, and
        # Slurm's second request outlives the first (measured: a node left "IDLE+POWER_UP" once up).
        down = [name for name, flag in flags.items() if (POWERING_DOWN | POWER_DOWN_BEGUN) & flag
                and not POWERING_UP & flag]
        if down:
            controller.scontrol("update", f"nodename={compress_hostlist(down)}", "state=power_up")
        # A node Slurm is already powering up (asked before) is launched when its ResumeProgram runs.
        rising = [name for name, flag in flags.items() if POWERING_UP & flag]
        return [name for name in names if name not in down and name not in rising]

    def _wait_for_nodes(self, cluster: Resource, group: Resource, names: list[str]) -> None:
        if not names:
            return
        states = self.runtime.node_states(cluster)
        # A node isolated for inspection (its deep health checks failed) is not waited for.
        down = [n for n in names if not node_is_up(states.get(n, ("UNKNOWN", ""))[0])
                and not states.get(n, ("", ""))[1].startswith(ISOLATED)]
        if not down:
            self._waiting_since.pop(group.id, None)
            return
        since = self._waiting_since.setdefault(group.id, time.monotonic())
        if time.monotonic() - since < nodes_timeout(len(names)):
            raise RuntimePending(retry_after=nodes_poll(len(names)))
        self._waiting_since.pop(group.id, None)
        raise RuntimeFailure("NodesNotReady", f"{len(down)} of {len(names)} nodes did not come up within "
                                              f"{nodes_timeout(len(names)):.0f} s: " + "; ".join(
                                                  f"{n} is {states.get(n, ('UNKNOWN', ''))[0]}"
                                                  + (f" ({states[n][1]})" if states.get(n, ('', ''))[1] else "")
                                                  for n in down[:5]))

    def _retire(self, cluster: Resource, group: Resource, instances: list[instance_rows.Instance],
                why: str) -> None:
        """Take instances away without killing a job: drain their nodes and wait for their jobs to end
        (RuntimePending meanwhile), then terminate them."""
        if not instances:
            self.drains.done(group.id)
            return
        controller = self.runtime.controller(cluster, stopping=True)
        names = [i.node_name for i in instances]
        hostlist = compress_hostlist(names)
        if controller.alive():  # a busy one is waited for (ControllerBusy): its nodes' jobs must not be cut short
            if not self.drains.started(group.id):
                known = self.runtime.node_states(cluster)
                defined = [n for n in names if n in known]  # a node Slurm does not know has no job to drain
                if defined:
                    controller.scontrol("update", f"nodename={compress_hostlist(defined)}",
                                        "state=drain", f"reason=openpcs: {why}")
                    log.info("%s: draining %s (%s)", group.id, hostlist, why)

            def busy_nodes() -> list[str]:
                states = self.runtime.node_states(cluster)
                return [n for n in names if node_is_busy(states.get(n, ("", ""))[0])]

            def cancel(busy: list[str]) -> None:
                controller.run("scancel", f"--nodelist={compress_hostlist(busy)}")

            if self.drains.busy(group.id, f"nodes {hostlist} of {group.id}", busy_nodes, cancel):
                raise RuntimePending(retry_after=DRAIN_POLL_SECONDS)
        self.drains.done(group.id)
        self.fleet.terminate(cluster, instances, why)


def _flags(states: dict[str, tuple[str, str]], name: str) -> set[str]:
    """The flags of a node in `node_states`' answer; none for a node Slurm does not know."""
    return node_flags(states.get(name, ("", ""))[0])


def instance_type(group: Resource) -> instance_types.InstanceType:
    """The one size of the group's nodes, whichever of its instance types each lands on."""
    try:
        return instance_types.node_size([config["instanceType"] for config in group.spec["instanceConfigs"]])
    except ValueError as exc:  # the API refuses such groups; one stored by an older version may remain
        raise RuntimeFailure("UnsupportedInstanceTypes", str(exc)) from exc

