"""SageMaker HyperPod's rules for a cluster with the Slurm orchestrator, and how it maps onto the engine (pure).

A HyperPod cluster is a cluster row like a PCS one (in its own name scope, ids.SAGEMAKER_SCOPE). Its Controller
instance group is the cluster's slurmctld; each Compute instance group is a node group whose nodes it lists
(domain.node_numbers: all static, each with its NodeLogicalId); each partition its groups name is a queue. A
Login instance group is a node group of login nodes (control.login_nodes), in no partition. The
request's own members are kept beside the engine's (`hyperPod` in the cluster's spec, `instanceGroup` in each
group's) so that DescribeCluster returns what was asked.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from typing import Any

from ..api.errors import ApiError
from . import instance_types

# SageMaker's client errors are all HTTP 400.
STATUS = 400
# What one BatchAddClusterNodes may ask for, across its instance groups (the model caps each group at 50 too).
MAX_NODES_PER_ADD = 50
# Instances a HyperPod cluster's instance groups may hold in all: a LARGE PCS cluster's, as both run on one engine.
MAX_INSTANCES_PER_CLUSTER = 2048
# The one Availability Zone of the local provider's instances: the region's first.
ZONE_SUFFIX = "a"
CONTROLLER, LOGIN, COMPUTE = "Controller", "Login", "Compute"
# Members of an instance group that only an EKS-orchestrated cluster, or a capacity openpcs cannot provide, has.
_UNSUPPORTED_GROUP_MEMBERS = {
    "KubernetesConfig": "is for clusters orchestrated by Amazon EKS; openpcs runs the Slurm orchestrator",
    "InstanceRequirements": "(several instance types in one group) is not supported by openpcs yet: give "
                            "InstanceType",
    "TrainingPlanArn": "names a SageMaker training plan, which openpcs does not have",
    "CapacityRequirements": "(Spot capacity) is not supported by openpcs yet",
    "ScheduledUpdateConfig": "(AMI updates on a schedule) is not supported by openpcs",
    "AutoPatchConfig": "(AMI patching) is not supported by openpcs",
}
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ARN = re.compile(r"arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]*):(?P<account>[0-9]{12}):"
                  r"cluster/(?P<id>[a-z0-9]{12})")


def validation(message: str) -> ApiError:
    return ApiError("ValidationException", message, status=STATUS)


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFound", message, status=STATUS)


def limit_exceeded(message: str) -> ApiError:
    return ApiError("ResourceLimitExceeded", message, status=STATUS)


def new_cluster_id() -> str:
    """12 lowercase letters and digits, as a HyperPod cluster ARN's id; a letter first."""
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(_ID_ALPHABET) for _ in range(11))


def new_logical_id() -> str:
    return str(uuid.uuid4())


def cluster_arn(region: str, account: str, cluster_id: str) -> str:
    return f"arn:aws:sagemaker:{region}:{account}:cluster/{cluster_id}"


def parse_cluster_arn(value: str) -> tuple[str, str, str] | None:
    """(region, account, id) of a HyperPod cluster ARN, or None if `value` is not one (it is then a name)."""
    match = _ARN.fullmatch(value)
    return (match["region"], match["account"], match["id"]) if match else None


def zone(region: str) -> str:
    return region + ZONE_SUFFIX


def node_type(group: dict[str, Any]) -> str:
    """An instance group's Slurm role; a group without SlurmConfig is a Compute group."""
    return (group.get("SlurmConfig") or {}).get("NodeType") or COMPUTE


def partition(group: dict[str, Any]) -> str:
    """The Slurm partition a Compute group's nodes are in: the one its PartitionNames names, else one named after
    the group."""
    names = (group.get("SlurmConfig") or {}).get("PartitionNames") or []
    return names[0] if names else group["InstanceGroupName"]


def ec2_type(ml_type: str) -> str:
    """The EC2 instance type an `ml.` type runs on: ml.c5.large -> c5.large."""
    return ml_type.removeprefix("ml.")


def check_orchestration(p: dict[str, Any]) -> None:
    """The cluster-wide members of a CreateCluster or UpdateCluster request that openpcs cannot run."""
    orchestrator = p.get("Orchestrator") or {}
    if orchestrator.get("Eks") is not None:
        raise validation("Orchestrator.Eks is not supported: openpcs runs HyperPod clusters with the Slurm "
                         "orchestrator only. Give Orchestrator.Slurm, or leave Orchestrator out.")
    if (orchestrator.get("Slurm") or {}).get("AccountingDatabase") is not None:
        raise validation("Orchestrator.Slurm.AccountingDatabase is not supported by openpcs yet; leave it out.")
    for member in ("RestrictedInstanceGroups", "RestrictedInstanceGroupsConfig"):
        if p.get(member) is not None:
            raise validation(f"{member} is for clusters orchestrated by Amazon EKS; openpcs runs the Slurm "
                             "orchestrator. Use InstanceGroups.")
    if (p.get("AutoScaling") or {}).get("Mode") == "Enable":
        raise validation("AutoScaling (Karpenter) is for clusters orchestrated by Amazon EKS; openpcs runs the "
                         "Slurm orchestrator. Leave AutoScaling out or set its Mode to Disable.")
    if (p.get("TieredStorageConfig") or {}).get("Mode") == "Enable":
        raise validation("TieredStorageConfig is not supported by openpcs; leave it out or set its Mode to "
                         "Disable.")


def check_cluster(p: dict[str, Any]) -> None:
    """What openpcs can run of a CreateCluster request, beyond what the model states."""
    check_orchestration(p)
    groups = p.get("InstanceGroups") or []
    if not groups:
        raise validation("A Slurm cluster needs InstanceGroups: one with SlurmConfig.NodeType Controller, and "
                         "Compute groups for its nodes.")
    check_instance_groups(groups)
    controllers = [g for g in groups if node_type(g) == CONTROLLER]
    if len(controllers) != 1:
        raise validation(f"A Slurm cluster needs exactly one instance group with SlurmConfig.NodeType "
                         f"Controller; this request has {len(controllers)}.")


def check_instance_groups(groups: list[dict[str, Any]]) -> None:
    """Each group on its own: names unique, an instance type openpcs knows, counts that agree, a role it runs."""
    seen: set[str] = set()
    for group in groups:
        name = group["InstanceGroupName"]
        if name in seen:
            raise validation(f"Instance group {name} is listed more than once.")
        seen.add(name)
        for member, why in _UNSUPPORTED_GROUP_MEMBERS.items():
            if group.get(member) is not None:
                raise validation(f"Instance group {name}: {member} {why}.")
        if not group.get("InstanceType"):
            raise validation(f"Instance group {name} needs an InstanceType.")
        if instance_types.lookup(ec2_type(group["InstanceType"])) is None:
            raise validation(f"Instance group {name}: openpcs's instance catalog has no "
                             f"{ec2_type(group['InstanceType'])}, which {group['InstanceType']} runs on. Choose "
                             f"an ml. type of the families {', '.join(instance_types.families())}.")
        if group.get("MinInstanceCount") is not None and group["MinInstanceCount"] > group["InstanceCount"]:
            raise validation(f"Instance group {name}: MinInstanceCount ({group['MinInstanceCount']}) cannot be "
                             f"more than InstanceCount ({group['InstanceCount']}).")
        role = node_type(group)
        if role == CONTROLLER and group["InstanceCount"] != 1:
            raise validation(f"Instance group {name} is the Slurm controller: its InstanceCount must be 1, not "
                             f"{group['InstanceCount']}.")
        if role == LOGIN and (group.get("SlurmConfig") or {}).get("PartitionNames"):
            raise validation(f"Instance group {name} is a Login group: its nodes are in no partition, so it names "
                             "none (PartitionNames is for Compute groups).")


def check_instance_total(groups: list[dict[str, Any]]) -> None:
    total = sum(g["InstanceCount"] for g in groups)
    if total > MAX_INSTANCES_PER_CLUSTER:
        raise limit_exceeded(f"A cluster holds at most {MAX_INSTANCES_PER_CLUSTER} instances; its instance groups "
                             f"would hold {total}. Lower InstanceCount.")


def health_checks(node_recovery: str) -> dict[str, Any]:
    """NodeRecovery as the engine's instanceHealthChecks: Automatic repairs (control.health's AUTO), None only
    records what it finds."""
    action = "AUTO" if node_recovery == "Automatic" else "NONE"
    return {"healthMonitoring": {"mode": "STANDARD", "repairAction": action}}


def node_group_spec(group: dict[str, Any], nodes: dict[str, str], node_recovery: str) -> dict[str, Any]:
    """The engine's node group for a Compute or Login instance group whose nodes are `nodes` (number ->
    NodeLogicalId). A Login group's nodes run sackd, not slurmd (control.login_nodes)."""
    lifecycle = group.get("LifeCycleConfig") or {}
    return {
        **({"role": "login"} if node_type(group) == LOGIN else {}),
        **({"onCreate": {"source": lifecycle["SourceS3Uri"], "script": lifecycle["OnCreate"]}}
           if lifecycle.get("SourceS3Uri") and lifecycle.get("OnCreate") else {}),
        "instanceGroup": group,
        "logicalNodes": nodes,
        "instanceConfigs": [{"instanceType": ec2_type(group["InstanceType"])}],
        "scalingConfiguration": scaling(len(nodes)),
        "purchaseOption": "ONDEMAND",
        "slurmConfiguration": {"slurmCustomSettings": _threads(group), "gresCustomSettings": []},
        "instanceHealthChecks": health_checks(node_recovery),
    }


def threads_per_core(group: dict[str, Any]) -> int:
    """The group's ThreadsPerCore: as asked, else EC2's default for its type (2 on x86, 1 on Graviton)."""
    kind = instance_types.lookup(ec2_type(group["InstanceType"]))
    return group.get("ThreadsPerCore") or (1 if kind is None or kind.architecture == "arm64" else 2)


def _threads(group: dict[str, Any]) -> list[dict[str, str]]:
    """ThreadsPerCore 1 on a type with two threads a core (hyperthreading off) halves the node's CPUs in Slurm."""
    kind = instance_types.lookup(ec2_type(group["InstanceType"]))
    if group.get("ThreadsPerCore") != 1 or kind is None or kind.architecture == "arm64" or kind.vcpus < 2:
        return []
    return [{"parameterName": "CPUs", "parameterValue": str(kind.vcpus // 2)}]


def resize(spec: dict[str, Any], count: int) -> None:
    """A group's listed nodes grown to `count` (new numbers, never one used before, each with a new NodeLogicalId)
    or shrunk to it (the highest numbers go)."""
    nodes = spec["logicalNodes"]
    numbers = sorted(int(n) for n in nodes)
    if count <= len(numbers):
        spec["logicalNodes"] = {str(n): nodes[str(n)] for n in numbers[:count]}
    else:
        last = max([spec.get("lastNode", 0), *numbers, *map(int, spec.get("retiredNodes", {}))])
        spec["logicalNodes"] = {**nodes, **{str(n): new_logical_id()
                                            for n in range(last + 1, last + 1 + count - len(numbers))}}
    spec["lastNode"] = max([spec.get("lastNode", 0), *map(int, spec["logicalNodes"])])
    spec["scalingConfiguration"] = scaling(len(spec["logicalNodes"]))


def scaling(count: int) -> dict[str, int]:
    """A group that lists its nodes keeps them all static: minInstanceCount = maxInstanceCount = its count."""
    return {"minInstanceCount": count, "maxInstanceCount": count}


def queue_spec(partition_name: str, group_ids: list[str], default: bool) -> dict[str, Any]:
    """The engine's queue for a partition; the cluster's first partition is Slurm's default one, so that a job
    submitted without -p runs, as on HyperPod."""
    return {"computeNodeGroupConfigurations": [{"computeNodeGroupId": g} for g in group_ids],
            "slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "Default", "parameterValue": "YES"}]
                                   if default else []}}
