"""clientToken idempotency, pagination, tags and RegisterComputeNodeGroupInstance."""

from __future__ import annotations

import base64
import json
import stat
import threading
import uuid

import pytest
from conftest import (
    SUBNET,
    create_cluster,
    create_node_group,
    error_of,
    node_group_params,
    unique,
    wait_for,
    wait_gone,
)

# -- idempotency --------------------------------------------------------------------------------------


def test_same_token_same_parameters_returns_the_original(pcs):
    token = str(uuid.uuid4())
    params = {"clusterName": unique(), "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
              "networking": {"subnetIds": [SUBNET]}, "clientToken": token}
    first = pcs.create_cluster(**params)["cluster"]
    wait_for(lambda: pcs.get_cluster(clusterIdentifier=first["id"]), "cluster", ("ACTIVE",))
    again = pcs.create_cluster(**params)["cluster"]
    assert again == first  # the original result, not a second cluster
    names = [c["name"] for c in pcs.get_paginator("list_clusters").paginate().build_full_result()["clusters"]]
    assert names.count(params["clusterName"]) == 1


def test_same_token_other_parameters_is_refused(pcs):
    token = str(uuid.uuid4())
    base = {"scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
            "networking": {"subnetIds": [SUBNET]}, "clientToken": token}
    pcs.create_cluster(clusterName=unique(), **base)
    with pytest.raises(pcs.exceptions.ConflictException) as refused:
        pcs.create_cluster(clusterName=unique(), **base)
    assert "clientToken" in error_of(refused)["Error"]["Message"]


def test_idempotent_update_and_concurrent_retries(pcs):
    cluster = create_cluster(pcs)
    group = create_node_group(pcs, cluster["id"])
    token = str(uuid.uuid4())
    update = {"clusterIdentifier": cluster["id"], "computeNodeGroupIdentifier": group["id"],
              "scalingConfiguration": {"minInstanceCount": 0, "maxInstanceCount": 2}, "clientToken": token}
    first = pcs.update_compute_node_group(**update)["computeNodeGroup"]
    assert pcs.update_compute_node_group(**update)["computeNodeGroup"] == first

    # Eight clients retrying one create at the same moment make exactly one node group.
    params = node_group_params(cluster["id"], name="raced", clientToken=str(uuid.uuid4()))
    results: list[str] = []

    def create() -> None:
        results.append(pcs.create_compute_node_group(**params)["computeNodeGroup"]["id"])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    groups = pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"]
    assert [g["name"] for g in groups].count("raced") == 1


def test_botocore_supplies_a_token_so_plain_retries_are_distinct(pcs):
    cluster = create_cluster(pcs)
    pcs.create_queue(clusterIdentifier=cluster["id"], queueName="one")
    with pytest.raises(pcs.exceptions.ConflictException):  # same name, new token: a real second request
        pcs.create_queue(clusterIdentifier=cluster["id"], queueName="one")


# -- pagination ---------------------------------------------------------------------------------------


def test_pagination_is_complete_and_stable_under_concurrent_writes(pcs):
    cluster = create_cluster(pcs, size="LARGE")
    made = [pcs.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"))["queue"]["id"]
            for _ in range(7)]
    first = pcs.list_queues(clusterIdentifier=cluster["id"], maxResults=3)
    assert [q["id"] for q in first["queues"]] == made[:3]
    # Deleting one already listed and adding one new between pages neither skips nor repeats.
    pcs.delete_queue(clusterIdentifier=cluster["id"], queueIdentifier=made[0])
    newer = pcs.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"))["queue"]["id"]
    seen = [q["id"] for q in first["queues"]]
    token = first["nextToken"]
    while token:
        page = pcs.list_queues(clusterIdentifier=cluster["id"], maxResults=3, nextToken=token)
        seen += [q["id"] for q in page["queues"]]
        token = page.get("nextToken")
    assert seen == made + [newer]
    # botocore's paginator walks the same pages, once the deleted queue is gone.
    wait_gone(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=made[0]),
              pcs.exceptions.ResourceNotFoundException)
    walked = pcs.get_paginator("list_queues").paginate(clusterIdentifier=cluster["id"],
                                                       PaginationConfig={"PageSize": 2})
    assert [q["id"] for page in walked for q in page["queues"]] == made[1:] + [newer]


def test_forged_and_foreign_tokens_are_refused(pcs):
    first, second = create_cluster(pcs), create_cluster(pcs)
    for _ in range(3):
        pcs.create_queue(clusterIdentifier=first["id"], queueName=unique("q"))
    token = pcs.list_queues(clusterIdentifier=first["id"], maxResults=1)["nextToken"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, "not-a-token", base64.urlsafe_b64encode(b'{"s":"queue:x","a":0,"t":0}').decode()):
        with pytest.raises(pcs.exceptions.ValidationException) as refused:
            pcs.list_queues(clusterIdentifier=first["id"], nextToken=bad)
        assert error_of(refused)["fieldList"][0]["name"] == "nextToken"
    with pytest.raises(pcs.exceptions.ValidationException):  # a token from another list
        pcs.list_queues(clusterIdentifier=second["id"], nextToken=token)


def test_max_results_bounds(openpcs):
    raw = openpcs.client(parameter_validation=False)
    for bad in (0, 101):
        with pytest.raises(raw.exceptions.ValidationException) as refused:
            raw.list_clusters(maxResults=bad)
        assert error_of(refused)["fieldList"][0]["name"] == "maxResults"
    assert "clusters" in raw.list_clusters(maxResults=100)


# -- tags ---------------------------------------------------------------------------------------------


def test_tags_on_every_resource_type(pcs):
    cluster = create_cluster(pcs, tags={"project": "alpha"})
    group = create_node_group(pcs, cluster["id"], tags={"tier": "cpu"})
    queue = pcs.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"),
                             computeNodeGroupConfigurations=[{"computeNodeGroupId": group["id"]}],
                             tags={"q": "1"})["queue"]
    assert pcs.list_tags_for_resource(resourceArn=cluster["arn"])["tags"] == {"project": "alpha"}
    assert pcs.list_tags_for_resource(resourceArn=group["arn"])["tags"] == {"tier": "cpu"}
    for arn in (cluster["arn"], group["arn"], queue["arn"]):
        pcs.tag_resource(resourceArn=arn, tags={"owner": "me", "cost": "42"})
        pcs.untag_resource(resourceArn=arn, tagKeys=["cost", "absent"])
        assert pcs.list_tags_for_resource(resourceArn=arn)["tags"]["owner"] == "me"
        assert "cost" not in pcs.list_tags_for_resource(resourceArn=arn)["tags"]
    pcs.tag_resource(resourceArn=cluster["arn"], tags={"project": "beta"})  # overwrite
    assert pcs.list_tags_for_resource(resourceArn=cluster["arn"])["tags"]["project"] == "beta"


def test_tag_limits_and_unknown_arns(pcs):
    cluster = create_cluster(pcs)
    pcs.tag_resource(resourceArn=cluster["arn"], tags={f"k{i}": "v" for i in range(50)})
    with pytest.raises(pcs.exceptions.ServiceQuotaExceededException) as over:
        pcs.tag_resource(resourceArn=cluster["arn"], tags={"one-more": "v"})
    assert error_of(over)["quotaCode"] == "tags-per-resource"
    with pytest.raises(pcs.exceptions.ValidationException):
        pcs.tag_resource(resourceArn=cluster["arn"], tags={"bad<char>": "v"})
    missing = cluster["arn"].replace(cluster["id"], "pcs_0000000000")
    for call in (lambda: pcs.list_tags_for_resource(resourceArn=missing),
                 lambda: pcs.tag_resource(resourceArn=missing, tags={"a": "b"}),
                 lambda: pcs.untag_resource(resourceArn=missing, tagKeys=["a"])):
        with pytest.raises(pcs.exceptions.ResourceNotFoundException):
            call()
    wrong_kind = cluster["arn"].replace(":cluster/", ":queue/")
    with pytest.raises(pcs.exceptions.ResourceNotFoundException):
        pcs.list_tags_for_resource(resourceArn=wrong_kind)


# -- RegisterComputeNodeGroupInstance ------------------------------------------------------------------


def _bootstraps(openpcs, group_id: str) -> list[dict]:
    found = []
    for path in (openpcs.data_dir / "instances").glob("*/bootstrap.json"):
        data = json.loads(path.read_text())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        found.append(data)
    return found


def test_register_instance(openpcs, pcs):
    cluster = create_cluster(pcs)
    group = create_node_group(pcs, cluster["id"], name="cpu", min_count=2, max_count=4)
    issued = [b for b in _bootstraps(openpcs, group["id"]) if b["clusterIdentifier"] == cluster["id"]]
    assert len(issued) == 2
    nodes = set()
    for bootstrap in issued:
        reply = pcs.register_compute_node_group_instance(clusterIdentifier=cluster["id"],
                                                         bootstrapId=bootstrap["bootstrapId"])
        nodes.add(reply["nodeID"])
        assert reply["endpoints"] == pcs.get_cluster(clusterIdentifier=cluster["id"])["cluster"]["endpoints"]
        key = base64.b64decode(reply["sharedSecret"])
        assert key == (openpcs.data_dir / "clusters" / cluster["id"] / "munge.key").read_bytes()
    assert nodes == {"cpu-1", "cpu-2"}
    key_file = openpcs.data_dir / "clusters" / cluster["id"] / "munge.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The secret appears in no other response.
    assert reply["sharedSecret"] not in json.dumps(pcs.get_cluster(clusterIdentifier=cluster["id"]), default=str)
    assert reply["sharedSecret"] not in openpcs.log()

    # Scaling the minimum down retires the highest-numbered instances and their bootstrap ids.
    pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                  scalingConfiguration={"minInstanceCount": 1, "maxInstanceCount": 4})
    wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                computeNodeGroupIdentifier=group["id"]),
             "computeNodeGroup", ("ACTIVE",))
    retired = [b for b in issued if b not in _bootstraps(openpcs, group["id"])]
    assert len(retired) == 1
    with pytest.raises(pcs.exceptions.AccessDeniedException):
        pcs.register_compute_node_group_instance(clusterIdentifier=cluster["id"],
                                                 bootstrapId=retired[0]["bootstrapId"])


def test_register_refusals(openpcs, pcs):
    cluster, other = create_cluster(pcs), create_cluster(pcs)
    create_node_group(pcs, cluster["id"], min_count=1)
    bootstrap = next(b for b in _bootstraps(openpcs, "") if b["clusterIdentifier"] == cluster["id"])
    for cluster_id, bootstrap_id in ((cluster["id"], "made-up-bootstrap-id"),
                                     (other["id"], bootstrap["bootstrapId"]),  # another cluster's instance
                                     ("pcs_0000000000", bootstrap["bootstrapId"])):
        with pytest.raises(pcs.exceptions.AccessDeniedException):
            pcs.register_compute_node_group_instance(clusterIdentifier=cluster_id, bootstrapId=bootstrap_id)
    # By name as well as by id.
    assert pcs.register_compute_node_group_instance(clusterIdentifier=cluster["name"],
                                                    bootstrapId=bootstrap["bootstrapId"])["nodeID"]


# -- the AWS CLI --------------------------------------------------------------------------------------


def test_aws_cli_end_to_end(openpcs):
    name = unique("cli")
    created = openpcs.aws_json("pcs", "create-cluster", "--cluster-name", name, "--scheduler",
                               "type=SLURM,version=24.11", "--size", "SMALL", "--networking",
                               f"subnetIds={SUBNET}")["cluster"]
    assert created["status"] == "CREATING"
    got = openpcs.aws_json("pcs", "get-cluster", "--cluster-identifier", name)["cluster"]
    assert got["id"] == created["id"]
    listed = openpcs.aws_json("pcs", "list-clusters")["clusters"]
    assert created["id"] in [c["id"] for c in listed]
    missing = openpcs.aws("pcs", "get-cluster", "--cluster-identifier", "nope-nope", check=False)
    assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr
