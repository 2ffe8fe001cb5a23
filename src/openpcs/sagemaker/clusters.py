"""HyperPod's cluster operations: CreateCluster, DescribeCluster, ListClusters, UpdateCluster, DeleteCluster."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import Connection

from ..api.errors import ApiError
from ..domain import hyperpod, ids, rules
from ..domain.hyperpod import limit_exceeded, validation
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .common import Base, created_within
from .views import cluster_status


class ClusterOperations(Base):
    """A HyperPod cluster and its instance groups, as the engine's cluster, node groups and queues."""

    def CreateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        hyperpod.check_cluster(p)
        groups = p["InstanceGroups"]
        hyperpod.check_instance_total(groups)
        clusters = rows.count_clusters(conn)
        if clusters >= self.ctx.max_clusters:
            raise limit_exceeded(f"This service allows at most {self.ctx.max_clusters} clusters (PCS's and "
                                 f"HyperPod's together) and has {clusters}. Delete one, or start openpcs serve "
                                 "with a higher --max-clusters.")
        if rows.find(conn, ids.CLUSTER, p["ClusterName"], ids.SAGEMAKER_SCOPE) is not None:
            raise ApiError("ResourceInUse", f"Cluster {p['ClusterName']} already exists. Choose another name, or "
                                            "delete that cluster first.", status=hyperpod.STATUS)
        asked = {key: p.get(key) for key in ("VpcConfig", "Orchestrator", "NodeProvisioningMode", "ClusterRole")}
        asked["NodeRecovery"] = p.get("NodeRecovery") or "Automatic"
        vpc = p.get("VpcConfig") or {}
        controller = next(g for g in groups if hyperpod.node_type(g) == hyperpod.CONTROLLER)
        spec = {
            "scheduler": {"type": "SLURM", "version": max(self.ctx.scheduler_versions, key=rules.release_order)},
            "size": "LARGE",
            "networking": {"networkType": "IPV4", "subnetIds": vpc.get("Subnets") or [],
                           "securityGroupIds": vpc.get("SecurityGroupIds") or []},
            "slurmConfiguration": rules.cluster_slurm_defaults({}),
            "hyperPod": asked,
            "controller": {"group": controller, "instanceId": instance_rows.new_instance_id(),
                           "logicalId": hyperpod.new_logical_id()},
        }
        tags = {tag["Key"]: tag["Value"] for tag in p.get("Tags") or []}
        cluster = rows.insert(conn, ids.CLUSTER, ids.SAGEMAKER_SCOPE, p["ClusterName"], spec, tags,
                              resource_id=hyperpod.new_cluster_id())
        for group in groups:
            if hyperpod.node_type(group) != hyperpod.CONTROLLER:
                self._add_group(conn, cluster, group, first=True)
        self._sync_partitions(conn, cluster, first=True)
        return {"ClusterArn": self.views.arn(cluster)}

    def DescribeCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        return self.views.cluster(cluster, rows.children(conn, cluster.id), instance_rows.of_cluster(conn, cluster.id))

    def ListClusters(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        clusters = [c for c in rows.children(conn, ids.SAGEMAKER_SCOPE, ids.CLUSTER)
                    if created_within(c.created_at, p) and (p.get("NameContains") or "") in c.name]
        by_name = p.get("SortBy") == "NAME"
        clusters.sort(key=(lambda c: c.name) if by_name else (lambda c: (c.created_at, c.seq)),
                      reverse=p.get("SortOrder") == "Descending")  # the model: Ascending by default
        page, token = self._page(clusters, p, "ListClusters", "")
        return {"ClusterSummaries": [self.views.summary(c, rows.children(conn, c.id)) for c in page],
                **({"NextToken": token} if token else {})}

    def UpdateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        self._updatable(conn, cluster)
        hyperpod.check_orchestration(p)
        spec = copy.deepcopy(cluster.spec)
        asked = spec["hyperPod"]
        for key in ("NodeRecovery", "NodeProvisioningMode", "ClusterRole"):
            if p.get(key) is not None:
                asked[key] = p[key]
        if (p.get("Orchestrator") or {}).get("Slurm") is not None:
            asked["Orchestrator"] = p["Orchestrator"]
        groups = {g.name: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP) if g.status != "DELETING"}
        controller = spec["controller"]["group"]
        given = p.get("InstanceGroups") or []
        hyperpod.check_instance_groups(given)
        for group in given:
            self._check_group_change(group, groups.get(group["InstanceGroupName"]), controller)
        deleting = p.get("InstanceGroupsToDelete") or []
        for name in deleting:
            if name == controller["InstanceGroupName"]:
                raise validation(f"Instance group {name} is the Slurm controller; it cannot be deleted.")
            if name not in groups:
                raise validation(f"Cluster {cluster.name} has no instance group {name} to delete.")
            if name in {g["InstanceGroupName"] for g in given}:
                raise validation(f"Instance group {name} is both updated and deleted; choose one.")
        kept = [g.spec["instanceGroup"] for name, g in groups.items()
                if name not in deleting and name not in {x["InstanceGroupName"] for x in given}]
        hyperpod.check_instance_total([controller, *kept, *given])
        recovery = asked["NodeRecovery"]
        for group in given:
            if hyperpod.node_type(group) == hyperpod.CONTROLLER:
                spec["controller"]["group"] = group
            elif group["InstanceGroupName"] in groups:
                current = groups[group["InstanceGroupName"]]
                self._change_group(conn, current, group, recovery)
            else:
                self._add_group(conn, cluster, group, first=False, node_recovery=recovery)
        for name, group in groups.items():
            if name in deleting:
                rows.request_change(conn, group, "DELETING")
            elif name not in {g["InstanceGroupName"] for g in given} \
                    and group.spec["instanceHealthChecks"] != hyperpod.health_checks(recovery):
                rows.request_change(conn, group, "UPDATING", {**group.spec,
                                                              "instanceHealthChecks": hyperpod.health_checks(recovery)})
        self._sync_partitions(conn, cluster, first=False)
        if spec != cluster.spec:
            rows.request_change(conn, cluster, "UPDATING", spec)
        return {"ClusterArn": self.views.arn(cluster)}

    def DeleteCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        for child in rows.children(conn, cluster.id):
            if child.status != "DELETING":
                rows.request_change(conn, child, "DELETING")
        if cluster.status != "DELETING":
            rows.request_change(conn, cluster, "DELETING")
        return {"ClusterArn": self.views.arn(cluster)}

    def _updatable(self, conn: Connection, cluster: Resource) -> None:
        status = cluster_status(cluster, rows.children(conn, cluster.id))
        if status not in ("InService", "Updating"):
            raise ApiError("ConflictException", f"Cluster {cluster.name} is {status}; it can be updated only when "
                                                "InService.", status=hyperpod.STATUS)

    def _add_group(self, conn: Connection, cluster: Resource, group: dict[str, Any], first: bool,
                   node_recovery: str | None = None) -> None:
        spec = hyperpod.node_group_spec(group, {}, node_recovery or cluster.spec["hyperPod"]["NodeRecovery"])
        hyperpod.resize(spec, group["InstanceCount"])
        if first:
            spec["createdWithCluster"] = True
        rows.insert(conn, ids.NODE_GROUP, cluster.id, group["InstanceGroupName"], spec, None)

    def _check_group_change(self, group: dict[str, Any], current: Resource | None,
                            controller: dict[str, Any]) -> None:
        name = group["InstanceGroupName"]
        was = controller if name == controller["InstanceGroupName"] else current.spec["instanceGroup"] \
            if current else None
        if was is None:
            if hyperpod.node_type(group) == hyperpod.CONTROLLER:
                raise validation(f"Instance group {name}: the cluster has its controller group already "
                                 f"({controller['InstanceGroupName']}).")
            return
        for key, what in (("InstanceType", "InstanceType"), ("SlurmConfig", "SlurmConfig (its Slurm role and "
                                                                              "partition)")):
            before = was.get(key) if key != "SlurmConfig" else (hyperpod.node_type(was), hyperpod.partition(was))
            after = group.get(key) if key != "SlurmConfig" else (hyperpod.node_type(group), hyperpod.partition(group))
            if before != after:
                raise validation(f"Instance group {name}: its {what} cannot change. Add a new instance group "
                                 "and delete this one instead.")

    def _change_group(self, conn: Connection, current: Resource, group: dict[str, Any], recovery: str) -> None:
        # What the instance group decides is made again from it (an OnCreate script taken out goes); what the group
        # has lived through (its node numbers, nodes being retired, node actions) stays.
        spec = {key: value for key, value in copy.deepcopy(current.spec).items() if key != "onCreate"}
        spec.update(hyperpod.node_group_spec(group, spec["logicalNodes"], recovery))
        hyperpod.resize(spec, group["InstanceCount"])
        if spec != current.spec:
            rows.request_change(conn, current, "UPDATING", spec)

    def _sync_partitions(self, conn: Connection, cluster: Resource, first: bool) -> None:
        """One queue per partition the cluster's Compute groups name, holding those groups; a partition no group
        names any more is deleted. The oldest partition is Slurm's default one."""
        wanted: dict[str, list[str]] = {}
        for group in rows.children(conn, cluster.id, ids.NODE_GROUP):
            if group.status != "DELETING" and hyperpod.node_type(group.spec["instanceGroup"]) == hyperpod.COMPUTE:
                wanted.setdefault(hyperpod.partition(group.spec["instanceGroup"]), []).append(group.id)
        queues = [q for q in rows.children(conn, cluster.id, ids.QUEUE) if q.status != "DELETING"]
        default = next((q.name for q in queues if q.name in wanted), next(iter(wanted), None))
        have = {q.name: q for q in queues}
        for queue in queues:
            if queue.name not in wanted:
                rows.request_change(conn, queue, "DELETING")
        for name, group_ids in wanted.items():
            spec = hyperpod.queue_spec(name, group_ids, default=name == default)
            if name not in have:
                rows.insert(conn, ids.QUEUE, cluster.id, name, {**spec, **({"createdWithCluster": True}
                                                                           if first else {})}, None)
            elif {k: v for k, v in have[name].spec.items() if k != "createdWithCluster"} != spec:
                rows.request_change(conn, have[name], "UPDATING", {**have[name].spec, **spec})
