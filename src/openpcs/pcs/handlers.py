"""The PCS operations: the service's semantics only.

Input arrives parsed and already checked against the service model; output leaves as plain dicts that
the protocol layer shapes by the model. Every write is one store transaction that records the desired
state and the new status, then wakes the reconciler and returns at once.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ..api.errors import access_denied, conflict, field_error, not_found
from ..api.pagination import PageTokens
from ..domain import ids, rules
from ..store import events as event_rows
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .tags import check_tags, merged_tags
from .views import Views

# Resource types as errors name them.
RESOURCE_TYPE = {ids.CLUSTER: "cluster", ids.NODE_GROUP: "computeNodeGroup", ids.QUEUE: "queue"}
CLUSTER_UPDATABLE = ("ACTIVE", "UPDATE_FAILED", "SUSPENDED")
CHILD_UPDATABLE = ("ACTIVE", "UPDATE_FAILED")
# A cluster in these states takes no new node groups or queues.
CLUSTER_CLOSED = ("DELETING", "DELETE_FAILED", "CREATE_FAILED")
DEFAULT_MAX_RESULTS = 10
# What UpdateComputeNodeGroup replaces when given (slurmConfiguration is merged member by member instead).
NODE_GROUP_UPDATABLE = ("amiId", "securityGroupIds", "sshKeyName", "subnetIds", "launchTemplateMode",
                        "customLaunchTemplate", "purchaseOption", "spotOptions", "scalingConfiguration",
                        "iamInstanceProfileArn", "nodeLifecycleActions", "instanceHealthChecks")
# Given empty ("" or []) in an update, these go back to what the launch template says: the group drops its own.
CLEARED_BY_EMPTY = ("amiId", "securityGroupIds", "sshKeyName")


@dataclass
class ServiceContext:
    views: Views
    tokens: PageTokens
    max_clusters: int
    shared_secret: Callable[[str], bytes | None]
    scheduler_versions: tuple[str, ...]  # the Slurm versions this server runs (slurm.builds.Catalog.releases)


class PcsHandlers:
    # Writes the reconciler need not be woken for: an instance registering changes no resource (its node group sees
    # its node come up in Slurm, which it polls), and 2,048 of them waking it in turn kept it asking Slurm for every
    # node's state without a pause while the nodes started.
    WRITES_THAT_CHANGE_NO_RESOURCE = frozenset({"RegisterComputeNodeGroupInstance"})

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.views = ctx.views

    # -- clusters ---------------------------------------------------------------------------------

    def CreateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        rules.check_name("clusterName", p["clusterName"])
        rules.check_scheduler(p["scheduler"], self.ctx.scheduler_versions)
        rules.check_subnets("networking.subnetIds", p["networking"].get("subnetIds") or [])
        slurm = p.get("slurmConfiguration") or {}
        rules.check_cluster_slurm_configuration(slurm)
        check_tags(p.get("tags"))
        clusters = rows.count_clusters(conn)
        if clusters >= self.ctx.max_clusters:
            raise rules.quota_exceeded(
                f"This service allows at most {self.ctx.max_clusters} clusters and has {clusters}. Delete one, "
                "or start openpcs serve with a higher --max-clusters.", quota_code="clusters-per-region")
        self._unique(conn, ids.CLUSTER, "", p["clusterName"])
        spec = {
            "scheduler": p["scheduler"],
            "size": p["size"],
            "networking": {"networkType": "IPV4", **p["networking"]},
            "slurmConfiguration": rules.cluster_slurm_defaults(slurm),
        }
        cluster = rows.insert(conn, ids.CLUSTER, "", p["clusterName"], spec, p.get("tags"))
        return {"cluster": self.views.full(cluster)}

    def GetCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        return {"cluster": self.views.full(self._cluster(conn, p["clusterIdentifier"]))}

    def ListClusters(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        return self._list(conn, p, ids.CLUSTER, "", "clusters")

    def UpdateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        if cluster.status not in CLUSTER_UPDATABLE:
            raise conflict(f"Cluster {cluster.id} is {cluster.status}; it can be updated only when "
                           f"{', '.join(CLUSTER_UPDATABLE)}.", cluster.id, "cluster")
        for child in rows.children(conn, cluster.id):
            if child.status != "ACTIVE":
                raise conflict(f"Cluster {cluster.id} cannot be updated while its {RESOURCE_TYPE[child.kind]} "
                               f"{child.id} ({child.name}) is {child.status}. Wait until it is ACTIVE.",
                               child.id, RESOURCE_TYPE[child.kind])
        spec = copy.deepcopy(cluster.spec)
        if p.get("scheduler") is not None:
            # The request names only the version; the type stays SLURM.
            scheduler = {**spec["scheduler"], **p["scheduler"]}
            rules.check_scheduler(scheduler, self.ctx.scheduler_versions)
            rules.check_scheduler_update(spec["scheduler"]["version"], scheduler["version"])
            spec["scheduler"] = scheduler
        slurm, changes = spec["slurmConfiguration"], p.get("slurmConfiguration") or {}
        for key, value in changes.items():
            slurm[key] = {**slurm.get(key, {}), **value} if key in ("accounting", "slurmRest") else value
        rules.check_cluster_slurm_configuration(changes)
        rows.request_change(conn, cluster, "UPDATING", spec)
        return {"cluster": self.views.full(cluster)}

    def DeleteCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        self._not_deleting(cluster)
        for child in rows.children(conn, cluster.id):
            kind = RESOURCE_TYPE[child.kind]
            raise conflict(f"Cluster {cluster.id} still has {kind} {child.id} ({child.name}). Delete its queues "
                           "and compute node groups first.", child.id, kind)
        rows.request_change(conn, cluster, "DELETING")
        return {}

    # -- compute node groups ----------------------------------------------------------------------

    def CreateComputeNodeGroup(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._open_cluster(conn, p["clusterIdentifier"])
        rules.check_name("computeNodeGroupName", p["computeNodeGroupName"])
        spec = {
            "amiId": p.get("amiId"),
            "securityGroupIds": p.get("securityGroupIds"),
            "sshKeyName": p.get("sshKeyName"),
            "subnetIds": p["subnetIds"],
            "purchaseOption": p.get("purchaseOption") or "ONDEMAND",
            "launchTemplateMode": p.get("launchTemplateMode") or "CUSTOM",
            "customLaunchTemplate": p.get("customLaunchTemplate"),
            "iamInstanceProfileArn": p["iamInstanceProfileArn"],
            "scalingConfiguration": p["scalingConfiguration"],
            "instanceConfigs": p["instanceConfigs"],
            "spotOptions": p.get("spotOptions"),
            "slurmConfiguration": _node_group_slurm({"slurmCustomSettings": [], "gresCustomSettings": []},
                                                    p.get("slurmConfiguration") or {}),
            "nodeLifecycleActions": p.get("nodeLifecycleActions"),
            "instanceHealthChecks": p.get("instanceHealthChecks"),
        }
        _check_node_group(spec)
        check_tags(p.get("tags"))
        rules.check_count_quota("compute node groups", rows.count(conn, ids.NODE_GROUP, cluster.id),
                                rules.NODE_GROUPS_PER_CLUSTER, "node-groups-per-cluster", cluster.id)
        self._check_instance_quota(conn, cluster, spec, exclude=None)
        self._unique(conn, ids.NODE_GROUP, cluster.id, p["computeNodeGroupName"])
        group = rows.insert(conn, ids.NODE_GROUP, cluster.id, p["computeNodeGroupName"],
                            _drop_none(spec), p.get("tags"))
        return {"computeNodeGroup": self.views.full(group)}

    def GetComputeNodeGroup(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        return {"computeNodeGroup": self.views.full(
            self._child(conn, cluster, ids.NODE_GROUP, p["computeNodeGroupIdentifier"]))}

    def ListComputeNodeGroups(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        return self._list(conn, p, ids.NODE_GROUP, cluster.id, "computeNodeGroups")

    def UpdateComputeNodeGroup(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        group = self._child(conn, cluster, ids.NODE_GROUP, p["computeNodeGroupIdentifier"])
        self._child_updatable(cluster, group)
        spec = copy.deepcopy(group.spec)
        spec.setdefault("launchTemplateMode", "CUSTOM")  # a group stored before the mode existed had a template
        for key in NODE_GROUP_UPDATABLE:
            if p.get(key) is not None:
                spec[key] = p[key]
        for key in CLEARED_BY_EMPTY:
            if p.get(key) in ("", []):
                del spec[key]
        if p.get("launchTemplateMode") == "MANAGED" and p.get("customLaunchTemplate") is None:
            spec.pop("customLaunchTemplate", None)  # switching to MANAGED lets go of the custom template
        spec["slurmConfiguration"] = _node_group_slurm(spec["slurmConfiguration"], p.get("slurmConfiguration") or {})
        if spec.get("purchaseOption") != "SPOT" and p.get("spotOptions") is None:
            spec.pop("spotOptions", None)  # a group moved off SPOT keeps no stale spot options
        _check_node_group(spec)
        self._check_instance_quota(conn, cluster, spec, exclude=group.id)
        rows.request_change(conn, group, "UPDATING", _drop_none(spec))
        return {"computeNodeGroup": self.views.full(group)}

    def DeleteComputeNodeGroup(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        group = self._child(conn, cluster, ids.NODE_GROUP, p["computeNodeGroupIdentifier"])
        self._not_deleting(group)
        for queue in rows.children(conn, cluster.id, ids.QUEUE):
            if group.id in _queue_groups(queue.spec):
                raise conflict(f"Compute node group {group.id} ({group.name}) is used by queue {queue.id} "
                               f"({queue.name}). Remove it from the queue or delete the queue first.",
                               queue.id, "queue")
        rows.request_change(conn, group, "DELETING")
        return {}

    # -- queues -----------------------------------------------------------------------------------

    def CreateQueue(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._open_cluster(conn, p["clusterIdentifier"])
        rules.check_name("queueName", p["queueName"])
        spec = {"computeNodeGroupConfigurations": p.get("computeNodeGroupConfigurations") or [],
                "slurmConfiguration": {"slurmCustomSettings": [], **(p.get("slurmConfiguration") or {})}}
        self._check_queue(conn, cluster, spec)
        check_tags(p.get("tags"))
        rules.check_count_quota("queues", rows.count(conn, ids.QUEUE, cluster.id),
                                rules.QUEUES_PER_CLUSTER, "queues-per-cluster", cluster.id)
        self._unique(conn, ids.QUEUE, cluster.id, p["queueName"])
        queue = rows.insert(conn, ids.QUEUE, cluster.id, p["queueName"], spec, p.get("tags"))
        return {"queue": self.views.full(queue)}

    def GetQueue(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        return {"queue": self.views.full(self._child(conn, cluster, ids.QUEUE, p["queueIdentifier"]))}

    def ListQueues(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        return self._list(conn, p, ids.QUEUE, cluster.id, "queues")

    def UpdateQueue(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        queue = self._child(conn, cluster, ids.QUEUE, p["queueIdentifier"])
        self._child_updatable(cluster, queue)
        spec = copy.deepcopy(queue.spec)
        for key in ("computeNodeGroupConfigurations", "slurmConfiguration"):
            if p.get(key) is not None:
                spec[key] = p[key]
        self._check_queue(conn, cluster, spec)
        rows.request_change(conn, queue, "UPDATING", spec)
        return {"queue": self.views.full(queue)}

    def DeleteQueue(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["clusterIdentifier"])
        queue = self._child(conn, cluster, ids.QUEUE, p["queueIdentifier"])
        self._not_deleting(queue)
        rows.request_change(conn, queue, "DELETING")
        return {}

    # -- instances --------------------------------------------------------------------------------

    def RegisterComputeNodeGroupInstance(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        # Every refusal looks the same, so a caller learns nothing about which clusters or ids exist.
        refused = access_denied("The bootstrapId is not valid for this cluster. Only an instance that "
                                "openpcs launched for the cluster can register, with its own bootstrapId.")
        # A HyperPod cluster's instances register by its id too: those ids have no pcs_ prefix.
        cluster = rows.find(conn, ids.CLUSTER, p["clusterIdentifier"]) or rows.by_id(conn, p["clusterIdentifier"])
        if cluster is None or cluster.kind != ids.CLUSTER or cluster.status in ("DELETING", "CREATE_FAILED"):
            raise refused
        instance = instance_rows.by_bootstrap_id(conn, cluster.id, p["bootstrapId"])
        if instance is None:
            raise refused
        secret = self.ctx.shared_secret(cluster.id)
        if secret is None:
            raise refused
        instance_rows.mark_registered(conn, instance)
        event_rows.record(conn, cluster.id, event_rows.REGISTERED, "RegisterComputeNodeGroupInstance",
                          node_group_id=instance.node_group_id, node=instance.node_name, instance_id=instance.id)
        return {"nodeID": instance.node_name, "sharedSecret": base64.b64encode(secret).decode(),
                "endpoints": cluster.state.get("endpoints", [])}

    # -- tags -------------------------------------------------------------------------------------

    def TagResource(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        resource = self._by_arn(conn, p["resourceArn"])
        check_tags(p["tags"])
        rows.set_tags(conn, resource, merged_tags(resource, p["tags"]))
        return {}

    def UntagResource(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        resource = self._by_arn(conn, p["resourceArn"])
        rows.set_tags(conn, resource, {k: v for k, v in resource.tags.items() if k not in p["tagKeys"]})
        return {}

    def ListTagsForResource(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        return {"tags": self._by_arn(conn, p["resourceArn"]).tags}

    # -- shared checks ----------------------------------------------------------------------------

    def _cluster(self, conn: Connection, identifier: str) -> Resource:
        cluster = rows.find(conn, ids.CLUSTER, identifier)
        if cluster is None:
            raise not_found("cluster", identifier, f"Cluster {identifier!r} does not exist. Check the name or "
                                                   "id with ListClusters.")
        return cluster

    def _open_cluster(self, conn: Connection, identifier: str) -> Resource:
        cluster = self._cluster(conn, identifier)
        if cluster.status in CLUSTER_CLOSED:
            raise conflict(f"Cluster {cluster.id} is {cluster.status} and takes no new compute node groups "
                           "or queues.", cluster.id, "cluster")
        return cluster

    def _child(self, conn: Connection, cluster: Resource, kind: str, identifier: str) -> Resource:
        child = rows.find(conn, kind, identifier, cluster.id)
        if child is None:
            noun = "Compute node group" if kind == ids.NODE_GROUP else "Queue"
            raise not_found(RESOURCE_TYPE[kind], identifier,
                            f"{noun} {identifier!r} does not exist in cluster {cluster.id} ({cluster.name}).")
        return child

    def _child_updatable(self, cluster: Resource, child: Resource) -> None:
        kind = RESOURCE_TYPE[child.kind]
        if child.status not in CHILD_UPDATABLE:
            raise conflict(f"The {kind} {child.id} is {child.status}; it can be updated only when "
                           f"{' or '.join(CHILD_UPDATABLE)}.", child.id, kind)
        if cluster.status not in ("ACTIVE", "UPDATE_FAILED"):
            raise conflict(f"Cluster {cluster.id} is {cluster.status}; its {kind}s can be updated only while "
                           "it is ACTIVE.", cluster.id, "cluster")

    def _not_deleting(self, resource: Resource) -> None:
        if resource.status == "DELETING":
            kind = RESOURCE_TYPE[resource.kind]
            raise conflict(f"The {kind} {resource.id} is already being deleted.", resource.id, kind)

    def _unique(self, conn: Connection, kind: str, cluster_id: str, name: str) -> None:
        existing = rows.find(conn, kind, name, cluster_id)
        if existing is not None:
            kind_name = RESOURCE_TYPE[kind]
            raise conflict(f"A {kind_name} named {name!r} already exists ({existing.id}). Choose another name.",
                           existing.id, kind_name)

    def _check_instance_quota(self, conn: Connection, cluster: Resource, spec: dict[str, Any],
                              exclude: str | None) -> None:
        total = spec["scalingConfiguration"]["maxInstanceCount"] + sum(
            group.spec["scalingConfiguration"]["maxInstanceCount"]
            for group in rows.children(conn, cluster.id, ids.NODE_GROUP) if group.id != exclude)
        rules.check_instance_quota(cluster.spec["size"], cluster.id, total)

    def _check_queue(self, conn: Connection, cluster: Resource, spec: dict[str, Any]) -> None:
        rules.check_custom_settings("slurmConfiguration.slurmCustomSettings",
                                    spec["slurmConfiguration"].get("slurmCustomSettings") or [],
                                    rules.QUEUE_SLURM_SETTINGS)
        groups = {g.id: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        seen: set[str] = set()
        for index, config in enumerate(spec["computeNodeGroupConfigurations"], start=1):
            field = f"computeNodeGroupConfigurations.{index}.member.computeNodeGroupId"
            group_id = config.get("computeNodeGroupId")
            if not group_id:
                raise field_error(field, "computeNodeGroupId is required")
            group = groups.get(group_id)
            if group is None or group.status in ("DELETING", "DELETE_FAILED"):
                raise field_error(field, f"Compute node group {group_id!r} is not a compute node group of "
                                         f"cluster {cluster.id} ({cluster.name}). Use an id from "
                                         "ListComputeNodeGroups.")
            if group_id in seen:
                raise field_error(field, f"Compute node group {group_id!r} is listed more than once")
            seen.add(group_id)

    def _by_arn(self, conn: Connection, arn: str) -> Resource:
        parsed = ids.parse_arn(arn)
        resource = None
        if parsed and (parsed[0], parsed[1]) == (self.views.region, self.views.account):
            resource = rows.by_id(conn, parsed[3])
        if resource is None or resource.kind != parsed[2]:
            raise not_found("resource", arn, f"No PCS resource has the ARN {arn!r}.")
        return resource

    def _list(self, conn: Connection, p: dict[str, Any], kind: str, cluster_id: str, member: str) -> dict:
        scope = f"{kind}:{cluster_id}"
        after = self.ctx.tokens.position(p.get("nextToken"), scope)
        limit = p.get("maxResults") or DEFAULT_MAX_RESULTS
        found = rows.page(conn, kind, cluster_id, after, limit + 1)
        out: dict[str, Any] = {member: [self.views.summary(r) for r in found[:limit]]}
        if len(found) > limit:
            out["nextToken"] = self.ctx.tokens.issue(scope, found[limit - 1].seq)
        return out


def _node_group_slurm(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A node group's slurmConfiguration with the members `changes` gives replaced. Its own
    scaleDownIdleTimeInSeconds overrides the cluster's; -1 removes the override, so the cluster's applies."""
    slurm = {**current, **{key: value for key, value in changes.items() if value is not None}}
    if slurm.get("scaleDownIdleTimeInSeconds") == -1:
        del slurm["scaleDownIdleTimeInSeconds"]
    return slurm


def _check_node_group(spec: dict[str, Any]) -> None:
    rules.check_subnets("subnetIds", spec["subnetIds"])
    rules.check_launch_template_mode(spec)
    rules.check_instance_profile(spec["iamInstanceProfileArn"])
    rules.check_instance_configs(spec["instanceConfigs"])
    rules.check_scaling(spec["scalingConfiguration"])
    rules.check_spot(spec["purchaseOption"], spec.get("spotOptions"))
    if spec["purchaseOption"] == "SPOT":
        spec["spotOptions"] = {"allocationStrategy": "price-capacity-optimized", **(spec.get("spotOptions") or {})}
    slurm = spec["slurmConfiguration"]
    rules.check_custom_settings("slurmConfiguration.slurmCustomSettings", slurm.get("slurmCustomSettings") or [],
                                rules.NODE_GROUP_SLURM_SETTINGS)
    rules.check_gres_settings("slurmConfiguration.gresCustomSettings", slurm.get("gresCustomSettings") or [])
    if spec.get("instanceHealthChecks") is not None:
        rules.check_instance_health_checks(spec["instanceHealthChecks"], spec["instanceConfigs"])
    if spec.get("nodeLifecycleActions") is not None:
        rules.check_node_lifecycle_actions(spec["nodeLifecycleActions"])


def _queue_groups(spec: dict[str, Any]) -> set[str]:
    return {c.get("computeNodeGroupId") for c in spec.get("computeNodeGroupConfigurations", [])}


def _drop_none(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if v is not None}

