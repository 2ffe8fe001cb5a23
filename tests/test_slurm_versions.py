"""Every cluster runs the Slurm build of the version it asked for (24.11.5 here), by absolute path, and
nothing else: not the Slurm on PATH, not a version the API was asked for that has no build, unless the
operator mapped it and says so. A data dir of an earlier openpcs (whose clusters ran Debian's 22.05.8)
still starts. Real daemons throughout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import OpenPcs, create_cluster, create_node_group, create_queue, error_of, unique, wait_for
from test_slurm import cluster_with_nodes, daemons_of, openpcs_exec

from openpcs.slurm.builds import installed

BUILD = installed()[0]


def openpcs_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openpcs", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def daemon_pids(data_dir: Path) -> dict[str, list[int]]:
    """The processes whose command line names the data dir (daemons_of), by program name -> PIDs."""
    found: dict[str, list[int]] = {}
    for pid in daemons_of(data_dir):
        try:
            program = Path((Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode()).name
        except OSError:
            continue
        found.setdefault(program, []).append(pid)
    return found


def test_the_build_is_24_11_and_every_daemon_and_command_comes_from_it(server, tmp_path):
    assert BUILD.version.startswith("24.11."), "scripts/build-slurm.sh installs Slurm 24.11"
    pcs = server.client()
    cluster, _, _ = cluster_with_nodes(pcs, nodes=1, max_nodes=1)
    # Another Slurm first on PATH must not be the one a cluster's commands run.
    impostor = tmp_path / "scontrol"
    impostor.write_text("#!/bin/sh\necho slurm 22.05.8\n")
    impostor.chmod(impostor.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "openpcs", "exec", "--data-dir", str(server.data_dir),
                           cluster["name"], "--", "scontrol", "version"], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == f"slurm {BUILD.version}", done.stderr
    assert f"Slurm {BUILD.version}: {BUILD.prefix}" in openpcs_cli("version").stdout

    daemons = daemon_pids(server.data_dir)
    for program in ("slurmctld", "slurmd"):
        assert daemons.get(program), f"no {program} runs for the data dir"
        for pid in daemons[program]:
            assert os.readlink(f"/proc/{pid}/exe") == f"{BUILD.prefix}/sbin/{program}"


def test_daemons_work_in_the_data_dir_and_a_stopped_node_takes_its_jobs_processes(tmp_path):
    """slurmctld and munged work in the cluster's log dir, each slurmd and its job steps in a directory of
    their node's under it: never in the directory `openpcs serve` was started from (where a slurmstepd core
    dump once landed). Stopping the node stops its job's slurmstepd and processes too."""
    server = OpenPcs(tmp_path / "data").start()
    pcs = server.client()
    cluster, group, queue = cluster_with_nodes(pcs, nodes=1, max_nodes=1)
    started = tmp_path / "started"
    openpcs_exec(server, cluster["id"], "sbatch", "-p", queue["name"], f"--output={tmp_path}/out",
                 "--wrap", f"touch {started}; exec sleep 300")
    wait_until(started.exists, "the job to start")
    log_dir = server.data_dir / "logs" / cluster["id"]
    node_dir = log_dir / "nodes" / f"{group['name']}-1"
    steps = [pid for pid in _all_pids() if _exe(pid).endswith("/sbin/slurmstepd") and _cwd(pid) == str(node_dir)]
    assert steps, "the job's slurmstepd does not work in its node's directory"
    job = [pid for pid in _all_pids() if _exe(pid) == "/usr/bin/sleep" and _parent(pid) in steps]
    assert job, "the job's process is not a child of its slurmstepd"
    for program, pids in daemon_pids(server.data_dir).items():
        for pid in pids:
            expected = node_dir if program == "slurmd" else log_dir
            if program in ("slurmctld", "slurmd", "munged"):
                assert _cwd(pid) == str(expected), f"{program} works in {_cwd(pid)}"
    server.close()  # stops every daemon by PID, as a test's teardown does
    for pid in steps + job:
        wait_until(lambda p=pid: not _running(p), f"process {pid} of the stopped node to end")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_version_without_a_build_is_refused_with_the_versions_this_server_runs(server):
    pcs = server.client()
    with pytest.raises(ClientError) as excinfo:
        pcs.create_cluster(clusterName=unique(), scheduler={"type": "SLURM", "version": "25.05"}, size="SMALL",
                           networking={"subnetIds": ["subnet-0123456789abcdef0"]})
    error = error_of(excinfo)
    assert error["Error"]["Code"] == "ValidationException"
    assert "24.11" in error["Error"]["Message"] and "25.05" in error["Error"]["Message"]
    assert error["fieldList"][0]["name"] == "scheduler.version"


def test_an_operator_mapping_runs_another_version_on_the_build_and_says_so(tmp_path):
    server = OpenPcs(tmp_path / "data", None, "--slurm-version-map", f"25.05={BUILD.release}").start()
    pcs = server.client()
    cluster = create_cluster(pcs, scheduler={"type": "SLURM", "version": "25.05"})
    assert cluster["scheduler"]["version"] == "25.05"  # what was asked for stays what the API shows
    assert openpcs_exec(server, cluster["id"], "scontrol", "version").stdout.strip() == f"slurm {BUILD.version}"
    shown = openpcs_cli("version", "--data-dir", str(server.data_dir)).stdout
    assert f"Slurm 25.05 is mapped to Slurm {BUILD.version}" in shown
    assert "scheduler versions the API accepts: 24.11, 25.05" in shown
    assert f"clusters asking for Slurm 25.05 run Slurm {BUILD.version}" in server.log()


def test_a_mapping_onto_a_version_without_a_build_stops_serve_with_what_to_do(tmp_path):
    done = openpcs_cli("serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
                       "--slurm-version-map", "25.05=23.02")
    assert done.returncode != 0
    assert "no 23.02 build is installed" in done.stderr


def test_a_cluster_of_an_earlier_openpcs_starts_on_the_new_build(tmp_path):
    """A cluster whose state was saved by another Slurm (an earlier openpcs recorded no build: it ran 22.05.8)
    starts on 24.11 with its old state set aside, says so in the log, and runs jobs on all its nodes."""
    data_dir = tmp_path / "data"
    server = OpenPcs(data_dir).start()
    pcs = server.client()
    cluster = create_cluster(pcs)
    group = create_node_group(pcs, cluster["id"], min_count=2, max_count=2)
    queue = create_queue(pcs, cluster["id"], [group["id"]])
    server.kill9()
    cluster_dir = data_dir / "clusters" / cluster["id"]
    (cluster_dir / "slurm-build.json").unlink()  # as an earlier openpcs left it
    (cluster_dir / "state" / "job_state").write_bytes(b"\x00\x00\x00\x0622.05\x00")  # not 24.11's format

    server.start()
    wait_until(lambda: (cluster_dir / "state-slurm-22.05.8" / "job_state").exists(), "the old state to be set aside")
    assert "which Slurm 24.11.5 cannot read" in server.log()
    out = openpcs_exec(server, cluster["id"], "srun", "-p", queue["name"], "-N2", "bash", "-c",
                       "echo $SLURMD_NODENAME", timeout=120).stdout.split()
    assert sorted(out) == [f"{group['name']}-1", f"{group['name']}-2"]
    for pid in daemon_pids(data_dir)["slurmd"]:
        assert os.readlink(f"/proc/{pid}/exe") == f"{BUILD.prefix}/sbin/slurmd"
    assert wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("ACTIVE",))


def test_slurmctld_stopped_right_after_a_reconfigure_ends_rather_than_running_on(server):
    """24.11 re-executes slurmctld on every reconfigure. A SIGTERM that lands in that window is lost (10 of 10
    by hand: slurmctld then ran on until SIGKILL) or ends it mid-exec. Stopping repeats SIGTERM, so slurmctld
    shuts down on it or is already gone: it never runs on as controller after the stop began."""
    from openpcs import processes

    pcs = server.client()
    cluster = create_cluster(pcs)
    run = server.data_dir / "clusters" / cluster["id"] / "run"
    log = server.data_dir / "logs" / cluster["id"] / "slurmctld.log"
    daemon = processes.adopt(run / "slurmctld.json")
    openpcs_exec(server, cluster["id"], "scontrol", "reconfigure")
    processes.stop(run / "slurmctld.json", timeout=30)
    assert not daemon.alive()
    since_reconfigure = log.read_text().rsplit("Processing Reconfiguration Request", 1)[1]
    assert "Saving all slurm state" in since_reconfigure  # its state holds everything up to the stop
    ended = since_reconfigure.rstrip()
    assert "Terminate signal SIGTERM received" in ended or ended.endswith("Attempting to reconfigure"), ended
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
