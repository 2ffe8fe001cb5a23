"""SageMaker HyperPod's cluster and node API (boto3's sagemaker client) over real Slurm."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import OpenPcs, free_port, unique
from test_slurm import node_states, openpcs_exec

ROLE = "arn:aws:iam::123456789012:role/hyperpod-exec"


def controller_group(name: str = "controller") -> dict:
    return {"InstanceGroupName": name, "InstanceType": "ml.c5.large", "InstanceCount": 1, "ExecutionRole": ROLE,
            "SlurmConfig": {"NodeType": "Controller"}}


def compute_group(name: str = "workers", count: int = 2, partition: str | None = "dev", **extra) -> dict:
    slurm = {"NodeType": "Compute", **({"PartitionNames": [partition]} if partition else {})}
    return {"InstanceGroupName": name, "InstanceType": "ml.c5.large", "InstanceCount": count, "ExecutionRole": ROLE,
            "SlurmConfig": slurm, **extra}


def create(sagemaker, name: str | None = None, groups: list | None = None, **extra) -> str:
    name = name or unique("hp")
    sagemaker.create_cluster(ClusterName=name, InstanceGroups=groups or [controller_group(), compute_group()],
                             Orchestrator={"Slurm": {"SlurmConfigStrategy": "Managed"}},
                             NodeProvisioningMode="Continuous", **extra)
    return name


def wait_status(sagemaker, name: str, statuses: tuple[str, ...], timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        cluster = sagemaker.describe_cluster(ClusterName=name)
        if cluster["ClusterStatus"] in statuses:
            return cluster
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster {name} is {cluster['ClusterStatus']}, not {statuses}: {cluster}")
        time.sleep(0.2)


def wait_gone(sagemaker, name: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sagemaker.describe_cluster(ClusterName=name)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ResourceNotFound"
            return
        time.sleep(0.2)
    raise AssertionError(f"cluster {name} was not deleted within {timeout} s")


def nodes_of(sagemaker, name: str) -> list[dict]:
    return sagemaker.list_cluster_nodes(ClusterName=name, IncludeNodeLogicalIds=True)["ClusterNodeSummaries"]


def error(excinfo) -> tuple[str, str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["Error"]["Message"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def sagemaker(server: OpenPcs):
    return server.client("sagemaker")


def test_a_hyperpod_cluster_is_real_slurm_and_runs_a_job(server, sagemaker):
    name = create(sagemaker)
    creating = sagemaker.describe_cluster(ClusterName=name)
    assert creating["ClusterStatus"] == "Creating"
    assert creating["ClusterArn"].startswith("arn:aws:sagemaker:us-east-1:") and ":cluster/" in creating["ClusterArn"]
    cluster = wait_status(sagemaker, name, ("InService",))
    groups = {g["InstanceGroupName"]: g for g in cluster["InstanceGroups"]}
    assert groups["controller"]["SlurmConfig"] == {"NodeType": "Controller"}
    assert (groups["workers"]["CurrentCount"], groups["workers"]["TargetCount"]) == (2, 2)
    assert groups["workers"]["Status"] == "InService" and cluster["NodeRecovery"] == "Automatic"
    nodes = nodes_of(sagemaker, name)
    assert sorted(n["InstanceGroupName"] for n in nodes) == ["controller", "workers", "workers"]
    assert all(n["InstanceStatus"]["Status"] == "Running" and n["InstanceId"].startswith("i-") for n in nodes)
    # The compute nodes are slurmd in the partition their group names, which is the default one.
    assert node_states(server, name) == {"workers-1": "IDLE", "workers-2": "IDLE"}
    partitions = openpcs_exec(server, name, "sinfo", "--noheader", "--format=%P %D").stdout.split()
    assert partitions == ["dev*", "2"]
    done = openpcs_exec(server, name, "srun", "-N2", "printenv", "SLURMD_NODENAME").stdout.split()
    assert sorted(done) == ["workers-1", "workers-2"]
    # Listed by name or ARN alike.
    listed = sagemaker.list_clusters(NameContains=name)["ClusterSummaries"]
    assert [(c["ClusterName"], c["ClusterArn"], c["ClusterStatus"]) for c in listed] == [
        (name, cluster["ClusterArn"], "InService")]
    assert sagemaker.describe_cluster(ClusterName=cluster["ClusterArn"])["ClusterName"] == name
    assert sagemaker.delete_cluster(ClusterName=name)["ClusterArn"] == cluster["ClusterArn"]
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Deleting"
    wait_gone(sagemaker, name)


def wait_nodes(sagemaker, name: str, group: str, statuses: list[str], timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in nodes_of(sagemaker, name) if n["InstanceGroupName"] == group]
        if sorted(n["InstanceStatus"]["Status"] for n in nodes) == sorted(statuses):
            return nodes
        if time.monotonic() > deadline:
            raise AssertionError(f"{group}'s nodes are {nodes}, not {statuses}")
        time.sleep(0.2)


def test_batch_add_cluster_nodes_join_slurm_run_jobs_and_retries_return_the_same_nodes(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=1)])
    wait_status(sagemaker, name, ("InService",))
    request = {"ClusterName": name, "ClientToken": unique("token"),
               "NodesToAdd": [{"InstanceGroupName": "workers", "IncrementTargetCountBy": 2}]}
    added = sagemaker.batch_add_cluster_nodes(**request)
    assert added["Failed"] == []
    assert [(n["InstanceGroupName"], n["Status"]) for n in added["Successful"]] == [("workers", "Pending")] * 2
    logical_ids = [n["NodeLogicalId"] for n in added["Successful"]]
    assert len(set(logical_ids)) == 2
    assert wait_status(sagemaker, name, ("InService",))["InstanceGroups"][1]["TargetCount"] == 3
    wait_nodes(sagemaker, name, "workers", ["Running"] * 3)
    for logical_id in logical_ids:  # each new node is tracked by its NodeLogicalId, and has an instance now
        details = sagemaker.describe_cluster_node(ClusterName=name, NodeLogicalId=logical_id)["NodeDetails"]
        assert details["InstanceStatus"]["Status"] == "Running" and details["InstanceId"].startswith("i-")
        by_id = sagemaker.describe_cluster_node(ClusterName=name, NodeId=details["InstanceId"])["NodeDetails"]
        assert by_id["NodeLogicalId"] == logical_id and by_id["Placement"]["AvailabilityZone"] == "us-east-1a"
    assert node_states(server, name) == {"workers-1": "IDLE", "workers-2": "IDLE", "workers-3": "IDLE"}
    assert sorted(openpcs_exec(server, name, "srun", "-N3", "printenv", "SLURMD_NODENAME").stdout.split()) == [
        "workers-1", "workers-2", "workers-3"]
    # A retry with the same ClientToken adds nothing: the same NodeLogicalIds, with their latest status.
    retried = sagemaker.batch_add_cluster_nodes(**request)
    assert [(n["NodeLogicalId"], n["Status"]) for n in retried["Successful"]] == [(i, "Running") for i in logical_ids]
    assert sagemaker.describe_cluster(ClusterName=name)["InstanceGroups"][1]["TargetCount"] == 3
    with pytest.raises(ClientError) as reused:  # the same token for another request
        sagemaker.batch_add_cluster_nodes(**{**request, "NodesToAdd": [{"InstanceGroupName": "workers",
                                                                        "IncrementTargetCountBy": 1}]})
    assert error(reused)[0] == "ConflictException" and error(reused)[2] == 400
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_batch_add_cluster_nodes_fails_per_group_and_by_the_rules(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=0),
                                     compute_group("spare", count=0, partition="dev")])
    wait_status(sagemaker, name, ("InService",))
    answer = sagemaker.batch_add_cluster_nodes(ClusterName=name, NodesToAdd=[
        {"InstanceGroupName": "nosuch", "IncrementTargetCountBy": 1},
        {"InstanceGroupName": "controller", "IncrementTargetCountBy": 1},
        {"InstanceGroupName": "workers", "IncrementTargetCountBy": 2, "AvailabilityZones": ["us-west-2b"]},
        {"InstanceGroupName": "spare", "IncrementTargetCountBy": 3, "InstanceTypes": ["ml.g5.xlarge"]},
        {"InstanceGroupName": "workers", "IncrementTargetCountBy": 1, "AvailabilityZones": ["us-east-1a"],
         "InstanceTypes": ["ml.c5.large", "ml.g5.xlarge"]}])
    failed = [(f["InstanceGroupName"], f["ErrorCode"], f["FailedCount"]) for f in answer["Failed"]]
    assert failed == [("nosuch", "InstanceGroupNotFound", 1), ("controller", "InvalidInstanceGroupStatus", 1),
                      ("workers", "IncompatibleAvailabilityZones", 2), ("spare", "IncompatibleInstanceTypes", 3)]
    assert all(f["Message"] for f in answer["Failed"])
    assert [(n["InstanceGroupName"], n["AvailabilityZones"]) for n in answer["Successful"]] == [
        ("workers", ["us-east-1a"])]
    wait_nodes(sagemaker, name, "workers", ["Running"])
    with pytest.raises(ClientError) as too_many:
        sagemaker.batch_add_cluster_nodes(ClusterName=name, NodesToAdd=[
            {"InstanceGroupName": "workers", "IncrementTargetCountBy": 30},
            {"InstanceGroupName": "spare", "IncrementTargetCountBy": 21}])
    code, message, status = error(too_many)
    assert (code, status) == ("ValidationException", 400) and "at most 50" in message
    with pytest.raises(ClientError) as six_groups:  # the model's own limit: 5 groups a request
        sagemaker.batch_add_cluster_nodes(ClusterName=name, NodesToAdd=[
            {"InstanceGroupName": "workers", "IncrementTargetCountBy": 1}] * 6)
    assert error(six_groups)[0] == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        sagemaker.batch_add_cluster_nodes(ClusterName=unique("nosuch"), NodesToAdd=[
            {"InstanceGroupName": "workers", "IncrementTargetCountBy": 1}])
    assert error(unknown)[:1] == ("ResourceNotFound",) and error(unknown)[2] == 400
    assert sagemaker.describe_cluster(ClusterName=name)["InstanceGroups"][1]["TargetCount"] == 1
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_batch_add_needs_continuous_provisioning(server, sagemaker):
    name = unique("hp")
    sagemaker.create_cluster(ClusterName=name, InstanceGroups=[controller_group(), compute_group(count=0)])
    with pytest.raises(ClientError) as refused:
        sagemaker.batch_add_cluster_nodes(ClusterName=name, NodesToAdd=[
            {"InstanceGroupName": "workers", "IncrementTargetCountBy": 1}])
    code, message, _ = error(refused)
    assert code == "ValidationException" and "Continuous" in message
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_batch_delete_drains_a_busy_node_first_and_never_removes_the_controller(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=2)])
    wait_status(sagemaker, name, ("InService",))
    nodes = {n["InstanceGroupName"] + ":" + n["NodeLogicalId"]: n for n in nodes_of(sagemaker, name)}
    controller = next(n for key, n in nodes.items() if key.startswith("controller:"))
    job = openpcs_exec(server, name, "sbatch", "--parsable", "-w", "workers-2",
                       "--wrap", "sleep 4; echo finished > drained-job.txt").stdout.strip()
    deadline = time.monotonic() + 30
    while openpcs_exec(server, name, "squeue", "-h", "-j", job, "-o", "%T").stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    # workers-2 runs the job: find its instance through the events of its launch.
    events = sagemaker.list_cluster_events(ClusterName=name, ResourceType="Instance")["Events"]
    busy_id = next(e["InstanceId"] for e in events if "workers-2" in e["Description"])
    answer = sagemaker.batch_delete_cluster_nodes(ClusterName=name, NodeIds=[busy_id, controller["InstanceId"],
                                                                            "i-0123456789abcdef0"])
    assert answer["Successful"] == [busy_id]
    assert sorted((f["NodeId"], f["Code"]) for f in answer["Failed"]) == sorted(
        [(controller["InstanceId"], "NodeIdInUse"), ("i-0123456789abcdef0", "NodeIdNotFound")])
    shutting = sagemaker.describe_cluster_node(ClusterName=name, NodeId=busy_id)["NodeDetails"]
    assert shutting["InstanceStatus"]["Status"] == "ShuttingDown"
    assert sagemaker.describe_cluster(ClusterName=name)["InstanceGroups"][1]["TargetCount"] == 1
    # Drained, not killed: the job runs to the end, then the instance goes and the node leaves Slurm.
    deadline = time.monotonic() + 10
    while "DRAIN" not in node_states(server, name).get("workers-2", ""):
        assert time.monotonic() < deadline, node_states(server, name)
        time.sleep(0.2)
    assert openpcs_exec(server, name, "squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "RUNNING"
    wait_status(sagemaker, name, ("InService",), timeout=60)
    assert (server.data_dir / "drained-job.txt").read_text() == "finished\n"
    assert node_states(server, name) == {"workers-1": "IDLE"}
    remaining = [n["InstanceId"] for n in nodes_of(sagemaker, name) if n["InstanceGroupName"] == "workers"]
    assert len(remaining) == 1 and busy_id not in remaining
    with pytest.raises(ClientError) as gone:
        sagemaker.describe_cluster_node(ClusterName=name, NodeId=busy_id)
    assert error(gone)[0] == "ResourceNotFound"
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


@pytest.mark.parametrize("change, words", [
    ({"Orchestrator": {"Eks": {"ClusterArn": "arn:aws:eks:us-east-1:123456789012:cluster/demo"}}},
     "Slurm orchestrator only"),
    ({"InstanceGroups": [compute_group()]}, "exactly one instance group with SlurmConfig.NodeType Controller"),
    ({"InstanceGroups": [controller_group(), controller_group("c2")]}, "exactly one"),
    ({"InstanceGroups": [controller_group(), {**compute_group(), "InstanceType": "ml.trn1.32xlarge"}]},
     "no trn1.32xlarge"),
    ({"InstanceGroups": [controller_group(), compute_group(), compute_group()]}, "listed more than once"),
    ({"InstanceGroups": [controller_group(), {**compute_group(), "MinInstanceCount": 3}]}, "MinInstanceCount"),
    ({"InstanceGroups": [{**controller_group(), "InstanceCount": 2}, compute_group()]}, "InstanceCount must be 1"),
    ({"InstanceGroups": [controller_group(), compute_group(), {**compute_group("login", 1, "dev"),
                                                                "SlurmConfig": {"NodeType": "Login",
                                                                                "PartitionNames": ["dev"]}}]},
     "Login group"),
    ({"InstanceGroups": [controller_group(), {**compute_group(), "KubernetesConfig": {"Labels": {"a": "b"}}}]},
     "Amazon EKS"),
    ({"AutoScaling": {"Mode": "Enable", "AutoScalerType": "Karpenter"}}, "Karpenter"),
])
def test_create_cluster_refuses_what_openpcs_cannot_run_with_a_validation_error(sagemaker, change, words):
    name = unique("hp")
    with pytest.raises(ClientError) as refused:
        sagemaker.create_cluster(**{"ClusterName": name, "InstanceGroups": [controller_group(), compute_group()],
                                    **change})
    code, message, status = error(refused)
    assert (code, status) == ("ValidationException", 400) and words in message, message
    with pytest.raises(ClientError) as absent:  # nothing was kept
        sagemaker.describe_cluster(ClusterName=name)
    assert error(absent)[0] == "ResourceNotFound"


def test_names_are_unique_and_quotas_hold(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=0)])
    with pytest.raises(ClientError) as taken:
        create(sagemaker, name=name)
    assert error(taken)[:1] == ("ResourceInUse",) and name in error(taken)[1]
    with pytest.raises(ClientError) as too_big:
        create(sagemaker, groups=[controller_group(), compute_group(count=2048)])
    assert error(too_big)[0] == "ResourceLimitExceeded" and "2048" in error(too_big)[1]
    # A PCS cluster may have the same name: the two services' names are apart.
    pcs = server.client()
    pcs_cluster = pcs.create_cluster(clusterName=name, scheduler={"type": "SLURM", "version": "24.11"}, size="SMALL",
                                     networking={"subnetIds": ["subnet-0123456789abcdef0"]})["cluster"]
    assert pcs.get_cluster(clusterIdentifier=name)["cluster"]["id"] == pcs_cluster["id"]
    assert [c["name"] for c in pcs.list_clusters()["clusters"]].count(name) == 1  # the HyperPod one is not PCS's
    assert len(sagemaker.list_clusters(NameContains=name)["ClusterSummaries"]) == 1  # nor the PCS one HyperPod's
    pcs.delete_cluster(clusterIdentifier=pcs_cluster["id"])
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_update_cluster_changes_counts_recovery_groups_and_partitions(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=1)])
    wait_status(sagemaker, name, ("InService",))
    sagemaker.update_cluster(ClusterName=name, NodeRecovery="None", InstanceGroups=[
        compute_group(count=2), compute_group("big", count=1, partition="large", InstanceType="ml.c5.2xlarge",
                                              ThreadsPerCore=1)])
    assert sagemaker.describe_cluster(ClusterName=name)["ClusterStatus"] == "Updating"
    cluster = wait_status(sagemaker, name, ("InService",))
    assert cluster["NodeRecovery"] == "None"
    assert [(g["InstanceGroupName"], g["TargetCount"], g["CurrentCount"]) for g in cluster["InstanceGroups"]] == [
        ("controller", 1, 1), ("workers", 2, 2), ("big", 1, 1)]
    sinfo = openpcs_exec(server, name, "sinfo", "--noheader", "--format=%P %N").stdout.split("\n")
    assert sorted(line for line in sinfo if line) == ["dev* workers-[1-2]", "large big-1"]
    assert openpcs_exec(server, name, "srun", "-p", "large", "printenv", "SLURMD_NODENAME").stdout.strip() == "big-1"
    # c5.2xlarge has 8 vCPUs, two threads a core: with ThreadsPerCore 1, Slurm's node has 4 CPUs.
    assert "CPUTot=4 " in openpcs_exec(server, name, "scontrol", "show", "node", "big-1").stdout
    assert cluster["InstanceGroups"][2]["InstanceTypeDetails"] == [
        {"InstanceType": "ml.c5.2xlarge", "CurrentCount": 1, "ThreadsPerCore": 1}]
    # Fewer nodes, a group deleted with its partition; the controller group stays.
    sagemaker.update_cluster(ClusterName=name, InstanceGroups=[compute_group(count=1)], InstanceGroupsToDelete=["big"])
    cluster = wait_status(sagemaker, name, ("InService",))
    assert [(g["InstanceGroupName"], g["TargetCount"]) for g in cluster["InstanceGroups"]] == [
        ("controller", 1), ("workers", 1)]
    assert node_states(server, name) == {"workers-1": "IDLE"}
    assert openpcs_exec(server, name, "sinfo", "--noheader", "--format=%P").stdout.split() == ["dev*"]
    for change, words in (({"InstanceGroupsToDelete": ["controller"]}, "controller"),
                          ({"InstanceGroups": [{**compute_group(), "InstanceType": "ml.c5.xlarge"}]}, "cannot change"),
                          ({"InstanceGroupsToDelete": ["nosuch"]}, "no instance group nosuch")):
        with pytest.raises(ClientError) as refused:
            sagemaker.update_cluster(ClusterName=name, **change)
        assert error(refused)[0] == "ValidationException" and words in error(refused)[1]
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_cluster_events_tell_what_happened_to_nodes(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=1)])
    wait_status(sagemaker, name, ("InService",))
    instance = next(n for n in nodes_of(sagemaker, name) if n["InstanceGroupName"] == "workers")
    events = sagemaker.list_cluster_events(ClusterName=name, NodeId=instance["InstanceId"],
                                           SortOrder="Ascending")["Events"]
    kinds = [e["Description"].split()[0] for e in events]
    assert kinds[:2] == ["InstanceLaunched", "InstanceRegistered"]
    assert all(e["ResourceType"] == "Instance" and e["InstanceGroupName"] == "workers" for e in events)
    detail = sagemaker.describe_cluster_event(ClusterName=name, EventId=events[0]["EventId"])["EventDetails"]
    assert detail["EventDetails"]["EventMetadata"]["Instance"]["NodeLogicalId"] == instance["NodeLogicalId"]
    newest = sagemaker.list_cluster_events(ClusterName=name, MaxResults=1)  # newest first, by default
    everything = sagemaker.list_cluster_events(ClusterName=name, SortOrder="Ascending")["Events"]
    assert newest["Events"][0]["EventId"] == everything[-1]["EventId"] and "NextToken" in newest
    page2 = sagemaker.list_cluster_events(ClusterName=name, MaxResults=1, NextToken=newest["NextToken"])
    assert page2["Events"][0]["EventId"] == everything[-2]["EventId"]
    times = [e["EventTime"] for e in everything]
    assert times == sorted(times)
    with pytest.raises(ClientError) as unknown:
        sagemaker.describe_cluster_event(ClusterName=name, EventId="00000000-0000-0000-0000-00000000ffff")
    assert error(unknown)[0] == "ResourceNotFound"
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def node_daemon(server: OpenPcs, instance_id: str) -> tuple[int, int] | None:
    """The instance's node daemon as recorded (PID and start time); None between a stop and the next start. (slurmd's
    own pid file will not do: in its node's PID namespace slurmd is always PID 2.)"""
    try:
        record = json.loads((server.data_dir / "instances" / instance_id / "slurmd.json").read_text())
    except FileNotFoundError:
        return None
    return record["pid"], record["startTime"]


def test_reboot_keeps_the_instance_and_replace_keeps_the_node_logical_id(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=2)])
    wait_status(sagemaker, name, ("InService",))
    events = sagemaker.list_cluster_events(ClusterName=name, ResourceType="Instance")["Events"]
    first = next(e["InstanceId"] for e in events if "workers-1" in e["Description"])
    second = next(e["InstanceId"] for e in events if "workers-2" in e["Description"])
    logical = sagemaker.describe_cluster_node(ClusterName=name, NodeId=second)["NodeDetails"]["NodeLogicalId"]
    before = node_daemon(server, first)
    rebooted = sagemaker.batch_reboot_cluster_nodes(ClusterName=name, NodeIds=[first, "i-0123456789abcdef0"])
    assert rebooted["Successful"] == [first]
    assert [(f["NodeId"], f["ErrorCode"]) for f in rebooted["Failed"]] == [("i-0123456789abcdef0",
                                                                            "InstanceIdNotFound")]
    wait_status(sagemaker, name, ("InService",))
    deadline = time.monotonic() + 30
    while node_daemon(server, first) in (before, None) or node_states(server, name)["workers-1"] != "IDLE":
        assert time.monotonic() < deadline, "workers-1's slurmd was not restarted"
        time.sleep(0.2)
    assert sagemaker.describe_cluster_node(ClusterName=name, NodeId=first)["NodeDetails"]["InstanceStatus"][
        "Status"] == "Running"  # the same instance
    replaced = sagemaker.batch_replace_cluster_nodes(ClusterName=name, NodeLogicalIds=[logical])
    assert replaced["SuccessfulNodeLogicalIds"] == [logical]
    deadline = time.monotonic() + 60
    while True:
        node = sagemaker.describe_cluster_node(ClusterName=name, NodeLogicalId=logical)["NodeDetails"]
        if node.get("InstanceId") not in (None, second) and node["InstanceStatus"]["Status"] == "Running" \
                and node_states(server, name).get("workers-2") == "IDLE":
            break
        assert time.monotonic() < deadline, node
        time.sleep(0.2)
    with pytest.raises(ClientError) as gone:  # the old instance is no more
        sagemaker.describe_cluster_node(ClusterName=name, NodeId=second)
    assert error(gone)[0] == "ResourceNotFound"
    assert openpcs_exec(server, name, "srun", "-w", "workers-2", "printenv", "SLURMD_NODENAME").stdout.strip() == \
        "workers-2"
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


ON_CREATE = """#!/bin/bash
set -e
source ./helpers.sh   # a file beside the script, as HyperPod's lifecycle scripts use theirs
say_created >> {marker}
"""


def drop_scripts(root: Path, marker: Path, failing: bool = False) -> None:
    """A lifecycle script source: on_create.sh and the helper it sources."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "on_create.sh").write_text(ON_CREATE.format(marker=marker) if not failing else
                                       "echo installing the drivers\necho 'fatal: no drivers for this node' >&2\n"
                                       "exit 3\n")
    (root / "helpers.sh").write_text('say_created() { echo "created $OPENPCS_NODE_NAME"; }\n')


def lifecycle(uri: str) -> dict:
    return {"LifeCycleConfig": {"SourceS3Uri": uri, "OnCreate": "on_create.sh"}}


def test_on_create_runs_on_each_node_from_the_data_dirs_bucket(server, sagemaker, tmp_path):
    marker = tmp_path / "created.txt"
    drop_scripts(server.data_dir / "buckets" / "lifecycle-scripts" / "hp" / "base", marker)
    name = create(sagemaker, groups=[controller_group(),
                                     compute_group(count=2, **lifecycle("s3://lifecycle-scripts/hp/base/"))])
    cluster = wait_status(sagemaker, name, ("InService",))
    assert cluster["InstanceGroups"][1]["LifeCycleConfig"]["OnCreate"] == "on_create.sh"
    assert sorted(marker.read_text().splitlines()) == ["created workers-1", "created workers-2"]
    # Once in a node's life: a reboot (slurmd restarted on the same instance) does not run it again.
    first = next(n["InstanceId"] for n in nodes_of(sagemaker, name) if n["InstanceGroupName"] == "workers")
    sagemaker.batch_reboot_cluster_nodes(ClusterName=name, NodeIds=[first])
    wait_status(sagemaker, name, ("InService",))
    wait_nodes(sagemaker, name, "workers", ["Running"] * 2)
    assert len(marker.read_text().splitlines()) == 2
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_a_failing_on_create_script_marks_the_node_failure_with_its_output(server, sagemaker, tmp_path):
    drop_scripts(server.data_dir / "buckets" / "lifecycle-scripts" / "broken", tmp_path / "unused", failing=True)
    name = create(sagemaker, groups=[controller_group(),
                                     compute_group(count=1, **lifecycle("s3://lifecycle-scripts/broken"))])
    cluster = wait_status(sagemaker, name, ("Failed",))
    assert "fatal: no drivers for this node" in cluster["FailureMessage"]
    assert "exited with status 3" in cluster["FailureMessage"]
    assert cluster["InstanceGroups"][1]["Status"] == "Failed"
    failed = [e for e in sagemaker.list_cluster_events(ClusterName=name)["Events"] if e["EventLevel"] == "Error"]
    assert failed and "fatal: no drivers for this node" in failed[0]["Description"]
    detail = sagemaker.describe_cluster_event(ClusterName=name, EventId=failed[0]["EventId"])["EventDetails"]
    assert "fatal: no drivers" in detail["EventDetails"]["EventMetadata"]["Instance"]["FailureMessage"]
    logical = detail["EventDetails"]["EventMetadata"]["Instance"]["NodeLogicalId"]
    node = sagemaker.describe_cluster_node(ClusterName=name, NodeLogicalId=logical)["NodeDetails"]
    assert node["InstanceStatus"]["Status"] == "Failure"
    assert "fatal: no drivers for this node" in node["InstanceStatus"]["Message"]
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def test_a_missing_on_create_script_fails_with_where_openpcs_looked(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(),
                                     compute_group(count=1, **lifecycle("s3://nosuch-bucket/scripts"))])
    cluster = wait_status(sagemaker, name, ("Failed",))
    assert "s3://nosuch-bucket/scripts/on_create.sh does not exist" in cluster["FailureMessage"]
    assert str(server.data_dir / "buckets" / "nosuch-bucket") in cluster["FailureMessage"]
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


@pytest.fixture
def object_store(tmp_path):
    """moto's S3 server, the standard stand-in for an S3-compatible object store, stopped by PID."""
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=log, stderr=log,
                               start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "moto.log").read_text()
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_on_create_scripts_come_from_the_configured_object_store(tmp_path, object_store):
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    s3 = boto3.client("s3", endpoint_url=object_store, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="team-scripts")
    marker = tmp_path / "created.txt"
    source = tmp_path / "source"
    drop_scripts(source, marker)
    for path in source.iterdir():
        s3.put_object(Bucket="team-scripts", Key=f"lifecycle/{path.name}", Body=path.read_bytes())
    server = OpenPcs(tmp_path / "data", None, "--object-store-url", object_store, env=keys).start()
    sagemaker = server.client("sagemaker")
    name = create(sagemaker, groups=[controller_group(),
                                     compute_group(count=1, **lifecycle("s3://team-scripts/lifecycle"))])
    wait_status(sagemaker, name, ("InService",))
    assert marker.read_text() == "created workers-1\n"
    s3.delete_object(Bucket="team-scripts", Key="lifecycle/on_create.sh")
    sagemaker.batch_add_cluster_nodes(ClusterName=name, NodesToAdd=[
        {"InstanceGroupName": "workers", "IncrementTargetCountBy": 1}])
    cluster = wait_status(sagemaker, name, ("InService",))  # the group failed its update: it runs, Degraded
    assert cluster["InstanceGroups"][1]["Status"] == "Degraded"
    assert "on_create.sh does not exist" in cluster["FailureMessage"] and object_store in cluster["FailureMessage"]
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)
    server.close()


def test_node_recovery_automatic_replaces_a_dead_instance_under_the_same_node_logical_id(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), compute_group(count=1)], NodeRecovery="Automatic")
    wait_status(sagemaker, name, ("InService",))
    node = next(n for n in nodes_of(sagemaker, name) if n["InstanceGroupName"] == "workers")
    subprocess.run([sys.executable, "-m", "openpcs", "inject", "--data-dir", str(server.data_dir), name,
                    "workers-1", "instance-death"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 90
    while True:
        now = sagemaker.describe_cluster_node(ClusterName=name, NodeLogicalId=node["NodeLogicalId"])["NodeDetails"]
        if now.get("InstanceId") not in (None, node["InstanceId"]) and now["InstanceStatus"]["Status"] == "Running" \
                and node_states(server, name)["workers-1"] == "IDLE":
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    repairs = [e for e in sagemaker.list_cluster_events(ClusterName=name, NodeId=node["InstanceId"])["Events"]
               if e["Description"].startswith("Repair")]
    assert repairs and repairs[0]["EventLevel"] == "Warn"
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


def login_group(name: str = "login", count: int = 1) -> dict:
    return {"InstanceGroupName": name, "InstanceType": "ml.c5.large", "InstanceCount": count, "ExecutionRole": ROLE,
            "SlurmConfig": {"NodeType": "Login"}}


def on_login_node(server: OpenPcs, node: str, cluster: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openpcs", "exec", "--data-dir", str(server.data_dir),
                           "--node", node, cluster, "--", *command], capture_output=True, text=True, timeout=120,
                          cwd=server.data_dir)


def test_login_nodes_are_slurm_clients_that_fetch_the_configuration_and_submit_jobs(server, sagemaker):
    name = create(sagemaker, groups=[controller_group(), login_group(), compute_group(count=1)])
    wait_status(sagemaker, name, ("InService",))
    nodes = {n["InstanceGroupName"]: n for n in nodes_of(sagemaker, name)}
    assert nodes["login"]["InstanceStatus"]["Status"] == "Running"
    assert node_states(server, name) == {"workers-1": "IDLE"}  # a login node is no Slurm node
    submitted = on_login_node(server, "login-1", name, "sbatch", "--parsable", "--wait", "--wrap",
                              "echo ran on $SLURMD_NODENAME > from-login.txt")
    assert submitted.returncode == 0, submitted.stderr
    assert (server.data_dir / "from-login.txt").read_text() == "ran on workers-1\n"
    # The login node's configuration is what its sackd fetched from slurmctld (configless), kept current.
    sagemaker.update_cluster(ClusterName=name, InstanceGroups=[compute_group("gpu", count=1, partition="gpu")])
    wait_status(sagemaker, name, ("InService",))
    deadline = time.monotonic() + 30
    while "gpu" not in on_login_node(server, "login-1", name, "sinfo", "-h", "-o", "%P").stdout:
        assert time.monotonic() < deadline, "the login node did not see the new partition"
        time.sleep(0.2)
    for node, words in (("workers-1", "no login node workers-1"), ("nosuch", "Its login nodes: login-1")):
        refused = on_login_node(server, node, name, "sinfo")
        assert refused.returncode != 0 and words in refused.stderr, refused.stderr
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)


@pytest.fixture
def https_scripts(tmp_path):
    """A local HTTPS server of a directory, with a certificate the openpcs server is told to trust
    (SSL_CERT_FILE): (its base URL, the directory, the certificate file)."""
    root, cert, key = tmp_path / "www", tmp_path / "cert.pem", tmp_path / "key.pem"
    root.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", root, cert
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_on_create_scripts_come_from_https(tmp_path, https_scripts):
    url, root, cert = https_scripts
    marker = tmp_path / "created.txt"
    (root / "lifecycle").mkdir()
    (root / "lifecycle" / "on_create.sh").write_text(f'echo "created $OPENPCS_NODE_NAME" >> {marker}\n')
    server = OpenPcs(tmp_path / "data", None, env={"SSL_CERT_FILE": str(cert)}).start()
    sagemaker = server.client("sagemaker")
    name = create(sagemaker, groups=[controller_group(), compute_group(count=1, **lifecycle(f"{url}/lifecycle"))])
    wait_status(sagemaker, name, ("InService",))
    assert marker.read_text() == "created workers-1\n"
    sagemaker.delete_cluster(ClusterName=name)
    wait_gone(sagemaker, name)
    server.close()
