"""How fast HyperPod's node API brings nodes into real Slurm: BatchAddClusterNodes(10) -> all Running.

Starts `openpcs serve` on a fresh data dir and a free port, creates a HyperPod cluster (a Controller group and a
Compute group of 0 nodes, NodeProvisioningMode Continuous) with boto3's sagemaker client, then, --runs times:
  - BatchAddClusterNodes(+N): until DescribeClusterNode says Running for every new NodeLogicalId, and until
    Slurm (scontrol) shows all N nodes IDLE
  - BatchDeleteClusterNodes of those N (idle: drained at once): until the cluster is InService again with no
    node of them left in Slurm
Polling every 20 ms; the median of the runs is shown. Everything it starts is stopped at the end (by the PIDs
recorded in the data dir), and the dir removed.

    python bench/hyperpod.py [--runs 5] [--nodes 10] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).parent))
from api_throughput import REGION, Started, read_key  # noqa: E402
from slurm_timings import openpcs_exec, report, serve  # noqa: E402

from openpcs.control.teardown import stop_everything  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/hyperpod-bench"


def group(name: str, count: int, node_type: str) -> dict:
    return {"InstanceGroupName": name, "InstanceType": "ml.c5.large", "InstanceCount": count, "ExecutionRole": ROLE,
            "SlurmConfig": {"NodeType": node_type}}


def until(done, what: str, timeout: float = 300.0) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - started


def idle_nodes(data: Path, cluster: str) -> set[str]:
    out = openpcs_exec(data, cluster, "sinfo", "-h", "-N", "-t", "idle", "-o", "%N")
    return set(out.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is shown [5]")
    parser.add_argument("--nodes", type=int, default=10, help="nodes added by each BatchAddClusterNodes [10]")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openpcs-hyperpod-bench-"))
    data, started = work / "data", Started()
    create, running, in_slurm, deleted = 0.0, [], [], []  # seconds
    try:
        data, pcs = serve(started, work)
        key = read_key(data)
        sagemaker = boto3.client("sagemaker", endpoint_url=pcs.meta.endpoint_url, region_name=REGION,
                                 aws_access_key_id=key[0], aws_secret_access_key=key[1])

        def status() -> str:
            return sagemaker.describe_cluster(ClusterName="bench")["ClusterStatus"]

        t0 = time.monotonic()
        sagemaker.create_cluster(ClusterName="bench", NodeProvisioningMode="Continuous",
                                 InstanceGroups=[group("controller", 1, "Controller"), group("workers", 0, "Compute")])
        until(lambda: status() == "InService", "InService")
        create = time.monotonic() - t0
        for _ in range(args.runs):
            t0 = time.monotonic()
            added = sagemaker.batch_add_cluster_nodes(ClusterName="bench", NodesToAdd=[
                {"InstanceGroupName": "workers", "IncrementTargetCountBy": args.nodes}])["Successful"]
            logical = [n["NodeLogicalId"] for n in added]
            until(lambda ids=logical: all(sagemaker.describe_cluster_node(ClusterName="bench", NodeLogicalId=i)
                                          ["NodeDetails"]["InstanceStatus"]["Status"] == "Running" for i in ids),
                  "all Running")
            running.append(time.monotonic() - t0)
            until(lambda: len(idle_nodes(data, "bench")) >= args.nodes, "all IDLE in Slurm")
            in_slurm.append(time.monotonic() - t0)
            t0 = time.monotonic()
            sagemaker.batch_delete_cluster_nodes(ClusterName="bench", NodeLogicalIds=logical)
            until(lambda: status() == "InService" and not idle_nodes(data, "bench"), "deleted")
            deleted.append(time.monotonic() - t0)
    finally:
        started.cleanup()
        stop_everything(data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def row(what: str, times: list[float]) -> tuple[str, float, None, str]:
        return what, statistics.median(times), None, f"  [{', '.join(f'{t:.2f}' for t in times)}]"

    report([("CreateCluster (controller + 0 nodes) -> InService", create, None, ""),
            row(f"BatchAddClusterNodes({args.nodes}) -> all Running (DescribeClusterNode)", running),
            row(f"BatchAddClusterNodes({args.nodes}) -> all IDLE in Slurm", in_slurm),
            row(f"BatchDeleteClusterNodes({args.nodes}) -> gone, InService", deleted)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
