"""Health monitoring and repair with real Slurm: faults injected with `openpcs inject` are judged and repaired
as each node group's instanceHealthChecks say, and `openpcs events` tells the story."""

from __future__ import annotations

import pytest
from conftest import create_cluster, create_node_group, create_queue, unique
from test_scaling import _alive, events, openpcs, slurmd_pid, until_exists, wait_until
from test_slurm import job_state, node_states, openpcs_exec, wait_job_done


def instance_of(server, node: str) -> str | None:
    """The id of the instance the node runs on now (the node agent's registration says which)."""
    import json

    for record in server.data_dir.glob("instances/*/bootstrap.json"):
        data = json.loads(record.read_text())
        slurmd = record.parent / "slurmd.json"
        if slurmd.exists() and node in json.loads(slurmd.read_text())["argv"]:
            return data["instanceId"]
    return None


def group_with_checks(server, action: str | None, min_count: int = 1, max_count: int = 1) -> tuple:
    pcs = server.client()
    cluster = create_cluster(pcs, unique())
    extra = {} if action is None else {
        "instanceHealthChecks": {"healthMonitoring": {"mode": "STANDARD", "repairAction": action}}}
    group = create_node_group(pcs, cluster["id"], min_count=min_count, max_count=max_count, **extra)
    queue = create_queue(pcs, cluster["id"], [group["id"]])
    return cluster, group, queue


def replaced(server, cluster: dict, node: str, old: str) -> str:
    """Wait until the node runs on a new instance and is IDLE in Slurm; its id."""
    new = wait_until(lambda: (i := instance_of(server, node)) not in (None, old) and i, f"{node} on a new instance")
    wait_until(lambda: node_states(server, cluster["name"]).get(node) == "IDLE", f"{node} IDLE again")
    return new


@pytest.mark.parametrize("fault", ["instance-death", "unresponsive"])
@pytest.mark.parametrize("action", [None, "AUTO", "REPLACE"])
def test_a_node_that_can_no_longer_run_jobs_gets_a_new_instance(server, fault, action, tmp_path):
    cluster, group, queue = group_with_checks(server, action)
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    openpcs(server, "inject", cluster["name"], node, fault)
    new = replaced(server, cluster, node, old)
    out = tmp_path / "out.txt"
    openpcs_exec(server, cluster["name"], "sbatch", "-p", queue["name"], "--wait", "-o", str(out), "--wrap",
                 "echo $SLURMD_NODENAME", timeout=60)
    assert out.read_text().strip() == node
    story = [e for e in events(server, cluster["name"]) if e["node"] == node]
    kinds = [e["type"] for e in story]
    assert kinds.index("FaultInjected") < kinds.index("HealthVerdict") < kinds.index("Repair")
    terminated = next(e for e in story if e["type"] == "InstanceTerminated")
    assert terminated["instanceId"] == old and terminated["reason"].startswith("repair: ")
    assert [e for e in story if e["type"] == "InstanceRegistered"][-1]["instanceId"] == new


@pytest.mark.parametrize("fault", ["instance-death", "unresponsive"])
def test_isolate_drains_the_node_and_keeps_its_instance_for_inspection(server, fault):
    cluster, group, _ = group_with_checks(server, "ISOLATE")
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    pid = slurmd_pid(server, node)
    openpcs(server, "inject", cluster["name"], node, fault)
    wait_until(lambda: "openpcs: isolated" in openpcs_exec(server, cluster["name"], "scontrol", "show", "node",
                                                           node).stdout, "the node isolated")
    assert "DRAIN" in node_states(server, cluster["name"])[node]
    assert (server.data_dir / "instances" / old).exists()  # kept for inspection
    if fault == "unresponsive":
        assert _alive(pid)  # still there, stopped, as it was found
    assert "InstanceTerminated" not in [e["type"] for e in events(server, cluster["name"]) if e["node"] == node]


@pytest.mark.parametrize("fault", ["instance-death", "unresponsive"])
def test_none_only_records_the_verdict(server, fault):
    cluster, group, _ = group_with_checks(server, "NONE")
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    openpcs(server, "inject", cluster["name"], node, fault)
    verdicts = wait_until(lambda: [e for e in events(server, cluster["name"]) if e["type"] == "HealthVerdict"],
                          "a verdict")
    assert "repairAction NONE" in verdicts[0]["reason"] and verdicts[0]["instanceId"] == old
    assert "Repair" not in [e["type"] for e in events(server, cluster["name"])]
    assert "openpcs" not in openpcs_exec(server, cluster["name"], "scontrol", "show", "node", node).stdout


def test_an_unhealthy_node_is_replaced_once_its_job_ends(server, tmp_path):
    cluster, group, queue = group_with_checks(server, "REPLACE")
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    out, go = tmp_path / "out.txt", tmp_path / "go"
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-o", str(out),
                       "--wrap", until_exists(go)).stdout.strip()
    wait_until(lambda: job_state(server, cluster["name"], job) == "RUNNING", "the job to start")
    openpcs(server, "inject", cluster["name"], node, "unhealthy")
    wait_until(lambda: "DRAIN" in node_states(server, cluster["name"])[node], "the node drained")
    assert instance_of(server, node) == old  # its job runs on
    go.touch()
    wait_job_done(server, cluster["name"], job)
    assert out.read_text().strip() == "finished"
    replaced(server, cluster, node, old)


def test_a_node_an_administrator_drained_is_left_alone(server):
    cluster, group, _ = group_with_checks(server, None)
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    openpcs_exec(server, cluster["name"], "scontrol", "update", f"nodename={node}", "state=drain", "reason=inspect me")
    openpcs(server, "inject", cluster["name"], node, "unresponsive")
    # Left for the administrator, while a node elsewhere would have been repaired in this time.
    other_cluster, other_group, _ = group_with_checks(server, None)
    other = f"{other_group['name']}-1"
    other_old = instance_of(server, other)
    openpcs(server, "inject", other_cluster["name"], other, "unresponsive")
    replaced(server, other_cluster, other, other_old)
    assert instance_of(server, node) == old
    assert "inspect me" in openpcs_exec(server, cluster["name"], "scontrol", "show", "node", node).stdout
    assert "Repair" not in [e["type"] for e in events(server, cluster["name"])]


@pytest.mark.parametrize("action", [None, "NONE"])
def test_a_node_slurm_drained_because_a_task_could_not_be_killed_is_repaired(server, action):
    """Slurm drains a node whose job's tasks outlived UnkillableStepTimeout ("Kill task failed"; seen at 2,048 nodes
    on one host). It then takes no jobs: openpcs replaces it as it would a node failing its health checks, or, with
    repairAction NONE, records the verdict. (The drain is made with Slurm's own reason here: an unkillable task
    cannot be made on demand.)"""
    cluster, group, _ = group_with_checks(server, action)
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    openpcs_exec(server, cluster["name"], "scontrol", "update", f"nodename={node}", "state=drain",
                 "reason=Kill task failed")
    verdict = wait_until(lambda: next((e for e in events(server, cluster["name"]) if e["type"] == "HealthVerdict"),
                                      None), "a health verdict")
    assert verdict["node"] == node and "Slurm drained it (Kill task failed" in verdict["reason"]
    if action == "NONE":
        assert instance_of(server, node) == old
        assert "DRAIN" in node_states(server, cluster["name"])[node]
    else:
        replaced(server, cluster, node, old)


def test_a_node_an_administrator_set_down_is_repaired_as_broken(server):
    cluster, group, _ = group_with_checks(server, None)
    node = f"{group['name']}-1"
    old = instance_of(server, node)
    openpcs_exec(server, cluster["name"], "scontrol", "update", f"nodename={node}", "state=down", "reason=broken")
    replaced(server, cluster, node, old)


def test_a_dynamic_node_that_dies_is_terminated_and_powered_down(server):
    cluster, group, queue = group_with_checks(server, None, min_count=0, max_count=2)
    node = f"{group['name']}-1"
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-w", node,
                       "--wrap", "sleep 60").stdout.strip()
    wait_until(lambda: job_state(server, cluster["name"], job) == "RUNNING", "the job to start", timeout=60)
    old = instance_of(server, node)
    openpcs(server, "inject", cluster["name"], node, "instance-death")
    wait_until(lambda: "POWER" in node_states(server, cluster["name"])[node], "the node powered down")
    assert not (server.data_dir / "instances" / old).exists()
    assert "Repair" in [e["type"] for e in events(server, cluster["name"]) if e["node"] == node]
    openpcs_exec(server, cluster["name"], "scancel", job)


# PCS runs deep health checks only on GPU instances.
GPU = [{"instanceType": "g5.xlarge"}]


def group_checking_itself_on_start(server, action: str, unhealthy_first: bool) -> tuple:
    """A cluster and a one-node group whose instances run QUICK deep health checks on start; with
    `unhealthy_first`, the node's first instance fails them (injected before the group exists)."""
    pcs = server.client()
    cluster = create_cluster(pcs, unique())
    name = unique("g")
    if unhealthy_first:
        openpcs(server, "inject", cluster["name"], f"{name}-1", "unhealthy")
    group = create_node_group(pcs, cluster["id"], name=name, min_count=1, max_count=1, instanceConfigs=GPU,
                              instanceHealthChecks={"deepHealthChecks": {"onStart": {"profile": "QUICK",
                                                                                     "repairAction": action}}})
    return cluster, group


def test_an_instance_that_fails_its_checks_on_start_is_replaced_before_it_takes_jobs(server):
    cluster, group = group_checking_itself_on_start(server, "REPLACE", unhealthy_first=True)
    node = f"{group['name']}-1"
    assert group["status"] == "ACTIVE" and node_states(server, cluster["name"])[node] == "IDLE"
    story = [e for e in events(server, cluster["name"]) if e["node"] == node]
    failed = next(e for e in story if e["type"] == "InstanceLaunchFailed")
    assert "deep health check failed (QUICK)" in failed["reason"]
    assert [e["type"] for e in story].count("InstanceLaunched") == 2
    assert instance_of(server, node) != failed["instanceId"]


def test_an_instance_that_fails_its_checks_on_start_is_isolated_when_asked(server):
    cluster, group = group_checking_itself_on_start(server, "ISOLATE", unhealthy_first=True)
    node = f"{group['name']}-1"
    shown = openpcs_exec(server, cluster["name"], "scontrol", "show", "node", node).stdout
    assert "openpcs: isolated: deep health check failed (QUICK)" in shown
    kept = next(e for e in events(server, cluster["name"]) if e["type"] == "Repair")["instanceId"]
    assert (server.data_dir / "instances" / kept).exists()


def test_healthy_instances_pass_every_profile(server):
    pcs = server.client()
    cluster = create_cluster(pcs, unique())
    for profile in ("QUICK", "MEDIUM", "LONG"):
        group = create_node_group(pcs, cluster["id"], min_count=1, max_count=1, instanceConfigs=GPU,
                                  instanceHealthChecks={"deepHealthChecks": {"onStart": {"profile": profile,
                                                                                         "repairAction": "REPLACE"}}})
        assert node_states(server, cluster["name"])[f"{group['name']}-1"] == "IDLE"
    assert "InstanceLaunchFailed" not in [e["type"] for e in events(server, cluster["name"])]
