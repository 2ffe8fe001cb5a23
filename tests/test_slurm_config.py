"""The Slurm configuration renderer: golden files, hostlists, custom-setting overrides, reload plans.

Each golden case renders a ClusterSpec and compares slurm.conf, cgroup.conf and gres.conf byte for byte with
tests/golden/slurm/<case>/. After an intended change to the renderer, rewrite them with

    OPENPCS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_slurm_config.py

and review the diff. The rendered files were checked by hand against real slurmctld/slurmd 22.05.8 (see
openpcs.slurm.config's docstring for what was measured).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from openpcs.slurm.config import (
    ClusterSpec,
    NodeGroupSpec,
    QueueSpec,
    SlurmPaths,
    apply_overrides,
    compress_hostlist,
    expand_hostlist,
    gpu_device_files,
    node_names,
    plan_reload,
    render,
)
from openpcs.slurm.dbd import PURGE_SETTINGS, DbdSpec, render_slurmdbd_conf

GOLDEN = Path(__file__).parent / "golden" / "slurm"
UPDATE = os.environ.get("OPENPCS_UPDATE_GOLDEN") == "1"
ROOT = "/var/lib/openpcs/clusters/pcs_abc1234567"
PATHS = SlurmPaths(
    conf_dir=f"{ROOT}/etc", state_dir=f"{ROOT}/state", log_dir="/var/lib/openpcs/logs/pcs_abc1234567",
    spool_dir=f"{ROOT}/spool", run_dir=f"{ROOT}/run", munge_socket=f"{ROOT}/run/munge.socket",
    resume_program="/opt/openpcs/bin/openpcs-resume", suspend_program="/opt/openpcs/bin/openpcs-suspend",
    prolog_slurmctld="/opt/openpcs/bin/openpcs-prolog-slurmctld")


def group(name: str, static: int, most: int, cpus: int = 4, memory: int = 15360, gres: str | None = None,
          custom: tuple[tuple[str, str], ...] = (), first_port: int = 20000, idle: int | None = None,
          gres_records: tuple = ()) -> NodeGroupSpec:
    ports = {f"{name}-{n}": first_port + n - 1 for n in range(1, most + 1)}
    return NodeGroupSpec(name, static, most, cpus, memory, gres, custom, ports, idle, gres_records)


def cluster(node_groups=(), queues=(), custom=(), cgroup=(), idle=600) -> ClusterSpec:
    return ClusterSpec("pcs_abc1234567", 16817, idle, tuple(custom), tuple(cgroup), tuple(node_groups),
                       tuple(queues), PATHS, jobs_tracked=256)


CASES = {
    "empty": cluster(),
    "two-groups-two-queues": cluster(
        [group("cpu", 2, 4), group("himem", 0, 3, cpus=8, memory=61440, first_port=20100)],
        [QueueSpec("short", ("cpu",), ()), QueueSpec("all", ("cpu", "himem"), ())]),
    "gpu": cluster(
        [group("cpu", 1, 2), group("gpu", 1, 2, cpus=48, memory=196608, gres="gpu:a10g:4", first_port=20100),
         group("single", 0, 1, cpus=8, memory=32768, gres="gpu:1,fpga:2", first_port=20200)],
        [QueueSpec("gpu", ("gpu", "single"), ()), QueueSpec("cpu", ("cpu",), ()), QueueSpec("later", (), ())],
        idle=300),
    "custom-settings": cluster(
        [group("cpu", 2, 3, custom=(("Features", "c5,fast"), ("Weight", "10"), ("RealMemory", "12000"))),
         group("gpu", 1, 1, cpus=8, memory=32768, gres="gpu:a10g:4", first_port=20100,
               custom=(("Gres", "gpu:a10g:2"), ("Feature", "gpu")))],
        [QueueSpec("main", ("cpu",), (("Default", "YES"), ("MaxTime", "1:00:00"), ("PriorityTier", "5"))),
         QueueSpec("accel", ("gpu",), (("DefaultTime", "10"), ("OverSubscribe", "NO")))],
        custom=(("SelectTypeParameters", "CR_CPU_Memory"), ("DefMemPerCPU", "1000"), ("MinJobAge", "42"),
                ("SchedulerParameters", "bf_interval=10,defer"), ("Prolog", "/bin/true"),
                ("Epilog", "/bin/true")),
        cgroup=(("ConstrainCores", "yes"), ("ConstrainRAMSpace", "yes"))),
    # A group's own idle time (its hidden partition), gres.conf records: one merged into the GPU record the
    # instance type gives (its File stays the stand-in), one of a GRES of its own.
    "node-group-settings": cluster(
        [group("gpu", 1, 3, cpus=8, memory=32768, gres="gpu:a10g:1", idle=120,
               gres_records=((("Name", "gpu"), ("Cores", "0-3"), ("File", "/dev/nvidia0")),
                             (("Name", "mps"), ("Count", "100")))),
         group("cpu", 0, 2, first_port=20100)],
        [QueueSpec("all", ("gpu", "cpu"), ())]),
    # slurmdbd and slurmrestd: the accounting lines, and the JWT key added to the cluster's own AuthAltParameters.
    "accounting-and-rest": dataclasses.replace(
        cluster([group("cpu", 1, 2)], [QueueSpec("batch", ("cpu",), ())],
                custom=(("AuthAltParameters", "disable_token_creation"),
                        ("AccountingStorageEnforce", "associations,limits"))),
        accounting_port=16819, jwt_key=f"{ROOT}/jwt.key"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    files = render(CASES[case])
    assert sorted(files) == ["cgroup.conf", "gres.conf", "slurm.conf"]
    directory = GOLDEN / case
    if UPDATE:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text)
    for name, text in files.items():
        expected = (directory / name).read_text()
        assert text == expected, f"{case}/{name} differs from its golden file (OPENPCS_UPDATE_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_is_deterministic_and_writes_each_parameter_once(case: str) -> None:
    spec = CASES[case]
    reordered = dataclasses.replace(spec, node_groups=tuple(
        dataclasses.replace(g, ports=dict(reversed(list(g.ports.items())))) for g in spec.node_groups))
    assert render(spec) == render(spec) == render(reordered)
    keys = [line.split("=", 1)[0].lower() for line in render(spec)["slurm.conf"].splitlines()
            if line and not line.startswith(("#", "NodeName=", "PartitionName="))]
    assert len(keys) == len(set(keys))


# --- hostlists ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names, expected", [
    ([], ""),
    (["cpu-1"], "cpu-1"),
    (["cpu-1", "cpu-2", "cpu-3", "cpu-4"], "cpu-[1-4]"),
    (["cpu-4", "cpu-2", "cpu-1", "cpu-3", "cpu-2"], "cpu-[1-4]"),
    (["cpu-1", "cpu-2", "cpu-4", "cpu-6", "cpu-7"], "cpu-[1-2,4,6-7]"),
    (["cpu-1", "cpu-2", "gpu-1", "cpu-3"], "cpu-[1-3],gpu-1"),
    (["gpu-2", "gpu-1", "cpu-1"], "gpu-[1-2],cpu-1"),
    (["a1-3", "a1-4", "a2-1"], "a1-[3-4],a2-1"),
    (["n01", "n02", "n03", "n10"], "n[01-03],n10"),
    (["login", "cpu-1", "login"], "login,cpu-1"),
    ([f"big-{n}" for n in range(1, 2049)], "big-[1-2048]"),
])
def test_compress_hostlist(names, expected):
    assert compress_hostlist(names) == expected


def test_node_names():
    assert node_names(group("cpu", 1, 3)) == ["cpu-1", "cpu-2", "cpu-3"]
    assert node_names(group("cpu", 0, 0)) == []


# --- custom settings ---------------------------------------------------------------------------------------


def test_overrides_replace_in_place_without_regard_to_case_and_append_the_rest():
    defaults = [("CPUs", "4"), ("RealMemory", "15360")]
    assert apply_overrides(defaults, [("realmemory", "12000"), ("Weight", "5"), ("Weight", "7")]) == [
        ("CPUs", "4"), ("realmemory", "12000"), ("Weight", "7")]
    assert apply_overrides([("Features", "a")], [("Feature", "b")]) == [("Feature", "b")]
    with pytest.raises(ValueError):
        apply_overrides(defaults, [("NodeName", "x")], reserved=("NodeName",))


def slurm_conf_lines(spec: ClusterSpec) -> list[str]:
    return render(spec)["slurm.conf"].splitlines()


def test_cluster_custom_setting_replaces_the_default_and_new_ones_follow():
    lines = slurm_conf_lines(cluster(custom=[("selecttypeparameters", "CR_Core_Memory"), ("MinJobAge", "42")]))
    assert [line for line in lines if line.lower().startswith("selecttypeparameters")] == [
        "selecttypeparameters=CR_Core_Memory"]
    assert lines.index("selecttypeparameters=CR_Core_Memory") < lines.index("MinJobAge=42")
    assert "# The cluster's slurmCustomSettings" in lines


def test_node_group_and_queue_custom_settings():
    spec = cluster([group("cpu", 1, 2, custom=(("RealMemory", "1000"), ("Features", "x")))],
                   [QueueSpec("q", ("cpu",), (("MaxTime", "60"), ("Default", "YES")))])
    lines = slurm_conf_lines(spec)
    assert ("NodeName=cpu-2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=20001 CPUs=4 RealMemory=1000 "
            "Features=x State=CLOUD") in lines
    assert "PartitionName=q Nodes=cpu-[1-2] State=UP MaxTime=60 Default=YES" in lines


def test_gres_override_drives_gres_conf_and_device_files():
    spec = cluster([group("gpu", 1, 2, gres="gpu:a10g:4", custom=(("Gres", "gpu:a10g:2"),))],
                   [QueueSpec("q", ("gpu",), ())])
    files = render(spec)
    assert "GresTypes=gpu" in files["slurm.conf"].splitlines()
    assert f"NodeName=gpu-[1-2] Name=gpu Type=a10g File={ROOT}/etc/dev/gpu[0-1]" in files["gres.conf"]
    assert gpu_device_files(spec) == [f"{ROOT}/etc/dev/gpu0", f"{ROOT}/etc/dev/gpu1"]
    assert gpu_device_files(cluster([group("cpu", 1, 1)])) == []


def test_values_are_quoted_and_escaped_and_cannot_break_lines():
    assert 'Epilog="/a b/c\\#1"' in slurm_conf_lines(cluster(custom=[("Epilog", "/a b/c#1")]))
    for bad in ([("Prolog", "/bin/true\nSlurmUser=nobody")], [("Prolog", 'a"b')], [("Bad Name", "1")],
                [("NodeName", "x")], [("PartitionName", "x")]):
        with pytest.raises(ValueError):
            render(cluster(custom=bad))
    with pytest.raises(ValueError):
        render(cluster([group("cpu", 0, 1, custom=(("Port", "1"),))]))
    with pytest.raises(ValueError):
        render(cluster(queues=[QueueSpec("q", (), (("Nodes", "cpu-1"),))]))


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="unknown node groups"):
        render(cluster(queues=[QueueSpec("q", ("nope",), ())]))
    with pytest.raises(ValueError, match="no slurmd port"):
        render(cluster([dataclasses.replace(group("cpu", 1, 2), ports={"cpu-1": 1})]))
    with pytest.raises(ValueError, match="unique"):
        render(cluster([group("cpu", 1, 1), group("cpu", 1, 1)]))
    with pytest.raises(ValueError, match="Gres"):
        render(cluster([group("cpu", 1, 1, gres="gpu:a:b:4")]))
    with pytest.raises(ValueError, match="absolute"):
        render(dataclasses.replace(cluster(), paths=dataclasses.replace(PATHS, state_dir="relative")))


# --- structure: static and CLOUD nodes ----------------------------------------------------------------------


def test_static_nodes_are_excluded_from_power_saving_and_cloud_nodes_are_marked():
    lines = slurm_conf_lines(cluster([group("a", 2, 3), group("b", 5, 2, first_port=20100), group("c", 0, 1)]))
    assert "SuspendExcNodes=a-[1-2],b-[1-2]" in lines
    cloud = [line.split()[0] for line in lines if line.endswith("State=CLOUD")]
    assert cloud == ["NodeName=a-3", "NodeName=c-1"]


def test_no_static_nodes_means_no_suspend_exclusions():
    assert not any(line.startswith("SuspendExcNodes") for line in slurm_conf_lines(cluster([group("a", 0, 2)])))


def test_no_placeholders_for_a_cluster_without_nodes_or_queues():
    """Slurm 24.11 starts without nodes and partitions (22.05 needed a placeholder of each)."""
    empty = slurm_conf_lines(cluster())
    assert not [line for line in empty if line.startswith(("NodeName=", "PartitionName="))]
    assert "PartitionName=q State=UP MaxTime=INFINITE" in slurm_conf_lines(
        cluster([group("a", 1, 1)], [QueueSpec("q", (), ())]))


# --- reload plans ------------------------------------------------------------------------------------------


def test_reload_plan():
    """Slurm 24.11 reconfigures nodes, partitions and plugins in place; only ports, authentication, the
    state's place and the cluster's name need slurmctld restarted, and a node's moved port its slurmd."""
    base = cluster([group("cpu", 1, 2), group("gpu", 1, 1, gres="gpu:2", first_port=20100)],
                   [QueueSpec("q", ("cpu",), ())])
    same = plan_reload(render(base), render(base))
    assert not same.changed and not same.restart_slurmctld

    queues = plan_reload(render(base), render(dataclasses.replace(
        base, queues=(QueueSpec("q", ("cpu", "gpu"), (("MaxTime", "60"),)), QueueSpec("r", ("cpu",), ())))))
    assert queues.changed and not queues.restart_slurmctld and not queues.restart_slurmd
    # Partitions alone change live, without the reconfigure that restarts every slurmd.
    assert queues.partition_commands == (
        ("update", "PartitionName=q", "Nodes=cpu-[1-2],gpu-1", "MaxTime=60"),
        ("create", "PartitionName=r", "Nodes=cpu-[1-2]", "State=UP", "MaxTime=INFINITE"))
    draining = plan_reload(render(base), render(dataclasses.replace(base, queues=(
        QueueSpec("q", ("cpu",), (), draining=True), QueueSpec("r r", ("cpu",), (("AllowQos", "a#b c"),))))))
    assert draining.partition_commands == (
        ("update", "PartitionName=q", "State=DRAIN"),
        ("create", "PartitionName=r r", "Nodes=cpu-[1-2]", "State=UP", "MaxTime=INFINITE", "AllowQos=a#b c"))
    assert plan_reload(render(base), render(dataclasses.replace(base, queues=()))).partition_commands == (
        ("delete", "PartitionName=q"),)
    # scontrol cannot unset a setting a partition loses; nodes changing take a reconfigure too.
    tier = dataclasses.replace(base, queues=(QueueSpec("q", ("cpu",), (("PriorityTier", "5"),)),))
    assert plan_reload(render(tier), render(base)).partition_commands is None

    cpus = dataclasses.replace(base, node_groups=(dataclasses.replace(base.node_groups[0], cpus=8),
                                                  base.node_groups[1]))
    plan = plan_reload(render(base), render(cpus))
    assert plan.changed and plan.restart_slurmd == () and plan.restart_slurmctld == ()
    assert plan.partition_commands is None

    grown = dataclasses.replace(base, node_groups=(group("cpu", 1, 3), base.node_groups[1]))
    plan = plan_reload(render(base), render(grown))
    assert plan.added_nodes == ("cpu-3",) and plan.restart_slurmctld == ()

    select = plan_reload(render(base), render(dataclasses.replace(
        base, custom_settings=(("SelectTypeParameters", "CR_CPU_Memory"),))))
    assert select.changed and select.restart_slurmctld == ()

    moved = plan_reload(render(base), render(dataclasses.replace(base, controller_port=16818)))
    assert moved.restart_slurmctld == ("slurmctldport changed",)

    port = dataclasses.replace(base, node_groups=(group("cpu", 1, 2, first_port=20050), base.node_groups[1]))
    assert plan_reload(render(base), render(port)).restart_slurmd == ("cpu-1", "cpu-2")

    first = plan_reload(render(cluster()), render(base))
    assert first.added_nodes == ("cpu-1", "cpu-2", "gpu-1") and not first.restart_slurmctld


def test_golden_files_exist_for_every_case():
    if not UPDATE:
        assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(CASES)
        for case in CASES:
            assert re.search(r"^ClusterName=pcs_abc1234567$", (GOLDEN / case / "slurm.conf").read_text(), re.M)


@pytest.mark.parametrize("expression, names", [
    ("cpu-[1-3,5],gpu-1", ["cpu-1", "cpu-2", "cpu-3", "cpu-5", "gpu-1"]),
    ("big-grp-[7,9-10]", ["big-grp-7", "big-grp-9", "big-grp-10"]),
    ("a-b-[01-03]", ["a-b-01", "a-b-02", "a-b-03"]),
    ("solo", ["solo"]),
])
def test_expand_hostlist(expression: str, names: list[str]) -> None:
    assert expand_hostlist(expression) == names
    assert expand_hostlist(compress_hostlist(names)) == names


def test_slurmdbd_conf_sets_every_purge_and_lets_custom_settings_win() -> None:
    spec = DbdSpec(port=16819, munge_socket="/run/m.sock", log_file="/l/slurmdbd.log", pid_file="/r/slurmdbd.pid",
                   storage_host="127.0.0.1", storage_port=3306, storage_user="openpcs_x", storage_password="s3cret",
                   storage_database="openpcs_x", purge_days=30,
                   custom_settings=(("purgejobafter", "12months"), ("CommitDelay", "1")), jwt_key="/k/jwt.key")
    settings = dict(line.split("=", 1) for line in render_slurmdbd_conf(spec).splitlines() if "=" in line)
    assert settings["purgejobafter"] == "12months" and "PurgeJobAfter" not in settings  # replaced, case aside
    assert all(settings[name] == "30days" for name in PURGE_SETTINGS if name != "PurgeJobAfter")
    assert settings["CommitDelay"] == "1" and settings["StoragePass"] == "s3cret"
    assert settings["AuthAltTypes"] == "auth/jwt" and settings["AuthAltParameters"] == "jwt_key=/k/jwt.key"
    forever = render_slurmdbd_conf(dataclasses.replace(spec, purge_days=-1, custom_settings=(), jwt_key=None))
    assert "Purge" not in forever and "AuthAlt" not in forever  # -1 keeps records forever


def test_slurmd_step_end_message_and_batch_start_timeouts_grow_with_the_cluster():
    def timeout(name: str, *groups: NodeGroupSpec) -> str:
        return re.search(rf"^{name}=(\d+)$", render(cluster(groups))["slurm.conf"], re.M).group(1)

    assert timeout("SlurmdTimeout") == timeout("SlurmdTimeout", group("a", 2, 240)) == "30"
    assert timeout("SlurmdTimeout", group("a", 100, 1024), group("b", 0, 1024, first_port=30000)) == "256"
    assert timeout("UnkillableStepTimeout") == timeout("UnkillableStepTimeout", group("a", 2, 480)) == "60"
    assert timeout("UnkillableStepTimeout", group("a", 2, 1024)) == "128"
    assert timeout("UnkillableStepTimeout", group("a", 100, 1024), group("b", 0, 1024, first_port=30000)) == "256"
    assert timeout("MessageTimeout") == timeout("MessageTimeout", group("a", 2, 320)) == "10"
    assert timeout("MessageTimeout", group("a", 2, 1024)) == "32"
    assert timeout("BatchStartTimeout") == "15" and timeout("BatchStartTimeout", group("a", 2, 512)) == "32"
    assert timeout("BatchStartTimeout", group("a", 100, 1024), group("b", 0, 1024, first_port=30000)) == "128"
