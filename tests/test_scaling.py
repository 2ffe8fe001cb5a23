"""Elastic node groups with real Slurm: nodes above minInstanceCount are launched when a job needs them (Slurm's
ResumeProgram reaches the control plane), terminated when Slurm powers them down, and launch failures show as
PCS shows them. Faults come through `openpcs inject`; `openpcs events` tells each story."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import OpenPcs, create_cluster, create_node_group, create_queue, unique, update_scaling, wait_for
from test_slurm import job_state, node_states, openpcs_exec, wait_job_done, wait_node_state

LAUNCH_FAILED = "Failed to launch backing instance (Error Code: {})"


def openpcs(server: OpenPcs, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "openpcs", *args[:1], "--data-dir", str(server.data_dir), *args[1:]],
                          capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"openpcs {' '.join(args)}: {done.stderr}")
    return done


def events(server: OpenPcs, cluster: str, *options: str) -> list[dict]:
    return [json.loads(line) for line in openpcs(server, "events", cluster, "--json", *options).stdout.splitlines()]


def elastic(pcs, min_count: int, max_count: int, cluster_extra: dict | None = None, **group) -> tuple:
    cluster = create_cluster(pcs, unique(), **(cluster_extra or {}))
    ng = create_node_group(pcs, cluster["id"], min_count=min_count, max_count=max_count, **group)
    queue = create_queue(pcs, cluster["id"], [ng["id"]])
    return cluster, ng, queue


def slurmd_pid(server: OpenPcs, node: str) -> int | None:
    """The PID of the slurmd running as `node` under this server's data dir, if any."""
    for record in server.data_dir.glob("instances/*/slurmd.json"):
        data = json.loads(record.read_text())
        if node in data["argv"]:
            return data["pid"] if _alive(data["pid"]) else None
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def until_exists(path) -> str:  # noqa: ANN001
    """A job script that runs until the test creates `path`, then says so: a job that ends when the test says."""
    return f"while [ ! -e {path} ]; do sleep 0.1; done; echo finished"


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_a_job_on_a_queue_scaled_to_zero_runs_on_nodes_launched_for_it(server, tmp_path):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 0, 4)
    name = group["name"]
    assert all("POWERED_DOWN" in state for state in node_states(server, cluster["name"]).values())
    out = tmp_path / "out.txt"
    openpcs_exec(server, cluster["name"], "sbatch", "-p", queue["name"], "-N2", "--wait", "-o", str(out),
                 "--wrap", "srun bash -c 'echo $SLURMD_NODENAME'", timeout=90)
    assert sorted(out.read_text().split()) == [f"{name}-1", f"{name}-2"]
    story = events(server, cluster["name"])
    for node in (f"{name}-1", f"{name}-2"):
        kinds = [e["type"] for e in story if e["node"] == node]
        assert kinds[:3] == ["PowerUpRequested", "InstanceLaunched", "InstanceRegistered"], kinds
        launched = next(e for e in story if e["node"] == node and e["type"] == "InstanceLaunched")
        assert launched["instanceId"].startswith("i-") and launched["nodeGroup"] == name
    # Nodes the job did not need were never launched.
    assert not [e for e in story if e["node"] in (f"{name}-3", f"{name}-4")]


def test_an_array_larger_than_the_static_nodes_completes_on_dynamic_nodes(server, tmp_path):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 1, 4)
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "--array=0-7",
                       "--exclusive", "-o", str(tmp_path / "task-%a.txt"), "--wrap",
                       "sleep 1; echo $SLURMD_NODENAME").stdout.strip()
    wait_until(lambda: not openpcs_exec(server, cluster["name"], "squeue", "-h", "-j", job).stdout.strip(),
               "the array to drain", timeout=120)
    ran = {(tmp_path / f"task-{n}.txt").read_text().strip() for n in range(8)}
    assert len(ran) > 1 and ran <= {f"{group['name']}-{n}" for n in range(1, 5)}, ran


def test_idle_dynamic_nodes_power_down_and_their_instances_go_while_static_ones_stay(server):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 1, 3, slurmConfiguration={"scaleDownIdleTimeInSeconds": 3})
    static, dynamic = f"{group['name']}-1", f"{group['name']}-2"
    openpcs_exec(server, cluster["name"], "srun", "-p", queue["name"], "-N2", "true", timeout=90)
    pid = slurmd_pid(server, dynamic)
    assert pid is not None
    wait_node_state(server, cluster["name"], dynamic, lambda s: "POWER" in s and "DOWN" in s, timeout=60)
    wait_until(lambda: not _alive(pid), "the dynamic node's slurmd to stop", timeout=10)
    assert slurmd_pid(server, static) is not None
    assert "POWER" not in node_states(server, cluster["name"])[static]
    kinds = [e["type"] for e in events(server, cluster["name"]) if e["node"] == dynamic]
    assert kinds[-2:] == ["PowerDownRequested", "InstanceTerminated"], kinds


def test_a_launch_failure_powers_the_node_down_with_the_reason_pcs_gives(server):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 0, 2)
    node = f"{group['name']}-1"
    openpcs(server, "inject", cluster["name"], "--node-group", group["name"], "launch-failure",
            "InsufficientInstanceCapacity")
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-w", node,
                       "--wrap", "true").stdout.strip()
    reason = LAUNCH_FAILED.format("InsufficientInstanceCapacity")
    wait_until(lambda: reason in openpcs_exec(server, cluster["name"], "scontrol", "show", "node", node).stdout,
               "the node's reason")
    assert "POWER" in node_states(server, cluster["name"])[node]
    assert job_state(server, cluster["name"], job) == "PENDING"  # requeued: it waits for the node to be free again
    story = events(server, cluster["name"], "--node-group", group["name"])
    assert [e["type"] for e in story if e["node"] == node][:3] == [
        "PowerUpRequested", "InstanceLaunchFailed", "NodePoweredDown"]
    assert any(e["type"] == "FaultInjected" for e in story)
    openpcs_exec(server, cluster["name"], "scancel", job)


def test_repeated_launch_failures_stop_the_group_launching_until_it_is_updated(server, tmp_path):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 0, 10)
    openpcs(server, "inject", cluster["name"], "--node-group", group["name"], "launch-failure",
            "InsufficientInstanceCapacity", "--times", "10")
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-N10",
                       "--wrap", "true").stdout.strip()

    def protected() -> dict | None:
        found = pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                           computeNodeGroupIdentifier=group["id"])["computeNodeGroup"]
        return found if found.get("errorInfo") else None

    found = wait_until(protected, "protected mode in the group's errorInfo")
    assert found["status"] == "ACTIVE"
    assert found["errorInfo"][0]["code"] == "ProtectedMode"
    assert "10 consecutive launch failures" in found["errorInfo"][0]["message"]
    assert "ProtectedModeEntered" in [e["type"] for e in events(server, cluster["name"])]
    openpcs_exec(server, cluster["name"], "scancel", job)
    # While protected, its idle nodes take no jobs: Slurm would only ask for them again.
    wait_until(lambda: all("DRAIN" in state for state in node_states(server, cluster["name"]).values()),
               "the group's nodes drained")
    # (sinfo -R leaves out powered-down nodes; scontrol shows their reason)
    assert "Reason=openpcs: protected mode" in openpcs_exec(server, cluster["name"], "scontrol", "show", "node").stdout
    # An update is the operator's word to try again.
    found = update_scaling(pcs, cluster["id"], group["id"], 0, 9)
    assert "errorInfo" not in found
    assert "ProtectedModeCleared" in [e["type"] for e in events(server, cluster["name"])]
    out = tmp_path / "after.txt"
    openpcs_exec(server, cluster["name"], "sbatch", "-p", queue["name"], "-N1", "--wait", "-o", str(out),
                 "--wrap", "echo ran", timeout=90)
    assert out.read_text().strip() == "ran"


def test_raising_max_adds_power_saving_nodes_and_lowering_it_drains_them_without_killing_jobs(server, tmp_path):
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 0, 1)
    name = group["name"]

    update_scaling(pcs, cluster["id"], group["id"], 0, 3)
    assert {n for n in node_states(server, cluster["name"])} == {f"{name}-1", f"{name}-2", f"{name}-3"}
    out, go = tmp_path / "long.txt", tmp_path / "go"
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-w", f"{name}-3",
                       "-o", str(out), "--wrap", until_exists(go)).stdout.strip()
    wait_until(lambda: job_state(server, cluster["name"], job) == "RUNNING", "the job to start", timeout=60)
    pcs.update_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"],
                                  scalingConfiguration={"minInstanceCount": 0, "maxInstanceCount": 2})
    wait_node_state(server, cluster["name"], f"{name}-3", lambda s: "DRAIN" in s)
    assert job_state(server, cluster["name"], job) == "RUNNING"
    go.touch()
    wait_job_done(server, cluster["name"], job)
    assert out.read_text().strip() == "finished"
    wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                computeNodeGroupIdentifier=group["id"]),
             "computeNodeGroup", ("ACTIVE",), timeout=60)
    assert f"{name}-3" not in node_states(server, cluster["name"])
    assert slurmd_pid(server, f"{name}-3") is None


def job_sent_while_down(tmp_path, nodes: int) -> tuple:  # noqa: ANN001
    """A server killed (-9) after making a queue of `nodes` power-saving nodes, and an `srun`-free batch job on
    all of them sent while it is down: (the dead server, cluster, group, job id, the resume requests waiting)."""
    first = OpenPcs(tmp_path / "data").start()
    pcs = first.client()
    cluster, group, queue = elastic(pcs, 0, nodes)
    first.kill9()
    # slurmctld runs on; its ResumeProgram leaves the request for a control plane that is not there.
    job = openpcs_exec(first, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], f"-N{nodes}",
                       "-o", "/dev/null", "--wrap", "srun true").stdout.strip()
    requests = first.data_dir / "clusters" / cluster["id"] / "run" / "power"
    waiting = wait_until(lambda: list(requests.glob("*.resume")), "the resume request")
    return first, cluster, group, job, waiting


def test_a_job_submitted_while_the_control_plane_is_down_runs_once_it_is_back(tmp_path):
    first, cluster, group, job, _ = job_sent_while_down(tmp_path, 2)
    requests = first.data_dir / "clusters" / cluster["id"] / "run" / "power"
    second = OpenPcs(first.data_dir).start()
    wait_job_done(second, cluster["name"], job, timeout=60)
    assert not list(requests.glob("*.resume"))
    assert sorted(e["node"] for e in events(second, cluster["name"]) if e["type"] == "InstanceRegistered") == [
        f"{group['name']}-1", f"{group['name']}-2"]


def test_a_queue_that_powers_down_on_idle_stops_its_nodes_when_their_job_ends(server):
    pcs = server.client()
    cluster = create_cluster(pcs, unique())  # scaleDownIdleTimeInSeconds: PCS's 600 s
    group = create_node_group(pcs, cluster["id"], min_count=0, max_count=2)
    queue = create_queue(pcs, cluster["id"], [group["id"]], slurmConfiguration={"slurmCustomSettings": [
        {"parameterName": "PowerDownOnIdle", "parameterValue": "YES"}]})
    node = f"{group['name']}-1"
    openpcs_exec(server, cluster["name"], "srun", "-p", queue["name"], "-w", node, "true", timeout=60)
    wait_node_state(server, cluster["name"], node, lambda s: "POWER" in s and "DOWN" in s, timeout=30)
    wait_until(lambda: slurmd_pid(server, node) is None, "the node's slurmd to stop")


def test_protected_mode_ends_by_itself_after_the_cool_down(tmp_path):
    server = OpenPcs(tmp_path / "data", None, "--protected-mode-cooldown", "3").start()
    pcs = server.client()
    cluster, group, queue = elastic(pcs, 0, 10)
    openpcs(server, "inject", cluster["name"], "--node-group", group["name"], "launch-failure", "InternalError",
            "--times", "10")
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-N10",
                       "--wrap", "true").stdout.strip()
    wait_until(lambda: "ProtectedModeEntered" in [e["type"] for e in events(server, cluster["name"])],
               "protected mode")
    openpcs_exec(server, cluster["name"], "scancel", job)
    cleared = wait_until(lambda: next((e for e in events(server, cluster["name"])
                                       if e["type"] == "ProtectedModeCleared"), None), "the cool-down", timeout=30)
    assert "3 s passed" in cleared["reason"]
    wait_until(lambda: "errorInfo" not in pcs.get_compute_node_group(
        clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])["computeNodeGroup"],
        "the errorInfo to clear")


def test_events_follow_prints_what_happens_as_it_happens(server):
    pcs = server.client()
    cluster, group, _ = elastic(pcs, 0, 1)
    follower = subprocess.Popen([sys.executable, "-m", "openpcs", "events", "--data-dir", str(server.data_dir),
                                 cluster["name"], "--follow", "--json", "--since", "1m"],
                                stdout=subprocess.PIPE, text=True)
    try:
        openpcs(server, "inject", cluster["name"], "--node-group", group["name"], "launch-failure", "Unsupported")
        event = json.loads(follower.stdout.readline())
        assert event["type"] == "FaultInjected" and event["nodeGroup"] == group["name"]
        assert {"time", "type", "node", "instanceId", "reason"} <= set(event)
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_a_node_slurm_powers_up_whose_request_was_lost_is_launched_all_the_same(tmp_path):
    first, cluster, _, job, lost = job_sent_while_down(tmp_path, 1)
    for request in lost:
        request.unlink()  # as if it never came: only Slurm's own state says the node is wanted
    second = OpenPcs(first.data_dir).start()
    wait_job_done(second, cluster["name"], job, timeout=60)
    launched = [e for e in events(second, cluster["name"]) if e["type"] == "InstanceLaunched"]
    assert launched[0]["reason"] == "Slurm is powering it up and it had no instance"
