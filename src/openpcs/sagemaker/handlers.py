"""The SageMaker operations openpcs serves: HyperPod's cluster and node API, over the same engine as PCS.

botocore's `sagemaker` model (AWS JSON 1.1, target prefix SageMaker, SigV4 signing name sagemaker) parses and
checks every request first; an operation this class has no method for is answered UnknownOperationException.
Each write is one store transaction that records the desired state of the cluster's engine resources (the
cluster, a node group per Compute instance group, a queue per partition: domain.hyperpod) and returns; the
reconciler makes Slurm match, as for PCS.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection

from ..api.errors import ApiError
from ..domain import hyperpod, ids, node_numbers, rules
from ..domain.hyperpod import limit_exceeded, not_found, validation
from ..pcs.handlers import ServiceContext
from ..store import events as event_rows
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .views import HyperPodViews, Node, cluster_status, event_seq

DEFAULT_MAX_RESULTS = 100  # SageMaker's List* calls return up to MaxResults (1-100); 100 when it is not given
# Engine statuses in which an instance group takes new nodes.
ADDABLE = ("ACTIVE", "UPDATING")


class SageMakerHandlers:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.views = HyperPodViews(ctx.views.region, ctx.views.account)

    # -- clusters ---------------------------------------------------------------------------------

    def CreateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        hyperpod.check_cluster(p)
        groups = p["InstanceGroups"]
        hyperpod.check_instance_total(groups)
        clusters = len(rows.clusters(conn))
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
            "scheduler": {"type": "SLURM", "version": max(self.ctx.scheduler_versions, key=_release)},
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
                    if _created_within(c.created_at, p) and (p.get("NameContains") or "") in c.name]
        by_name = p.get("SortBy") == "NAME"
        clusters.sort(key=(lambda c: c.name) if by_name else (lambda c: (c.created_at, c.seq)),
                      reverse=p.get("SortOrder", "Descending") == "Descending")
        page, token = self._page(clusters, p, "ListClusters", "")
        return {"ClusterSummaries": [self.views.summary(c, rows.children(conn, c.id)) for c in page],
                **({"NextToken": token} if token else {})}

    def UpdateCluster(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        self._updatable(conn, cluster)
        unsupported = [key for key in ("RestrictedInstanceGroups", "AutoScaling", "TieredStorageConfig")
                       if p.get(key) is not None and (p[key].get("Mode") if isinstance(p[key], dict) else p[key])
                       not in (None, "Disable")]
        if unsupported or (p.get("Orchestrator") or {}).get("Eks") is not None:
            raise validation(f"{', '.join(unsupported) or 'Orchestrator.Eks'} is for clusters orchestrated by Amazon "
                             "EKS or not supported by openpcs; this cluster runs the Slurm orchestrator.")
        spec = copy.deepcopy(cluster.spec)
        asked = spec["hyperPod"]
        for key in ("NodeRecovery", "NodeProvisioningMode", "ClusterRole"):
            if p.get(key) is not None:
                asked[key] = p[key]
        if (p.get("Orchestrator") or {}).get("Slurm") is not None:
            if p["Orchestrator"]["Slurm"].get("AccountingDatabase") is not None:
                raise validation("Orchestrator.Slurm.AccountingDatabase is not supported by openpcs yet; leave it "
                                 "out.")
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

    # -- nodes ------------------------------------------------------------------------------------

    def ListClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        nodes = [n for n in self._nodes(conn, cluster) if n.instance_id is not None
                 and (p.get("InstanceGroupNameContains") or "") in n.group["InstanceGroupName"]
                 and _created_within(n.launch_time, p)]
        by_name = p.get("SortBy") == "NAME"
        nodes.sort(key=(lambda n: (n.group["InstanceGroupName"], n.instance_id)) if by_name
                   else (lambda n: (n.launch_time, n.instance_id)),
                   reverse=p.get("SortOrder", "Ascending") == "Descending")
        page, token = self._page(nodes, p, "ListClusterNodes", cluster.id)
        return {"ClusterNodeSummaries": [n.summary(bool(p.get("IncludeNodeLogicalIds"))) for n in page],
                **({"NextToken": token} if token else {})}

    def DescribeClusterNode(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        if (p.get("NodeId") is None) == (p.get("NodeLogicalId") is None):
            raise validation("Give either NodeId or NodeLogicalId, not both and not neither.")
        node = self._node(conn, cluster, p.get("NodeId"), p.get("NodeLogicalId"))
        if node is None:
            raise not_found(f"Cluster {cluster.name} has no node {p.get('NodeId') or p.get('NodeLogicalId')}. "
                            "ListClusterNodes lists its nodes.")
        return {"NodeDetails": node.details(self.views.region)}

    def BatchAddClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        if cluster.spec["hyperPod"].get("NodeProvisioningMode") != "Continuous":
            raise validation(f"BatchAddClusterNodes is only for clusters with NodeProvisioningMode Continuous; "
                             f"{cluster.name} was created without it. Use UpdateCluster to change InstanceCount.")
        wanted = sum(item["IncrementTargetCountBy"] for item in p["NodesToAdd"])
        if wanted > hyperpod.MAX_NODES_PER_ADD:
            raise validation(f"One request adds at most {hyperpod.MAX_NODES_PER_ADD} nodes across its instance "
                             f"groups; this one asks for {wanted}.")
        groups = {g.name: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        total = 1 + sum(len(g.spec["logicalNodes"]) for g in groups.values() if g.status != "DELETING")
        if total + wanted > hyperpod.MAX_INSTANCES_PER_CLUSTER:
            raise limit_exceeded(f"A cluster holds at most {hyperpod.MAX_INSTANCES_PER_CLUSTER} instances; "
                                 f"{cluster.name} has {total} and this request adds {wanted}.")
        successful, failed, changed = [], [], {}
        for item in p["NodesToAdd"]:
            name, count = item["InstanceGroupName"], item["IncrementTargetCountBy"]
            group = changed.get(name) or groups.get(name)
            problem = self._cannot_add(cluster, group, item)
            echo = {key: item[key] for key in ("AvailabilityZones", "InstanceTypes") if item.get(key)}
            if problem:
                failed.append({"InstanceGroupName": name, "ErrorCode": problem[0], "FailedCount": count,
                               "Message": problem[1], **echo})
                continue
            spec = copy.deepcopy(group.spec)
            before = set(spec["logicalNodes"])
            hyperpod.resize(spec, len(spec["logicalNodes"]) + count)
            rows.request_change(conn, group, "UPDATING", spec)
            changed[name] = group
            added = [spec["logicalNodes"][n] for n in sorted(set(spec["logicalNodes"]) - before, key=int)]
            successful += [{"NodeLogicalId": logical, "InstanceGroupName": name, "Status": "Pending", **echo}
                           for logical in added]
            event_rows.record(conn, cluster.id, event_rows.NODES_ADDED,
                              f"BatchAddClusterNodes: {count} node(s) added; target count now "
                              f"{len(spec['logicalNodes'])}", node_group_id=group.id)
        return {"Successful": successful, "Failed": failed}

    def BatchDeleteClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        out, specs = self._each_node(conn, cluster, p, "delete", _cannot_delete, "Code", 50)
        groups = {g.name: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        for name, chosen in specs.items():
            group = groups[name]
            spec = copy.deepcopy(group.spec)
            retired = spec.setdefault("retiredNodes", {})
            for node in chosen:
                number = next(n for n, logical in spec["logicalNodes"].items() if logical == node.logical_id)
                retired[number] = spec["logicalNodes"].pop(number)
            spec["scalingConfiguration"] = hyperpod.scaling(len(spec["logicalNodes"]))
            in_use = {str(node_numbers.number(i.node_name)) for i in instance_rows.of_node_group(conn, group.id)}
            spec["retiredNodes"] = {n: logical for n, logical in retired.items() if n in in_use}
            rows.request_change(conn, group, "UPDATING", spec)
            event_rows.record(conn, cluster.id, event_rows.NODES_DELETED,
                              f"BatchDeleteClusterNodes: {len(chosen)} node(s) being drained and terminated; target "
                              f"count now {len(spec['logicalNodes'])}", node_group_id=group.id)
        return out

    def BatchRebootClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        return self._node_actions(conn, p, "reboot", event_rows.NODES_REBOOTED)

    def BatchReplaceClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        return self._node_actions(conn, p, "replace", event_rows.NODES_REPLACED)

    def _node_actions(self, conn: Connection, p: dict[str, Any], action: str, event: str) -> dict[str, Any]:
        """A reboot or replacement of each node, recorded in its group's spec for control.node_groups to do once."""
        cluster = self._cluster(conn, p["ClusterName"])
        out, specs = self._each_node(conn, cluster, p, action, _cannot_restart, "ErrorCode", 25)
        groups = {g.name: g for g in rows.children(conn, cluster.id, ids.NODE_GROUP)}
        for name, chosen in specs.items():
            group = groups[name]
            live = {i.id for i in instance_rows.of_node_group(conn, group.id)}
            done = set(group.state.get("nodeActionsDone") or [])
            actions = {instance_id: asked for instance_id, asked in (group.spec.get("nodeActions") or {}).items()
                       if instance_id in live and asked["request"] not in done}
            actions.update({node.instance_id: {"action": action, "request": hyperpod.new_logical_id()}
                            for node in chosen})
            rows.request_change(conn, group, "UPDATING", {**group.spec, "nodeActions": actions})
            event_rows.record(conn, cluster.id, event, f"Batch{action.title()}ClusterNodes: "
                              + ", ".join(node.instance_id for node in chosen), node_group_id=group.id)
        return out

    def _each_node(self, conn: Connection, cluster: Resource, p: dict[str, Any], what: str,
                   refusal: Callable[[Resource, Node | None, str], tuple[str, str] | None], code_member: str,
                   most: int) -> tuple[dict[str, list], dict[str, list[Node]]]:
        """The nodes a Batch*ClusterNodes request names by NodeIds and NodeLogicalIds: the answer's Successful and
        Failed members (a node `refusal` refuses fails with its code), and the nodes to act on by group name."""
        by_id, by_logical = p.get("NodeIds") or [], p.get("NodeLogicalIds") or []
        if not by_id and not by_logical:
            raise validation(f"Give NodeIds or NodeLogicalIds: the nodes to {what}.")
        if len(by_id) + len(by_logical) > most:
            raise validation(f"One request names at most {most} nodes to {what}; this one names "
                             f"{len(by_id) + len(by_logical)}.")
        nodes = self._nodes(conn, cluster)
        out: dict[str, list] = {"Successful": [], "Failed": [], "SuccessfulNodeLogicalIds": [],
                                "FailedNodeLogicalIds": []}
        chosen: dict[str, list[Node]] = {}
        for key, wanted, ok_member, failed_member in (
                ("NodeId", by_id, "Successful", "Failed"),
                ("NodeLogicalId", by_logical, "SuccessfulNodeLogicalIds", "FailedNodeLogicalIds")):
            for identifier in wanted:
                node = _find(nodes, identifier if key == "NodeId" else None,
                             identifier if key == "NodeLogicalId" else None)
                problem = refusal(cluster, node, identifier)
                if problem:
                    out[failed_member].append({code_member: problem[0], "Message": problem[1], key: identifier})
                    continue
                group_nodes = chosen.setdefault(node.group["InstanceGroupName"], [])
                if node not in group_nodes:  # a node named twice (by id and by NodeLogicalId) is acted on once
                    group_nodes.append(node)
                out[ok_member].append(identifier)
        return {key: value for key, value in out.items() if value}, chosen

    # -- events -----------------------------------------------------------------------------------

    def ListClusterEvents(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        names = {g.id: g.name for g in groups}
        descending = p.get("SortOrder") == "Descending"
        scope = "ListClusterEvents:" + cluster.id + ":" + _digest(p)
        after = self.ctx.tokens.position(p.get("NextToken"), scope)
        limit = p.get("MaxResults") or DEFAULT_MAX_RESULTS
        group_id = None
        if p.get("InstanceGroupName") is not None:
            group_id = next((g.id for g in groups if g.name == p["InstanceGroupName"]), "-")
        found = [] if p.get("OperationId") else event_rows.page(
            conn, cluster.id, after=after, limit=limit + 1, descending=descending, node_group_id=group_id,
            instance_id=p.get("NodeId"), resource_type=p.get("ResourceType"),
            since=_epoch(p.get("EventTimeAfter")), until=_epoch(p.get("EventTimeBefore")))
        logical = _logical_ids(groups)
        out: dict[str, Any] = {"Events": [self.views.event(cluster, e, names, logical) for e in found[:limit]]}
        if len(found) > limit:
            out["NextToken"] = self.ctx.tokens.issue(scope, found[limit - 1].seq)
        return out

    def DescribeClusterEvent(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        event = event_rows.by_seq(conn, cluster.id, event_seq(p["EventId"]))
        if event is None:
            raise not_found(f"Cluster {cluster.name} has no event {p['EventId']}. ListClusterEvents lists them.")
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        return {"EventDetails": self.views.event(cluster, event, {g.id: g.name for g in groups},
                                                 _logical_ids(groups), detailed=True)}

    # -- idempotent retries -----------------------------------------------------------------------

    def replay(self, operation: str, conn: Connection, p: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """A retried request's stored response, brought up to date: BatchAddClusterNodes returns the same
        NodeLogicalIds with their latest status."""
        if operation != "BatchAddClusterNodes" or not response.get("Successful"):
            return response
        try:
            nodes = {n.logical_id: n for n in self._nodes(conn, self._cluster(conn, p["ClusterName"]))}
        except ApiError:  # the cluster is gone since
            nodes = {}
        for item in response["Successful"]:
            node = nodes.get(item["NodeLogicalId"])
            item["Status"] = node.status if node else "NotFound"
        return response

    # -- shared -----------------------------------------------------------------------------------

    def _cluster(self, conn: Connection, name_or_arn: str) -> Resource:
        parsed = hyperpod.parse_cluster_arn(name_or_arn)
        if parsed is not None:
            found = rows.by_id(conn, parsed[2]) if parsed[:2] == (self.views.region, self.views.account) else None
        else:
            found = rows.find(conn, ids.CLUSTER, name_or_arn, ids.SAGEMAKER_SCOPE)
        if found is None or found.kind != ids.CLUSTER or found.cluster_id != ids.SAGEMAKER_SCOPE:
            raise not_found(f"Cluster {name_or_arn} does not exist. ListClusters lists the HyperPod clusters.")
        return found

    def _updatable(self, conn: Connection, cluster: Resource) -> None:
        status = cluster_status(cluster, rows.children(conn, cluster.id))
        if status not in ("InService", "Updating"):
            raise ApiError("ConflictException", f"Cluster {cluster.name} is {status}; it can be updated only when "
                                                "InService.", status=hyperpod.STATUS)

    def _nodes(self, conn: Connection, cluster: Resource) -> list[Node]:
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        return self.views.nodes(cluster, groups, instance_rows.of_cluster(conn, cluster.id))

    def _node(self, conn: Connection, cluster: Resource, node_id: str | None, logical_id: str | None) -> Node | None:
        return _find(self._nodes(conn, cluster), node_id, logical_id)

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

    def _cannot_add(self, cluster: Resource, group: Resource | None, item: dict[str, Any]) -> tuple[str, str] | None:
        name = item["InstanceGroupName"]
        if group is None:
            if name == cluster.spec["controller"]["group"]["InstanceGroupName"]:
                return ("InvalidInstanceGroupStatus", f"Instance group {name} is the Slurm controller; it has one "
                                                      "node, and takes no more.")
            return "InstanceGroupNotFound", f"Cluster {cluster.name} has no instance group {name}."
        if cluster.status in ("DELETING", "DELETE_FAILED", "CREATE_FAILED") or group.status not in ADDABLE:
            return ("InvalidInstanceGroupStatus", f"Instance group {name} is "
                    f"{'Deleting' if cluster.status == 'DELETING' else group.status.title()}; nodes can be added "
                    "only while it is InService or Updating.")
        zones = item.get("AvailabilityZones")
        if zones and hyperpod.zone(self.views.region) not in zones:
            return ("IncompatibleAvailabilityZones", f"Instance group {name}'s nodes run in "
                    f"{hyperpod.zone(self.views.region)}, which is not among {', '.join(zones)}.")
        types = item.get("InstanceTypes")
        if types and group.spec["instanceGroup"]["InstanceType"] not in types:
            return ("IncompatibleInstanceTypes", f"Instance group {name} runs "
                    f"{group.spec['instanceGroup']['InstanceType']}, which is not among {', '.join(types)}.")
        return None

    def _page(self, items: list[Any], p: dict[str, Any], operation: str, scope_id: str) -> tuple[list[Any], str | None]:
        """A page of a list sorted and filtered in memory; the token is bound to the request's filters."""
        scope = f"{operation}:{scope_id}:{_digest(p)}"
        start = self.ctx.tokens.position(p.get("NextToken"), scope)
        end = start + (p.get("MaxResults") or DEFAULT_MAX_RESULTS)
        return items[start:end], self.ctx.tokens.issue(scope, end) if end < len(items) else None


def _find(nodes: list[Node], node_id: str | None, logical_id: str | None) -> Node | None:
    return next((n for n in nodes if (node_id is not None and n.instance_id == node_id)
                 or (logical_id is not None and n.logical_id == logical_id)), None)


def _cannot_delete(cluster: Resource, node: Node | None, identifier: str) -> tuple[str, str] | None:
    if node is None:
        return "NodeIdNotFound", f"Cluster {cluster.name} has no node {identifier}."
    if node.logical_id == cluster.spec["controller"]["logicalId"]:
        return "NodeIdInUse", f"Node {identifier} is the cluster's Slurm controller; it cannot be deleted."
    if node.status == "ShuttingDown":
        return "InvalidNodeStatus", f"Node {identifier} is already ShuttingDown."
    return None


def _cannot_restart(cluster: Resource, node: Node | None, identifier: str) -> tuple[str, str] | None:
    """Why a node cannot be rebooted or replaced, if it cannot."""
    if node is None:
        return "InstanceIdNotFound", f"Cluster {cluster.name} has no node {identifier}."
    if node.logical_id == cluster.spec["controller"]["logicalId"]:
        return "InstanceIdInUse", f"Node {identifier} is the cluster's Slurm controller (its slurmctld)."
    if node.status != "Running":
        return "InvalidInstanceStatus", f"Node {identifier} is {node.status}; only a Running node can be."
    return None


def _logical_ids(groups: list[Resource]) -> dict[str, str]:
    """Slurm node name -> NodeLogicalId, for the nodes the groups list or are taking away."""
    out = {}
    for group in groups:
        for number, logical in {**group.spec.get("retiredNodes", {}), **group.spec["logicalNodes"]}.items():
            out[f"{group.name}-{number}"] = logical
    return out


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _digest(p: dict[str, Any]) -> str:
    """What a list request asks for, apart from where it continues and how much it takes."""
    rest = {k: v for k, v in p.items() if k not in ("NextToken", "MaxResults")}
    return hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]


def _epoch(value: Any) -> float | None:
    """A timestamp member as epoch seconds: boto3 sends numbers; a string may be ISO 8601 or a number."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise validation(f"{value!r} is not a timestamp: give epoch seconds or ISO 8601.") from None


def _created_within(at: float | None, p: dict[str, Any]) -> bool:
    after, before = _epoch(p.get("CreationTimeAfter")), _epoch(p.get("CreationTimeBefore"))
    return at is not None and (after is None or at > after) and (before is None or at < before)
