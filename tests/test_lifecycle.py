"""The resource lifecycle through unmodified boto3: create, get, list, update, delete, and PCS's rules."""

from __future__ import annotations

import re

import pytest
from conftest import (
    create_cluster,
    create_node_group,
    create_queue,
    error_of,
    node_group_params,
    unique,
    wait_for,
    wait_gone,
)

ID = re.compile(r"pcs_[a-z0-9]{10}")


def test_cluster_create_get_list_delete(pcs, openpcs):
    name = unique("demo")
    created = pcs.create_cluster(clusterName=name, scheduler={"type": "SLURM", "version": "24.11"}, size="SMALL",
                                 networking={"subnetIds": ["subnet-0123456789abcdef0"],
                                             "securityGroupIds": ["sg-0123456789abcdef0"]})["cluster"]
    assert created["status"] == "CREATING"
    assert ID.fullmatch(created["id"])
    account = created["arn"].split(":")[4]
    assert created["arn"] == f"arn:aws:pcs:us-east-1:{account}:cluster/{created['id']}"
    assert created["networking"]["securityGroupIds"] == ["sg-0123456789abcdef0"]

    active = wait_for(lambda: pcs.get_cluster(clusterIdentifier=name), "cluster", ("ACTIVE",))
    assert active["id"] == created["id"]
    assert active["createdAt"] == created["createdAt"]
    assert active["modifiedAt"] >= created["modifiedAt"]
    assert [e["type"] for e in active["endpoints"]] == ["SLURMCTLD"]
    assert int(active["endpoints"][0]["port"]) > 0
    assert active["slurmConfiguration"]["scaleDownIdleTimeInSeconds"] == 600
    assert "secretArn" in active["slurmConfiguration"]["authKey"]
    # Gettable by id as well as by name.
    assert pcs.get_cluster(clusterIdentifier=created["id"])["cluster"]["name"] == name
    listed = {c["id"]: c for c in pcs.get_paginator("list_clusters").paginate().build_full_result()["clusters"]}
    assert listed[created["id"]]["status"] == "ACTIVE"

    assert pcs.delete_cluster(clusterIdentifier=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    wait_gone(lambda: pcs.get_cluster(clusterIdentifier=created["id"]), pcs.exceptions.ResourceNotFoundException)
    with pytest.raises(pcs.exceptions.ResourceNotFoundException) as gone:
        pcs.get_cluster(clusterIdentifier=created["id"])
    assert error_of(gone)["resourceId"] == created["id"]
    assert error_of(gone)["resourceType"] == "cluster"
    ids = [c["id"] for c in pcs.get_paginator("list_clusters").paginate().build_full_result()["clusters"]]
    assert created["id"] not in ids
    # The cluster's files went with it.
    assert not (openpcs.data_dir / "clusters" / created["id"]).exists()


def test_cluster_name_is_unique_and_reusable_after_delete(pcs):
    cluster = create_cluster(pcs)
    with pytest.raises(pcs.exceptions.ConflictException) as dup:
        create_cluster(pcs, name=cluster["name"], wait=False)
    assert error_of(dup)["resourceId"] == cluster["id"]
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    wait_gone(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), pcs.exceptions.ResourceNotFoundException)
    again = create_cluster(pcs, name=cluster["name"])
    assert again["id"] != cluster["id"]


def test_node_group_and_queue_lifecycle(pcs):
    cluster = create_cluster(pcs)
    group = create_node_group(pcs, cluster["id"], name="cpu", min_count=2, max_count=8,
                              slurmConfiguration={"slurmCustomSettings": [
                                  {"parameterName": "Weight", "parameterValue": "10"}]},
                              tags={"team": "hpc"})
    assert ID.fullmatch(group["id"])
    assert group["clusterId"] == cluster["id"]
    assert group["arn"].endswith(f":computenodegroup/{group['id']}")
    assert group["purchaseOption"] == "ONDEMAND"
    assert group["scalingConfiguration"] == {"minInstanceCount": 2, "maxInstanceCount": 8}
    assert group["instanceConfigs"] == [{"instanceType": "c6i.xlarge"}]
    assert group["slurmConfiguration"]["slurmCustomSettings"][0]["parameterName"] == "Weight"
    # Node group names are unique within a cluster, by name or id.
    assert pcs.get_compute_node_group(clusterIdentifier=cluster["name"],
                                      computeNodeGroupIdentifier="cpu")["computeNodeGroup"]["id"] == group["id"]

    queue = create_queue(pcs, cluster["id"], [group["id"]], name="batch")
    assert queue["computeNodeGroupConfigurations"] == [{"computeNodeGroupId": group["id"]}]
    assert queue["arn"].endswith(f":queue/{queue['id']}")
    assert [q["id"] for q in pcs.list_queues(clusterIdentifier=cluster["id"])["queues"]] == [queue["id"]]
    assert [g["id"] for g in pcs.list_compute_node_groups(
        clusterIdentifier=cluster["id"])["computeNodeGroups"]] == [group["id"]]

    # Update a node group: UPDATING at once, then ACTIVE with the new settings.
    updated = pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                            scalingConfiguration={"minInstanceCount": 1, "maxInstanceCount": 4},
                                            purchaseOption="SPOT")["computeNodeGroup"]
    assert updated["status"] == "UPDATING"
    active = wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                         computeNodeGroupIdentifier=group["id"]),
                      "computeNodeGroup", ("ACTIVE",))
    assert active["scalingConfiguration"] == {"minInstanceCount": 1, "maxInstanceCount": 4}
    assert active["spotOptions"] == {"allocationStrategy": "price-capacity-optimized"}
    assert active["iamInstanceProfileArn"] == group["iamInstanceProfileArn"]  # untouched members stay

    # Update a queue.
    updated_q = pcs.update_queue(clusterIdentifier=cluster["id"], queueIdentifier="batch",
                                 slurmConfiguration={"slurmCustomSettings": [
                                     {"parameterName": "MaxTime", "parameterValue": "60"}]})["queue"]
    assert updated_q["status"] == "UPDATING"
    active_q = wait_for(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]),
                        "queue", ("ACTIVE",))
    assert active_q["slurmConfiguration"]["slurmCustomSettings"] == [{"parameterName": "MaxTime",
                                                                      "parameterValue": "60"}]

    # A node group that a queue uses cannot be deleted; the error names the queue.
    with pytest.raises(pcs.exceptions.ConflictException) as used:
        pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])
    assert error_of(used)["resourceId"] == queue["id"]
    assert error_of(used)["resourceType"] == "queue"
    # A cluster with node groups or queues cannot be deleted; the error names a blocking resource.
    with pytest.raises(pcs.exceptions.ConflictException) as blocked:
        pcs.delete_cluster(clusterIdentifier=cluster["id"])
    assert error_of(blocked)["resourceId"] in (group["id"], queue["id"])

    pcs.delete_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"])
    wait_gone(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]),
               pcs.exceptions.ResourceNotFoundException)
    pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])
    wait_gone(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                  computeNodeGroupIdentifier=group["id"]),
               pcs.exceptions.ResourceNotFoundException)
    assert pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"] == []
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    wait_gone(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), pcs.exceptions.ResourceNotFoundException)


def test_update_cluster(pcs):
    cluster = create_cluster(pcs)
    result = pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration={
        "scaleDownIdleTimeInSeconds": 120,
        "slurmCustomSettings": [{"parameterName": "MinJobAge", "parameterValue": "30"}],
        "accounting": {"mode": "STANDARD", "defaultPurgeTimeInDays": 30},
        "slurmRest": {"mode": "STANDARD"}})["cluster"]
    assert result["status"] == "UPDATING"
    active = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("ACTIVE",))
    slurm = active["slurmConfiguration"]
    assert slurm["scaleDownIdleTimeInSeconds"] == 120
    assert slurm["accounting"] == {"mode": "STANDARD", "defaultPurgeTimeInDays": 30}
    assert slurm["slurmRest"] == {"mode": "STANDARD"}
    # slurmdbd and slurmrestd run (tests/test_accounting.py uses them): each is an endpoint; the JWT key is a
    # reference to a secret.
    assert "errorInfo" not in active
    assert active["endpoints"][0] == cluster["endpoints"][0]  # SLURMCTLD, on the port it had
    assert [e["type"] for e in active["endpoints"]] == ["SLURMCTLD", "SLURMDBD", "SLURMRESTD"]
    assert slurm["jwtAuth"]["jwtKey"]["secretArn"].endswith(f"slurmrest-jwt-key-{cluster['id']}")
    pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration={
        "accounting": {"mode": "NONE"}, "slurmRest": {"mode": "NONE"}})
    settled = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("ACTIVE",))
    assert "errorInfo" not in settled and "jwtAuth" not in settled["slurmConfiguration"]
    assert settled["endpoints"] == cluster["endpoints"]


def test_deleting_resources_refuse_new_work(pcs):
    cluster = create_cluster(pcs)
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    # Either still DELETING (conflict) or already gone (not found): never a new child.
    with pytest.raises((pcs.exceptions.ConflictException, pcs.exceptions.ResourceNotFoundException)):
        pcs.create_compute_node_group(**node_group_params(cluster["id"]))


def test_unknown_resources_are_not_found(pcs):
    cluster = create_cluster(pcs)
    with pytest.raises(pcs.exceptions.ResourceNotFoundException) as missing:
        pcs.get_cluster(clusterIdentifier="pcs_0000000000")
    assert error_of(missing)["resourceType"] == "cluster"
    with pytest.raises(pcs.exceptions.ResourceNotFoundException) as missing_group:
        pcs.get_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier="nope")
    assert error_of(missing_group)["resourceType"] == "computeNodeGroup"
    with pytest.raises(pcs.exceptions.ResourceNotFoundException):
        pcs.delete_queue(clusterIdentifier=cluster["id"], queueIdentifier="pcs_0000000000")
    with pytest.raises(pcs.exceptions.ResourceNotFoundException):
        pcs.list_queues(clusterIdentifier="no-such-cluster")


def test_children_of_another_cluster_are_not_visible(pcs):
    first, second = create_cluster(pcs), create_cluster(pcs)
    group = create_node_group(pcs, first["id"])
    with pytest.raises(pcs.exceptions.ResourceNotFoundException):
        pcs.get_compute_node_group(clusterIdentifier=second["id"], computeNodeGroupIdentifier=group["id"])
    # A queue may only use node groups of its own cluster.
    with pytest.raises(pcs.exceptions.ValidationException) as foreign:
        create_queue(pcs, second["id"], [group["id"]], wait=False)
    assert "computeNodeGroupConfigurations" in error_of(foreign)["fieldList"][0]["name"]
