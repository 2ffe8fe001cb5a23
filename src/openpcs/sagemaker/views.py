"""HyperPod clusters, their nodes and their events as the SageMaker API shows them, from the engine's resources.

The cluster's status is read from its own and its groups' and partitions' engine statuses; each node's from its
instance (pending, registered) and whether its group still lists it. The controller node is the cluster's
slurmctld: it has an instance id of its own, fixed at CreateCluster.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ..domain import hyperpod, ids, node_numbers
from ..store import events as event_rows
from ..store.instances import Instance
from ..store.resources import Resource

_GROUP_STATUS = {"CREATING": "Creating", "ACTIVE": "InService", "UPDATING": "Updating", "DELETING": "Deleting",
                 "CREATE_FAILED": "Failed", "UPDATE_FAILED": "Degraded", "DELETE_FAILED": "Failed"}
_ERROR_EVENTS = {event_rows.LAUNCH_FAILED, event_rows.PROTECTED_MODE}
_WARNING_EVENTS = {event_rows.HEALTH, event_rows.REPAIR, event_rows.POWERED_DOWN, event_rows.FAULT_INJECTED}


@dataclass(frozen=True)
class Node:
    """One node of a HyperPod cluster, as ListClusterNodes and DescribeClusterNode show it."""

    group: dict[str, Any]        # its instance group, as the request gave it
    logical_id: str
    instance_id: str | None      # None until its instance is launched
    status: str
    message: str | None
    launch_time: float | None

    def summary(self, include_logical_id: bool) -> dict[str, Any]:
        out = {"InstanceGroupName": self.group["InstanceGroupName"], "InstanceId": self.instance_id,
               "InstanceType": self.group["InstanceType"], "LaunchTime": self.launch_time,
               "InstanceStatus": self._status()}
        if include_logical_id:
            out["NodeLogicalId"] = self.logical_id
        return out

    def details(self, region: str) -> dict[str, Any]:
        out = {"InstanceGroupName": self.group["InstanceGroupName"], "InstanceId": self.instance_id,
               "NodeLogicalId": self.logical_id, "InstanceStatus": self._status(),
               "InstanceType": self.group["InstanceType"], "LaunchTime": self.launch_time,
               "LifeCycleConfig": self.group.get("LifeCycleConfig"),
               "OverrideVpcConfig": self.group.get("OverrideVpcConfig"),
               "ThreadsPerCore": self.group.get("ThreadsPerCore"),
               "InstanceStorageConfigs": self.group.get("InstanceStorageConfigs"),
               "Placement": {"AvailabilityZone": hyperpod.zone(region)}, "CapacityType": "OnDemand"}
        if self.instance_id:
            out["PrivatePrimaryIp"] = "127.0.0.1"  # the local provider's nodes are processes on this host
        return out

    def _status(self) -> dict[str, str]:
        return {"Status": self.status, **({"Message": self.message} if self.message else {})}


class HyperPodViews:
    def __init__(self, region: str, account: str) -> None:
        self.region, self.account = region, account

    def arn(self, cluster: Resource) -> str:
        return hyperpod.cluster_arn(self.region, self.account, cluster.id)

    # -- clusters -----------------------------------------------------------------------------------------

    def summary(self, cluster: Resource, children: list[Resource]) -> dict[str, Any]:
        return {"ClusterArn": self.arn(cluster), "ClusterName": cluster.name, "CreationTime": cluster.created_at,
                "ClusterStatus": cluster_status(cluster, children)}

    def cluster(self, cluster: Resource, children: list[Resource], instances: list[Instance]) -> dict[str, Any]:
        asked = cluster.spec["hyperPod"]
        out = {**self.summary(cluster, children),
               **{key: asked[key] for key in ("VpcConfig", "Orchestrator", "NodeRecovery", "NodeProvisioningMode",
                                              "ClusterRole") if asked.get(key) is not None}}
        status = out["ClusterStatus"]
        failure = _failure(cluster, children)
        if failure and status in ("Failed", "InService", "Updating"):
            out["FailureMessage"] = failure
        controller = cluster.spec["controller"]
        running = 1 if _controller_status(cluster) == "Running" else 0
        groups = [{**self._group_details(controller["group"], running, 1),
                   "Status": _GROUP_STATUS.get(cluster.status, "InService")}]
        for group in sorted((c for c in children if c.kind == ids.NODE_GROUP), key=lambda g: g.seq):
            mine = [i for i in instances if i.node_group_id == group.id]
            running = sum(1 for i in mine if i.status == "registered")
            groups.append({**self._group_details(group.spec["instanceGroup"], running,
                                                 len(group.spec["logicalNodes"])),
                           "Status": _GROUP_STATUS[group.status]})
        out["InstanceGroups"] = groups
        return out

    def _group_details(self, group: dict[str, Any], current: int, target: int) -> dict[str, Any]:
        details = {key: group.get(key) for key in ("InstanceGroupName", "InstanceType", "LifeCycleConfig",
                                                   "ExecutionRole", "ThreadsPerCore", "OnStartDeepHealthChecks",
                                                   "OverrideVpcConfig", "InstanceStorageConfigs", "ImageId",
                                                   "SlurmConfig")}
        details.update(CurrentCount=current, TargetCount=target, MinCount=group.get("MinInstanceCount") or 0,
                       InstanceTypeDetails=[{"InstanceType": group["InstanceType"], "CurrentCount": current,
                                             "ThreadsPerCore": hyperpod.threads_per_core(group)}])
        return details

    # -- nodes --------------------------------------------------------------------------------------------

    def nodes(self, cluster: Resource, groups: list[Resource], instances: list[Instance]) -> list[Node]:
        """Every node with an instance or waiting for one, the controller first."""
        controller = cluster.spec["controller"]
        out = [Node(controller["group"], controller["logicalId"], controller["instanceId"],
                    _controller_status(cluster), _failure(cluster, []) if cluster.status == "CREATE_FAILED" else None,
                    cluster.created_at)]
        for group in groups:
            listed = group.spec["logicalNodes"]
            retired = group.spec.get("retiredNodes", {})
            failure = "; ".join(e["message"] for e in group.state.get("errorInfo", []))
            by_number = {node_numbers.number(i.node_name): i for i in instances if i.node_group_id == group.id}
            for number in sorted(set(map(int, listed)) | set(by_number)):
                instance = by_number.get(number)
                logical = listed.get(str(number)) or retired.get(str(number))
                if logical is None:
                    continue
                status, message = _node_status(group, str(number) in listed, instance, failure)
                out.append(Node(group.spec["instanceGroup"], logical, instance.id if instance else None, status,
                                message, instance.created_at if instance else None))
        return out

    # -- events -------------------------------------------------------------------------------------------

    def event(self, cluster: Resource, event: event_rows.Event, group_names: dict[str, str],
              logical_ids: dict[str, str], detailed: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "EventId": event_id(event.seq), "ClusterArn": self.arn(cluster), "ClusterName": cluster.name,
            "InstanceGroupName": group_names.get(event.node_group_id), "InstanceId": event.instance_id or None,
            "ResourceType": event_resource_type(event), "EventTime": event.time,
            "Description": f"{event.type}" + (f" {event.node}" if event.node else "") + f": {event.reason}",
            "EventLevel": "Error" if event.type in _ERROR_EVENTS
            else "Warn" if event.type in _WARNING_EVENTS else "Info"}
        if detailed:
            failure = event.reason if event.type in _ERROR_EVENTS else None
            metadata: dict[str, Any] = {}
            if event.instance_id:
                metadata["Instance"] = {"NodeLogicalId": logical_ids.get(event.node), "FailureMessage": failure}
            elif event.node_group_id:
                metadata["InstanceGroup"] = {"FailureMessage": failure}
            else:
                metadata["Cluster"] = {"FailureMessage": failure}
            out["EventDetails"] = {"EventMetadata": metadata}
        return out


def cluster_status(cluster: Resource, children: list[Resource]) -> str:
    """HyperPod's ClusterStatus: Creating until the cluster and the groups and partitions made with it are up;
    Failed if one of those failed; Deleting; Updating while a later change is applied; else InService."""
    if cluster.status in ("DELETING", "DELETE_FAILED"):
        return "Deleting" if cluster.status == "DELETING" else "Failed"
    first = [c for c in children if c.spec.get("createdWithCluster")]
    if cluster.status == "CREATE_FAILED" or any(c.status == "CREATE_FAILED" for c in first):
        return "Failed"
    if cluster.status == "CREATING" or any(c.status == "CREATING" for c in first):
        return "Creating"
    if cluster.status == "UPDATING" or any(c.status in ("CREATING", "UPDATING", "DELETING") for c in children):
        return "Updating"
    return "InService"


def _controller_status(cluster: Resource) -> str:
    return {"CREATING": "Pending", "CREATE_FAILED": "Failure", "DELETING": "ShuttingDown",
            "DELETE_FAILED": "Failure"}.get(cluster.status, "Running")


def _failure(cluster: Resource, children: list[Resource]) -> str | None:
    messages = [f"{c.name}: {e['message']}" if c is not cluster else e["message"]
                for c in (cluster, *children) for e in c.state.get("errorInfo", [])]
    return "; ".join(messages) or None


def _node_status(group: Resource, listed: bool, instance: Instance | None, failure: str) -> tuple[str, str | None]:
    if not listed or group.status == "DELETING":
        return "ShuttingDown", None
    if instance is not None and instance.status == "registered":
        return "Running", None
    if group.status in ("CREATE_FAILED", "UPDATE_FAILED") and failure:
        return "Failure", failure
    return "Pending", None


def event_id(seq: int) -> str:
    """An event's EventId: its sequence number as a UUID, so DescribeClusterEvent finds it again."""
    return str(uuid.UUID(int=seq))


def event_seq(event_id_: str) -> int:
    return uuid.UUID(event_id_).int


def event_resource_type(event: event_rows.Event) -> str:
    return "Instance" if event.instance_id else "InstanceGroup" if event.node_group_id else "Cluster"
