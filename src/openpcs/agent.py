"""The node agent: what runs on an instance to make it a Slurm node, through the PCS API.

For each instance directory it is given, it reads bootstrap.json (written 0600 by the provider that
launched the instance), calls RegisterComputeNodeGroupInstance over HTTP, signed with the instance's
own key, which may call nothing else, writes the cluster's munge key it receives (0600), and starts
slurmd as the node name it was given. An instance on another host would do the same; the local
provider runs one agent for a batch of instances, so that a few hundred nodes cost one Python start.

If the node group has an OnCreate lifecycle script (HyperPod's LifeCycleConfig), the instance runs it once, after
registering and before anything else (openpcs.scripts). If the node group asks for deep health checks on start,
the instance runs them (openpcs.health_checks) before starting slurmd. A failure is written to the instance's
failure.txt, where the control plane reads it (and repairs the node or marks it DOWN in Slurm with it). While the
agent works on an instance it holds that directory's agent.lock, so a second agent never starts a second slurmd.
"""

from __future__ import annotations

import base64
import fcntl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from . import health_checks, processes, scripts
from .files import write_private

REGISTER_TARGET = "AWSParallelComputingService.RegisterComputeNodeGroupInstance"
# The API may be restarting: keep trying this long before giving up on an instance.
REGISTER_PATIENCE_SECONDS = 60.0
PARALLEL_REGISTRATIONS = 32
# How long a login node's sackd may take to fetch the cluster's configuration.
LOGIN_READY_SECONDS = 30.0
# slurmd's PATH (for the programs it runs); the agent's own environment may not have sbin.
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Each node's slurmd runs in PID and mount namespaces of its own, with a /proc of its own, as on a host of its own.
# Slurm reads every process in /proc at each job step's end (proctrack's SIGKILL first checks each process it finds
# for a core dump; jobacct_gather/linux reads them all too): on one shared host that is every node's processes, and
# a 16,384-task array on 2,048 nodes spent 84% of the host's CPU there (perf). The namespace's first process is a
# shell that waits for slurmd and reaps what it leaves: slurmd double-forks each slurmstepd and never reaps it.
# `env --default-signal` undoes the SIGINT and SIGQUIT a shell's background command ignores, which slurmd's job
# steps would otherwise inherit. The namespace, every job process in it, ends with slurmd, or with unshare
# (--kill-child), which is the process recorded as the node's daemon: its session holds the shell and slurmd.
NODE_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                  "/bin/sh", "-c", 'env --default-signal "$@" & wait $!', "openpcs-node")

_http = urllib3.PoolManager(maxsize=PARALLEL_REGISTRATIONS, retries=False, timeout=30.0)


class RegistrationRefused(Exception):
    pass


class HealthCheckFailed(Exception):
    pass


class LifecycleScriptFailed(Exception):
    pass


def register(boot: dict) -> dict:
    """RegisterComputeNodeGroupInstance, retried while the API is unreachable or answers 5xx."""
    body = orjson.dumps({"clusterIdentifier": boot["clusterIdentifier"], "bootstrapId": boot["bootstrapId"]})
    deadline = time.monotonic() + REGISTER_PATIENCE_SECONDS
    while True:
        request = AWSRequest("POST", boot["endpointUrl"].rstrip("/") + "/", data=body, headers={
            "X-Amz-Target": REGISTER_TARGET, "Content-Type": "application/x-amz-json-1.0"})
        SigV4Auth(Credentials(boot["accessKeyId"], boot["secretAccessKey"]), "pcs", boot["region"]).add_auth(request)
        try:
            response = _http.request("POST", request.url, body=body, headers=dict(request.headers.items()))
        except urllib3.exceptions.HTTPError as exc:
            problem = f"the API at {boot['endpointUrl']} is unreachable: {exc}"
        else:
            answer = orjson.loads(response.data or b"{}")
            if response.status == 200:
                return answer
            problem = f"{answer.get('__type', response.status)}: {answer.get('message', '')}"
            if response.status < 500:
                raise RegistrationRefused(f"RegisterComputeNodeGroupInstance was refused: {problem}")
        if time.monotonic() > deadline:
            raise RegistrationRefused(f"RegisterComputeNodeGroupInstance failed for {REGISTER_PATIENCE_SECONDS:.0f}"
                                      f" s; last: {problem}")
        time.sleep(0.5)


def bring_up(directory: Path) -> bool:
    """Register the instance and start its slurmd; False (with failure.txt written) if that failed."""
    with open(directory / "agent.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # another agent is bringing this instance up
        if processes.adopt(directory / "slurmd.json") is not None:
            return True
        try:
            boot = orjson.loads((directory / "bootstrap.json").read_bytes())
            answer = register(boot)
            write_private(directory / "munge.key", base64.b64decode(answer["sharedSecret"]))
            node = answer["nodeID"]
            run_on_create(directory, boot, node)
            check = boot.get("deepHealthCheck") or {}
            problem = health_checks.run(check.get("profile", "NONE"), directory, boot, answer)
            if problem and check.get("repairAction") != "NONE":
                raise HealthCheckFailed(problem)  # repairAction NONE: the node takes jobs regardless
            if boot.get("role") == "login":
                start_login_node(directory, boot, answer, node)
                (directory / "failure.txt").unlink(missing_ok=True)
                return True
            conf = boot["slurmConf"]  # the local provider shares the cluster's configuration, as NFS would
            (Path(boot["spoolDir"]) / node).mkdir(parents=True, exist_ok=True)
            # The cluster's own Slurm build, by absolute path. slurmd works in a directory of its node's under the
            # log dir, which its job steps inherit: their core dumps land there, and stopping the node stops them.
            build_bin = str(Path(boot["slurmd"]).parent.parent / "bin")
            workdir = Path(boot["logDir"]) / "nodes" / node
            workdir.mkdir(parents=True, exist_ok=True)
            # The first slurmd start of an instance Slurm powered up is its boot: -b reports it, as Slurm wants of
            # such a node. Not otherwise: a node that answered before (a static node given a new instance) would be
            # "unexpectedly rebooted", and a later start (slurmd died and is launched again) would lose its jobs.
            booted = directory / "booted"
            report_boot = ["-b"] if boot.get("reportBoot") and not booted.exists() else []
            booted.touch()
            processes.spawn([*NODE_NAMESPACE, boot["slurmd"], "-D", *report_boot, "-N", node, "-f", conf],
                            directory / "slurmd.json",
                            Path(boot["logDir"]) / f"slurmd-{node}.out",
                            env={"SLURM_CONF": conf, "PATH": f"{build_bin}:{_PATH}"}, cwd=workdir, owns_workdir=True)
        except Exception as exc:  # one instance's failure must not stop the others
            write_private(directory / "failure.txt", str(exc).encode())
            return False
        (directory / "failure.txt").unlink(missing_ok=True)
        return True


def start_login_node(directory: Path, boot: dict, answer: dict, node: str) -> None:
    """A login node: Slurm 24.11's sackd, which fetches the cluster's configuration from slurmctld (configless) into
    /run/slurm/conf, where Slurm's commands look for it. It runs in a mount namespace of its own, where /run is a
    fresh tmpfs holding only its /run/slurm (this instance's slurm-conf directory), the cluster's munge socket as
    munge's default one (sackd authenticates before it has a configuration) and the socket directory the fetched
    configuration names: several login nodes share one host, and the host's /run gains nothing. It is recorded as
    the instance's slurmd.json, the record of the node's daemon that the provider watches."""
    port = next(e["port"] for e in answer["endpoints"] if e["type"] == "SLURMCTLD")
    cache, keep = directory / "slurm-conf", directory / "run-keep"
    for path in (cache, keep):
        path.mkdir(exist_ok=True)
    fetched = cache / "conf" / "slurm.conf"
    fetched.unlink(missing_ok=True)  # a start fetches it again
    sockets = Path(boot["mungeSocket"]).parent
    restore = (f'mkdir -p "{sockets}" && mount --bind "{keep}" "{sockets}" && '
               if sockets.is_relative_to("/run") else "")
    script = (f'set -e; mount --bind "{sockets}" "{keep}"; mount -t tmpfs -o mode=755 openpcs-login /run; '
              f'mkdir -p /run/slurm /run/munge; {restore}mount --bind "{cache}" /run/slurm; '
              f'touch /run/munge/munge.socket.2; mount --bind "{boot["mungeSocket"]}" /run/munge/munge.socket.2; '
              f'exec "{Path(boot["slurmd"]).parent / "sackd"}" -D --conf-server 127.0.0.1:{port}')
    log = Path(boot["logDir"]) / f"sackd-{node}.out"
    processes.spawn(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                    directory / "slurmd.json", log, env={"PATH": _PATH}, cwd=directory)
    deadline = time.monotonic() + LOGIN_READY_SECONDS
    while not fetched.exists():
        if processes.adopt(directory / "slurmd.json") is None or time.monotonic() > deadline:
            processes.stop(directory / "slurmd.json")
            lines = log.read_text(errors="replace").strip().splitlines()
            raise RegistrationRefused("sackd did not fetch the cluster's configuration: " + " | ".join(lines[-5:]))
        time.sleep(0.1)


def run_on_create(directory: Path, boot: dict, node: str) -> None:
    """The instance's OnCreate lifecycle script, once in its life (not again when its slurmd is restarted)."""
    lifecycle = boot.get("lifecycle")
    done = directory / "on-create.done"
    if not lifecycle or done.exists():
        return
    script = Path(lifecycle["directory"]) / lifecycle["onCreate"]
    problem = scripts.run(script, Path(boot["logDir"]) / "lifecycle" / f"{boot['instanceId']}.log",
                          {"OPENPCS_NODE_NAME": node, "OPENPCS_INSTANCE_ID": boot["instanceId"],
                           "OPENPCS_CLUSTER_ID": boot["clusterIdentifier"], "SLURM_CONF": boot["slurmConf"]})
    if problem:
        raise LifecycleScriptFailed(f"OnCreate lifecycle script failed: {problem}")
    done.touch()


def main(directories: list[str]) -> int:
    with ThreadPoolExecutor(PARALLEL_REGISTRATIONS) as pool:
        results = list(pool.map(bring_up, [Path(d) for d in directories]))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
