"""Where resources become real: each cluster a running Slurm, each node group real nodes, each queue a partition.

The reconciler calls `converge_*` to make a resource match its spec and `remove_*` to take it away; both
are idempotent, so a restart can call them again at any point. Each returns the state the service
reports (endpoints, secret references), raises `RuntimePending` while daemons start or nodes register
(the reconciler looks again shortly), or raises `RuntimeFailure`, which becomes the resource's errorInfo.

A cluster's Slurm configuration is rendered (slurm.config.render, a pure function) from the cluster and
its queues and node groups, including those being deleted until they have drained (control.draining);
whenever it changes, slurmctld re-reads it, or restarts if the set of nodes changed (Slurm 22.05 cannot
add or remove nodes otherwise). Its state is saved on stop, so queued and running jobs carry on.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..api.credentials import AccessKey, delete_keys, insert_key
from ..domain import ids, instance_types
from ..files import write_private
from ..layout import DataLayout
from ..providers.local import LocalProvider
from ..slurm import config as slurm_config
from ..slurm.builds import Catalog, VersionUnavailable
from ..slurm.controller import SlurmController
from ..slurm.nodes import POWER_DOWN_BEGUN, POWERING_DOWN, node_flags, node_is_busy, node_is_up, node_states
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.db import Store
from ..store.resources import Resource
from .draining import DEFAULT_DRAIN_TIMEOUT_SECONDS, DRAIN_POLL_SECONDS, Drains
from .failures import RuntimeFailure, RuntimePending
from .ports import Ports

__all__ = ["Runtime", "RuntimeFailure", "RuntimePending"]

log = logging.getLogger("openpcs.runtime")

MUNGE_KEY_BYTES = 1024
REGISTER_SCOPE = "pcs:RegisterComputeNodeGroupInstance"
# How long a node group may wait for its nodes before it fails with what Slurm says of them.
NODES_TIMEOUT_SECONDS = 120.0
# How often to ask Slurm for the state of nodes coming up: each ask is an RPC that slurmctld answers
# between the nodes' registrations.
NODES_POLL_SECONDS = 0.2
# slurmctld accepts a powered-up node's registration only if it reports a boot after the power_up request,
# compared at one-second resolution.
BOOT_AFTER_POWER_UP_SECONDS = 1.1

_POWER_SCRIPT = """#!/bin/sh
# Written by openpcs. Slurm's power saving calls this for the node group's CLOUD nodes (above
# minInstanceCount). Launching and stopping them on demand is not implemented yet: the request is logged.
echo "$(date -u +%FT%TZ) {action} $*" >> {log}
"""


class Runtime:
    def __init__(self, data_dir: Path, store: Store, region: str, account: str, api_url: str, slurm: Catalog,
                 drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS) -> None:
        self.data_dir, self.store, self.slurm = data_dir, store, slurm
        self.region, self.account, self.api_url = region, account, api_url
        self.layout = DataLayout(data_dir)
        self.provider = LocalProvider(self.layout)
        self._waiting_since: dict[str, float] = {}
        self.drains = Drains(drain_timeout)
        self._synced: dict[str, tuple] = {}  # cluster id -> what its running configuration was rendered from
        self._powered_up: dict[str, float] = {}  # node name -> when power_up was asked for it

    def _controller(self, cluster: Resource, *, stopping: bool = False) -> SlurmController:
        """The cluster's Slurm, run by the build of the version it asked for. A cluster being taken down needs
        no build (its daemons stop by PID)."""
        try:
            build = self.slurm.for_release(cluster.spec["scheduler"]["version"])
        except VersionUnavailable as exc:
            if stopping:
                return SlurmController(self.layout, cluster.id, None)
            raise RuntimeFailure("SlurmVersionUnavailable", str(exc)) from exc
        return SlurmController(self.layout, cluster.id, build)

    def _guard(self, what: str, action: Any) -> Any:
        try:
            return action()
        except OSError as exc:
            raise RuntimeFailure("InternalError", f"Could not {what}: {exc.strerror or exc} "
                                                  f"({exc.filename or self.data_dir})") from exc

    # -- clusters ---------------------------------------------------------------------------------

    def converge_cluster(self, cluster: Resource) -> dict[str, Any]:
        key = self.layout.munge_key(cluster.id)

        def prepare() -> None:
            self.layout.cluster_dir(cluster.id).mkdir(parents=True, exist_ok=True, mode=0o700)
            if not key.exists():
                write_private(key, secrets.token_bytes(MUNGE_KEY_BYTES))

        self._guard("prepare the cluster's directory and secret", prepare)
        ports = Ports(self.layout, cluster.id)
        port = ports.daemon("slurmctld")
        self._sync_config(cluster)
        state = dict(cluster.state)
        state.pop("errorInfo", None)
        state.setdefault("authKey", {
            "secretArn": f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:pcs!slurm-secret-"
                         f"{cluster.id}",
            "secretVersion": str(uuid.uuid5(uuid.NAMESPACE_URL, cluster.id))})
        state["endpoints"] = [{"type": "SLURMCTLD", "privateIpAddress": "127.0.0.1", "port": str(port)}]
        # slurmdbd and slurmrestd do not run yet: no endpoint, no JWT key is listed for them, and the cluster
        # says so beside its errorInfo (kept apart from it, which the health pass owns).
        state.pop("jwtAuth", None)
        slurm = cluster.spec["slurmConfiguration"]
        state["notices"] = [notice for wanted, notice in (
            (slurm["accounting"]["mode"] == "STANDARD", {
                "code": "AccountingNotRunning",
                "message": "accounting.mode is STANDARD, but this openpcs does not run slurmdbd yet: job accounting "
                           "(sacct) is off and no SLURMDBD endpoint is listed."}),
            (slurm["slurmRest"]["mode"] == "STANDARD", {
                "code": "SlurmRestNotRunning",
                "message": "slurmRest.mode is STANDARD, but this openpcs does not run slurmrestd yet: no SLURMRESTD "
                           "endpoint or JWT key is listed."})) if wanted]
        return state

    def heal_cluster(self, cluster: Resource) -> None:
        """Start an ACTIVE cluster's munged or slurmctld again if it has stopped (crashed, killed, the host
        restarted); RuntimeFailure with Slurm's words if it will not start."""
        controller = self._controller(cluster)
        if controller.build_changed():  # its daemons (which outlive the server) are an earlier openpcs's
            self._sync_config(cluster)
        elif not controller.daemons_alive():
            log.warning("cluster %s: its munged or slurmctld had stopped; starting it again", cluster.id)
            controller.ensure_running()

    def remove_cluster(self, cluster: Resource) -> None:
        with self.store.read() as conn:
            groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        for group in groups:  # none, normally: a cluster with node groups cannot be deleted
            self._terminate_instances(group)
        self._controller(cluster, stopping=True).stop()
        self._synced.pop(cluster.id, None)
        Ports(self.layout, cluster.id).release()
        for directory in (self.layout.socket_dir(cluster.id), self.layout.cluster_dir(cluster.id)):
            self._guard("remove the cluster's files",
                        lambda d=directory: shutil.rmtree(d) if d.exists() else None)

    # -- compute node groups ----------------------------------------------------------------------

    def converge_node_group(self, cluster: Resource, group: Resource) -> dict[str, Any]:
        """Nodes defined in Slurm up to maxInstanceCount; minInstanceCount of them launched and IDLE."""
        _instance_type(group)  # refuse an unknown type before anything starts
        wanted = group.spec["scalingConfiguration"]["minInstanceCount"]
        with self.store.read() as conn:
            current = _by_index(instance_rows.of_node_group(conn, group.id))
        surplus = current[wanted:]
        self._retire(cluster, group, surplus, f"minInstanceCount lowered to {wanted}")
        self._sync_config(cluster)
        if surplus:
            # Retired nodes below maxInstanceCount stay defined, as power-saving nodes now: powered down (which
            # also lifts their drain), as Slurm would leave a dynamic node it had stopped.
            kept = [i.node_name for i in surplus
                    if _node_index(i.node_name) <= group.spec["scalingConfiguration"]["maxInstanceCount"]]
            if kept:
                self._power_down(cluster, kept)
        issued = self._issue_instances(cluster, group, wanted)
        self._power_up(cluster, issued)
        self._launch_absent(cluster, issued)
        self._wait_for_nodes(cluster, group, [i.node_name for i in issued])
        state = dict(group.state)
        state.pop("errorInfo", None)
        return state

    def _power_down(self, cluster: Resource, names: list[str]) -> None:
        """Power down nodes whose instances are gone, and wait until Slurm has begun to: it does so in a thread
        of its own, and a power-down still pending when the group is ACTIVE could stop a node raised again."""
        hostlist = slurm_config.compress_hostlist(names)
        self._controller(cluster).scontrol("update", f"nodename={hostlist}", "state=power_down_force")
        deadline = time.monotonic() + NODES_TIMEOUT_SECONDS
        while True:
            states = self._node_states(cluster)
            pending = [n for n in names if not POWER_DOWN_BEGUN & _flags(states, n)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeFailure("NodesNotPoweredDown", f"Slurm did not power down {hostlist} within "
                                                            f"{NODES_TIMEOUT_SECONDS:.0f} s")
            time.sleep(NODES_POLL_SECONDS)

    def _power_up(self, cluster: Resource, instances: list[instance_rows.Instance]) -> None:
        """Static nodes about to launch that Slurm has powered down, or is powering down (minInstanceCount
        lowered, then raised again), ignore a slurmd that registers: Slurm wants them powered up, then a
        registration that reports a boot after that request (seconds resolution). So: end a power-down
        (`resume`), ask for `power_up`, and hold their launch (RuntimePending) until a second has passed; the
        agent reports a new instance's first slurmd start as a boot."""
        launching = [i.node_name for i in instances if self.provider.status(i.id)[0] == "absent"]
        if not launching:
            return
        controller = self._controller(cluster)
        states = self._node_states(cluster)
        flags = {name: _flags(states, name) for name in launching}
        # `resume` also lifts the drain openpcs set when it retired the node (slurmctld may keep it across the
        # reconfigure that makes the node static again).
        stopping = [name for name, flag in flags.items() if POWERING_DOWN & flag
                    or ("DRAIN" in flag and states[name][1].startswith("openpcs:"))]
        if stopping:
            controller.scontrol("update", f"nodename={slurm_config.compress_hostlist(stopping)}", "state=resume")
        down = [name for name, flag in flags.items() if (POWERING_DOWN | POWER_DOWN_BEGUN) & flag]
        if down:
            controller.scontrol("update", f"nodename={slurm_config.compress_hostlist(down)}", "state=power_up")
            self._powered_up.update({name: time.monotonic() for name in down})
        waiting = [name for name in launching
                   if time.monotonic() - self._powered_up.get(name, float("-inf")) < BOOT_AFTER_POWER_UP_SECONDS]
        if waiting:
            raise RuntimePending(retry_after=BOOT_AFTER_POWER_UP_SECONDS)
        for name in launching:
            self._powered_up.pop(name, None)

    def heal_node_group(self, cluster: Resource, group: Resource) -> None:
        """Launch again the instances of an ACTIVE group whose slurmd has stopped (crashed, killed, the host
        restarted); RuntimeFailure names those that cannot come back."""
        with self.store.read() as conn:
            issued = instance_rows.of_node_group(conn, group.id)
        self._launch_absent(cluster, issued, lost=True)

    def _launch_absent(self, cluster: Resource, instances: list[instance_rows.Instance], lost: bool = False) -> None:
        """Have the provider launch the instances it does not run. One that failed to come up is set DOWN in
        Slurm with the reason and raised as NodeRegistrationFailed; the next look tries it again."""
        to_launch, failed = [], []
        for instance in instances:
            status, detail = self.provider.status(instance.id)
            if status == "absent":
                to_launch.append(instance)
            elif status == "failed":
                failed.append((instance, detail))
        if lost and to_launch:
            log.warning("cluster %s: %s had stopped; launching again", cluster.id,
                        slurm_config.compress_hostlist([i.node_name for i in to_launch]))
        self.provider.launch([i.id for i in to_launch], self.layout.log_dir(cluster.id) / "agent.log")
        if failed:
            controller = self._controller(cluster)
            for instance, detail in failed:
                reason = f"openpcs: {detail}"[:200].replace('"', "'")
                controller.scontrol("update", f"nodename={instance.node_name}", "state=down", f"reason={reason}")
                self.provider.relaunch(instance.id)
            raise RuntimeFailure("NodeRegistrationFailed", "; ".join(
                f"{instance.node_name} ({instance.id}): {detail}" for instance, detail in failed))

    def _issue_instances(self, cluster: Resource, group: Resource, wanted: int) -> list[instance_rows.Instance]:
        """Have `wanted` instances recorded, named <group name>-<n> with the lowest free n, each with its
        bootstrap data and a key that may only register (surplus ones were retired before)."""
        written: list[str] = []
        try:
            with self.store.write() as conn:
                keep = _by_index(instance_rows.of_node_group(conn, group.id))[:wanted]
                used = {_node_index(i.node_name) for i in keep}
                free = (n for n in range(1, wanted + len(keep) + 2) if n not in used)
                for _ in range(wanted - len(keep)):
                    key = insert_key(conn, f"node group {group.id} instance", scope=REGISTER_SCOPE)
                    instance, bootstrap_id = instance_rows.launch(conn, cluster.id, group.id,
                                                                  f"{group.name}-{next(free)}", key.access_key_id)
                    written.append(instance.id)
                    self._guard("write the instance's bootstrap data",
                                lambda i=instance, b=bootstrap_id, k=key: self._write_bootstrap(cluster, i, b, k))
                    keep.append(instance)
        except BaseException:
            # The transaction rolled back: take back the files of instances that were never recorded.
            for instance_id in written:
                shutil.rmtree(self.layout.instance_dir(instance_id), ignore_errors=True)
            raise
        return keep

    def _write_bootstrap(self, cluster: Resource, instance: instance_rows.Instance, bootstrap_id: str,
                         key: AccessKey) -> None:
        data = {"instanceId": instance.id, "clusterIdentifier": cluster.id, "bootstrapId": bootstrap_id,
                "endpointUrl": self.api_url, "region": self.region, "accessKeyId": key.access_key_id,
                "secretAccessKey": key.secret_access_key, "slurmConf": str(self.layout.slurm_conf(cluster.id)),
                "slurmd": self._controller(cluster).binary("slurmd"),
                "logDir": str(self.layout.log_dir(cluster.id)),
                "spoolDir": str(self.layout.spool_dir(cluster.id))}
        write_private(self.layout.instance_dir(instance.id) / "bootstrap.json", orjson.dumps(data))

    def _wait_for_nodes(self, cluster: Resource, group: Resource, names: list[str]) -> None:
        if not names:
            return
        states = self._node_states(cluster)
        down = [n for n in names if not node_is_up(states.get(n, ("UNKNOWN", ""))[0])]
        if not down:
            self._waiting_since.pop(group.id, None)
            return
        since = self._waiting_since.setdefault(group.id, time.monotonic())
        if time.monotonic() - since < NODES_TIMEOUT_SECONDS:
            raise RuntimePending(retry_after=NODES_POLL_SECONDS)
        self._waiting_since.pop(group.id, None)
        raise RuntimeFailure("NodesNotReady", f"{len(down)} of {len(names)} nodes did not come up within "
                                              f"{NODES_TIMEOUT_SECONDS:.0f} s: " + "; ".join(
                                                  f"{n} is {states.get(n, ('UNKNOWN', ''))[0]}"
                                                  + (f" ({states[n][1]})" if states.get(n, ('', ''))[1] else "")
                                                  for n in down[:5]))

    def _node_states(self, cluster: Resource) -> dict[str, tuple[str, str]]:
        """node name -> (state, reason), from scontrol: sinfo would not show nodes that are in no partition."""
        return node_states(self._controller(cluster).scontrol("-o", "show", "node"))

    def remove_node_group(self, cluster: Resource, group: Resource) -> None:
        with self.store.read() as conn:
            issued = instance_rows.of_node_group(conn, group.id)
        self._retire(cluster, group, issued, "its node group is being deleted")
        self._waiting_since.pop(group.id, None)
        self._sync_config(cluster)  # the group has no instances left: its nodes leave the configuration

    def _retire(self, cluster: Resource, group: Resource, instances: list[instance_rows.Instance],
                why: str) -> None:
        """Take instances away without killing a job: drain their nodes and wait for their jobs to end
        (RuntimePending meanwhile), then terminate them."""
        if not instances:
            self.drains.done(group.id)
            return
        controller = self._controller(cluster, stopping=True)
        names = [i.node_name for i in instances]
        hostlist = slurm_config.compress_hostlist(names)
        if controller.running():
            if not self.drains.started(group.id):
                known = node_states(controller.scontrol("-o", "show", "node"))
                defined = [n for n in names if n in known]  # a node Slurm does not know has no job to drain
                if defined:
                    controller.scontrol("update", f"nodename={slurm_config.compress_hostlist(defined)}",
                                        "state=drain", f"reason=openpcs: {why}")
                    log.info("%s: draining %s (%s)", group.id, hostlist, why)

            def busy_nodes() -> list[str]:
                states = node_states(controller.scontrol("-o", "show", "node"))
                return [n for n in names if node_is_busy(states.get(n, ("", ""))[0])]

            def cancel(busy: list[str]) -> None:
                controller.run("scancel", f"--nodelist={slurm_config.compress_hostlist(busy)}")

            if self.drains.busy(group.id, f"nodes {hostlist} of {group.id}", busy_nodes, cancel):
                raise RuntimePending(retry_after=DRAIN_POLL_SECONDS)
        self.drains.done(group.id)
        self._terminate(instances)

    def _terminate_instances(self, group: Resource) -> None:
        with self.store.read() as conn:
            issued = instance_rows.of_node_group(conn, group.id)
        self._terminate(issued)

    def _terminate(self, instances: list[instance_rows.Instance]) -> None:
        """Stop the instances' daemons, then forget them, their keys and their files."""
        for instance in instances:
            self.provider.terminate(instance.id)
        if instances:
            with self.store.write() as conn:
                delete_keys(conn, [i.access_key_id for i in instances if i.access_key_id])
                instance_rows.terminate(conn, [i.id for i in instances])

    # -- queues -----------------------------------------------------------------------------------

    def converge_queue(self, cluster: Resource, queue: Resource) -> dict[str, Any]:
        self._sync_config(cluster)
        state = dict(queue.state)
        state.pop("errorInfo", None)
        return state

    def remove_queue(self, cluster: Resource, queue: Resource) -> None:
        """Drain the partition (rendered State=DRAIN while the queue is DELETING), wait for its jobs, drop it."""
        self._sync_config(cluster)
        controller = self._controller(cluster)
        if controller.running() and self.drains.busy(
                queue.id, f"queue {queue.name} ({queue.id})",
                lambda: controller.run("squeue", "--noheader", f"--partition={queue.name}", "--format=%i").split(),
                lambda _jobs: controller.run("scancel", f"--partition={queue.name}")):
            raise RuntimePending(retry_after=DRAIN_POLL_SECONDS)
        self.drains.done(queue.id)
        self._sync_config(cluster, removing=queue.id)

    # -- the cluster's Slurm --------------------------------------------------------------------

    def _sync_config(self, cluster: Resource, removing: str | None = None) -> None:
        """Render the cluster's configuration from the store, write it, and have Slurm run by it."""
        with self.store.read() as conn:
            cluster = rows.by_id(conn, cluster.id) or cluster
            children = rows.children(conn, cluster.id)
            highest = _highest_nodes(instance_rows.of_cluster(conn, cluster.id))
        # What is being deleted stays while it drains: a node group until its nodes are stopped, a queue until
        # it is `removing`.
        groups = [r for r in children if r.kind == ids.NODE_GROUP and (r.status != "DELETING" or r.id in highest)]
        queues = [r for r in children if r.kind == ids.QUEUE and r.id != removing]
        # The configuration is a function of these: unchanged since the last sync, with the daemons still up,
        # there is nothing to do (a node group waiting for its nodes or its drain asks again and again).
        inputs = (cluster.generation, removing, tuple(sorted(highest.items())),
                  tuple((r.id, r.generation, r.status) for r in children))
        controller = self._controller(cluster)
        if self._synced.get(cluster.id) == inputs and controller.daemons_alive():
            return
        self._synced.pop(cluster.id, None)
        if controller.build_changed():
            self._switch_build(cluster, controller)
        spec = self._cluster_spec(cluster, groups, queues, highest)
        self._guard("create the stand-in GPU device files", lambda: _gpu_devices(spec))
        files = slurm_config.render(spec)
        previous = controller.applied_config()
        plan = slurm_config.plan_reload(previous, files)
        was_running = controller.running()
        if not plan.changed and was_running:
            self._synced[cluster.id] = inputs
            return
        if plan.changed:
            controller.check_config(files)  # Slurm's own parser, before a running slurmctld sees the files
        self._guard("write the cluster's Slurm configuration", lambda: controller.write_config(files))
        try:
            if not was_running:
                controller.ensure_running()
                if controller.applied_config() != files:  # it ran, busy, on files older than these
                    controller.reconfigure()
            elif plan.restart_slurmctld:
                log.info("cluster %s: restarting slurmctld (%s)", cluster.id, "; ".join(plan.restart_slurmctld))
                controller.restart_slurmctld()
                controller.reconfigure()  # running slurmd re-read slurm.conf too
                self._restart_nodes(cluster, plan.restart_slurmd)
            else:
                controller.reconfigure()
        except RuntimeFailure:
            if previous and was_running:
                # Put back what ran before, so that a rejected change leaves the cluster as it was.
                controller.write_config(previous)
                if not controller.running():
                    controller.ensure_running()
            raise
        self._synced[cluster.id] = inputs

    def _switch_build(self, cluster: Resource, controller: SlurmController) -> None:
        """The cluster last ran on another Slurm (an earlier openpcs ran Debian 12's 22.05.8 for every version):
        stop its daemons, set its unreadable state aside, and point its nodes at the new build's slurmd. The
        controller starts on the new build below; the node groups launch their nodes again."""
        log.warning("cluster %s: moving from Slurm %s to Slurm %s", cluster.id,
                    (controller.recorded_build() or {}).get("version", "22.05.8"), controller.build.version)
        with self.store.read() as conn:
            instances = instance_rows.of_cluster(conn, cluster.id)
        for instance in instances:
            self.provider.stop(instance.id)
            bootstrap = self.layout.instance_dir(instance.id) / "bootstrap.json"
            if bootstrap.exists():
                data = orjson.loads(bootstrap.read_bytes())
                write_private(bootstrap, orjson.dumps({**data, "slurmd": controller.binary("slurmd")}))
        controller.stop()
        controller.set_aside_state()

    def _restart_nodes(self, cluster: Resource, names: tuple[str, ...]) -> None:
        """Nodes whose port or address moved: their slurmd restarts (the agent brings it up again)."""
        if not names:
            return
        with self.store.read() as conn:
            instances = [i for g in rows.children(conn, cluster.id, ids.NODE_GROUP)
                         for i in instance_rows.of_node_group(conn, g.id) if i.node_name in names]
        for instance in instances:
            self.provider.stop(instance.id)
        self.provider.launch([i.id for i in instances], self.layout.log_dir(cluster.id) / "agent.log")

    def _cluster_spec(self, cluster: Resource, groups: list[Resource], queues: list[Resource],
                      highest: dict[str, int]) -> slurm_config.ClusterSpec:
        slurm = cluster.spec["slurmConfiguration"]
        ports = Ports(self.layout, cluster.id)
        groups = sorted(groups, key=lambda g: g.name)
        sizes = {g.id: _node_counts(g, highest.get(g.id, 0)) for g in groups}
        names = {g.id: [f"{g.name}-{n}" for n in range(1, sizes[g.id][1] + 1)] for g in groups}
        node_ports = ports.nodes([name for group_names in names.values() for name in group_names])
        names_by_id = {g.id: g.name for g in groups}
        run = self.layout.run_dir(cluster.id)
        conf_dir = self.layout.conf_dir(cluster.id)
        paths = slurm_config.SlurmPaths(
            conf_dir=str(conf_dir), state_dir=str(self.layout.cluster_dir(cluster.id) / "state"),
            log_dir=str(self.layout.log_dir(cluster.id)), spool_dir=str(self.layout.spool_dir(cluster.id)),
            run_dir=str(run), munge_socket=str(self.layout.munge_socket(cluster.id)),
            resume_program=str(self._power_script(cluster, "resume")),
            suspend_program=str(self._power_script(cluster, "suspend")))
        return slurm_config.ClusterSpec(
            cluster_name=cluster.id, controller_port=ports.daemon("slurmctld"),
            scale_down_idle_seconds=slurm["scaleDownIdleTimeInSeconds"],
            custom_settings=_settings(slurm.get("slurmCustomSettings")),
            cgroup_settings=_settings(slurm.get("cgroupCustomSettings")),
            node_groups=tuple(_node_group_spec(g, *sizes[g.id], {n: node_ports[n] for n in names[g.id]})
                              for g in groups),
            queues=tuple(slurm_config.QueueSpec(
                name=q.name,
                node_groups=tuple(names_by_id[c["computeNodeGroupId"]]
                                  for c in q.spec.get("computeNodeGroupConfigurations") or []
                                  if c["computeNodeGroupId"] in names_by_id),
                custom_settings=_settings(q.spec.get("slurmConfiguration", {}).get("slurmCustomSettings")),
                draining=q.status == "DELETING")
                for q in sorted(queues, key=lambda q: q.name)),
            paths=paths)

    def _power_script(self, cluster: Resource, action: str) -> Path:
        path = self.layout.conf_dir(cluster.id) / f"{action}.sh"
        content = _POWER_SCRIPT.format(action=action, log=self.layout.log_dir(cluster.id) / "power.log").encode()
        if not path.exists() or path.read_bytes() != content:
            write_private(path, content)
            path.chmod(0o700)
        return path


def _flags(states: dict[str, tuple[str, str]], name: str) -> set[str]:
    """The flags of a node in `node_states`' answer; none for a node Slurm does not know."""
    return node_flags(states.get(name, ("", ""))[0])


def _node_counts(group: Resource, highest_running: int) -> tuple[int, int]:
    """(static nodes, all nodes) of a group: its scaling configuration, but never fewer than the nodes still
    running, so that a node being drained keeps its definition (and its jobs) until it is stopped."""
    scaling = group.spec["scalingConfiguration"]
    return (max(scaling["minInstanceCount"], highest_running), max(scaling["maxInstanceCount"], highest_running))


def _node_group_spec(group: Resource, static_nodes: int, max_nodes: int,
                     ports: dict[str, int]) -> slurm_config.NodeGroupSpec:
    itype = _instance_type(group)
    slurm = group.spec.get("slurmConfiguration", {})
    idle = slurm.get("scaleDownIdleTimeInSeconds")
    return slurm_config.NodeGroupSpec(
        name=group.name, static_nodes=static_nodes, max_nodes=max_nodes,
        cpus=itype.vcpus, real_memory_mib=itype.memory_mib, gres=itype.gres,
        custom_settings=_settings(slurm.get("slurmCustomSettings")), ports=ports,
        # -1 (or none) leaves the group's nodes to the cluster's scaleDownIdleTimeInSeconds.
        scale_down_idle_seconds=idle if idle is not None and idle >= 0 else None,
        gres_records=tuple(tuple(record.items()) for record in slurm.get("gresCustomSettings") or []))


def _gpu_devices(spec: slurm_config.ClusterSpec) -> None:
    """GPUs of the local provider's nodes are stand-ins: slurmd needs a device file for each, not a GPU."""
    for name in slurm_config.gpu_device_files(spec):
        device = Path(name)
        if not device.is_symlink():
            device.parent.mkdir(parents=True, exist_ok=True)
            device.symlink_to("/dev/null")


def _instance_type(group: Resource) -> instance_types.InstanceType:
    """The one size of the group's nodes, whichever of its instance types each lands on."""
    try:
        return instance_types.node_size([config["instanceType"] for config in group.spec["instanceConfigs"]])
    except ValueError as exc:  # the API refuses such groups; one stored by an older version may remain
        raise RuntimeFailure("UnsupportedInstanceTypes", str(exc)) from exc


def _settings(items: list[dict[str, str]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((s["parameterName"], s["parameterValue"]) for s in items or [])


def _node_index(node_name: str) -> int:
    return int(node_name.rsplit("-", 1)[1])


def _by_index(instances: list[instance_rows.Instance]) -> list[instance_rows.Instance]:
    return sorted(instances, key=lambda i: _node_index(i.node_name))


def _highest_nodes(instances: list[instance_rows.Instance]) -> dict[str, int]:
    """node group id -> the highest node number among its instances (groups without instances are absent)."""
    highest: dict[str, int] = {}
    for instance in instances:
        highest[instance.node_group_id] = max(highest.get(instance.node_group_id, 0), _node_index(instance.node_name))
    return highest
