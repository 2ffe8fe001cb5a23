"""PCS's own rules beyond what the service model states. Pure functions: no I/O.

Each check raises an ApiError shaped as PCS shapes it. The allowlists are the Slurm parameters PCS lets
a user set at each level (see PCS-FACTS.md); everything else in Slurm's configuration is the service's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..api.errors import field_error, quota_exceeded, validation_error
from . import instance_types

# Instances a cluster of each size manages: the sum of maxInstanceCount over its node groups.
SIZE_INSTANCE_LIMITS = {"SMALL": 32, "MEDIUM": 512, "LARGE": 2048}
# Jobs (active and queued; each task of an array counts) a cluster of each size tracks.
SIZE_JOB_LIMITS = {"SMALL": 256, "MEDIUM": 8192, "LARGE": 16384}
NODE_GROUPS_PER_CLUSTER = 10
QUEUES_PER_CLUSTER = 10
DEFAULT_SCALE_DOWN_IDLE_SECONDS = 600

CLUSTER_SLURM_SETTINGS = frozenset("""
AccountingStorageEnforce AccountingStorageTRES AccountingStoreFlags AuthAltParameters CliFilterParameters
CliFilterPlugins CommunicationParameters DefMemPerCPU Epilog EnforcePartLimits FairShareDampeningFactor
FirstJobId HealthCheckInterval HealthCheckNodeState HealthCheckProgram JobRequeue LaunchParameters Licenses
MetricsType MinJobAge OverTimeLimit PreemptExemptTime PreemptMode PreemptParameters PreemptType
PriorityCalcPeriod PriorityDecayHalfLife PriorityFavorSmall PriorityFlags PriorityMaxAge
PriorityUsageResetPeriod PriorityWeightAge PriorityWeightAssoc PriorityWeightFairshare PriorityWeightJobSize
PriorityWeightPartition PriorityWeightQOS PriorityWeightTRES Prolog PrologFlags RequeueExit RequeueExitHold
SchedulerParameters SelectTypeParameters SrunPortRange TaskEpilog TaskPluginParam TaskProlog TrackWCKey
UnkillableStepProgram UnkillableStepTimeout
""".split())
NODE_GROUP_SLURM_SETTINGS = frozenset(
    "CpuSpecList Features Gres MemSpecLimit Parameters RealMemory Sockets Weight".split())
QUEUE_SLURM_SETTINGS = frozenset("""
AllowAccounts AllowQos Default DefaultTime DenyAccounts DenyQos ExclusiveUser GraceTime MaxTime OverSubscribe
OverTimeLimit PowerDownOnIdle PreemptMode PriorityJobFactor PriorityTier QOS TRESBillingWeights
""".split())
SLURMDBD_SETTINGS = frozenset("""
AllowNoDefAcct CommitDelay DefaultQOS MaxQueryTimeRange PrivateData PurgeEventAfter PurgeJobAfter
PurgeResvAfter PurgeStepAfter PurgeSuspendAfter PurgeTXNAfter PurgeUsageAfter
""".split())
CGROUP_SETTINGS = frozenset("""
AllowedRAMSpace AllowedSwapSpace ConstrainCores ConstrainDevices ConstrainRAMSpace ConstrainSwapSpace
MaxRAMPercent MaxSwapPercent MemorySwappiness MinRAMSpace
""".split())

# Names become Slurm node and partition names and directory names: the whole name must fit the model's
# pattern, which the model only anchors at the start.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]+")
_SUBNET = re.compile(r"subnet-\w{8,17}")
_LAUNCH_TEMPLATE_ID = re.compile(r"lt-[0-9a-z]{8,17}")
_LAUNCH_TEMPLATE_VERSION = re.compile(r"[0-9]+|\$Latest|\$Default")
# A Slurm configuration parameter's name, as the config renderer accepts it.
_CONFIG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ONE_LINE = "must be non-empty, on a single line, without double quotes or control characters such as tabs"
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")  # c7i.metal-48xl has a hyphen
# The ARN carries an IAM path without its leading slash: instance-profile/aws-pcs/NAME has path /aws-pcs/.
_INSTANCE_PROFILE = re.compile(r"arn:aws[a-zA-Z-]{0,10}:iam::[0-9]{12}:instance-profile/(?P<path>.*/)?(?P<name>[^/]+)")


def check_name(field: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise field_error(field, f"Value '{name}' at '{field}' failed to satisfy constraint: Member must "
                                 "start with a letter and contain only letters, digits and hyphens")


def check_scheduler(scheduler: dict[str, Any], available: Iterable[str]) -> None:
    """The model lists the versions PCS offers; a cluster here runs only a version this server has a Slurm
    build for (or maps onto one), never another behind the version the API shows."""
    available = list(available)
    if scheduler["version"] not in available:
        raise field_error("scheduler.version",
                          f"Slurm version '{scheduler['version']}' is not available on this server, which runs "
                          f"Slurm {', '.join(available) or '(no build installed)'}. Ask for one of those, or have "
                          f"the operator start openpcs serve with --slurm-version-map "
                          f"{scheduler['version']}=<installed version>.")


def check_scheduler_update(current: str, requested: str) -> None:
    """PCS moves a cluster's Slurm forward only: to a newer version (or the one it runs, which changes nothing)."""
    if release_order(requested) < release_order(current):
        raise field_error("scheduler.version", f"The cluster runs Slurm {current}; it can only be updated to a "
                                               f"newer version, not to {requested}")


def release_order(version: str) -> tuple[int, ...]:
    """A Slurm version as numbers, to compare: 24.11 < 25.05."""
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def check_custom_settings(field: str, settings: Iterable[dict[str, str]], allowed: frozenset[str]) -> None:
    """Only allowlisted parameters, each once, with a value that cannot break out of its config line."""
    canonical = {name.lower(): name for name in allowed}
    seen: set[str] = set()
    problems: list[tuple[str, str]] = []
    for index, setting in enumerate(settings, start=1):
        where = f"{field}.{index}.member"
        name, value = setting["parameterName"], setting["parameterValue"]
        known = canonical.get(name.lower())
        if known is None:
            problems.append((f"{where}.parameterName", f"Parameter '{name}' is not allowed here. Allowed "
                                                       f"parameters: {', '.join(sorted(allowed))}"))
            continue
        if known.lower() in seen:
            problems.append((f"{where}.parameterName", f"Parameter '{known}' is given more than once"))
        seen.add(known.lower())
        if not _fits_config_line(value):
            problems.append((f"{where}.parameterValue", f"The value of '{known}' {_ONE_LINE}"))
        elif known == "MinJobAge" and not (value.isdigit() and int(value) >= 5):
            problems.append((f"{where}.parameterValue", "MinJobAge must be a whole number of at least 5"))
    _refuse(problems)


def check_gres_settings(field: str, records: Iterable[dict[str, str]]) -> None:
    """Each record becomes one gres.conf line after the NodeName= the service writes for the node group.

    PCS documents no allowlist of gres.conf attributes in its model, so only what would break that line is
    refused: a name that is not an attribute name, NodeName itself, a name given twice, a value that is not one
    line of plain text, and an empty record.
    """
    problems: list[tuple[str, str]] = []
    for index, record in enumerate(records, start=1):
        where = f"{field}.{index}.member"
        if not record:
            problems.append((where, "A gres.conf record needs at least one attribute, for example Name"))
        seen: set[str] = set()
        for name, value in record.items():
            if not _CONFIG_NAME.fullmatch(name):
                problems.append((f"{where}.key", f"'{name}' is not a gres.conf attribute name"))
            elif name.lower() == "nodename":
                problems.append((f"{where}.key", "NodeName is the service's: every record applies to the "
                                                 "compute node group's own nodes"))
            elif name.lower() in seen:
                problems.append((f"{where}.key", f"Attribute '{name}' is given more than once"))
            seen.add(name.lower())
            if not _fits_config_line(value):
                problems.append((f"{where}.{name}", f"The value of '{name}' {_ONE_LINE}"))
    _refuse(problems)


def _fits_config_line(value: str) -> bool:
    """What the Slurm config renderer can write as one value: it quotes a value holding spaces, so a double quote
    or a control character (a tab, a newline) would end the value or the line early."""
    return bool(value.strip()) and not any(ord(char) < 32 or char in '"\x7f' for char in value)


def _refuse(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise validation_error(f"{len(problems)} validation error(s) detected: "
                               + "; ".join(msg for _, msg in problems), problems)


def check_cluster_slurm_configuration(config: dict[str, Any] | None, field: str = "slurmConfiguration") -> None:
    if not config:
        return
    check_custom_settings(f"{field}.slurmCustomSettings", config.get("slurmCustomSettings") or [],
                          CLUSTER_SLURM_SETTINGS)
    check_custom_settings(f"{field}.slurmdbdCustomSettings", config.get("slurmdbdCustomSettings") or [],
                          SLURMDBD_SETTINGS)
    check_custom_settings(f"{field}.cgroupCustomSettings", config.get("cgroupCustomSettings") or [],
                          CGROUP_SETTINGS)
    purge = (config.get("accounting") or {}).get("defaultPurgeTimeInDays")
    if purge == 0:
        raise field_error(f"{field}.accounting.defaultPurgeTimeInDays",
                          "defaultPurgeTimeInDays must be -1 (keep records forever) or at least 1")


def cluster_slurm_defaults(slurm: dict[str, Any]) -> dict[str, Any]:
    """A cluster's slurmConfiguration with what the request left out filled in."""
    accounting = {"mode": "NONE", "defaultPurgeTimeInDays": -1, **(slurm.get("accounting") or {})}
    return {
        "scaleDownIdleTimeInSeconds": DEFAULT_SCALE_DOWN_IDLE_SECONDS,
        "slurmCustomSettings": [],
        **slurm,
        "accounting": accounting,
        "slurmRest": slurm.get("slurmRest") or {"mode": "NONE"},
    }


def check_subnets(field: str, subnet_ids: list[str]) -> None:
    if not subnet_ids:
        raise field_error(field, f"Value at '{field}' failed to satisfy constraint: "
                                 "Member must have length greater than or equal to 1")
    for index, subnet in enumerate(subnet_ids, start=1):
        if not _SUBNET.fullmatch(subnet):
            raise field_error(f"{field}.{index}.member", f"'{subnet}' is not a subnet id (subnet-xxxxxxxx)")


def check_launch_template_mode(spec: dict[str, Any]) -> None:
    """CUSTOM (the default) launches from the user's launch template; MANAGED from one the service makes, which
    needs the AMI and security groups the user's template would otherwise give."""
    template = spec.get("customLaunchTemplate")
    if spec["launchTemplateMode"] == "CUSTOM":
        if template is None:
            raise field_error("customLaunchTemplate", "customLaunchTemplate is required when launchTemplateMode is "
                                                      "CUSTOM (the default). Give one, or use launchTemplateMode "
                                                      "MANAGED with amiId and securityGroupIds")
        check_launch_template(template)
        return
    if template is not None:
        raise field_error("customLaunchTemplate", "customLaunchTemplate cannot be given when launchTemplateMode is "
                                                  "MANAGED: the service makes the launch template. Set "
                                                  "launchTemplateMode to CUSTOM to use your own")
    _refuse([(name, f"{name} is required when launchTemplateMode is MANAGED")
             for name in ("amiId", "securityGroupIds") if not spec.get(name)])


def check_launch_template(template: dict[str, str]) -> None:
    if not _LAUNCH_TEMPLATE_ID.fullmatch(template["id"]):
        raise field_error("customLaunchTemplate.id",
                          f"'{template['id']}' is not a launch template id (lt- followed by 8 to 17 "
                          "lowercase letters and digits)")
    if not _LAUNCH_TEMPLATE_VERSION.fullmatch(template["version"]):
        raise field_error("customLaunchTemplate.version",
                          f"'{template['version']}' is not a launch template version (a number, $Latest "
                          "or $Default)")


def check_instance_profile(arn: str) -> None:
    match = _INSTANCE_PROFILE.fullmatch(arn)
    if not match or not (match["name"].startswith("AWSPCS") or match["path"] == "aws-pcs/"):
        raise field_error("iamInstanceProfileArn",
                          f"The instance profile '{arn}' cannot be used: its name must start with AWSPCS "
                          "or its path must be /aws-pcs/")


def check_instance_configs(configs: list[dict[str, str]]) -> None:
    if not configs:
        raise field_error("instanceConfigs", "Value at 'instanceConfigs' failed to satisfy constraint: "
                                             "Member must have length greater than or equal to 1")
    kinds: list[instance_types.InstanceType] = []
    for index, config in enumerate(configs, start=1):
        instance_type = config.get("instanceType") or ""
        field = f"instanceConfigs.{index}.member.instanceType"
        if not _INSTANCE_TYPE.fullmatch(instance_type):
            raise field_error(field, f"'{instance_type}' is not an instance type (for example c6i.xlarge)")
        kind = instance_types.lookup(instance_type)
        if kind is None:
            raise field_error(field, _unknown_instance_type(instance_type))
        if kind in kinds:
            raise field_error(field, f"Instance type '{instance_type}' is listed more than once. List each "
                                     "instance type once")
        kinds.append(kind)
    # The group's nodes share one Slurm node definition (instance_types.node_size), and PCS requires the same
    # vCPUs and architecture of its instance types: a job sized for one must run on any of them.
    if len({(kind.vcpus, kind.architecture) for kind in kinds}) > 1:
        raise field_error("instanceConfigs",
                          "The instance types of a node group must have the same number of vCPUs and the same "
                          "architecture, but "
                          + ", ".join(f"{kind.name} has {kind.vcpus} vCPUs ({kind.architecture})" for kind in kinds)
                          + ". Use instance types with the same vCPU count and architecture, or one node group "
                            "per size")


def _unknown_instance_type(instance_type: str) -> str:
    """Why an instance type missing from the catalog is refused, and what to use instead."""
    family = instance_type.partition(".")[0]
    known = instance_types.sizes(family)
    if known:
        return (f"Instance type '{instance_type}' is not supported: {family} comes in "
                f"{', '.join(known)}. Use one of those sizes, for example {family}.{known[0]}")
    return (f"Instance type '{instance_type}' is not supported: openpcs knows the figures of the "
            f"{', '.join(instance_types.families())} families only. Use a type of one of them, for example "
            "c6i.xlarge")


def check_scaling(scaling: dict[str, int]) -> None:
    if scaling["minInstanceCount"] > scaling["maxInstanceCount"]:
        raise field_error("scalingConfiguration",
                          f"minInstanceCount ({scaling['minInstanceCount']}) must not exceed "
                          f"maxInstanceCount ({scaling['maxInstanceCount']})")


def check_spot(purchase_option: str, spot_options: dict[str, Any] | None) -> None:
    if spot_options and purchase_option != "SPOT":
        raise field_error("spotOptions", f"spotOptions can only be set when purchaseOption is SPOT "
                                         f"(it is {purchase_option})")


def check_instance_health_checks(checks: dict[str, Any], instance_configs: list[dict[str, str]]) -> None:
    field = "instanceHealthChecks"
    if not checks:
        raise field_error(field, "instanceHealthChecks cannot be empty: give healthMonitoring, deepHealthChecks "
                                 "or both")
    if checks.get("healthMonitoring") is not None:
        _check_repair(f"{field}.healthMonitoring", checks["healthMonitoring"], "mode")
    if checks.get("deepHealthChecks") is not None:
        on_start = checks["deepHealthChecks"].get("onStart")
        if on_start is None:
            raise field_error(f"{field}.deepHealthChecks.onStart",
                              "onStart is required when deepHealthChecks is given")
        _check_repair(f"{field}.deepHealthChecks.onStart", on_start, "profile")
        if on_start["profile"] != "NONE":
            _check_gpus(f"{field}.deepHealthChecks.onStart.profile", on_start["profile"], instance_configs)


def _check_gpus(field: str, profile: str, instance_configs: list[dict[str, str]]) -> None:
    # The profiles run NVIDIA's GPU diagnostics (DCGM); the GPUs of openpcs's catalog are all NVIDIA's.
    without = [config["instanceType"] for config in instance_configs
               if not instance_types.lookup(config["instanceType"]).gpus]
    if without:
        raise field_error(field, f"Deep health check profile {profile} needs instance types with NVIDIA GPUs, and "
                                 f"{', '.join(without)} has none. Use profile NONE, or GPU instance types")


def _check_repair(field: str, check: dict[str, str], switch: str) -> None:
    """A check is turned on or off by its `switch` member; a check turned off (NONE) takes no repairAction."""
    if check.get(switch) is None:
        raise field_error(f"{field}.{switch}", f"{switch} is required when {field.rpartition('.')[2]} is given")
    if check[switch] == "NONE" and check.get("repairAction") is not None:
        raise field_error(f"{field}.repairAction", f"repairAction cannot be given when {switch} is NONE")


def check_node_lifecycle_actions(actions: dict[str, Any]) -> None:
    for stage, scripts in actions["stages"].items():
        seen: set[str] = set()
        for index, script in enumerate(scripts or [], start=1):
            where = f"nodeLifecycleActions.stages.{stage}.{index}.member"
            if script["name"] in seen:
                raise field_error(f"{where}.name", f"Script name '{script['name']}' is used twice in {stage}")
            seen.add(script["name"])
            source = script["scriptSource"]
            if source.get("s3VersionId") is not None and not source["scriptLocation"].startswith("s3://"):
                raise field_error(f"{where}.scriptSource.s3VersionId",
                                  "s3VersionId can only be given for a script in Amazon S3 (an s3:// location)")


def check_instance_quota(size: str, cluster_id: str, total_max_instances: int) -> None:
    limit = SIZE_INSTANCE_LIMITS[size]
    if total_max_instances > limit:
        raise quota_exceeded(
            f"A {size} cluster manages at most {limit} instances; its node groups' maxInstanceCount would "
            f"add up to {total_max_instances}. Lower maxInstanceCount or use a larger cluster size.",
            quota_code="instances-per-cluster", resource_id=cluster_id, resource_type="cluster")


def check_count_quota(kind: str, count: int, limit: int, quota_code: str, cluster_id: str) -> None:
    if count >= limit:
        raise quota_exceeded(f"A cluster can have at most {limit} {kind}; cluster {cluster_id} has {count}. "
                             f"Delete one before creating another.",
                             quota_code=quota_code, resource_id=cluster_id, resource_type="cluster")

