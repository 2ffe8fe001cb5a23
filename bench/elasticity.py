"""How fast node groups scale and repair with real Slurm: from zero to a running job, a broken node back in
service, an idle node gone.

Starts `openpcs serve` on a fresh data dir and a free port, then measures (polling every 50 ms):
  - sbatch -N<n> on a queue whose group has minInstanceCount 0 -> the job RUNNING, for n = 1, 8, 64
    (Slurm's ResumeProgram, the instances' launch and registration, slurmd up, the job started)
  - a static node's instance killed (`openpcs inject ... instance-death`): the health verdict (detection)
    -> the node back in service on a new instance (IDLE in Slurm)
  - an idle dynamic node (SuspendTime 5 s): its job's end -> its instance terminated, less the 5 s
Goals from the issue: 1 node <= 2 s, 8 nodes <= 3 s, 64 nodes <= 5 s, replacement <= 5 s after detection.
AWS ParallelCluster's clustermgtd loops every 60 s. Each figure is the median of --runs runs. Everything it
starts is stopped at the end (by the PIDs recorded in the data dir), and the dir removed.

    python bench/elasticity.py [--sizes 1,8,64] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from api_throughput import SUBNET, Started  # noqa: E402
from slurm_timings import PROFILE, report, serve, wait  # noqa: E402

from openpcs.control.teardown import stop_everything  # noqa: E402
from openpcs.slurm.builds import installed  # noqa: E402

GOALS = {1: 2.0, 8: 3.0, 64: 5.0, "replacement": 5.0}
IDLE_SECONDS = 5


def openpcs(data: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "openpcs", args[0], "--data-dir", str(data), *args[1:]],
                          check=True, capture_output=True, text=True, timeout=120).stdout


def events(data: Path, cluster: str) -> list[dict]:
    return [json.loads(line) for line in openpcs(data, "events", cluster, "--json").splitlines()]


def poll(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, pcs, data: Path) -> None:
        self.pcs, self.data = pcs, data
        self.bin = installed()[0].prefix / "bin"

    def slurm(self, cluster: dict, *command: str) -> str:
        """A Slurm command run straight from the cluster's build, as a user's shell under `openpcs exec` would:
        timing through `openpcs exec` would add a Python start to every poll."""
        conf = self.data / "clusters" / cluster["id"] / "etc" / "slurm.conf"
        return subprocess.run([str(self.bin / command[0]), *command[1:]], check=True, capture_output=True,
                              text=True, timeout=120,
                              env={"SLURM_CONF": str(conf), "PATH": f"{self.bin}:/usr/bin:/bin"}).stdout

    def cluster(self, name: str, idle: int | None = None) -> dict:
        slurm = {"scaleDownIdleTimeInSeconds": idle} if idle else {}
        cluster = self.pcs.create_cluster(clusterName=name, scheduler={"type": "SLURM", "version": "24.11"},
                                          size="MEDIUM", networking={"subnetIds": [SUBNET]},
                                          slurmConfiguration=slurm)["cluster"]
        wait(lambda: self.pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster")
        return cluster

    def group_and_queue(self, cluster: dict, name: str, min_count: int, max_count: int) -> None:
        group = self.pcs.create_compute_node_group(
            clusterIdentifier=cluster["id"], computeNodeGroupName=name, subnetIds=[SUBNET],
            customLaunchTemplate={"id": "lt-0123456789abcdef0", "version": "1"}, iamInstanceProfileArn=PROFILE,
            scalingConfiguration={"minInstanceCount": min_count, "maxInstanceCount": max_count},
            instanceConfigs=[{"instanceType": "c6i.xlarge"}])["computeNodeGroup"]
        wait(lambda: self.pcs.get_compute_node_group(clusterIdentifier=cluster["id"],
                                                     computeNodeGroupIdentifier=group["id"]), "computeNodeGroup")
        queue = self.pcs.create_queue(clusterIdentifier=cluster["id"], queueName=f"q{name}",
                                      computeNodeGroupConfigurations=[{"computeNodeGroupId": group["id"]}])["queue"]
        wait(lambda: self.pcs.get_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"]), "queue")

    def state(self, cluster: dict, job: str) -> str:
        return re.search(r"JobState=(\S+)", self.slurm(cluster, "scontrol", "show", "job", job))[1]

    def from_zero(self, cluster: dict, name: str, nodes: int) -> float:
        """sbatch -> RUNNING on powered-down nodes; then the nodes are powered down again for the next run."""
        t0 = time.monotonic()
        job = self.slurm(cluster, "sbatch", "--parsable", "-p", f"q{name}", f"-N{nodes}", "-o", "/dev/null",
                         "--wrap", "srun true").strip()
        poll(lambda: self.state(cluster, job) in ("RUNNING", "COMPLETING", "COMPLETED"), f"job {job} to run")
        elapsed = time.monotonic() - t0
        poll(lambda: self.state(cluster, job) == "COMPLETED", f"job {job} to complete")
        hostlist = f"{name}-[1-{nodes}]" if nodes > 1 else f"{name}-1"
        self.slurm(cluster, "scontrol", "update", f"nodename={hostlist}", "state=power_down_force")
        poll(lambda: len(re.findall(r"POWERED_DOWN", self.slurm(cluster, "scontrol", "-o", "show", "node",
                                                                hostlist))) == nodes,
             "the nodes powered down", timeout=120)
        return elapsed

    def replacement(self, cluster: dict, name: str) -> float:
        """A static node's instance dies: from the health verdict (its event's time) to the node IDLE again."""
        node = f"{name}-1"
        before = len(events(self.data, cluster["name"]))
        openpcs(self.data, "inject", cluster["name"], node, "instance-death")
        # The node was IDLE before the fault: it is back once it is IDLE after a registration of a new instance.
        poll(lambda: [e for e in events(self.data, cluster["name"])[before:] if e["type"] == "InstanceLaunched"],
             "the new instance")
        poll(lambda: re.search(r"State=IDLE ", self.slurm(cluster, "scontrol", "-o", "show", "node", node)),
             "the node IDLE")
        back = time.time()
        verdict = next(e for e in events(self.data, cluster["name"])[before:] if e["type"] == "HealthVerdict")
        return back - epoch(verdict["time"])

    def idle_to_terminated(self, cluster: dict, name: str) -> float:
        before = len(events(self.data, cluster["name"]))
        self.slurm(cluster, "srun", "-p", f"q{name}", "-w", f"{name}-2", "true")
        ended = time.time()
        terminated = poll(lambda: next((e for e in events(self.data, cluster["name"])[before:]
                                        if e["type"] == "InstanceTerminated"), None), "the instance terminated")
        return epoch(terminated["time"]) - ended - IDLE_SECONDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8,64", help="nodes of each from-zero job [1,8,64]")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measure; the median is shown [3]")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="openpcs-elasticity-bench-"))
    data, started = work / "data", Started()
    results: dict[str | int, list[float]] = {}
    try:
        data, pcs = serve(started, work)
        bench = Bench(pcs, data)
        scale = bench.cluster("scale")
        bench.group_and_queue(scale, "zero", 0, max(sizes))
        repair = bench.cluster("repair", idle=IDLE_SECONDS)
        bench.group_and_queue(repair, "mixed", 1, 2)
        for _ in range(args.runs):
            for size in sizes:
                results.setdefault(size, []).append(bench.from_zero(scale, "zero", size))
            results.setdefault("replacement", []).append(bench.replacement(repair, "mixed"))
            results.setdefault("idle", []).append(bench.idle_to_terminated(repair, "mixed"))
    finally:
        started.cleanup()
        stop_everything(data)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    labels = {**{size: f"sbatch -N{size} from zero -> RUNNING" for size in sizes},
              "replacement": "instance death: verdict -> node IDLE on a new instance",
              "idle": f"idle -> instance terminated, beyond SuspendTime ({IDLE_SECONDS} s)"}
    return 0 if report([(label, statistics.median(results[key_]), GOALS.get(key_),
                         f"  [{', '.join(f'{r:.2f}' for r in results[key_])}]")
                        for key_, label in labels.items()]) else 1


if __name__ == "__main__":
    sys.exit(main())
