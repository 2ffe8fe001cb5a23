"""A cluster's instances: recorded, launched through the provider, described and terminated, each step an
event. Used for static nodes (control.runtime), dynamic ones (control.scaling) and repairs (control.health).

A new instance is recorded with a bootstrap id (stored only as a hash) and an access key that may only call
RegisterComputeNodeGroupInstance; the provider gets both in the instance's bootstrap data and hands them to
the node agent. An instance the provider refused is forgotten again at once, with its key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..api.credentials import delete_keys, insert_key
from ..layout import DataLayout
from ..providers.base import Bounded, InstanceStatus, LaunchRequest, ProviderError
from ..store import events
from ..store import instances as instance_rows
from ..store.db import Store
from ..store.resources import Resource
from .events import Events
from .lifecycle import LifecycleScripts

log = logging.getLogger("openpcs.fleet")

REGISTER_SCOPE = "pcs:RegisterComputeNodeGroupInstance"


def deep_health_check(group: Resource) -> dict[str, str]:
    """The checks an instance runs on itself before it takes jobs, and what to do if they fail."""
    on_start = ((group.spec.get("instanceHealthChecks") or {}).get("deepHealthChecks") or {}).get("onStart") or {}
    return {"profile": on_start.get("profile") or "NONE", "repairAction": on_start.get("repairAction") or "AUTO"}


class Fleet:
    def __init__(self, layout: DataLayout, store: Store, provider: Bounded, events_: Events, api_url: str,
                 region: str, lifecycle: LifecycleScripts) -> None:
        self.layout, self.store, self.provider, self.events = layout, store, provider, events_
        self.lifecycle = lifecycle
        self.api_url, self.region = api_url, region

    def launch_new(self, cluster: Resource, group: Resource, names: Sequence[str], slurmd: str, why: str,
                   dynamic: bool = False,
                   powered_up: bool = False) -> tuple[list[instance_rows.Instance], dict[str, str]]:
        """Record and launch one new instance for each node name (`dynamic`: for power saving; `powered_up`:
        Slurm is powering the node up, so its slurmd reports a boot, as Slurm wants of such a node). Returns the
        instances launched, and node name -> error code of those the provider refused (already forgotten).
        ProviderError if the call failed as a whole (its instances are forgotten too)."""
        if not names:
            return [], {}
        lifecycle = self.lifecycle.prepare(cluster, group)  # before anything is recorded: it may fail the launch
        bootstraps = {}
        with self.store.write() as conn:
            issued = []
            for name in names:
                key = insert_key(conn, f"node group {group.id} instance", scope=REGISTER_SCOPE)
                instance, bootstrap_id = instance_rows.launch(conn, cluster.id, group.id, name, key.access_key_id,
                                                              dynamic)
                issued.append(instance)
                bootstraps[instance.id] = {
                    "instanceId": instance.id, "clusterIdentifier": cluster.id, "bootstrapId": bootstrap_id,
                    "endpointUrl": self.api_url, "region": self.region, "accessKeyId": key.access_key_id,
                    "secretAccessKey": key.secret_access_key, "slurmConf": str(self.layout.slurm_conf(cluster.id)),
                    "slurmd": slurmd, "logDir": str(self.layout.log_dir(cluster.id)),
                    "spoolDir": str(self.layout.spool_dir(cluster.id)),
                    "mungeSocket": str(self.layout.munge_socket(cluster.id)),
                    **({"role": "login"} if group.spec.get("role") == "login" else {}),
                    "deepHealthCheck": deep_health_check(group), "reportBoot": powered_up,
                    **({"lifecycle": lifecycle} if lifecycle else {})}
        instance_type = group.spec["instanceConfigs"][0]["instanceType"]
        requests = [LaunchRequest(i.id, cluster.id, group.id, i.node_name, instance_type, bootstraps[i.id])
                    for i in issued]
        try:
            refused = self.provider.launch(requests)
        except ProviderError as exc:  # the whole call failed: no instance is known to run
            try:
                self.provider.terminate([i.id for i in issued])  # whatever part of them the provider made
            except ProviderError:
                pass
            for instance in issued:
                self.events.emit(cluster.id, events.LAUNCH_FAILED, f"Error Code: {exc.code} ({exc.message})",
                                 node_group_id=group.id, node=instance.node_name, instance_id=instance.id)
            self._forget(issued)
            raise
        launched = [i for i in issued if i.id not in refused]
        for instance in launched:
            self.events.emit(cluster.id, events.LAUNCHED, why, node_group_id=group.id, node=instance.node_name,
                             instance_id=instance.id)
        failed = [i for i in issued if i.id in refused]
        for instance in failed:
            self.events.emit(cluster.id, events.LAUNCH_FAILED, f"Error Code: {refused[instance.id]}",
                             node_group_id=group.id, node=instance.node_name, instance_id=instance.id)
        self._forget(failed)
        return launched, {i.node_name: refused[i.id] for i in failed}

    def start_again(self, cluster: Resource, instances: Sequence[instance_rows.Instance]) -> dict[str, str]:
        """Start instances launched before whose node's daemons stopped; node name -> error code of those the
        provider could not start (it no longer has them)."""
        if not instances:
            return {}
        requests = [LaunchRequest(i.id, cluster.id, i.node_group_id, i.node_name, "") for i in instances]
        try:
            refused = self.provider.launch(requests)
        except ProviderError as exc:
            refused = {i.id: exc.code for i in instances}
        return {i.node_name: refused[i.id] for i in instances if i.id in refused}

    def describe(self, instances: Sequence[instance_rows.Instance]) -> dict[str, InstanceStatus]:
        """instance id -> status. Raises ProviderError if the provider does not answer."""
        return self.provider.describe([i.id for i in instances])

    def look_at(self, instances: Sequence[instance_rows.Instance], why: str) -> dict[str, InstanceStatus] | None:
        """describe, or None (and a warning saying what waits) if the provider does not answer: the next look
        tries again."""
        try:
            return self.describe(instances)
        except ProviderError as exc:
            log.warning("cannot %s: %s", why, exc.message)
            return None

    def stop(self, instances: Sequence[instance_rows.Instance]) -> None:
        self.provider.stop([i.id for i in instances])

    def terminate(self, cluster: Resource, instances: Sequence[instance_rows.Instance], why: str) -> None:
        """Terminate the instances, then forget them, their keys and their files. A provider that fails leaves
        them recorded (ProviderError): the next look tries again."""
        if not instances:
            return
        self.provider.terminate([i.id for i in instances])
        for instance in instances:
            self.events.emit(cluster.id, events.TERMINATED, why, node_group_id=instance.node_group_id,
                             node=instance.node_name, instance_id=instance.id)
        self._forget(instances)

    def _forget(self, instances: Sequence[instance_rows.Instance]) -> None:
        if instances:
            with self.store.write() as conn:
                delete_keys(conn, [i.access_key_id for i in instances if i.access_key_id])
                instance_rows.terminate(conn, [i.id for i in instances])
