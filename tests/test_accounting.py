"""Accounting and the Slurm REST API, for real: each cluster's slurmdbd on a MariaDB server (the one openpcs runs,
or a user's own), its slurmrestd with JSON Web Tokens, driven through the PCS API, `openpcs exec` and HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from conftest import OpenPcs, create_cluster, create_node_group, create_queue, free_port, unique, wait_for
from mariadbserver import MariaDBServer
from test_scaling import until_exists, wait_until
from test_slurm import job_state, openpcs_exec, recorded_pid, slurmd_records, wait_job_done

BOTH = {"accounting": {"mode": "STANDARD"}, "slurmRest": {"mode": "STANDARD"}}
NEITHER = {"accounting": {"mode": "NONE"}, "slurmRest": {"mode": "NONE"}}


def cluster_with_nodes(pcs, slurm: dict, nodes: int = 2) -> tuple[dict, dict]:
    cluster = create_cluster(pcs, unique(), slurmConfiguration=slurm)
    group = create_node_group(pcs, cluster["id"], min_count=nodes, max_count=nodes)
    return cluster, create_queue(pcs, cluster["id"], [group["id"]])


def endpoints(pcs, cluster: dict) -> dict[str, int]:
    found = pcs.get_cluster(clusterIdentifier=cluster["id"])["cluster"]["endpoints"]
    return {e["type"]: int(e["port"]) for e in found}


def update(pcs, cluster: dict, slurm: dict, statuses: tuple[str, ...] = ("ACTIVE",)) -> dict:
    pcs.update_cluster(clusterIdentifier=cluster["id"], slurmConfiguration=slurm)
    return wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", statuses, timeout=60)


def sacct(server: OpenPcs, cluster: dict, *options: str) -> list[list[str]]:
    out = openpcs_exec(server, cluster["name"], "sacct", "-a", "-n", "-P", *options).stdout
    return [line.split("|") for line in out.splitlines()]


def token(server: OpenPcs, cluster: dict, *options: str) -> str:
    return subprocess.run([sys.executable, "-m", "openpcs", "token", "--data-dir", str(server.data_dir),
                           cluster["name"], *options], check=True, capture_output=True, text=True).stdout.strip()


def rest(port: int, path: str, token: str | None = None, method: str = "GET", body: dict | None = None,
         user: str = "root") -> tuple[int, dict | str]:
    """(HTTP status, parsed JSON or text) of a request to a cluster's slurmrestd."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers |= {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def record_pid(server: OpenPcs, cluster: dict, daemon: str, required: bool = True) -> int | None:
    """The PID openpcs recorded for one of the cluster's daemons (None if there is no record and none is required)."""
    try:
        return json.loads((server.data_dir / "clusters" / cluster["id"] / "run" / f"{daemon}.json").read_text())["pid"]
    except FileNotFoundError:
        if required:
            raise
        return None


def mariadb_pid(server: OpenPcs) -> int | None:
    record = server.data_dir / "mariadb" / "mariadb.json"
    return json.loads(record.read_text())["pid"] if record.exists() else None


def alive(pid: int | None) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return pid is not None and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_of(binary: str, mention: str) -> list[int]:
    """Live processes of `binary` whose command line or environment mentions `mention` (a data dir or a path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(binary.encode()) and (mention.encode() in b" ".join(argv)
                                                          or mention.encode() in (entry / "environ").read_bytes()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_two_node_job_and_its_steps_show_in_sacct_with_the_purge_settings_in_force(server):
    pcs = server.client()
    cluster, queue = cluster_with_nodes(pcs, {
        "accounting": {"mode": "STANDARD", "defaultPurgeTimeInDays": 30},
        "slurmdbdCustomSettings": [{"parameterName": "PurgeJobAfter", "parameterValue": "12months"}]})
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-N2", "--wait",
                       "-o", "/dev/null", "--wrap", "srun true").stdout.strip()
    rows = sacct(server, cluster, "-j", job, "-o", "JobID,State,NNodes")
    assert rows == [[job, "COMPLETED", "2"], [f"{job}.batch", "COMPLETED", "1"], [f"{job}.0", "COMPLETED", "2"]]
    # The SLURMDBD endpoint is the slurmdbd that slurmctld reports to, and sacctmgr reaches it.
    port = endpoints(pcs, cluster)["SLURMDBD"]
    config = openpcs_exec(server, cluster["name"], "scontrol", "show", "config").stdout
    assert f"AccountingStoragePort   = {port}" in config
    assert "accounting_storage/slurmdbd" in config
    clusters = openpcs_exec(server, cluster["name"], "sacctmgr", "-n", "-P", "show", "cluster", "format=cluster").stdout
    assert cluster["id"] in clusters.split()
    dbd_conf = server.data_dir / "clusters" / cluster["id"] / "etc" / "slurmdbd.conf"
    settings = dict(line.split("=", 1) for line in dbd_conf.read_text().splitlines() if "=" in line)
    assert settings["PurgeJobAfter"] == "12months"  # the custom setting wins over defaultPurgeTimeInDays
    assert all(settings[name] == "30days" for name in ("PurgeEventAfter", "PurgeResvAfter", "PurgeStepAfter",
                                                       "PurgeSuspendAfter", "PurgeTXNAfter", "PurgeUsageAfter"))
    config = openpcs_exec(server, cluster["name"], "sacctmgr", "-n", "show", "configuration").stdout
    assert "PurgeJobAfter" in config and "12 months" in config  # the running slurmdbd took them


def test_the_cluster_settings_that_need_accounting_work(server):
    pcs = server.client()
    cluster, queue = cluster_with_nodes(pcs, {"accounting": {"mode": "STANDARD"}, "slurmCustomSettings": [
        {"parameterName": "AccountingStorageEnforce", "parameterValue": "associations,limits"},
        {"parameterName": "AccountingStoreFlags", "parameterValue": "job_comment"},
        {"parameterName": "AccountingStorageTRES", "parameterValue": "gres/gpu"},
        {"parameterName": "TrackWCKey", "parameterValue": "yes"}]}, nodes=1)
    refused = openpcs_exec(server, cluster["name"], "sbatch", "-p", queue["name"], "--account=nosuch", "--wrap",
                           "true", check=False)
    assert refused.returncode != 0 and "Invalid account" in refused.stderr, refused.stderr  # enforced associations
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "--wait", "-o",
                       "/dev/null", "--comment=kept by slurmdbd", "--wckey=proj1", "--wrap", "true").stdout.strip()
    assert sacct(server, cluster, "-X", "-j", job, "-o", "Comment,WCKey") == [["kept by slurmdbd", "proj1"]]
    tres = openpcs_exec(server, cluster["name"], "sacctmgr", "-n", "-P", "show", "tres", "format=type,name").stdout
    assert "gres|gpu" in tres.split()


def test_the_rest_api_with_a_token_pings_lists_submits_and_cancels_and_refuses_without_one(server, tmp_path):
    pcs = server.client()
    cluster, queue = cluster_with_nodes(pcs, BOTH, nodes=1)
    state = pcs.get_cluster(clusterIdentifier=cluster["id"])["cluster"]
    key = server.data_dir / "clusters" / cluster["id"] / "jwt.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert set(state["slurmConfiguration"]["jwtAuth"]["jwtKey"]) == {"secretArn", "secretVersion"}
    assert key.read_bytes().hex() not in json.dumps(state, default=str)
    port = endpoints(pcs, cluster)["SLURMRESTD"]
    uid = next(line for line in Path(f"/proc/{record_pid(server, cluster, 'slurmrestd')}/status").read_text()
               .splitlines() if line.startswith("Uid:"))
    assert uid.split()[1] != "0"  # never root
    jwt = token(server, cluster, "--user", "root", "--lifespan", "600")

    for version in ("v0.0.40", "v0.0.41", "v0.0.42"):
        status, answer = rest(port, f"/slurm/{version}/ping", jwt)
        assert status == 200 and answer["pings"][0]["pinged"] == "UP", (version, answer)
    status, answer = rest(port, "/slurm/v0.0.42/nodes", jwt)
    nodes = openpcs_exec(server, cluster["name"], "sinfo", "-h", "-N", "-o", "%N").stdout.split()
    assert status == 200 and [n["name"] for n in answer["nodes"]] == nodes, answer
    status, answer = rest(port, "/slurm/v0.0.42/partitions", jwt)
    assert status == 200 and queue["name"] in [p["name"] for p in answer["partitions"]]

    go = tmp_path / "go"
    status, answer = rest(port, "/slurm/v0.0.42/job/submit", jwt, "POST", {"job": {
        "script": f"#!/bin/bash\n{until_exists(go)}\n", "partition": queue["name"], "name": "over-rest",
        "current_working_directory": str(tmp_path), "environment": ["PATH=/bin:/usr/bin"]}})
    assert status == 200 and not answer["errors"], answer
    job = str(answer["job_id"])
    wait_until(lambda: job_state(server, cluster["name"], job) == "RUNNING", "the REST job to run")
    status, answer = rest(port, "/slurm/v0.0.42/jobs", jwt)
    assert [j["name"] for j in answer["jobs"] if str(j["job_id"]) == job] == ["over-rest"]
    status, answer = rest(port, f"/slurm/v0.0.42/job/{job}", jwt, "DELETE")
    assert status == 200 and not answer["errors"], answer
    wait_until(lambda: job_state(server, cluster["name"], job) == "CANCELLED", "the job to be cancelled")
    # With accounting, slurmrestd serves the slurmdb endpoints too.
    status, answer = rest(port, f"/slurmdb/v0.0.42/job/{job}", jwt)
    assert status == 200 and answer["jobs"][0]["state"]["current"] == ["CANCELLED"], answer

    status, _ = rest(port, "/slurm/v0.0.42/nodes")
    assert status == 401  # no token
    for bad in ("garbage", jwt[:-4] + "AAAA"):  # not a token; a token whose signature is not the cluster's
        status, answer = rest(port, "/slurm/v0.0.42/nodes", bad)
        assert status == 511 and answer["errors"][0]["error"] == "Protocol authentication error", answer
    # `scontrol token` works through openpcs exec too.
    assert openpcs_exec(server, cluster["name"], "scontrol", "token", "lifespan=60").stdout.startswith("SLURM_JWT=")


def test_turning_both_on_and_off_while_a_job_runs_keeps_the_job_and_the_records(server, tmp_path):
    pcs = server.client()
    cluster, queue = cluster_with_nodes(pcs, NEITHER, nodes=1)
    assert set(endpoints(pcs, cluster)) == {"SLURMCTLD"}
    go = tmp_path / "go"
    out = tmp_path / "job.txt"
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "-o", str(out),
                       "--wrap", until_exists(go)).stdout.strip()
    wait_until(lambda: job_state(server, cluster["name"], job) == "RUNNING", "the job to run")

    update(pcs, cluster, BOTH)
    assert set(endpoints(pcs, cluster)) == {"SLURMCTLD", "SLURMDBD", "SLURMRESTD"}
    assert job_state(server, cluster["name"], job) == "RUNNING"
    first = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "--wait", "-o",
                         "/dev/null", "--wrap", "true").stdout.strip()
    assert [row[0] for row in sacct(server, cluster, "-X", "-o", "JobID")] == [job, first]
    daemons = [record_pid(server, cluster, name) for name in ("slurmdbd", "slurmrestd")]

    state = update(pcs, cluster, NEITHER)
    assert set(endpoints(pcs, cluster)) == {"SLURMCTLD"} and "jwtAuth" not in state["slurmConfiguration"]
    wait_until(lambda: not any(alive(pid) for pid in daemons), "slurmdbd and slurmrestd to stop")
    failed = openpcs_exec(server, cluster["name"], "sacct", "-a", check=False)
    assert "accounting storage is disabled" in failed.stderr + failed.stdout
    assert job_state(server, cluster["name"], job) == "RUNNING"

    update(pcs, cluster, {"accounting": {"mode": "STANDARD"}})
    assert first in [row[0] for row in sacct(server, cluster, "-X", "-o", "JobID")]  # the records stayed
    go.touch()
    wait_job_done(server, cluster["name"], job)
    assert out.read_text().strip() == "finished"
    wait_until(lambda: [r[1] for r in sacct(server, cluster, "-X", "-j", job, "-o", "JobID,State")] == ["COMPLETED"],
               "the job's end to be recorded")


def test_kill9_of_the_control_plane_leaves_both_running_and_the_restart_adopts_and_heals_them(tmp_path):
    first = OpenPcs(tmp_path / "data").start()
    pcs = first.client()
    cluster, queue = cluster_with_nodes(pcs, BOTH, nodes=1)
    daemons = {name: record_pid(first, cluster, name) for name in ("slurmdbd", "slurmrestd")}
    daemons["mariadb"] = mariadb_pid(first)
    first.kill9()
    assert all(alive(pid) for pid in daemons.values())
    second = OpenPcs(first.data_dir)
    second.port, second.url = first.port, first.url
    second.start()
    pcs = second.client()
    update(pcs, cluster, {"scaleDownIdleTimeInSeconds": 1200})  # a pass over the cluster: it adopts, not restarts
    data = str(first.data_dir)
    rest_conf = json.loads((first.data_dir / "clusters" / cluster["id"] / "run" / "slurmrestd.json").read_text())
    assert processes_of("slurmdbd", data) == [daemons["slurmdbd"]]
    assert processes_of("slurmrestd", rest_conf["argv"][2]) == [daemons["slurmrestd"]]
    assert processes_of("mariadbd", data) == [daemons["mariadb"]]

    # Killed, each is started again by the health pass.
    for pid in daemons.values():
        os.kill(pid, signal.SIGKILL)

    def back() -> bool:
        now = {name: record_pid(second, cluster, name, required=False) for name in ("slurmdbd", "slurmrestd")}
        now["mariadb"] = mariadb_pid(second)
        return all(alive(pid) and pid != daemons[name] for name, pid in now.items())

    wait_until(back, "slurmdbd, slurmrestd and MariaDB to be back", timeout=30)
    job = openpcs_exec(second, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "--wait", "-o",
                       "/dev/null", "--wrap", "true").stdout.strip()
    wait_until(lambda: sacct(second, cluster, "-X", "-j", job, "-o", "State") == [["COMPLETED"]], "the job's record")
    status, _ = rest(endpoints(pcs, cluster)["SLURMRESTD"], "/slurm/v0.0.42/ping", token(second, cluster))
    assert status == 200


def test_deleting_the_cluster_stops_everything_and_drops_its_database_after_it_is_gone(tmp_path):
    server = OpenPcs(tmp_path / "data").start()
    pcs = server.client()
    cluster = create_cluster(pcs, unique(), slurmConfiguration=BOTH)
    daemons = [record_pid(server, cluster, name) for name in ("slurmdbd", "slurmrestd")] + [mariadb_pid(server)]
    password = (server.data_dir / "clusters" / cluster["id"] / "accounting.password").read_text()
    database = f"openpcs_{cluster['id']}"
    assert database in managed_accounts(server)
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    wait_until(lambda: not pcs.list_clusters()["clusters"], "the cluster to go")
    assert not any(alive(pid) for pid in daemons)  # MariaDB too: no cluster has accounting on
    assert password not in server.log()  # the secret never reached the log
    assert not (server.data_dir / "clusters" / cluster["id"]).exists()
    assert database not in managed_accounts(server)  # neither its database nor its user is left


def test_the_clusters_services_have_a_head_nodes_share_of_the_cpu(server):
    """Every node is a session of its own, and the kernel shares CPU time between sessions (autogroup): the
    daemons every node depends on weigh as 87 nodes (nice -20), so a cluster's busy nodes cannot starve them."""
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel shares CPU time by thread, not by session (no autogroup scheduling)")
    pcs = server.client()
    cluster, _ = cluster_with_nodes(pcs, BOTH, nodes=1)
    for daemon in ("munged", "slurmctld", "slurmdbd", "slurmrestd"):
        weight = Path(f"/proc/{record_pid(server, cluster, daemon)}/autogroup").read_text()
        assert weight.endswith(" nice -20\n"), (daemon, weight)
    for node in slurmd_records(server.data_dir).values():
        assert Path(f"/proc/{recorded_pid(node)}/autogroup").read_text().endswith(" nice 0\n")


def managed_accounts(server: OpenPcs) -> set[str]:
    """The databases and users on the MariaDB server openpcs runs for `server` (started if it is not running)."""
    from openpcs.layout import DataLayout
    from openpcs.mariadb import MariaDBServer as Managed

    managed = Managed(DataLayout(server.data_dir))
    managed.ensure_running()  # a daemon recorded in the data dir: closing the server stops it
    with closing(managed.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW DATABASES")
        found = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT user FROM mysql.user")
        return found | {row[0] for row in cursor.fetchall()}


def test_a_slurmdbd_setting_it_refuses_fails_the_cluster_with_its_words(server):
    pcs = server.client()
    cluster = pcs.create_cluster(clusterName=unique(), scheduler={"type": "SLURM", "version": "24.11"}, size="SMALL",
                                 networking={"subnetIds": ["subnet-0123456789abcdef0"]}, slurmConfiguration={
                                     "accounting": {"mode": "STANDARD"}, "slurmdbdCustomSettings": [
                                         {"parameterName": "PurgeJobAfter", "parameterValue": "soon"}]})["cluster"]
    failed = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("CREATE_FAILED",))
    error = failed["errorInfo"][0]
    assert error["code"] == "SlurmdbdFailed" and 'Bad value "soon" for PurgeJobAfter' in error["message"], error


def test_a_slurmrestd_that_cannot_listen_fails_the_update_with_its_words(server):
    pcs = server.client()
    cluster = create_cluster(pcs, unique(), slurmConfiguration={"slurmRest": {"mode": "STANDARD"}})
    port = endpoints(pcs, cluster)["SLURMRESTD"]
    update(pcs, cluster, {"slurmRest": {"mode": "NONE"}})
    with socket.socket() as squatter:  # another program takes the port while the REST API is off
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        failed = update(pcs, cluster, {"slurmRest": {"mode": "STANDARD"}}, ("UPDATE_FAILED",))
    error = failed["errorInfo"][0]
    assert error["code"] == "SlurmrestdFailed" and "Address already in use" in error["message"], error


def test_a_mariadb_that_will_not_start_fails_the_cluster_with_its_words(tmp_path):
    server = OpenPcs(tmp_path / "data").start()
    (server.data_dir / "mariadb" / "data").mkdir(parents=True)  # a server directory without its system tables
    pcs = server.client()
    cluster = pcs.create_cluster(clusterName=unique(), scheduler={"type": "SLURM", "version": "24.11"}, size="SMALL",
                                 networking={"subnetIds": ["subnet-0123456789abcdef0"]},
                                 slurmConfiguration={"accounting": {"mode": "STANDARD"}})["cluster"]
    failed = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("CREATE_FAILED",),
                      timeout=60)
    error = failed["errorInfo"][0]
    assert error["code"] == "MariaDBFailed" and "MariaDB did not start" in error["message"], error
    assert "mysql" in error["message"]  # MariaDB's own words about its missing system tables


@pytest.fixture
def users_mariadb() -> MariaDBServer:
    server = MariaDBServer(free_port()).start()
    yield server
    server.stop()


def test_accounting_on_a_users_own_server_given_by_url(tmp_path, users_mariadb):
    server = OpenPcs(tmp_path / "data", env={"OPENPCS_ACCOUNTING_DATABASE": users_mariadb.url}).start()
    pcs = server.client()
    cluster, queue = cluster_with_nodes(pcs, {"accounting": {"mode": "STANDARD"}}, nodes=1)
    job = openpcs_exec(server, cluster["name"], "sbatch", "--parsable", "-p", queue["name"], "--wait", "-o",
                       "/dev/null", "--wrap", "true").stdout.strip()
    assert sacct(server, cluster, "-X", "-j", job, "-o", "State") == [["COMPLETED"]]
    assert f"openpcs_{cluster['id']}" in users_mariadb.databases()
    assert mariadb_pid(server) is None  # openpcs runs no server of its own
    assert users_mariadb.admin_password not in server.log()
    pcs.delete_queue(clusterIdentifier=cluster["id"], queueIdentifier=queue["id"])
    wait_until(lambda: not pcs.list_queues(clusterIdentifier=cluster["id"])["queues"], "the queue to go")
    for group in pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"]:
        pcs.delete_compute_node_group(clusterIdentifier=cluster["id"], computeNodeGroupIdentifier=group["id"])
    wait_until(lambda: not pcs.list_compute_node_groups(clusterIdentifier=cluster["id"])["computeNodeGroups"],
               "the node group to go", timeout=60)
    pcs.delete_cluster(clusterIdentifier=cluster["id"])
    wait_until(lambda: f"openpcs_{cluster['id']}" not in users_mariadb.databases(), "the database to be dropped")


def test_a_bad_accounting_database_url_is_refused_at_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "openpcs", "serve", "--data-dir", str(tmp_path / "data"),
                           "--accounting-database", "postgres://x@y"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "mysql://ADMIN:PASSWORD@HOST[:PORT]" in done.stderr, done.stderr
