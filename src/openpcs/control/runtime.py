"""Where resources become real: each cluster a running Slurm, each node group real nodes, each queue a partition.

The reconciler calls `converge_*` to make a resource match its spec and `remove_*` to take it away; both
are idempotent, so a restart can call them again at any point. Each returns the state the service
reports (endpoints, secret references), raises `RuntimePending` while daemons start or nodes register
(the reconciler looks again shortly), or raises `RuntimeFailure`, which becomes the resource's errorInfo.

A cluster's Slurm configuration is rendered (slurm.config.render, a pure function) from the cluster and
its queues and node groups, including those being deleted until they have drained (control.draining);
whenever it changes, slurmctld re-reads it (slurm.config.plan_reload says when it must restart instead, and
which partition changes scontrol makes live).
Its state is saved on stop, so queued and running jobs carry on. Node groups' instances are
control.node_groups' (static nodes) and control.scaling's (power-saving nodes), through control.fleet; a
cluster's slurmdbd and slurmrestd are control.services'.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..domain import ids, node_numbers, rules
from ..files import write_private
from ..layout import DataLayout
from ..objects import ObjectReader
from ..providers.base import Bounded
from ..providers.local import LocalProvider
from ..slurm import config as slurm_config
from ..slurm.builds import Catalog, VersionUnavailable
from ..slurm.controller import SlurmController
from ..slurm.nodes import node_states
from ..slurm.restd import ensure_jwt_key
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.db import Store
from ..store.resources import Resource
from .accounting import AccountingDatabases
from .draining import DEFAULT_DRAIN_TIMEOUT_SECONDS, DRAIN_POLL_SECONDS, Drains
from .events import Events
from .failures import RuntimeFailure, RuntimePending
from .fleet import Fleet
from .health import Health
from .lifecycle import LifecycleScripts
from .login_nodes import LoginNodes, is_login
from .node_groups import NodeGroups, instance_type
from .ports import Ports
from .scaling import PROTECTED_MODE_COOLDOWN_SECONDS, Scaler
from .services import ClusterServices, wants_accounting, wants_rest

__all__ = ["Runtime", "RuntimeFailure", "RuntimePending"]

log = logging.getLogger("openpcs.runtime")

MUNGE_KEY_BYTES = 1024

_POWER_SCRIPT = """#!/bin/sh
# Written by openpcs. slurmctld runs this as its {setting} with the nodes it wants {what}: the request goes
# to openpcs's control plane, which {does} their instances (openpcs.slurm.power_hook, control.scaling).
exec {python} -m openpcs.slurm.power_hook {requests} {wake} {action} "$@"
"""

_PROLOG_SCRIPT = """#!/bin/sh
# Written by openpcs: slurmctld's PrologSlurmctld. A batch job given nodes that are powering up waits in
# CONFIGURING for a check slurmctld makes every 30 s, or until this script ends. So: end as soon as none of
# the job's nodes is powering up, or the job has left them (requeued after a launch failure, cancelled).
# Always exit 0: a failing PrologSlurmctld would requeue the job.
export SLURM_CONF={conf}
PATH=/usr/bin:/bin
deadline=$(( $(date +%s) + {timeout} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    states=$({sinfo} -h -N -n "$SLURM_JOB_NODELIST" -o %t 2>/dev/null) || exit 0
    case "$states" in *'#'*|*'~'*) ;; *) exit 0 ;; esac
    [ "$({squeue} -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null)" = CONFIGURING ] || exit 0
    sleep 0.2
done
exit 0
"""


class Runtime:
    def __init__(self, data_dir: Path, store: Store, region: str, account: str, api_url: str, slurm: Catalog,
                 drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
                 protected_mode_cooldown: float = PROTECTED_MODE_COOLDOWN_SECONDS,
                 accounting_database: str | None = None, object_store: str | None = None) -> None:
        self.data_dir, self.store, self.slurm = data_dir, store, slurm
        self.region, self.account, self.api_url = region, account, api_url
        self.layout = DataLayout(data_dir)
        self.services = ClusterServices(self.layout, AccountingDatabases(self.layout, accounting_database),
                                        self._live_clusters)
        self.events = Events(store)
        scripts = LifecycleScripts(self.layout, ObjectReader(self.layout.buckets_dir, object_store, region))
        self.fleet = Fleet(self.layout, store, Bounded(LocalProvider(self.layout)), self.events, api_url, region,
                           scripts)
        self.drains = Drains(drain_timeout)
        self._synced: dict[str, tuple] = {}  # cluster id -> what its running configuration was rendered from
        self.node_groups = NodeGroups(self)
        self.login_nodes = LoginNodes(self)
        self.scaler = Scaler(self, protected_mode_cooldown)
        self.health = Health(self)

    def controller(self, cluster: Resource, *, stopping: bool = False) -> SlurmController:
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
        controller = self.controller(cluster)
        self.services.before_slurmctld(cluster, controller)
        self.sync_config(cluster)
        self.services.after_slurmctld(cluster, controller)
        state = {key: value for key, value in cluster.state.items() if key not in ("errorInfo", "notices", "jwtAuth")}
        state.setdefault("authKey", {
            "secretArn": f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:pcs!slurm-secret-"
                         f"{cluster.id}",
            "secretVersion": str(uuid.uuid5(uuid.NAMESPACE_URL, cluster.id))})
        return {**state, **self.services.state(cluster, self.region, self.account)}

    def heal_cluster(self, cluster: Resource) -> None:
        """Start an ACTIVE cluster's munged, slurmctld, slurmdbd (and its MariaDB) or slurmrestd again if it has
        stopped (crashed, killed, the host restarted); RuntimeFailure with the daemon's words if it will not start."""
        controller = self.controller(cluster)
        if controller.build_changed():  # its daemons (which outlive the server) are an earlier openpcs's
            self.sync_config(cluster)
        elif not controller.daemons_alive():
            log.warning("cluster %s: its munged or slurmctld had stopped; starting it again", cluster.id)
            controller.ensure_running()
        self.services.heal(cluster, controller)

    def remove_cluster(self, cluster: Resource) -> None:
        with self.store.read() as conn:
            leftover = instance_rows.of_cluster(conn, cluster.id)  # none, normally: node groups go first
        self.fleet.terminate(cluster, leftover, "its cluster is being deleted")
        self.services.remove(cluster, self.controller(cluster, stopping=True))
        self._synced.pop(cluster.id, None)
        Ports.of_cluster(self.layout, cluster.id).release()
        for directory in (self.layout.socket_dir(cluster.id), self.layout.cluster_dir(cluster.id)):
            self._guard("remove the cluster's files",
                        lambda d=directory: shutil.rmtree(d) if d.exists() else None)

    def _live_clusters(self) -> list[Resource]:
        with self.store.read() as conn:
            return [c for c in rows.clusters(conn) if c.status != "DELETING"]

    # -- compute node groups (control.node_groups) ----------------------------------------------------------

    def _groups_of(self, group: Resource) -> NodeGroups | LoginNodes:
        return self.login_nodes if is_login(group) else self.node_groups

    def converge_node_group(self, cluster: Resource, group: Resource) -> dict[str, Any]:
        return self._groups_of(group).converge(cluster, group)

    def heal_node_group(self, cluster: Resource, group: Resource) -> None:
        self._groups_of(group).heal(cluster, group)

    def remove_node_group(self, cluster: Resource, group: Resource) -> None:
        self._groups_of(group).remove(cluster, group)

    def node_states(self, cluster: Resource) -> dict[str, tuple[str, str]]:
        """node name -> (state, reason), from scontrol: sinfo would not show nodes that are in no partition."""
        return node_states(self.controller(cluster).scontrol("-o", "show", "node"))

    def slurmd(self, cluster: Resource) -> str:
        """The slurmd of the cluster's Slurm build, for its instances' bootstrap data."""
        return self.controller(cluster).binary("slurmd")

    # -- queues -----------------------------------------------------------------------------------

    def converge_queue(self, cluster: Resource, queue: Resource) -> dict[str, Any]:
        self.sync_config(cluster)
        state = dict(queue.state)
        state.pop("errorInfo", None)
        return state

    def remove_queue(self, cluster: Resource, queue: Resource) -> None:
        """Drain the partition (rendered State=DRAIN while the queue is DELETING), wait for its jobs, drop it."""
        self.sync_config(cluster)
        controller = self.controller(cluster)
        if controller.alive() and self.drains.busy(
                queue.id, f"queue {queue.name} ({queue.id})",
                lambda: controller.run("squeue", "--noheader", f"--partition={queue.name}", "--format=%i").split(),
                lambda _jobs: controller.run("scancel", f"--partition={queue.name}")):
            raise RuntimePending(retry_after=DRAIN_POLL_SECONDS)
        self.drains.done(queue.id)
        self.sync_config(cluster, removing=queue.id)

    # -- the cluster's Slurm --------------------------------------------------------------------

    def sync_config(self, cluster: Resource, removing: str | None = None) -> None:
        """Render the cluster's configuration from the store, write it, and have Slurm run by it."""
        with self.store.read() as conn:
            cluster = rows.by_id(conn, cluster.id) or cluster
            children = rows.children(conn, cluster.id)
            in_use = _numbers_in_use(instance_rows.of_cluster(conn, cluster.id))
        # What is being deleted stays while it drains: a node group until its nodes are stopped, a queue until
        # it is `removing`.
        groups = [r for r in children if r.kind == ids.NODE_GROUP and (r.status != "DELETING" or r.id in in_use)
                  and not is_login(r)]
        login = any(r.kind == ids.NODE_GROUP and is_login(r) and r.status != "DELETING" for r in children)
        queues = [r for r in children if r.kind == ids.QUEUE and r.id != removing]
        # The configuration is a function of these: unchanged since the last sync, with the daemons still up,
        # there is nothing to do (a node group waiting for its nodes or its drain asks again and again).
        inputs = (cluster.generation, removing, tuple(sorted((k, tuple(sorted(v))) for k, v in in_use.items())),
                  tuple((r.id, r.generation, r.status) for r in children))
        controller = self.controller(cluster)
        if self._synced.get(cluster.id) == inputs and controller.daemons_alive():
            return
        self._synced.pop(cluster.id, None)
        if controller.build_changed():
            self._switch_build(cluster, controller)
        spec = self._cluster_spec(cluster, groups, queues, in_use, configless=login)
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
            elif plan.partition_commands is None or not controller.change_partitions(plan.partition_commands):
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
        self.fleet.stop(instances)
        for instance in instances:
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
        self.fleet.stop(instances)
        self.fleet.start_again(cluster, instances)

    def _cluster_spec(self, cluster: Resource, groups: list[Resource], queues: list[Resource],
                      in_use: dict[str, set[int]], configless: bool) -> slurm_config.ClusterSpec:
        slurm = cluster.spec["slurmConfiguration"]
        ports = Ports.of_cluster(self.layout, cluster.id)
        groups = sorted(groups, key=lambda g: g.name)
        layouts = {g.id: _node_layout(g, in_use.get(g.id, set())) for g in groups}
        names = {g.id: _defined_names(g, layouts[g.id]) for g in groups}
        node_ports = ports.nodes([name for group_names in names.values() for name in group_names])
        names_by_id = {g.id: g.name for g in groups}
        run = self.layout.run_dir(cluster.id)
        conf_dir = self.layout.conf_dir(cluster.id)
        paths = slurm_config.SlurmPaths(
            conf_dir=str(conf_dir), state_dir=str(self.layout.cluster_dir(cluster.id) / "state"),
            log_dir=str(self.layout.log_dir(cluster.id)), spool_dir=str(self.layout.spool_dir(cluster.id)),
            run_dir=str(run), munge_socket=str(self.layout.munge_socket(cluster.id)),
            resume_program=str(self._power_script(cluster, "resume")),
            suspend_program=str(self._power_script(cluster, "suspend")),
            prolog_slurmctld=str(self._prolog_script(cluster)))
        return slurm_config.ClusterSpec(
            accounting_port=ports.daemon("slurmdbd") if wants_accounting(cluster) else None,
            jwt_key=ensure_jwt_key(self.layout, cluster.id) if wants_rest(cluster) else None,
            cluster_name=cluster.id, controller_port=ports.daemon("slurmctld"),
            login_port=ports.daemon("sackd") if configless else None,
            scale_down_idle_seconds=slurm["scaleDownIdleTimeInSeconds"],
            jobs_tracked=rules.SIZE_JOB_LIMITS[cluster.spec["size"]],
            custom_settings=_settings(slurm.get("slurmCustomSettings")),
            cgroup_settings=_settings(slurm.get("cgroupCustomSettings")),
            node_groups=tuple(_node_group_spec(g, *layouts[g.id], {n: node_ports[n] for n in names[g.id]})
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
        setting, what, does = {"resume": ("ResumeProgram", "powered up", "launches"),
                               "suspend": ("SuspendProgram", "powered down", "terminates")}[action]
        return self._script(cluster, f"{action}.sh", _POWER_SCRIPT.format(
            setting=setting, what=what, does=does, python=shlex.quote(sys.executable),
            requests=shlex.quote(str(self.layout.power_requests(cluster.id))),
            wake=shlex.quote(self.layout.wake_address().replace("\0", "@", 1)), action=action))

    def _prolog_script(self, cluster: Resource) -> Path:
        controller = self.controller(cluster)
        return self._script(cluster, "prolog-slurmctld.sh", _PROLOG_SCRIPT.format(
            conf=shlex.quote(str(self.layout.slurm_conf(cluster.id))), timeout=slurm_config.DEFAULT_RESUME_TIMEOUT,
            sinfo=shlex.quote(controller.binary("sinfo")), squeue=shlex.quote(controller.binary("squeue"))))

    def _script(self, cluster: Resource, name: str, text: str) -> Path:
        path = self.layout.conf_dir(cluster.id) / name
        content = text.encode()
        if not path.exists() or path.read_bytes() != content:
            write_private(path, content)
            path.chmod(0o700)
        return path




def _node_layout(group: Resource, in_use: set[int]) -> tuple[int, int, tuple[int, ...] | None]:
    """(static nodes, all nodes, listed node numbers or None) of a group: what its spec defines, but never without
    a node that still has an instance, so that a node being drained keeps its definition (and its jobs) until it
    is stopped."""
    numbers = node_numbers.listed(group.spec)
    if numbers is not None:
        kept = tuple(sorted(set(numbers) | in_use))
        return len(kept), len(kept), kept
    scaling = group.spec["scalingConfiguration"]
    highest = max(in_use, default=0)
    return max(scaling["minInstanceCount"], highest), max(scaling["maxInstanceCount"], highest), None


def _defined_names(group: Resource, layout: tuple[int, int, tuple[int, ...] | None]) -> list[str]:
    _, all_nodes, listed = layout
    return [f"{group.name}-{n}" for n in (listed if listed is not None else range(1, all_nodes + 1))]


def _node_group_spec(group: Resource, static_nodes: int, max_nodes: int, listed: tuple[int, ...] | None,
                     ports: dict[str, int]) -> slurm_config.NodeGroupSpec:
    itype = instance_type(group)
    slurm = group.spec.get("slurmConfiguration", {})
    idle = slurm.get("scaleDownIdleTimeInSeconds")
    return slurm_config.NodeGroupSpec(
        name=group.name, static_nodes=static_nodes, max_nodes=max_nodes, listed=listed,
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




def _settings(items: list[dict[str, str]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((s["parameterName"], s["parameterValue"]) for s in items or [])




def _numbers_in_use(instances: list[instance_rows.Instance]) -> dict[str, set[int]]:
    """node group id -> the node numbers that have an instance (groups without instances are absent)."""
    in_use: dict[str, set[int]] = {}
    for instance in instances:
        in_use.setdefault(instance.node_group_id, set()).add(node_numbers.number(instance.node_name))
    return in_use
