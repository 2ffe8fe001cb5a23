"""A LARGE cluster at full size on this host: N static nodes up, a job on all of them, 16,384 tasks, and gone.

For each N (a fresh `openpcs serve` and data dir each time), with boto3 against the PCS API and Slurm's own commands
through `openpcs exec`:
  - CreateComputeNodeGroup min = max = N (c6i.large) -> ACTIVE, and -> all N nodes IDLE in Slurm
  - memory: the PSS of every process on the host, by program, less what ran before the server started
  - an all-node job (`sbatch -N N --wrap "srun true"`) -> its end, with its state and the nodes Slurm drained
  - an array of 16,384 tasks (`sbatch --array=0-16383 -n1 --wrap true`) -> every task done
  - DeleteComputeNodeGroup -> gone
Goals (issue 12, on a 2-core host): 2,048 nodes ACTIVE <= 60 s, the all-node job completes, the array drains in
<= 5 min, the delete takes <= 30 s. Every task of the array must end, and end 0 unless a slurmd logged deleting its
script (Slurm's stray-script race, docs/slurm.md): those are counted and shown apart, any other failure fails.
The cluster sets MinJobAge=5, so the all-node job's record does not hold the array back for Slurm's
default 300 s (a LARGE cluster tracks 16,384 jobs, finished ones included until MinJobAge).
Everything it starts is stopped at the end (by the PIDs recorded in the data dir), and the dirs removed.

    python bench/scale.py [--nodes 512,1024,2048] [--tasks 16384] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).parent))
from api_throughput import SUBNET, Started  # noqa: E402
from slurm_timings import PROFILE, openpcs_exec, serve, wait  # noqa: E402

from openpcs.control.teardown import stop_everything  # noqa: E402

GOALS = {"active": 60.0, "array": 300.0, "delete": 30.0}
TIMEOUT = 1800.0


def pss_by_program() -> collections.Counter:
    """KiB of proportional set size of every process on the host, summed by program name."""
    found: collections.Counter = collections.Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rollup = (entry / "smaps_rollup").read_text()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        if match:
            found[name] += int(match.group(1))
    return found


def until(done, what: str, timeout: float = TIMEOUT, every: float = 0.2) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - started


def idle_count(data: Path, group: str, n: int) -> int:
    nodes = openpcs_exec(data, "bench", "scontrol", "-o", "show", "node", f"{group}-[1-{n}]")
    return len(re.findall(r"\bState=IDLE ", nodes))


def jobs_left(data: Path, job: str) -> bool:
    """Whether the job (or a task of the array) is still pending, running or completing. (`squeue -j` fails once
    slurmctld has purged a finished job's record, MinJobAge after its end.)"""
    done = subprocess.run([sys.executable, "-m", "openpcs", "exec", "--data-dir", str(data), "bench", "--", "squeue",
                           "-h", "-t", "PD,CF,R,CG,S", "-o", "%F"], capture_output=True, text=True, timeout=600)
    return done.returncode != 0 or job in done.stdout.split()  # no answer (slurmctld restarting): still there


def task_ends(data: Path, cluster_id: str, job: str) -> dict[str, tuple[str, str]]:
    """Task -> (its own job ID, exit status) for the job, or for each task of the array, from slurmctld's log (the
    records of finished jobs are purged MinJobAge after their end). A task that was requeued counts by its last end."""
    log = (data / "logs" / cluster_id / "slurmctld.log").read_text(errors="replace")
    pattern = rf"_job_complete: JobId={job}(_\d+)?(?:\((\d+)\))? WEXITSTATUS (\d+)"
    return {task: (own or job, status) for task, own, status in re.findall(pattern, log)}


def exit_statuses(ends: dict[str, tuple[str, str]]) -> collections.Counter:
    return collections.Counter(f"exit {status}" for _, status in ends.values())


# What a slurmd logs when it deletes a batch script it took for a dead step's: Slurm's stray-script race
# (docs/slurm.md, "A Slurm race shows under this load"), the one way a `true` task is known to fail here.
PURGED_SCRIPT = re.compile(r"Purging vestigial job script \S*/job0*(\d+)/slurm_script")


def purged_scripts(data: Path, cluster_id: str) -> set[str]:
    """The job IDs whose batch script a node's slurmd deleted as a dead step's."""
    found: set[str] = set()
    for log in (data / "logs" / cluster_id).glob("slurmd-*.log"):
        found.update(PURGED_SCRIPT.findall(log.read_text(errors="replace")))
    return found


def drained(data: Path) -> list[str]:
    out = openpcs_exec(data, "bench", "sinfo", "-h", "-R", "-o", "%N|%E")
    return [line for line in out.splitlines() if line.strip()]


class Row(dict):
    """A size's figures, each printed as it is measured (a run at 2,048 nodes takes many minutes)."""

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"  N={self['nodes'] if key != 'nodes' else value}: {key} = {shown}", flush=True)


def one_size(n: int, tasks: int, work: Path) -> dict[str, object]:
    started, row = Started(), Row()
    row["nodes"] = n
    data = work / "data"
    baseline = pss_by_program()
    try:
        data, pcs = serve(started, work)
        cluster = pcs.create_cluster(clusterName="bench", scheduler={"type": "SLURM", "version": "24.11"},
                                     size="LARGE", networking={"subnetIds": [SUBNET]}, slurmConfiguration={
                                         "slurmCustomSettings": [{"parameterName": "MinJobAge",
                                                                  "parameterValue": "5"}]})["cluster"]
        wait(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster")
        t0 = time.monotonic()
        group = pcs.create_compute_node_group(
            clusterIdentifier=cluster["id"], computeNodeGroupName="nodes", subnetIds=[SUBNET],
            customLaunchTemplate={"id": "lt-0123456789abcdef0", "version": "1"}, iamInstanceProfileArn=PROFILE,
            scalingConfiguration={"minInstanceCount": n, "maxInstanceCount": n},
            instanceConfigs=[{"instanceType": "c6i.large"}])["computeNodeGroup"]
        ids = {"clusterIdentifier": cluster["id"], "computeNodeGroupIdentifier": group["id"]}
        row["active"] = wait(lambda: pcs.get_compute_node_group(**ids), "computeNodeGroup", timeout=TIMEOUT)
        until(lambda: idle_count(data, "nodes", n) == n, f"{n} nodes IDLE", every=1.0)
        row["idle"] = time.monotonic() - t0
        t1 = time.monotonic()
        openpcs_exec(data, "bench", "sinfo", "-h", "-o", "%D %T")
        row["sinfo"] = time.monotonic() - t1
        used = pss_by_program() - baseline
        row["memory"] = sum(used.values()) / 1024 / 1024  # GiB
        row["by_program"] = {name: round(kib / 1024) for name, kib in used.most_common(6)}  # MiB
        queue = pcs.create_queue(clusterIdentifier=cluster["id"], queueName="all",
                                 computeNodeGroupConfigurations=[{"computeNodeGroupId": group["id"]}])["queue"]
        wait(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]), "queue")

        t1 = time.monotonic()
        job = openpcs_exec(data, "bench", "sbatch", "--parsable", "-p", "all", "-N", str(n), "-o",
                           str(work / "all-nodes.out"), "--wrap", "srun true").strip()
        until(lambda: not jobs_left(data, job), "the all-node job's end", every=1.0)
        row["job"] = time.monotonic() - t1
        row["job_state"] = ",".join(exit_statuses(task_ends(data, cluster["id"], job))) or "unknown"
        row["drained"] = drained(data)

        t1 = time.monotonic()
        array = openpcs_exec(data, "bench", "sbatch", "--parsable", "-p", "all", "-n1", "-o", "/dev/null",
                             f"--array=0-{tasks - 1}", "--wrap", "true").strip()
        row["array_accepted"] = time.monotonic() - t1
        t1 = time.monotonic()
        until(lambda: not jobs_left(data, array), f"the {tasks}-task array's end", every=2.0)
        row["array"] = time.monotonic() - t1
        ends = task_ends(data, cluster["id"], array)
        row["array_states"] = dict(exit_statuses(ends))
        purged = purged_scripts(data, cluster["id"])
        failed = [own for own, status in ends.values() if status != "0"]
        row["array_race"] = sum(own in purged for own in failed)  # failed tasks whose script Slurm deleted
        row["array_ended"] = len(ends)

        pcs.delete_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"])  # the group is in it
        until(lambda: not pcs.list_queues(clusterIdentifier=cluster["id"])["queues"], "the queue's delete")
        t1 = time.monotonic()
        pcs.delete_compute_node_group(**ids)

        def gone() -> bool:
            try:
                status = pcs.get_compute_node_group(**ids)["computeNodeGroup"]
            except ClientError as exc:
                return exc.response["Error"]["Code"] == "ResourceNotFoundException"
            if status["status"] == "DELETE_FAILED":
                raise SystemExit(f"DeleteComputeNodeGroup failed: {status.get('errorInfo')}")
            return False

        row["delete"] = until(gone, "the node group's delete", every=0.2)
    except (SystemExit, ClientError) as stopped:  # a step failed or timed out: what was measured is still shown
        row["error"] = str(stopped)
    finally:
        started.cleanup()
        stop_everything(data)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="512,1024,2048", help="node counts, one run each [512,1024,2048]")
    parser.add_argument("--tasks", type=int, default=16384, help="tasks of the array [16384]")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (logs)")
    args = parser.parse_args()
    rows, ok = [], True
    for n in [int(item) for item in args.nodes.split(",")]:
        work = Path(tempfile.mkdtemp(prefix=f"openpcs-scale-{n}-"))
        try:
            row = one_size(n, args.tasks, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
    print("\n| N | group ACTIVE | all IDLE | first sinfo | memory (ΣPSS) | all-node job | "
          f"{args.tasks}-task array | DeleteComputeNodeGroup |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            ok = False
            print(f"| {row['nodes']:,} | stopped: {row['error']} |")
            continue
        job_ok = row["job_state"] == "exit 0" and not row["drained"]
        # Every task ended, and every one that failed is accounted for by Slurm's race (the goal is the array's
        # drain, which openpcs controls; the race is inside Slurm and shown apart).
        lost = sum(count for state, count in row["array_states"].items() if state != "exit 0")
        array_ok = row["array_ended"] == args.tasks and lost == row["array_race"]
        race = f" ({row['array_race']} by Slurm's stray-script race)" if row["array_race"] else ""
        ok &= (job_ok and array_ok and row["array"] <= GOALS["array"] and row["delete"] <= GOALS["delete"]
               and (row["nodes"] < 2048 or row["active"] <= GOALS["active"]))
        print(f"| {row['nodes']:,} | {row['active']:.1f} s | {row['idle']:.1f} s | {row['sinfo']:.1f} s | "
              f"{row['memory']:.1f} GiB | {row['job']:.0f} s, {row['job_state']}"
              f"{'' if not row['drained'] else ', drained: ' + '; '.join(row['drained'])} | "
              f"{row['array']:.0f} s, {row['array_states']}{race} | {row['delete']:.1f} s |")
    print("\nGoals: 2,048 nodes ACTIVE <= 60 s, the all-node job completes, the array drains in <= 300 s, "
          "delete <= 30 s:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
