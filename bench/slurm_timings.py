"""How long real Slurm takes behind the PCS API: cluster ACTIVE, node groups ACTIVE with all nodes IDLE, a job.

Starts `openpcs serve` on a fresh data dir and a free port, then measures with boto3 (polling every 20 ms):
  - CreateCluster -> ACTIVE (slurmctld answering `scontrol ping`)
  - CreateComputeNodeGroup with minInstanceCount = 4, 32 and 256 -> ACTIVE with every node IDLE in Slurm
  - sbatch of a 2-node job (through `openpcs exec`) -> COMPLETED
Goals from the issue: cluster <= 1 s, 32 nodes <= 3 s, 256 nodes <= 10 s. Everything it starts (the server,
and every Slurm daemon, by the PIDs recorded in the data dir) is stopped at the end, and the dir removed.

    python bench/slurm_timings.py [--sizes 4,32,256] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).parent))
from api_throughput import REGION, SUBNET, Started, free_port, read_key, wait_for_port  # noqa: E402

from openpcs.control.teardown import stop_everything  # noqa: E402

PROFILE = "arn:aws:iam::123456789012:instance-profile/AWSPCS-bench"
GOALS = {"cluster": 1.0, 32: 3.0, 256: 10.0}


def serve(started: Started, work: Path) -> tuple[Path, object]:
    """`openpcs serve` on a fresh data dir (work/data) and a free port, started by `started`: (the data dir, a
    boto3 PCS client signed with its key)."""
    data, port = work / "data", free_port()
    proc = started.spawn("openpcs", [sys.executable, "-m", "openpcs", "serve", "--port", str(port),
                                     "--data-dir", str(data), "--log-level", "warning"], work / "serve.log")
    wait_for_port(port, proc, "openpcs", work / "serve.log")
    key = read_key(data)
    return data, boto3.client("pcs", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                              aws_access_key_id=key[0], aws_secret_access_key=key[1])


def wait(fetch, key: str, status: str = "ACTIVE", timeout: float = 300.0) -> float:
    started = time.monotonic()
    while True:
        item = fetch()[key]
        if item["status"] == status:
            return time.monotonic() - started
        if item["status"].endswith("FAILED") or time.monotonic() - started > timeout:
            raise SystemExit(f"{key} is {item['status']}: {item.get('errorInfo')}")
        time.sleep(0.02)


def openpcs_exec(data: Path, cluster: str, *command: str) -> str:
    return subprocess.run([sys.executable, "-m", "openpcs", "exec", "--data-dir", str(data), cluster, "--",
                           *command], check=True, capture_output=True, text=True, timeout=600).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,32,256", help="minInstanceCount of each node group [4,32,256]")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="openpcs-slurm-bench-"))
    data, started = work / "data", Started()
    results: list[tuple[str, float, float | None]] = []
    try:
        data, pcs = serve(started, work)
        t0 = time.monotonic()
        cluster = pcs.create_cluster(clusterName="bench", scheduler={"type": "SLURM", "version": "24.11"},
                                     size="LARGE", networking={"subnetIds": [SUBNET]})["cluster"]
        wait(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster")
        results.append(("CreateCluster -> ACTIVE", time.monotonic() - t0, GOALS["cluster"]))
        for size in sizes:
            name = f"nodes{size}"
            t0 = time.monotonic()
            group = pcs.create_compute_node_group(
                clusterIdentifier=cluster["id"], computeNodeGroupName=name, subnetIds=[SUBNET],
                customLaunchTemplate={"id": "lt-0123456789abcdef0", "version": "1"}, iamInstanceProfileArn=PROFILE,
                scalingConfiguration={"minInstanceCount": size, "maxInstanceCount": size},
                instanceConfigs=[{"instanceType": "c6i.xlarge"}])["computeNodeGroup"]
            wait(lambda g=group: pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                            computeNodeGroupIdentifier=g["id"]), "computeNodeGroup")
            elapsed = time.monotonic() - t0
            # scontrol, not sinfo: sinfo hides nodes that are in no partition yet.
            nodes = openpcs_exec(data, "bench", "scontrol", "-o", "show", "node", f"{name}-[1-{size}]")
            idle = len(re.findall(r"\bState=IDLE ", nodes))
            results.append((f"node group of {size} -> ACTIVE, {idle}/{size} IDLE", elapsed, GOALS.get(size)))
        queue = pcs.create_queue(clusterIdentifier=cluster["id"], queueName="batch", computeNodeGroupConfigurations=[
            {"computeNodeGroupId": pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                              computeNodeGroupIdentifier=f"nodes{sizes[0]}")
             ["computeNodeGroup"]["id"]}])["queue"]
        wait(lambda: pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]), "queue")
        for when in ("right after CreateQueue", "again"):
            t0 = time.monotonic()
            job = openpcs_exec(data, "bench", "sbatch", "--parsable", "-p", "batch", "-N2", "-o",
                               str(work / "job.txt"), "--wrap", "srun true").strip()
            # Polled every 50 ms: `sbatch --wait` looks after 2 s, then 8 s more, which would hide the real time.
            while "JobState=COMPLETED" not in openpcs_exec(data, "bench", "scontrol", "show", "job", job):
                time.sleep(0.05)
            results.append((f"sbatch -N2 {when} (job {job}) -> COMPLETED", time.monotonic() - t0, None))
    finally:
        started.cleanup()
        stop_everything(data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if report([(what, seconds, goal, "") for what, seconds, goal in results]) else 1


def report(rows: list[tuple[str, float, float | None, str]]) -> bool:
    """Print (what, seconds, goal, detail) rows, each measure against its goal; whether every goal was met."""
    met = True
    width = max(len(what) for what, *_ in rows)
    for what, seconds, goal, detail in rows:
        verdict = "" if goal is None else f" (goal <= {goal:.0f} s: {'met' if seconds <= goal else 'NOT met'})"
        met &= goal is None or seconds <= goal
        print(f"{what:<{width}} {seconds:7.2f} s{detail}{verdict}")
    return met


if __name__ == "__main__":
    sys.exit(main())
