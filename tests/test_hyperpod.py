"""SageMaker HyperPod's cluster and node API (boto3's sagemaker client) over real Slurm."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError
from conftest import OpenPcs, unique
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
    assert creating["ClusterArn"].startswith(f"arn:aws:sagemaker:us-east-1:") and ":cluster/" in creating["ClusterArn"]
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
