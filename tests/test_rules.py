"""Model-driven validation and PCS's own rules, each refusal checked as boto3 reports it."""

from __future__ import annotations

import pytest
from conftest import (
    SUBNET,
    create_cluster,
    create_node_group,
    error_of,
    node_group_params,
    unique,
)


@pytest.fixture
def raw(openpcs):
    return openpcs.client(parameter_validation=False)


@pytest.fixture(scope="module")
def cluster(openpcs):
    return create_cluster(openpcs.client())


def fields(excinfo) -> dict[str, str]:
    return {f["name"]: f["message"] for f in error_of(excinfo).get("fieldList", [])}


@pytest.mark.parametrize("params, field, words", [
    ({"clusterName": "ab"}, "clusterName", "length greater than or equal to 3"),
    ({"clusterName": "x" * 41}, "clusterName", "length less than or equal to 40"),
    ({"clusterName": "9lives"}, "clusterName", "regular expression"),
    ({"clusterName": "pcs_cluster"}, "clusterName", "regular expression"),
    ({"clusterName": "has space"}, "clusterName", "letters, digits and hyphens"),
    ({"size": "HUGE"}, "size", "enum value set: [SMALL, MEDIUM, LARGE]"),
    ({"scheduler": {"type": "PBS", "version": "24.11"}}, "scheduler.type", "enum"),
    ({"scheduler": {"type": "SLURM", "version": "19.05"}}, "scheduler.version", "not available"),
    ({"networking": {"subnetIds": ["vpc-123"]}}, "networking.subnetIds.1.member", "regular expression"),
    ({"networking": {"subnetIds": []}}, "networking.subnetIds", "length greater than or equal to 1"),
    ({"slurmConfiguration": {"scaleDownIdleTimeInSeconds": 0}},
     "slurmConfiguration.scaleDownIdleTimeInSeconds", "greater than or equal to 1"),
    ({"slurmConfiguration": {"accounting": {"mode": "STANDARD", "defaultPurgeTimeInDays": 0}}},
     "slurmConfiguration.accounting.defaultPurgeTimeInDays", "-1"),
    ({"slurmConfiguration": {"accounting": {"mode": "STANDARD", "defaultPurgeTimeInDays": -2}}},
     "slurmConfiguration.accounting.defaultPurgeTimeInDays", "greater than or equal to -1"),
    ({"slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "SlurmctldPort", "parameterValue": "1"}]}},
     "slurmConfiguration.slurmCustomSettings.1.member.parameterName", "not allowed"),
    ({"slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "MinJobAge", "parameterValue": "2"}]}},
     "slurmConfiguration.slurmCustomSettings.1.member.parameterValue", "at least 5"),
    ({"slurmConfiguration": {"slurmCustomSettings": [
        {"parameterName": "Prolog", "parameterValue": "/bin/true\nSlurmUser=nobody"}]}},
     "slurmConfiguration.slurmCustomSettings.1.member.parameterValue", "single line"),
    # What the Slurm renderer could not write used to pass here and fail the cluster later.
    ({"slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "Prolog", "parameterValue": '/bin/"x"'}]}},
     "slurmConfiguration.slurmCustomSettings.1.member.parameterValue", "without double quotes"),
    ({"slurmConfiguration": {"slurmdbdCustomSettings": [{"parameterName": "PrivateData", "parameterValue": "a\tb"}]}},
     "slurmConfiguration.slurmdbdCustomSettings.1.member.parameterValue", "control characters"),
    ({"slurmConfiguration": {"cgroupCustomSettings": [{"parameterName": "ConstrainCores", "parameterValue": "y\x01"}]}},
     "slurmConfiguration.cgroupCustomSettings.1.member.parameterValue", "control characters"),
    ({"slurmConfiguration": {"slurmdbdCustomSettings": [{"parameterName": "StoragePass", "parameterValue": "x"}]}},
     "slurmConfiguration.slurmdbdCustomSettings.1.member.parameterName", "not allowed"),
    ({"slurmConfiguration": {"cgroupCustomSettings": [{"parameterName": "CgroupPlugin", "parameterValue": "x"}]}},
     "slurmConfiguration.cgroupCustomSettings.1.member.parameterName", "not allowed"),
    ({"clientToken": "short"}, "clientToken", "length greater than or equal to 8"),
    ({"tags": {"aws:owner": "me"}}, "tags", "reserved"),
    ({"tags": {"k" * 129: "v"}}, "tags.key", "length less than or equal to 128"),
    ({"tags": {"k": "v" * 257}}, "tags.k", "length less than or equal to 256"),
])
def test_create_cluster_refusals(raw, params, field, words):
    base = {"clusterName": unique(), "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
            "networking": {"subnetIds": [SUBNET]}}
    with pytest.raises(raw.exceptions.ValidationException) as refused:
        raw.create_cluster(**{**base, **params})
    assert field in fields(refused), error_of(refused)
    assert words in fields(refused)[field]
    assert words in error_of(refused)["Error"]["Message"]


def test_missing_required_members_are_all_reported(raw):
    with pytest.raises(raw.exceptions.ValidationException) as refused:
        raw.create_cluster(clusterName=unique())
    assert {"scheduler", "size", "networking"} <= set(fields(refused))
    assert error_of(refused)["Error"]["Message"].startswith("3 validation errors detected")
    assert error_of(refused)["reason"] == "fieldValidationFailed"


def test_allowed_custom_settings_are_accepted(openpcs):
    pcs = openpcs.client()
    cluster = create_cluster(pcs, slurmConfiguration={
        "slurmCustomSettings": [{"parameterName": "MinJobAge", "parameterValue": "60"},
                                {"parameterName": "SchedulerParameters", "parameterValue": "bf_interval=30"}],
        "slurmdbdCustomSettings": [{"parameterName": "PurgeJobAfter", "parameterValue": "12month"}],
        "cgroupCustomSettings": [{"parameterName": "ConstrainCores", "parameterValue": "yes"}],
        "accounting": {"mode": "STANDARD"}})
    slurm = cluster["slurmConfiguration"]
    assert slurm["slurmCustomSettings"][1] == {"parameterName": "SchedulerParameters",
                                               "parameterValue": "bf_interval=30"}
    assert slurm["accounting"] == {"mode": "STANDARD", "defaultPurgeTimeInDays": -1}


@pytest.mark.parametrize("params, field, words", [
    ({"scalingConfiguration": {"minInstanceCount": 3, "maxInstanceCount": 2}}, "scalingConfiguration",
     "must not exceed"),
    ({"scalingConfiguration": {"minInstanceCount": -1, "maxInstanceCount": 2}},
     "scalingConfiguration.minInstanceCount", "greater than or equal to 0"),
    ({"spotOptions": {"allocationStrategy": "lowest-price"}}, "spotOptions", "only be set when purchaseOption is SPOT"),
    ({"purchaseOption": "SPOT", "spotOptions": {"allocationStrategy": "cheapest"}},
     "spotOptions.allocationStrategy", "enum"),
    ({"iamInstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/MyProfile"}, "iamInstanceProfileArn",
     "must start with AWSPCS"),
    ({"iamInstanceProfileArn": "arn:aws:iam::123456789012:role/AWSPCS-role"}, "iamInstanceProfileArn",
     "regular expression"),
    ({"scalingConfiguration": {"minInstanceCount": 0, "maxInstanceCount": 2**40}},
     "scalingConfiguration.maxInstanceCount", "32-bit integer"),
    ({"amiId": "img-123"}, "amiId", "regular expression"),
    ({"subnetIds": ["subnet-1"]}, "subnetIds.1.member", "not a subnet id"),
    ({"customLaunchTemplate": {"id": "template", "version": "1"}}, "customLaunchTemplate.id", "launch template id"),
    ({"instanceConfigs": []}, "instanceConfigs", "greater than or equal to 1"),
    ({"instanceConfigs": [{"instanceType": "huge"}]}, "instanceConfigs.1.member.instanceType", "instance type"),
    ({"computeNodeGroupName": "x" * 26}, "computeNodeGroupName", "less than or equal to 25"),
    ({"slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "NodeAddr", "parameterValue": "x"}]}},
     "slurmConfiguration.slurmCustomSettings.1.member.parameterName", "not allowed"),
    ({"slurmConfiguration": {"slurmCustomSettings": [{"parameterName": "Weight", "parameterValue": "1"},
                                                     {"parameterName": "weight", "parameterValue": "2"}]}},
     "slurmConfiguration.slurmCustomSettings.2.member.parameterName", "more than once"),
])
def test_create_node_group_refusals(raw, cluster, params, field, words):
    with pytest.raises(raw.exceptions.ValidationException) as refused:
        raw.create_compute_node_group(**{**node_group_params(cluster["id"]), **params})
    assert field in fields(refused), error_of(refused)
    assert words in fields(refused)[field]


def test_instance_profile_by_path_is_accepted(openpcs, cluster):
    pcs = openpcs.client()
    group = create_node_group(pcs, cluster["id"],
                              iamInstanceProfileArn="arn:aws:iam::123456789012:instance-profile/aws-pcs/any-name")
    assert group["iamInstanceProfileArn"].endswith("/aws-pcs/any-name")
    pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])


def test_queue_refusals(raw, cluster):
    with pytest.raises(raw.exceptions.ValidationException) as unknown_group:
        raw.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"),
                         computeNodeGroupConfigurations=[{"computeNodeGroupId": "pcs_0000000000"}])
    assert "computeNodeGroupConfigurations.1.member.computeNodeGroupId" in fields(unknown_group)
    with pytest.raises(raw.exceptions.ValidationException) as bad_setting:
        raw.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"), slurmConfiguration={
            "slurmCustomSettings": [{"parameterName": "Nodes", "parameterValue": "ALL"}]})
    assert "not allowed" in error_of(bad_setting)["Error"]["Message"]


@pytest.mark.parametrize("size, limit", [("SMALL", 32), ("MEDIUM", 512)])
def test_instance_quota_by_cluster_size(openpcs, size, limit):
    pcs = openpcs.client()
    cluster = create_cluster(pcs, size=size)
    create_node_group(pcs, cluster["id"], min_count=0, max_count=limit - 2)
    with pytest.raises(pcs.exceptions.ServiceQuotaExceededException) as over:
        create_node_group(pcs, cluster["id"], max_count=3, wait=False)
    error = error_of(over)
    assert error["serviceCode"] == "pcs" and error["quotaCode"] == "instances-per-cluster"
    assert error["resourceId"] == cluster["id"]
    assert str(limit) in error["Error"]["Message"]
    second = create_node_group(pcs, cluster["id"], max_count=2)  # exactly at the limit is fine
    with pytest.raises(pcs.exceptions.ServiceQuotaExceededException):
        pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=second["id"],
                                      scalingConfiguration={"minInstanceCount": 0, "maxInstanceCount": 3})


def test_ten_node_groups_and_ten_queues_per_cluster(openpcs):
    pcs = openpcs.client()
    cluster = create_cluster(pcs, size="MEDIUM")
    groups = [create_node_group(pcs, cluster["id"], wait=False, max_count=1) for _ in range(10)]
    with pytest.raises(pcs.exceptions.ServiceQuotaExceededException) as groups_over:
        create_node_group(pcs, cluster["id"], wait=False, max_count=1)
    assert error_of(groups_over)["quotaCode"] == "node-groups-per-cluster"
    for _ in range(10):
        pcs.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"),
                         computeNodeGroupConfigurations=[{"computeNodeGroupId": groups[0]["id"]}])
    with pytest.raises(pcs.exceptions.ServiceQuotaExceededException) as queues_over:
        pcs.create_queue(clusterIdentifier=cluster["id"], queueName=unique("q"))
    assert error_of(queues_over)["quotaCode"] == "queues-per-cluster"


def test_node_group_and_queue_names_unique_per_cluster(openpcs):
    pcs = openpcs.client()
    first, second = create_cluster(pcs), create_cluster(pcs)
    create_node_group(pcs, first["id"], name="cpu", wait=False)
    with pytest.raises(pcs.exceptions.ConflictException):
        create_node_group(pcs, first["id"], name="cpu", wait=False)
    create_node_group(pcs, second["id"], name="cpu", wait=False)  # another cluster may reuse it
    pcs.create_queue(clusterIdentifier=first["id"], queueName="batch")
    with pytest.raises(pcs.exceptions.ConflictException):
        pcs.create_queue(clusterIdentifier=first["id"], queueName="batch")


def test_cluster_count_quota(tmp_path):
    from conftest import OpenPcs

    server = OpenPcs(tmp_path / "data", None, "--max-clusters", "2").start()
    try:
        pcs = server.client()
        create_cluster(pcs, wait=False)
        create_cluster(pcs, wait=False)
        with pytest.raises(pcs.exceptions.ServiceQuotaExceededException) as over:
            create_cluster(pcs, wait=False)
        assert error_of(over)["quotaCode"] == "clusters-per-region"
        assert "--max-clusters" in error_of(over)["Error"]["Message"]
    finally:
        server.stop()

