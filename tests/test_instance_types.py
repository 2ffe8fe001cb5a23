"""The EC2 instance type catalog, the node definition of a node group's types, and the API refusing instance
types it does not hold or that cannot share a node definition."""

from __future__ import annotations

import pytest
from conftest import create_cluster, create_node_group, error_of, node_group_params

from openpcs.api.errors import ApiError
from openpcs.domain import instance_types, rules
from openpcs.domain.instance_types import InstanceType

FAMILIES = ("c5", "c6i", "c7i", "m5", "m6i", "m7i", "r5", "r6i", "t3", "hpc6a", "hpc7a", "hpc7g", "g5", "g6",
            "p4d", "p5")


# --- The catalog ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, vcpus, gib, gpus, gpu_type", [
    ("c5.large", 2, 4, 0, None),
    ("c5.9xlarge", 36, 72, 0, None),
    ("c5.metal", 96, 192, 0, None),
    ("c6i.xlarge", 4, 8, 0, None),
    ("c6i.32xlarge", 128, 256, 0, None),
    ("c6i.metal", 128, 256, 0, None),
    ("c7i.48xlarge", 192, 384, 0, None),
    ("c7i.metal-24xl", 96, 192, 0, None),
    ("m5.large", 2, 8, 0, None),
    ("m5.24xlarge", 96, 384, 0, None),
    ("m6i.metal", 128, 512, 0, None),
    ("m7i.metal-48xl", 192, 768, 0, None),
    ("r5.12xlarge", 48, 384, 0, None),
    ("r6i.large", 2, 16, 0, None),
    ("r6i.32xlarge", 128, 1024, 0, None),
    ("t3.nano", 2, 0.5, 0, None),
    ("t3.micro", 2, 1, 0, None),
    ("t3.2xlarge", 8, 32, 0, None),
    ("hpc6a.48xlarge", 96, 384, 0, None),
    ("hpc7a.12xlarge", 24, 768, 0, None),
    ("hpc7a.96xlarge", 192, 768, 0, None),
    ("hpc7g.4xlarge", 16, 128, 0, None),
    ("hpc7g.16xlarge", 64, 128, 0, None),
    ("g5.xlarge", 4, 16, 1, "a10g"),
    ("g5.12xlarge", 48, 192, 4, "a10g"),
    ("g5.48xlarge", 192, 768, 8, "a10g"),
    ("g6.xlarge", 4, 16, 1, "l4"),
    ("g6.24xlarge", 96, 384, 4, "l4"),
    ("p4d.24xlarge", 96, 1152, 8, "a100"),
    ("p5.4xlarge", 16, 256, 1, "h100"),
    ("p5.48xlarge", 192, 2048, 8, "h100"),
])
def test_known_figures(name, vcpus, gib, gpus, gpu_type):
    architecture = "arm64" if name.startswith("hpc7g.") else "x86_64"
    assert instance_types.lookup(name) == InstanceType(name, vcpus, int(gib * 1024), gpus, gpu_type, architecture)


def test_architectures():
    # hpc7g is Graviton; every other family in the catalog is Intel or AMD.
    for name in instance_types.names():
        expected = "arm64" if name.startswith("hpc7g.") else "x86_64"
        assert instance_types.lookup(name).architecture == expected, name


def test_every_family_is_there_with_its_sizes():
    assert set(instance_types.families()) == set(FAMILIES)
    assert {name.partition(".")[0] for name in instance_types.names()} == set(FAMILIES)
    assert instance_types.sizes("c6i") == ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge",
                                           "16xlarge", "24xlarge", "32xlarge", "metal")
    assert instance_types.sizes("t3") == ("nano", "micro", "small", "medium", "large", "xlarge", "2xlarge")
    assert instance_types.sizes("hpc6a") == ("48xlarge",)
    assert instance_types.sizes("x9z") == ()
    for family in ("c5", "c6i", "m5", "m6i", "r5", "r6i"):
        assert f"{family}.metal" in instance_types.names()
    for family in ("c7i", "m7i"):
        assert {f"{family}.metal-24xl", f"{family}.metal-48xl"} <= instance_types.names()


def test_figures_are_consistent():
    for name in instance_types.names():
        kind = instance_types.lookup(name)
        assert kind is not None and kind.name == name
        assert kind.vcpus > 0 and kind.memory_mib > 0
        assert (kind.gpus > 0) == (kind.gpu_type is not None)
        if kind.gpu_type is not None:
            assert kind.gpu_type == kind.gpu_type.lower()
        # A metal size has the figures of the largest virtual size it matches.
        family, _, size = name.partition(".")
        if size == "metal":
            twin = max((instance_types.lookup(f"{family}.{s}") for s in instance_types.sizes(family) if s != "metal"),
                       key=lambda t: t.vcpus)
            assert (kind.vcpus, kind.memory_mib) == (twin.vcpus, twin.memory_mib)


def test_unknown_types_are_not_there():
    for name in ("c6i.nonesuch", "C6I.XLARGE", "c6i", "", "m5.9xlarge", "c5.32xlarge", "p4de.24xlarge", "g6e.xlarge"):
        assert instance_types.lookup(name) is None
        assert name not in instance_types.names()


def test_gres():
    assert instance_types.lookup("g5.xlarge").gres == "gpu:a10g:1"
    assert instance_types.lookup("g5.24xlarge").gres == "gpu:a10g:4"
    assert instance_types.lookup("g6.48xlarge").gres == "gpu:l4:8"
    assert instance_types.lookup("p4d.24xlarge").gres == "gpu:a100:8"
    assert instance_types.lookup("p5.48xlarge").gres == "gpu:h100:8"
    assert instance_types.lookup("c6i.xlarge").gres is None
    assert instance_types.lookup("hpc7g.16xlarge").gres is None
    assert InstanceType("x", 4, 16384, 2, None, "x86_64").gres == "gpu:2"  # GPUs of no one model


# --- One node definition for a node group's types --------------------------------------------------------------

def test_node_size_of_one_type_is_that_type():
    assert instance_types.node_size(["g5.12xlarge"]) == instance_types.lookup("g5.12xlarge")


def test_node_size_takes_the_least_memory():
    node = instance_types.node_size(["c6i.xlarge", "m6i.xlarge", "r6i.xlarge"])
    assert (node.vcpus, node.memory_mib, node.gpus, node.gres, node.architecture) == (4, 8192, 0, None, "x86_64")
    assert node.name == "c6i.xlarge,m6i.xlarge,r6i.xlarge"
    # The order the types are listed in does not change the node.
    assert instance_types.node_size(["r6i.xlarge", "c6i.xlarge"]).memory_mib == 8192


@pytest.mark.parametrize("names, gres", [
    (["g5.12xlarge", "g6.12xlarge"], "gpu:4"),            # same count, different models: untyped
    (["g5.12xlarge", "g5.12xlarge"], "gpu:a10g:4"),       # one model: typed
    (["g5.48xlarge", "p5.48xlarge"], "gpu:8"),
    (["g5.24xlarge", "p4d.24xlarge"], "gpu:4"),           # the least count
    (["g5.24xlarge", "m6i.24xlarge"], None),              # a type without GPUs: no GPUs
])
def test_node_size_gpus(names, gres):
    assert instance_types.node_size(names).gres == gres


def test_node_size_of_g5_and_g6():
    node = instance_types.node_size(["g5.xlarge", "g6.xlarge"])
    assert (node.vcpus, node.memory_mib, node.gpus, node.gpu_type, node.gres) == (4, 16384, 1, None, "gpu:1")


@pytest.mark.parametrize("names, words", [
    (["hpc7g.16xlarge", "c7i.16xlarge"], ("hpc7g.16xlarge (64 vCPUs, arm64)", "c7i.16xlarge (64 vCPUs, x86_64)")),
    (["hpc7g.16xlarge", "hpc7a.24xlarge"], ("arm64", "x86_64", "48 vCPUs")),
    (["c6i.xlarge", "c6i.2xlarge"], ("4 vCPUs", "8 vCPUs")),
    (["c6i.xlarge", "c6i.nonesuch"], ("c6i.nonesuch",)),
    ([], ("at least one",)),
])
def test_node_size_refuses(names, words):
    with pytest.raises(ValueError) as refused:
        instance_types.node_size(names)
    for word in words:
        assert word in str(refused.value)


def test_instance_type_is_frozen():
    kind = instance_types.lookup("c6i.xlarge")
    with pytest.raises(AttributeError):
        kind.vcpus = 8


# --- The rule, as a pure function --------------------------------------------------------------------------------

def test_rule_accepts_every_catalogued_type():
    for name in sorted(instance_types.names()):
        rules.check_instance_configs([{"instanceType": name}])


def test_rule_accepts_types_of_one_size():
    rules.check_instance_configs([{"instanceType": name} for name in ("c6i.xlarge", "m6i.xlarge", "r5.xlarge")])
    rules.check_instance_configs([{"instanceType": "g5.12xlarge"}, {"instanceType": "g6.12xlarge"}])


@pytest.mark.parametrize("configs, field, words", [
    ([{"instanceType": "c6i.nonesuch"}], "instanceConfigs.1.member.instanceType",
     ("'c6i.nonesuch'", "c6i comes in large, xlarge", "metal", "for example c6i.large")),
    ([{"instanceType": "c6i.xlarge"}, {"instanceType": "zz9.large"}], "instanceConfigs.2.member.instanceType",
     ("'zz9.large'", "c5, c6i, c7i", "hpc7g", "p5 families", "for example c6i.xlarge")),
    ([{"instanceType": "huge"}], "instanceConfigs.1.member.instanceType", ("not an instance type",)),
    ([{"instanceType": "c6i.xlarge"}, {"instanceType": "c6i.2xlarge"}], "instanceConfigs",
     ("same number of vCPUs", "c6i.xlarge has 4 vCPUs (x86_64)", "c6i.2xlarge has 8 vCPUs (x86_64)",
      "one node group per size")),
    ([{"instanceType": "c7i.16xlarge"}, {"instanceType": "hpc7g.16xlarge"}], "instanceConfigs",
     ("same architecture", "c7i.16xlarge has 64 vCPUs (x86_64)", "hpc7g.16xlarge has 64 vCPUs (arm64)")),
    ([{"instanceType": "c6i.xlarge"}, {"instanceType": "m6i.xlarge"}, {"instanceType": "c6i.xlarge"}],
     "instanceConfigs.3.member.instanceType", ("'c6i.xlarge' is listed more than once",)),
])
def test_rule_refusals(configs, field, words):
    with pytest.raises(ApiError) as refused:
        rules.check_instance_configs(configs)
    body = refused.value.body()
    assert body["__type"] == "ValidationException"
    assert [f["name"] for f in body["fieldList"]] == [field]
    for word in words:
        assert word in body["fieldList"][0]["message"], body


# --- Through the API -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(openpcs):
    return create_cluster(openpcs.client())


def fields(excinfo) -> dict[str, str]:
    return {f["name"]: f["message"] for f in error_of(excinfo).get("fieldList", [])}


def test_create_node_group_refuses_an_unknown_instance_type(pcs, cluster):
    params = node_group_params(cluster["id"], instanceConfigs=[{"instanceType": "c6i.nonesuch"}])
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        pcs.create_compute_node_group(**params)
    message = fields(refused)["instanceConfigs.1.member.instanceType"]
    assert "'c6i.nonesuch'" in message and "c6i comes in" in message
    assert "c6i.nonesuch" in error_of(refused)["Error"]["Message"]
    names = [g["name"] for g in pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"]]
    assert params["computeNodeGroupName"] not in names  # nothing was created


def test_any_unknown_config_is_named(pcs, cluster):
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        pcs.create_compute_node_group(**node_group_params(cluster["id"], instanceConfigs=[
            {"instanceType": "c6i.xlarge"}, {"instanceType": "x9z.large"}]))
    assert "families" in fields(refused)["instanceConfigs.2.member.instanceType"]


@pytest.mark.parametrize("types, words", [
    (["c6i.xlarge", "c6i.2xlarge"], ("c6i.xlarge has 4 vCPUs (x86_64)", "c6i.2xlarge has 8 vCPUs (x86_64)")),
    (["c7i.4xlarge", "hpc7g.4xlarge"], ("c7i.4xlarge has 16 vCPUs (x86_64)", "hpc7g.4xlarge has 16 vCPUs (arm64)")),
])
def test_create_node_group_refuses_types_of_different_sizes(pcs, cluster, types, words):
    params = node_group_params(cluster["id"], instanceConfigs=[{"instanceType": t} for t in types])
    with pytest.raises(pcs.exceptions.ValidationException) as refused:
        pcs.create_compute_node_group(**params)
    message = fields(refused)["instanceConfigs"]
    for word in (*words, "Use instance types with the same vCPU count and architecture"):
        assert word in message
    names = [g["name"] for g in pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"]]
    assert params["computeNodeGroupName"] not in names  # nothing was created


def test_create_node_group_accepts_types_of_one_size(pcs, cluster):
    configs = [{"instanceType": "c6i.xlarge"}, {"instanceType": "m6i.xlarge"}]
    group = create_node_group(pcs, cluster["id"], wait=False, max_count=1, instanceConfigs=configs)
    assert group["instanceConfigs"] == configs
    pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])


@pytest.mark.parametrize("instance_type", ["c7i.metal-48xl", "p5.48xlarge", "t3.nano", "hpc7g.16xlarge"])
def test_create_node_group_accepts_catalogued_types(pcs, cluster, instance_type):
    group = create_node_group(pcs, cluster["id"], wait=False, max_count=1,
                              instanceConfigs=[{"instanceType": instance_type}])
    assert group["instanceConfigs"] == [{"instanceType": instance_type}]
    pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])


def test_update_node_group_cannot_change_instance_types(pcs, cluster):
    # UpdateComputeNodeGroup has no instanceConfigs member, so an update cannot bring in an unknown type: it
    # keeps the group's catalogued ones. Should the model ever gain the member, the check must cover it.
    update = pcs.meta.service_model.operation_model("UpdateComputeNodeGroup").input_shape
    assert "instanceConfigs" not in update.members
    group = create_node_group(pcs, cluster["id"], max_count=1, instanceConfigs=[{"instanceType": "g6.xlarge"}])
    updated = pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                            scalingConfiguration={"minInstanceCount": 0, "maxInstanceCount": 2})
    assert updated["computeNodeGroup"]["instanceConfigs"] == [{"instanceType": "g6.xlarge"}]
