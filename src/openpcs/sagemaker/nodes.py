"""HyperPod's node operations: ListClusterNodes, DescribeClusterNode and the Batch*ClusterNodes calls."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from ..api.errors import ApiError
from ..domain import hyperpod, ids, node_numbers
from ..domain.hyperpod import limit_exceeded, not_found, validation
from ..store import events as event_rows
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .common import Base, created_within
from .views import Node

# Engine statuses in which an instance group takes new nodes.
ADDABLE = ("ACTIVE", "UPDATING")


class NodeOperations(Base):
    """A cluster's nodes: listed, described, added, deleted, rebooted and replaced."""

    def ListClusterNodes(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        nodes = [n for n in self._nodes(conn, cluster) if n.instance_id is not None
                 and (p.get("InstanceGroupNameContains") or "") in n.group["InstanceGroupName"]
                 and created_within(n.launch_time, p)]
        by_name = p.get("SortBy") == "NAME"
        nodes.sort(key=(lambda n: (n.group["InstanceGroupName"], n.instance_id)) if by_name
                   else (lambda n: (n.launch_time, n.instance_id)),
                   reverse=p.get("SortOrder") == "Descending")
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
            actions.update({node.instance_id: {"action": action, "request": str(uuid.uuid4())}
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

    def _node(self, conn: Connection, cluster: Resource, node_id: str | None, logical_id: str | None) -> Node | None:
        return _find(self._nodes(conn, cluster), node_id, logical_id)

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
