"""Login node groups (HyperPod's Login instance groups): hosts from which users run Slurm's commands.

A login node is an instance like a compute node, launched through the fleet and brought up by the node agent,
which runs Slurm's sackd on it instead of slurmd (openpcs.agent.start_login_node): sackd fetches the cluster's
configuration from slurmctld, so the cluster is configless (SlurmctldParameters=enable_configless) while it has
login nodes. A login node is not a Slurm node: it is in no NodeName line and no partition. `openpcs exec --node`
runs a command with the configuration that node fetched. When the cluster's configuration changes, each login
node's sackd is started again, which fetches it anew: slurmctld's own push reaches only the one sackd that holds
the cluster's SlurmdPort (several login nodes share this host's address), and a sackd told to reconfigure by
SIGHUP reads its cache rather than fetching (read in Slurm 24.11's sackd.c).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..domain import node_numbers
from ..providers.base import FAILED, GONE, RUNNING, STOPPED
from ..store import instances as instance_rows
from ..store.resources import Resource
from .failures import RuntimeFailure, RuntimePending

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("openpcs.runtime")

LOGIN_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2


def is_login(group: Resource) -> bool:
    return group.spec.get("role") == "login"


class LoginNodes:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store, self.fleet = runtime.store, runtime.fleet
        self._waiting_since: dict[str, float] = {}

    def converge(self, cluster: Resource, group: Resource) -> dict[str, Any]:
        self.runtime.sync_config(cluster)  # configless, before any sackd asks for the configuration
        self.heal(cluster, group)
        with self.store.read() as conn:
            current = instance_rows.of_node_group(conn, group.id)
        statuses = self.fleet.describe(current)
        waiting = [i.node_name for i in current if statuses[i.id].state != RUNNING]
        if waiting:
            since = self._waiting_since.setdefault(group.id, time.monotonic())
            if time.monotonic() - since < LOGIN_TIMEOUT_SECONDS:
                raise RuntimePending(retry_after=POLL_SECONDS)
            self._waiting_since.pop(group.id, None)
            raise RuntimeFailure("NodesNotReady", f"login nodes {', '.join(waiting)} did not come up within "
                                                  f"{LOGIN_TIMEOUT_SECONDS:.0f} s")
        self._waiting_since.pop(group.id, None)
        return {key: value for key, value in group.state.items() if key not in ("errorInfo", "notices")}

    def heal(self, cluster: Resource, group: Resource) -> None:
        """The group's login nodes launched, those taken out of it terminated, stopped ones started again, failed
        ones replaced (RuntimeFailure says why they failed), and each one's configuration current."""
        wanted = {f"{group.name}-{n}" for n in node_numbers.static_numbers(group.spec)}
        with self.store.read() as conn:
            current = instance_rows.of_node_group(conn, group.id)
        self.fleet.terminate(cluster, [i for i in current if i.node_name not in wanted],
                             "taken out of its login group")
        current = [i for i in current if i.node_name in wanted]
        statuses = self.fleet.describe(current)
        broken = [i for i in current if statuses[i.id].state in (FAILED, GONE)]
        self.fleet.terminate(cluster, broken, "its bootstrap failed or it is gone")
        self.fleet.start_again(cluster, [i for i in current if statuses[i.id].state == STOPPED])
        have = {i.node_name for i in current if i not in broken}
        missing = sorted(wanted - have, key=node_numbers.number)
        if missing:
            _, refused = self.fleet.launch_new(cluster, group, missing, self.runtime.slurmd(cluster),
                                               f"a login node of {group.name}")
            if refused:
                raise RuntimeFailure("InstanceLaunchFailed", "; ".join(
                    f"{name}: Failed to launch backing instance (Error Code: {code})"
                    for name, code in refused.items()))
        self._refresh(cluster, [i for i in current if statuses[i.id].state == RUNNING])
        if broken:
            raise RuntimeFailure("NodeRegistrationFailed", "; ".join(
                f"{i.node_name} ({i.id}): {statuses[i.id].detail}" for i in broken))

    def remove(self, cluster: Resource, group: Resource) -> None:
        with self.store.read() as conn:
            current = instance_rows.of_node_group(conn, group.id)
        self.fleet.terminate(cluster, current, "its login group is being deleted")
        self._waiting_since.pop(group.id, None)
        self.runtime.sync_config(cluster)  # no login node left: no longer configless

    def _refresh(self, cluster: Resource, running: list[instance_rows.Instance]) -> None:
        """A login node whose fetched configuration differs from the cluster's fetches it again."""
        try:
            current = self.runtime.layout.slurm_conf(cluster.id).read_bytes()
        except OSError:
            return
        stale = []
        for instance in running:
            try:
                fetched = (self.runtime.layout.instance_dir(instance.id) / "slurm-conf" / "conf" / "slurm.conf")
                if fetched.read_bytes() != current:
                    stale.append(instance)
            except OSError:
                continue  # still fetching it
        if stale:
            log.info("cluster %s: login nodes %s fetch the configuration again", cluster.id,
                     ", ".join(i.node_name for i in stale))
            self.fleet.stop(stale)
            self.fleet.start_again(cluster, stale)
