"""How fast accounting and the Slurm REST API come up, and how fast the REST API answers, with real Slurm.

Starts `openpcs serve` on a fresh data dir and a free port, makes a cluster with a node group of 2 and a
queue (accounting and REST off), then measures (polling every 20 ms):
  - UpdateCluster(accounting STANDARD) -> ACTIVE: the first time (openpcs creates its MariaDB server), then
    again after accounting was turned off (the server, the database and slurmdbd start; slurmctld restarts)
  - UpdateCluster(slurmRest STANDARD) -> the first 200 answer of GET /slurm/v0.0.42/ping with a token
  - REST request latency with a token, over a new connection each time (as curl or a script would):
    GET /slurm/v0.0.42/ping, /nodes, /jobs, /slurmdb/v0.0.42/jobs; median and 95th percentile of --requests
Each cluster figure is the median of --runs runs. Everything it starts is stopped at the end (by the PIDs
recorded in the data dir), and the dir removed.

    python bench/accounting.py [--runs 5] [--requests 200] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from api_throughput import SUBNET, Started  # noqa: E402
from slurm_timings import PROFILE, report, serve, wait  # noqa: E402

from openpcs.control.teardown import stop_everything  # noqa: E402
from openpcs.slurm.builds import installed  # noqa: E402

REST_PATHS = ("/slurm/v0.0.42/ping", "/slurm/v0.0.42/nodes", "/slurm/v0.0.42/jobs", "/slurmdb/v0.0.42/jobs")


class Bench:
    def __init__(self, pcs, data: Path) -> None:
        self.pcs, self.data = pcs, data
        self.bin = installed()[0].prefix / "bin"

    def cluster(self) -> dict:
        cluster = self.pcs.create_cluster(clusterName="bench", scheduler={"type": "SLURM", "version": "24.11"},
                                          size="SMALL", networking={"subnetIds": [SUBNET]})["cluster"]
        wait(lambda: self.pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster")
        group = self.pcs.create_compute_node_group(
            clusterIdentifier=cluster["id"], computeNodeGroupName="cpu", subnetIds=[SUBNET],
            customLaunchTemplate={"id": "lt-0123456789abcdef0", "version": "1"}, iamInstanceProfileArn=PROFILE,
            scalingConfiguration={"minInstanceCount": 2, "maxInstanceCount": 2},
            instanceConfigs=[{"instanceType": "c6i.xlarge"}])["computeNodeGroup"]
        wait(lambda: self.pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                     computeNodeGroupIdentifier=group["id"]), "computeNodeGroup")
        return cluster

    def update(self, cluster: dict, slurm: dict) -> float:
        """UpdateCluster -> ACTIVE, in seconds."""
        started = time.monotonic()
        self.pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration=slurm)
        wait(lambda: self.pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster")
        return time.monotonic() - started

    def token(self, cluster: dict) -> str:
        conf = self.data / "clusters" / cluster["id"] / "etc" / "slurm.conf"
        out = subprocess.run([str(self.bin / "scontrol"), "token", "username=root", "lifespan=3600"], check=True,
                             capture_output=True, text=True, env={"SLURM_CONF": str(conf)}).stdout
        return out.strip().removeprefix("SLURM_JWT=")

    def rest_port(self, cluster: dict) -> int:
        found = self.pcs.get_cluster(clusterIdentifier=cluster["id"])["cluster"]["endpoints"]
        return int(next(e["port"] for e in found if e["type"] == "SLURMRESTD"))

    def rest_up(self, cluster: dict) -> float:
        """UpdateCluster(slurmRest STANDARD) -> the first 200 of ping with a token."""
        started = time.monotonic()
        self.pcs.update_cluster(clusterIdentifier=cluster["id"],
                                slurmConfiguration={"slurmRest": {"mode": "STANDARD"}})
        while True:
            if self.pcs.get_cluster(clusterIdentifier=cluster["id"])["cluster"]["status"] == "ACTIVE":
                try:
                    if get(self.rest_port(cluster), REST_PATHS[0], self.token(cluster)) == 200:
                        return time.monotonic() - started
                except OSError:
                    pass
            if time.monotonic() - started > 120:
                raise SystemExit("the REST API did not answer within 120 s")
            time.sleep(0.02)


def get(port: int, path: str, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": token})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
        return answer.status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each cluster measure; the median is shown [5]")
    parser.add_argument("--requests", type=int, default=200, help="requests per REST path [200]")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openpcs-accounting-bench-"))
    data, started = work / "data", Started()
    rows, latencies = [], []
    try:
        data, pcs = serve(started, work)
        bench = Bench(pcs, data)
        cluster = bench.cluster()
        on, off = {"accounting": {"mode": "STANDARD"}}, {"accounting": {"mode": "NONE"}, "slurmRest": {"mode": "NONE"}}
        first = bench.update(cluster, on)
        again, rest = [], []
        for _ in range(args.runs):
            bench.update(cluster, off)
            again.append(bench.update(cluster, on))
            rest.append(bench.rest_up(cluster))
        rows += [("UpdateCluster(accounting STANDARD) -> ACTIVE, MariaDB created", first, None, ""),
                 ("UpdateCluster(accounting STANDARD) -> ACTIVE, again", statistics.median(again), None,
                  f"  [{', '.join(f'{r:.2f}' for r in again)}]"),
                 ("UpdateCluster(slurmRest STANDARD) -> first REST answer", statistics.median(rest), None,
                  f"  [{', '.join(f'{r:.2f}' for r in rest)}]")]
        rest_port, token = bench.rest_port(cluster), bench.token(cluster)
        for path in REST_PATHS:
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                assert get(rest_port, path, token) == 200
                times.append(time.perf_counter() - t0)
            times.sort()
            latencies.append((path, statistics.median(times), times[int(len(times) * 0.95) - 1]))
    finally:
        started.cleanup()
        stop_everything(data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rows)
    for path, median, p95 in latencies:
        print(f"GET {path:<28} median {median * 1000:6.2f} ms, p95 {p95 * 1000:6.2f} ms ({args.requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
