#!/usr/bin/env python3
"""API throughput and latency: openpcs's PCS API next to moto's server, measured with wrk.

    python bench/api_throughput.py [--duration 5] [--clusters 5] [--moto-service ecs|dynamodb] [--baseline]

What it does, in one run (about 70 s with the defaults, 85 s with --baseline):

1. Starts moto's server (`python -m moto.server`) and openpcs (`python -m openpcs serve`, default
   `info` logging to a file) on free local ports, each with a fresh temporary directory.
2. Creates the same number of clusters in both: PCS clusters in openpcs, and in moto the closest
   thing it serves over the same AWS JSON protocol with SigV4 (ECS clusters by default; moto has no
   PCS). openpcs's clusters are awaited until ACTIVE, then that openpcs is restarted (same data dir)
   for the measurements.
3. Signs one request per operation with botocore's SigV4Auth (a signature stays valid for 15 minutes),
   checks that the server answers it with 200 and the expected body, and writes a wrk Lua script that
   replays it: openpcs GetCluster / ListClusters against moto ECS DescribeClusters / ListClusters (or
   DynamoDB DescribeTable / ListTables).
4. For each server and operation: a 1 s warm-up, then `wrk --latency` with 8 connections (-t2 -c8) for
   throughput and with 1 connection (-t1 -c1) for single-connection latency.
5. Restarts openpcs on the same data dir with `--log-level warning` and measures it again, to show
   what the per-request log line costs.
6. With --baseline, measures a do-nothing ASGI app on openpcs's own HTTP server: the ceiling for
   any app served this way on this machine.
7. Prints a table (requests/s, p50, p99, openpcs/moto throughput ratio, and the server's CPU time per
   request, which unlike requests/s hardly depends on what else the machine is doing) and the goals
   (>= 15x moto's requests/s at 8 connections, p99 < 2 ms at 1 connection), then stops everything it
   started (by PID) and removes its temporary directories.

wrk runs on the same machine and takes CPU from the server it measures; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "us-east-1"
MOTO_KEY = ("testing", "testing")  # moto accepts any key and does not verify signatures
SUBNET = "subnet-0123456789abcdef0"
GOAL_RATIO = 15.0
GOAL_P99_MS = 2.0


# ---------------------------------------------------------------------------------------------------
# Processes, ports, cleanup


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; its log ({log}):\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:.0f} s; see {log}")


@dataclass
class Started:
    """Everything this run started, so that it can all be stopped (by PID) and removed."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            # Own session, so that the process and anything it forks can be signalled as one group.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # the group whose leader is this PID (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def cleanup(self) -> None:
        for _, proc in list(reversed(self.procs)):
            self.stop(proc)
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk is not installed; installing the Debian package 'wrk' ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is still not on PATH after apt-get install wrk")
    return path


# ---------------------------------------------------------------------------------------------------
# Signed requests and wrk


@dataclass
class Target:
    """One signed request to replay: which server, which operation, and how to check the answer."""

    server: str          # row label, e.g. "openpcs" or "moto (ecs)"
    operation: str       # e.g. "GetCluster"
    kind: str            # "get" or "list": which openpcs and moto rows are compared
    url: str
    headers: dict[str, str]
    body: bytes
    check: Callable[[dict[str, Any]], bool]
    pid: int             # the server process, whose CPU time is sampled around each run


def sign(url: str, service: str, target: str, content_type: str, payload: dict[str, Any],
         key: tuple[str, str]) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    request = AWSRequest(method="POST", url=url + "/", data=body,
                         headers={"Content-Type": content_type, "X-Amz-Target": target})
    SigV4Auth(Credentials(*key), service, REGION).add_auth(request)
    headers = dict(request.headers.items())
    # botocore signs the host from the URL (host:port); send exactly that as Host.
    headers["Host"] = url.split("://", 1)[1]
    return headers, body


def probe(target: Target) -> None:
    """Send the signed request once and insist on a 200 with the expected body."""
    host, port = target.headers["Host"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=target.body, headers={k: v for k, v in target.headers.items() if k != "Host"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if response.status != 200 or not isinstance(parsed, dict) or not target.check(parsed):
        raise SystemExit(f"{target.server} {target.operation}: unexpected answer {response.status}: {data[:500]!r}")


def lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    if not text.isascii():
        raise ValueError("non-ASCII value in a wrk script")
    return json.dumps(text)  # for ASCII, JSON's string escapes are valid Lua escapes


def write_lua(target: Target, path: Path) -> None:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(target.body)}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in target.headers.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Result:
    server: str
    operation: str
    kind: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    server_cpu_us: float  # server CPU time (user + system, all threads) per request, in microseconds
    others_cpu: float     # CPUs' worth of time used by anything but the server and wrk during the run
    errors: str = ""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if not match:
        raise ValueError(f"no {percentile}% line in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds over all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - values[3] - values[4]) / _TICK, total / _TICK


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, and of its live children (openpcs's API
    workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (int(fields[11]) + int(fields[12])) / _TICK + sum(_process_cpu(int(child)) for child in children)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(wrk: str, target: Target, script: Path, connections: int, threads: int, seconds: float) -> Result:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "--latency",
            "-s", str(script), target.url + "/"]
    busy0, _ = _machine_cpu()
    server0, wrk0, elapsed0 = _process_cpu(target.pid), _children_cpu(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    busy1, _ = _machine_cpu()
    server_cpu, wrk_cpu = _process_cpu(target.pid) - server0, _children_cpu() - wrk0
    elapsed = time.monotonic() - elapsed0
    others = max(0.0, (busy1 - busy0) - server_cpu - wrk_cpu) / elapsed
    output = done.stdout
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr}\n{output}")
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M).group(1))
    requests = int(re.search(r"^\s*(\d+) requests in", output, re.M).group(1))
    problems = []
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: [^\n]+"):
        match = re.search(pattern, output)
        if match:
            problems.append(match.group(0))
    return Result(target.server, target.operation, target.kind, connections, rps, _latency_ms(output, "50"),
                  _latency_ms(output, "99"), requests, server_cpu / max(requests, 1) * 1e6, others,
                  "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# The two servers


def start_moto(started: Started, work: Path, service: str, clusters: int) -> list[Target]:
    port = free_port()
    log = work / "moto.log"
    proc = started.spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    wait_for_port(port, proc, "moto", log)
    url = f"http://127.0.0.1:{port}"
    client = boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id=MOTO_KEY[0],
                          aws_secret_access_key=MOTO_KEY[1])
    names = ["bench"] + [f"bench-{i}" for i in range(1, clusters)]
    label = f"moto ({service})"
    if service == "ecs":
        for name in names:
            client.create_cluster(clusterName=name)
        ctype, prefix = "application/x-amz-json-1.1", "AmazonEC2ContainerServiceV20141113"
        get = ("DescribeClusters", {"clusters": ["bench"]},
               lambda r: [c["clusterName"] for c in r.get("clusters", [])] == ["bench"])
        lst = ("ListClusters", {}, lambda r: len(r.get("clusterArns", [])) == clusters)
    else:
        for name in names:
            client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        ctype, prefix = "application/x-amz-json-1.0", "DynamoDB_20120810"
        get = ("DescribeTable", {"TableName": "bench"}, lambda r: r.get("Table", {}).get("TableName") == "bench")
        lst = ("ListTables", {}, lambda r: len(r.get("TableNames", [])) == clusters)
    targets = []
    for kind, (operation, payload, check) in (("get", get), ("list", lst)):
        headers, body = sign(url, service, f"{prefix}.{operation}", ctype, payload, MOTO_KEY)
        targets.append(Target(label, operation, kind, url, headers, body, check, proc.pid))
    return targets


def read_key(data_dir: Path) -> tuple[str, str]:
    import configparser

    config = configparser.ConfigParser()
    config.read(data_dir / "credentials")
    profile = config["openpcs"]
    return profile["aws_access_key_id"], profile["aws_secret_access_key"]


def start_openpcs(started: Started, work: Path, data_dir: Path, clusters: int, log_level: str,
                  create: bool) -> tuple[subprocess.Popen, list[Target]]:
    port = free_port()
    log = work / f"openpcs-{'setup' if create else log_level}.log"
    argv = [sys.executable, "-m", "openpcs", "serve", "--port", str(port), "--data-dir", str(data_dir),
            "--max-clusters", str(max(clusters, 5)), "--log-level", log_level]
    proc = started.spawn(f"openpcs ({log_level})", argv, log)
    wait_for_port(port, proc, "openpcs", log)
    url = f"http://127.0.0.1:{port}"
    key = read_key(data_dir)
    names = ["bench"] + [f"bench-{i}" for i in range(1, clusters)]
    if create:
        client = boto3.client("pcs", endpoint_url=url, region_name=REGION, aws_access_key_id=key[0],
                              aws_secret_access_key=key[1])
        for name in names:
            client.create_cluster(clusterName=name, scheduler={"type": "SLURM", "version": "24.11"},
                                  size="SMALL", networking={"subnetIds": [SUBNET]})
        deadline = time.monotonic() + 60
        while True:
            statuses = {s["name"]: s["status"] for s in client.list_clusters()["clusters"]}
            if all(statuses.get(n) == "ACTIVE" for n in names):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"openpcs clusters not ACTIVE after 60 s: {statuses}")
            time.sleep(0.2)
    ctype, prefix = "application/x-amz-json-1.0", "AWSParallelComputingService"
    service_model = botocore.session.get_session().get_service_model("pcs")
    prefix = service_model.metadata.get("targetPrefix", prefix)
    label = "openpcs" if log_level == "info" else f"openpcs (log {log_level})"
    targets = []
    for kind, operation, payload, check in (
        ("get", "GetCluster", {"clusterIdentifier": "bench"},
         lambda r: r.get("cluster", {}).get("name") == "bench"),
        ("list", "ListClusters", {}, lambda r: len(r.get("clusters", [])) == clusters),
    ):
        headers, body = sign(url, "pcs", f"{prefix}.{operation}", ctype, payload, key)
        targets.append(Target(label, operation, kind, url, headers, body, check, proc.pid))
    return proc, targets


_BASELINE_APP = """
import sys

import orjson

from openpcs.api.http import Server, bind

BODY = orjson.dumps({"cluster": {"name": "bench", "id": "pcs_0123456789", "status": "ACTIVE"}})
HEADERS = [(b"content-type", b"application/x-amz-json-1.0"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


# The same HTTP server as one `openpcs serve` worker.
Server(app, bind("127.0.0.1", int(sys.argv[1]))).run()
"""


def start_baseline(started: Started, work: Path) -> list[Target]:
    """A do-nothing ASGI app on openpcs's own HTTP server: the ceiling for any app on this stack."""
    port = free_port()
    log, app = work / "baseline.log", work / "baseline_app.py"
    app.write_text(_BASELINE_APP)
    proc = started.spawn("baseline", [sys.executable, str(app), str(port)], log)
    wait_for_port(port, proc, "baseline app", log)
    url = f"http://127.0.0.1:{port}"
    headers, body = sign(url, "pcs", "AWSParallelComputingService.GetCluster", "application/x-amz-json-1.0",
                         {"clusterIdentifier": "bench"}, ("AKIDEXAMPLE", "secret"))
    return [Target("hello-world app", "fixed JSON", "get", url, headers, body,
                   lambda r: r.get("cluster", {}).get("name") == "bench", proc.pid)]


# ---------------------------------------------------------------------------------------------------
# Measuring and reporting


def measure(wrk: str, targets: list[Target], work: Path, seconds: float, results: list[Result]) -> None:
    for target in targets:
        probe(target)
        script = work / f"{re.sub(r'[^a-z0-9]+', '-', target.server.lower())}-{target.operation}.lua"
        write_lua(target, script)
        run_wrk(wrk, target, script, 8, 2, 1)  # warm-up, not reported
        for connections, threads in ((8, 2), (1, 1)):
            result = run_wrk(wrk, target, script, connections, threads, seconds)
            results.append(result)
            print(f"  {result.server:<22} {result.operation:<17} c={connections}  {result.rps:>9.0f} req/s  "
                  f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                  f"server {result.server_cpu_us:5.0f} us CPU/req  others {result.others_cpu:.2f} CPU"
                  + (f"  [{result.errors}]" if result.errors else ""), file=sys.stderr, flush=True)


def report(results: list[Result], moto_label: str) -> bool:
    moto = {(r.kind, r.connections): r for r in results if r.server == moto_label}
    header = f"{'server':<22} {'operation':<17} {'conns':>5} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} " \
             f"{'vs moto':>8} {'CPU us/req':>10}"
    print()
    print(header)
    print("-" * len(header))
    order = {"get": 0, "list": 1}
    rank = {moto_label: 0, "openpcs": 1}
    for r in sorted(results, key=lambda r: (order[r.kind], -r.connections, rank.get(r.server, 2), r.server)):
        base = moto.get((r.kind, r.connections))
        ratio = "" if r.server == moto_label or not base else f"{r.rps / base.rps:7.1f}x"
        print(f"{r.server:<22} {r.operation:<17} {r.connections:>5} {r.rps:>11.0f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {ratio:>8} {r.server_cpu_us:>10.0f}" + (f"  [{r.errors}]" if r.errors else ""))
    print()
    ok = True
    for r in results:
        if r.server != "openpcs":
            continue
        if r.connections == 8:
            ratio = r.rps / moto[(r.kind, 8)].rps
            met = ratio >= GOAL_RATIO
            print(f"goal {r.operation} >= {GOAL_RATIO:g}x moto at 8 connections: {ratio:.1f}x -> "
                  f"{'met' if met else 'NOT met'}")
        else:
            met = r.p99_ms < GOAL_P99_MS
            print(f"goal {r.operation} p99 < {GOAL_P99_MS:g} ms at 1 connection: {r.p99_ms:.2f} ms -> "
                  f"{'met' if met else 'NOT met'}")
        ok &= met
    busiest = max(r.others_cpu for r in results)
    if busiest > 0.25:
        print(f"warning: other processes used up to {busiest:.2f} CPUs during the runs (of {os.cpu_count()}); "
              "figures are depressed accordingly. Re-run on a quiet machine.")
    if any(r.errors for r in results):
        print("some runs had non-2xx responses or socket errors (shown in brackets): figures are not valid")
        ok = False
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run [5]")
    parser.add_argument("--clusters", type=int, default=5, help="clusters (tables) in each server [5]")
    parser.add_argument("--moto-service", choices=("ecs", "dynamodb"), default="ecs",
                        help="what moto serves as the comparison [ecs: DescribeClusters/ListClusters]")
    parser.add_argument("--no-warning-run", action="store_true",
                        help="skip the second openpcs run with --log-level warning")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure a do-nothing ASGI app on the same HTTP server (the ceiling)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, Lua scripts)")
    args = parser.parse_args()

    wrk = ensure_wrk()
    started = Started()
    work = Path(tempfile.mkdtemp(prefix="openpcs-bench-"))
    if not args.keep:
        started.dirs.append(work)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    began = time.monotonic()
    results: list[Result] = []
    try:
        print(f"bench: {os.cpu_count()} CPUs, {args.duration:g} s per run, work dir {work}", file=sys.stderr)
        data_dir = work / "openpcs-data"
        moto_targets = start_moto(started, work, args.moto_service, args.clusters)
        # One openpcs creates the clusters and stops; each measured openpcs is then a plain restart on that
        # data, so that the runs with and without request logging start from the same state.
        proc, _ = start_openpcs(started, work, data_dir, args.clusters, "info", create=True)
        started.stop(proc)
        proc, openpcs_targets = start_openpcs(started, work, data_dir, args.clusters, "info", create=False)
        print(f"bench: moto and openpcs up with {args.clusters} clusters each ({time.monotonic() - began:.1f} s)",
              file=sys.stderr)
        measure(wrk, moto_targets, work, args.duration, results)
        measure(wrk, openpcs_targets, work, args.duration, results)
        log_lines = sum(1 for _ in open(work / "openpcs-info.log", "rb"))
        started.stop(proc)
        if not args.no_warning_run:
            proc, quiet_targets = start_openpcs(started, work, data_dir, args.clusters, "warning", create=False)
            measure(wrk, quiet_targets, work, args.duration, results)
            started.stop(proc)
        if args.baseline:
            measure(wrk, start_baseline(started, work), work, args.duration, results)
        ok = report(results, moto_targets[0].server)
        print(f"\nopenpcs (info) wrote {log_lines} log lines; bench took {time.monotonic() - began:.0f} s")
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
        return 0 if ok else 1
    finally:
        started.cleanup()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
