"""The members of botocore's current pcs model: every one is kept, returned and updatable, under PCS's rules.

The round-trip tests build their requests from the model itself, every input member set at every depth, so a
member that a newer botocore adds and openpcs drops fails here. The server runs without reconcilers, so nothing
needs Slurm: `settle` stands in for them, marking what is in transition ACTIVE in the store so updates are
allowed.
"""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from conftest import (
    LAUNCH_TEMPLATE,
    PROFILE_ARN,
    SUBNET,
    OpenPcs,
    create_cluster,
    create_node_group,
    error_of,
    node_group_params,
    unique,
)
from sqlalchemy import update

from openpcs.api.errors import ApiError
from openpcs.domain import rules
from openpcs.store.db import Store, resources, sqlite_url

MODEL = botocore.session.get_session().get_service_model("pcs")
# Create at the version conftest's clusters run, update to a newer one (PCS updates Slurm only forward), which
# the server maps onto the installed build.
SLURM_VERSIONS = ("24.11", "25.05")
GPU_INSTANCE = "g5.xlarge"  # deep health checks need GPUs
SG = ("sg-0123456789abcdef0", "sg-0fedcba9876543210")

# Members whose value is not the resource's own: identifiers select it, and tokens and tags live elsewhere
# (tags are checked through ListTagsForResource). A name comes back as `name`.
NOT_IN_RESOURCE = {"clusterIdentifier", "computeNodeGroupIdentifier", "queueIdentifier", "clientToken", "tags"}
NAMES = {"clusterName": "name", "computeNodeGroupName": "name", "queueName": "name"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = OpenPcs(tmp_path_factory.mktemp("members") / "data", None, "--no-reconcile", "--max-clusters", "100",
                     "--slurm-version-map", f"{SLURM_VERSIONS[1]}={SLURM_VERSIONS[0]}").start()
    yield server
    server.close()
    OpenPcs.created.remove(server)


@pytest.fixture
def pcs(api):
    return api.client()


def settle(server: OpenPcs) -> None:
    """Stand in for the reconcilers this server does not run: whatever is being created or updated is done."""
    store = Store(sqlite_url(str(server.data_dir / "openpcs.db")))
    try:
        with store.write() as conn:
            conn.execute(update(resources).where(resources.c.status.in_(("CREATING", "UPDATING")))
                         .values(status="ACTIVE"))
    finally:
        store.close()


def fields(excinfo) -> dict[str, str]:
    return {f["name"]: f["message"] for f in error_of(excinfo).get("fieldList", [])}


# -- requests made from the model ------------------------------------------------------------------------------

# Values that the model's patterns or PCS's rules constrain, by a member's leaf name (a list item adds "[]"):
# one value for every request, or (value for Create, value for Update). Every other member is made from its
# shape: the first enum value on Create and the second on Update, numbers from the model's minimum.
SHARED = {
    "subnetIds[]": SUBNET,
    "securityGroupIds[]": SG,
    "amiId": ("ami-0123456789abcdef0", "ami-0fedcba9876543210"),
    "iamInstanceProfileArn": (PROFILE_ARN, "arn:aws:iam::123456789012:instance-profile/aws-pcs/other"),
    "instanceType": GPU_INSTANCE,
    "purchaseOption": "SPOT",  # spotOptions are allowed only with SPOT
    "launchTemplateMode": "CUSTOM",  # customLaunchTemplate is allowed only with CUSTOM
    "name": ("setup-1", "setup-2"),  # job submit plugins and node lifecycle scripts
    "scriptLocation": ("s3://openpcs-test/scripts/one", "s3://openpcs-test/scripts/two"),  # s3VersionId wants S3
    "checksum": ("0" * 64, "f" * 64),
    "tags": {"team": "hpc"},
}
CLUSTER = {
    "scheduler.version": SLURM_VERSIONS,
    "slurmConfiguration.slurmCustomSettings[].parameterName": "MinJobAge",
    "slurmConfiguration.slurmCustomSettings[].parameterValue": ("60", "90"),
    "slurmConfiguration.slurmdbdCustomSettings[].parameterName": "PurgeJobAfter",
    "slurmConfiguration.slurmdbdCustomSettings[].parameterValue": ("12month", "6month"),
    "slurmConfiguration.cgroupCustomSettings[].parameterName": "ConstrainCores",
    "slurmConfiguration.cgroupCustomSettings[].parameterValue": ("yes", "no"),
}
NODE_GROUP = {
    "customLaunchTemplate.id": LAUNCH_TEMPLATE["id"],
    "customLaunchTemplate.version": ("1", "2"),
    "slurmConfiguration.slurmCustomSettings[].parameterName": "Weight",
    "slurmConfiguration.slurmCustomSettings[].parameterValue": ("10", "20"),
    "slurmConfiguration.gresCustomSettings[]": ({"Name": "gpu", "Type": "a10g", "File": "/dev/nvidia0"},
                                                {"Name": "gpu", "Type": "a10g", "File": "/dev/nvidia0",
                                                 "Cores": "0-1"}),
    "instanceHealthChecks.healthMonitoring.mode": "STANDARD",  # NONE would refuse the repairAction
    "instanceHealthChecks.deepHealthChecks.onStart.profile": ("QUICK", "LONG"),  # likewise
}
QUEUE = {
    "slurmConfiguration.slurmCustomSettings[].parameterName": "MaxTime",
    "slurmConfiguration.slurmCustomSettings[].parameterValue": ("60", "120"),
}


def request(operation: str, variant: int, known: dict[str, Any], **identifiers: str) -> dict[str, Any]:
    """Every member of the operation's input, at every depth (variant 0 for Create, 1 for Update)."""
    shape = MODEL.operation_model(operation).input_shape
    members = {name: _value(member, variant, {**SHARED, **known}, name)
               for name, member in shape.members.items() if name not in NOT_IN_RESOURCE - {"tags"}}
    return {**members, **identifiers}


def _value(shape, variant: int, known: dict[str, Any], path: str) -> Any:
    for key in (path, path.rpartition(".")[2]):
        if key in known:
            value = known[key]
            return value[variant] if isinstance(value, tuple) else value
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure":
        return {name: _value(member, variant, known, f"{path}.{name}") for name, member in shape.members.items()}
    if kind == "list":
        return [_value(shape.member, variant, known, path + "[]")]
    if kind == "string" and shape.enum:
        return shape.enum[variant % len(shape.enum)]
    if kind == "string" and "pattern" not in meta:
        return f"{path.rpartition('.')[2].strip('[]')}-{variant}"[:meta.get("max", 1000)].ljust(meta.get("min", 0), "x")
    if kind in ("integer", "long"):
        return max(meta.get("min", 1), 1) + variant  # -1 and 0 mean something of their own where allowed
    raise AssertionError(f"No value is known for {path} ({kind}, {meta}): add a valid one to the tables above")


def differences(sent: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` does not hold what `sent` holds (members `got` has beyond it are fine)."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [f"{path or 'resource'}: sent {sent!r}, got {got!r}"]
        return [d for key, value in sent.items() for d in differences(value, got.get(key), f"{path}.{key}".lstrip("."))]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [f"{path}: sent {sent!r}, got {got!r}"]
        return [d for index, (a, b) in enumerate(zip(sent, got, strict=True), start=1)
                for d in differences(a, b, f"{path}.{index}")]
    return [] if sent == got else [f"{path}: sent {sent!r}, got {got!r}"]


def resource_members(sent: dict[str, Any]) -> dict[str, Any]:
    """What the resource must show of a request: every member but those that live elsewhere, a name as `name`."""
    return {NAMES.get(key, key): value for key, value in sent.items() if key not in NOT_IN_RESOURCE}


def assert_kept(pcs, sent: dict[str, Any], *shown: dict[str, Any]) -> None:
    expected = resource_members(sent)
    for resource in shown:
        assert differences(expected, resource) == [], "input members not returned as sent"
    if "tags" in sent:
        assert pcs.list_tags_for_resource(resourceArn=shown[0]["arn"])["tags"] == sent["tags"]


def assert_listed(listing: dict[str, Any], operation: str, sent: dict[str, Any], resource_id: str) -> None:
    """List shows, of what was sent, the members its summary shape has."""
    key, member = next(iter(MODEL.operation_model(operation).output_shape.members.items()))
    listed = next(item for item in listing[key] if item["id"] == resource_id)
    summary = {k: v for k, v in resource_members(sent).items() if k in member.member.members}
    assert differences(summary, listed) == []


def test_every_cluster_member_is_kept_and_updatable(api, pcs):
    sent = request("CreateCluster", 0, {**CLUSTER, "clusterName": unique()})
    created = pcs.create_cluster(**sent)["cluster"]
    cluster_id = created["id"]
    assert_kept(pcs, sent, created, pcs.get_cluster(clusterIdentifier=cluster_id)["cluster"])
    assert_listed(pcs.list_clusters(maxResults=100), "ListClusters", sent, cluster_id)
    settle(api)
    changes = request("UpdateCluster", 1, CLUSTER, clusterIdentifier=cluster_id)
    updated = pcs.update_cluster(**changes)["cluster"]
    assert_kept(pcs, changes, updated, pcs.get_cluster(clusterIdentifier=cluster_id)["cluster"])


def test_every_node_group_member_is_kept_and_updatable(api, pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    sent = request("CreateComputeNodeGroup", 0, {**NODE_GROUP, "computeNodeGroupName": unique("g")},
                   clusterIdentifier=cluster_id)
    created = pcs.create_compute_node_group(**sent)["computeNodeGroup"]

    def get() -> dict[str, Any]:
        return pcs.get_compute_node_group(clusterIdentifier=cluster_id,
                                          computeNodeGroupIdentifier=created["id"])["computeNodeGroup"]

    assert_kept(pcs, sent, created, get())
    assert_listed(pcs.list_compute_node_groups(clusterIdentifier=cluster_id), "ListComputeNodeGroups", sent,
                  created["id"])
    settle(api)
    changes = request("UpdateComputeNodeGroup", 1, NODE_GROUP, clusterIdentifier=cluster_id,
                      computeNodeGroupIdentifier=created["id"])
    updated = pcs.update_compute_node_group(**changes)["computeNodeGroup"]
    assert_kept(pcs, changes, updated, get())


def test_every_queue_member_is_kept_and_updatable(api, pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    group_id = create_node_group(pcs, cluster_id, wait=False)["id"]
    known = {**QUEUE, "computeNodeGroupId": group_id}
    sent = request("CreateQueue", 0, {**known, "queueName": unique("q")}, clusterIdentifier=cluster_id)
    created = pcs.create_queue(**sent)["queue"]

    def get() -> dict[str, Any]:
        return pcs.get_queue(clusterIdentifier=cluster_id, queueIdentifier=created["id"])["queue"]

    assert_kept(pcs, sent, created, get())
    assert_listed(pcs.list_queues(clusterIdentifier=cluster_id), "ListQueues", sent, created["id"])
    settle(api)
    changes = request("UpdateQueue", 1, known, clusterIdentifier=cluster_id, queueIdentifier=created["id"])
    updated = pcs.update_queue(**changes)["queue"]
    assert_kept(pcs, changes, updated, get())


# -- launch template modes (defect a: no customLaunchTemplate was a 500) ----------------------------------------

def test_without_a_launch_template_the_default_mode_asks_for_one(pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    params = node_group_params(cluster_id)
    del params["customLaunchTemplate"]
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        pcs.create_compute_node_group(**params)
    assert "launchTemplateMode is CUSTOM (the default)" in fields(refused)["customLaunchTemplate"]


def test_managed_mode_needs_no_launch_template_but_an_ami_and_security_groups(pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    params = node_group_params(cluster_id, launchTemplateMode="MANAGED")
    del params["customLaunchTemplate"]
    with pytest.raises(pcs.exceptions.ValidationException) as incomplete:
        pcs.create_compute_node_group(**params)
    assert set(fields(incomplete)) == {"amiId", "securityGroupIds"}
    with pytest.raises(pcs.exceptions.ValidationException) as both:
        pcs.create_compute_node_group(**{**params, "amiId": "ami-0123456789abcdef0", "securityGroupIds": [SG[0]],
                                         "customLaunchTemplate": LAUNCH_TEMPLATE})
    assert "MANAGED" in fields(both)["customLaunchTemplate"]
    group = pcs.create_compute_node_group(**params, amiId="ami-0123456789abcdef0",
                                          securityGroupIds=[SG[0]])["computeNodeGroup"]
    assert group["launchTemplateMode"] == "MANAGED" and "customLaunchTemplate" not in group
    default = create_node_group(pcs, cluster_id, wait=False)
    assert default["launchTemplateMode"] == "CUSTOM" and default["customLaunchTemplate"] == LAUNCH_TEMPLATE


def test_node_group_updates_follow_the_models_rules(api, pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    group = create_node_group(pcs, cluster_id, wait=False, amiId="ami-0123456789abcdef0", securityGroupIds=[SG[0]],
                              sshKeyName="ops", slurmConfiguration={
                                  "scaleDownIdleTimeInSeconds": 300,
                                  "slurmCustomSettings": [{"parameterName": "Weight", "parameterValue": "5"}],
                                  "gresCustomSettings": [{"Name": "nic", "Count": "2"}]})
    ids = {"clusterIdentifier": cluster_id, "computeNodeGroupIdentifier": group["id"]}

    def update(**changes) -> dict[str, Any]:
        settle(api)
        return pcs.update_compute_node_group(**ids, **changes)["computeNodeGroup"]

    # slurmConfiguration is merged member by member; -1 removes the group's own idle time (the cluster's applies).
    slurm = update(slurmConfiguration={"scaleDownIdleTimeInSeconds": -1})["slurmConfiguration"]
    assert slurm == {"slurmCustomSettings": [{"parameterName": "Weight", "parameterValue": "5"}],
                     "gresCustomSettings": [{"Name": "nic", "Count": "2"}]}
    # Switching to MANAGED lets go of the custom launch template.
    managed = update(launchTemplateMode="MANAGED")
    assert managed["launchTemplateMode"] == "MANAGED" and "customLaunchTemplate" not in managed
    with pytest.raises(pcs.exceptions.ValidationException) as no_ami:
        update(amiId="")
    assert "amiId" in fields(no_ami)
    with pytest.raises(pcs.exceptions.ValidationException) as template_without_mode:
        update(customLaunchTemplate=LAUNCH_TEMPLATE)
    assert "customLaunchTemplate" in fields(template_without_mode)
    with pytest.raises(pcs.exceptions.ValidationException) as custom_without_template:
        update(launchTemplateMode="CUSTOM")
    assert "customLaunchTemplate" in fields(custom_without_template)
    custom = update(launchTemplateMode="CUSTOM", customLaunchTemplate=LAUNCH_TEMPLATE)
    assert custom["customLaunchTemplate"] == LAUNCH_TEMPLATE
    # "" and [] hand the AMI, key pair and security groups back to the launch template.
    cleared = update(amiId="", sshKeyName="", securityGroupIds=[])
    assert not {"amiId", "sshKeyName", "securityGroupIds"} & set(cleared)


def test_idle_time_minus_one_on_create_is_no_override(pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    group = create_node_group(pcs, cluster_id, wait=False, slurmConfiguration={"scaleDownIdleTimeInSeconds": -1})
    assert "scaleDownIdleTimeInSeconds" not in group["slurmConfiguration"]


# -- custom settings that would break a config line (defect e: they failed the resource later) -------------------

@pytest.mark.parametrize("value", ['say "hi"', "a\tb", "a\x01b"], ids=["quote", "tab", "control"])
@pytest.mark.parametrize("level, field", [
    ("cluster", "slurmConfiguration.slurmCustomSettings.1.member.parameterValue"),
    ("slurmdbd", "slurmConfiguration.slurmdbdCustomSettings.1.member.parameterValue"),
    ("cgroup", "slurmConfiguration.cgroupCustomSettings.1.member.parameterValue"),
    ("node group", "slurmConfiguration.slurmCustomSettings.1.member.parameterValue"),
    ("gres", "slurmConfiguration.gresCustomSettings.1.member.File"),
    ("queue", "slurmConfiguration.slurmCustomSettings.1.member.parameterValue"),
])
def test_setting_values_that_break_a_config_line_are_refused(pcs, level, field, value):
    def setting(name: str) -> list[dict[str, str]]:
        return [{"parameterName": name, "parameterValue": value}]

    cluster_settings = {"cluster": {"slurmCustomSettings": setting("Prolog")},
                        "slurmdbd": {"slurmdbdCustomSettings": setting("PrivateData")},
                        "cgroup": {"cgroupCustomSettings": setting("ConstrainCores")}}
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        if level in cluster_settings:
            create_cluster(pcs, wait=False, slurmConfiguration=cluster_settings[level])
        else:
            cluster_id = create_cluster(pcs, wait=False)["id"]
            if level == "queue":
                pcs.create_queue(clusterIdentifier=cluster_id, queueName=unique("q"),
                                 slurmConfiguration={"slurmCustomSettings": setting("MaxTime")})
            else:
                slurm = ({"slurmCustomSettings": setting("Features")} if level == "node group"
                         else {"gresCustomSettings": [{"Name": "gpu", "File": value}]})
                create_node_group(pcs, cluster_id, wait=False, slurmConfiguration=slurm)
    assert "double quotes or control characters" in fields(refused)[field]


@pytest.mark.parametrize("record, field, words", [
    ({"NodeName": "other-[1-4]", "Name": "gpu"}, "slurmConfiguration.gresCustomSettings.1.member.key", "NodeName"),
    ({"Name gpu": "x"}, "slurmConfiguration.gresCustomSettings.1.member.key", "not a gres.conf attribute"),
    ({"Name": "gpu", "name": "nic"}, "slurmConfiguration.gresCustomSettings.1.member.key", "more than once"),
    ({}, "slurmConfiguration.gresCustomSettings.1.member", "at least one attribute"),
])
def test_gres_records_that_break_gres_conf_are_refused(pcs, record, field, words):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        create_node_group(pcs, cluster_id, wait=False, slurmConfiguration={"gresCustomSettings": [record]})
    assert words in fields(refused)[field]


# -- instance health checks, lifecycle scripts, scheduler updates -------------------------------------------------

@pytest.mark.parametrize("checks, field, words", [
    ({}, "instanceHealthChecks", "cannot be empty"),
    ({"healthMonitoring": {"repairAction": "AUTO"}}, "instanceHealthChecks.healthMonitoring.mode", "required"),
    ({"healthMonitoring": {"mode": "NONE", "repairAction": "AUTO"}},
     "instanceHealthChecks.healthMonitoring.repairAction", "NONE"),
    ({"deepHealthChecks": {}}, "instanceHealthChecks.deepHealthChecks.onStart", "required"),
    ({"deepHealthChecks": {"onStart": {"profile": "QUICK"}}}, "instanceHealthChecks.deepHealthChecks.onStart.profile",
     "NVIDIA GPUs"),
])
def test_instance_health_check_refusals(pcs, checks, field, words):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        create_node_group(pcs, cluster_id, wait=False, instanceHealthChecks=checks)
    assert words in fields(refused)[field]


def test_lifecycle_script_refusals(pcs):
    cluster_id = create_cluster(pcs, wait=False)["id"]
    script = {"name": "mount", "scriptSource": {"scriptLocation": "https://example.com/mount.sh"}}
    with pytest.raises(pcs.exceptions.ValidationException) as twice:
        create_node_group(pcs, cluster_id, wait=False,
                          nodeLifecycleActions={"stages": {"nodeReady": [script, script]}})
    assert "used twice" in fields(twice)["nodeLifecycleActions.stages.nodeReady.2.member.name"]
    versioned = {**script, "scriptSource": {**script["scriptSource"], "s3VersionId": "v1"}}
    with pytest.raises(pcs.exceptions.ValidationException) as not_s3:
        create_node_group(pcs, cluster_id, wait=False, nodeLifecycleActions={"stages": {"nodeReady": [versioned]}})
    assert "s3://" in fields(not_s3)["nodeLifecycleActions.stages.nodeReady.1.member.scriptSource.s3VersionId"]


def test_scheduler_updates_go_forward_only(api, pcs):
    cluster = create_cluster(pcs, wait=False)
    settle(api)
    with pytest.raises(pcs.exceptions.ValidationException) as older:
        pcs.update_cluster(clusterIdentifier=cluster["id"], scheduler={"version": "23.11"})
    assert "scheduler.version" in fields(older)
    with pytest.raises(ApiError):
        rules.check_scheduler_update("25.05", "24.11")
    rules.check_scheduler_update("24.11", "24.11")
    rules.check_scheduler_update("24.11", "25.05")
