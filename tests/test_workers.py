"""`openpcs serve` runs its API in worker processes: they share the load, are replaced when they die, die
with the server, never carry a secret where other users can read it, answer a committed write as applied
whatever becomes of their supervisor, and hold a bounded amount of a client's requests in memory."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import SUBNET, OpenPcs, create_cluster, unique


def workers_of(server: OpenPcs) -> set[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return {int(pid) for pid in children
            if _alive(pid) and b"openpcs.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def _alive(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not yet reaped
    except FileNotFoundError:
        return False


def wait_workers(server: OpenPcs, count: int, timeout: float = 20.0, without: int | None = None) -> set[int]:
    """The server's `count` live workers, once there are that many (and `without` is not one of them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = workers_of(server)
        if len(found) == count and without not in found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} API workers, found {workers_of(server)}")


def test_requests_are_served_by_several_workers_and_a_dead_one_is_replaced(tmp_path):
    server = OpenPcs(tmp_path / "data", None, "--workers", "3").start()
    try:
        first = wait_workers(server, 3)
        pcs = server.client()
        cluster = create_cluster(pcs, unique())  # a write in a worker wakes the supervisor's reconciler
        assert cluster["status"] == "ACTIVE"

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_workers(server, 3, without=victim)  # SIGKILL takes a moment to land
        assert len(replaced - first) == 1
        for _ in range(20):  # whichever worker takes each new connection, all of them answer
            assert server.client().get_cluster(clusterIdentifier=cluster["name"])["cluster"]["id"] == cluster["id"]
    finally:
        server.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)


def test_kill9_of_the_server_takes_its_workers_with_it(tmp_path):
    server = OpenPcs(tmp_path / "data").start()
    workers = wait_workers(server, 2 if os.cpu_count() >= 2 else 1)
    server.kill9()  # waits until serve's whole process group is gone, or fails
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    restarted = OpenPcs(tmp_path / "data")
    restarted.port, restarted.url = server.port, server.url  # the same port is free again at once
    restarted.start()
    try:
        assert restarted.client().list_clusters()["clusters"] == []
    finally:
        restarted.stop()


def test_a_database_url_from_the_environment_is_on_no_command_line(tmp_path, postgres_url_factory):
    database = postgres_url_factory()  # a URL may hold a password, and any user can read a command line
    server = OpenPcs(tmp_path / "data", env={"OPENPCS_DATABASE": database}).start()
    try:
        create_cluster(server.client(), "in-postgres", wait=False)
        for pid in {server.process.pid} | wait_workers(server, 2 if os.cpu_count() >= 2 else 1):
            assert database.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not (tmp_path / "data" / "openpcs.db").exists()  # the state went to PostgreSQL
    finally:
        server.stop()


def signed(server: OpenPcs, operation: str, body: bytes) -> dict[str, str]:
    creds = server.credentials()
    request = AWSRequest("POST", server.url + "/", data=body, headers={
        "X-Amz-Target": f"AWSParallelComputingService.{operation}", "Content-Type": "application/x-amz-json-1.0"})
    SigV4Auth(Credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"]), "pcs",
              creds["region"]).add_auth(request)
    return dict(request.headers.items())


def unread_by_server(server_port: int, client_port: int) -> int:
    """Bytes the server's end of a loopback connection has received and not yet read (rx_queue in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (server_port, client_port):
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no connection from port {client_port} to {server_port}")


def test_a_write_committed_after_the_supervisor_died_is_answered_as_applied(tmp_path):
    """A worker wakes its supervisor's reconciler through a pipe after each write; with the supervisor dead the
    pipe is broken. The write was committed all the same, so it is a 200 (it was a 500 that said "not applied")."""
    data = tmp_path / "data"
    server = OpenPcs(data, None, "--workers", "1").start()
    wait_workers(server, 1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/", body=b"{}", headers=signed(server, "ListClusters", b"{}"))
    assert conn.getresponse().read()  # a kept-alive connection the worker has accepted
    name = unique()
    body = json.dumps({"clusterName": name, "scheduler": {"type": "SLURM", "version": "24.11"}, "size": "SMALL",
                       "networking": {"subnetIds": [SUBNET]}}).encode()
    store = sqlite3.connect(data / "openpcs.db", isolation_level=None, timeout=10)
    store.execute("BEGIN IMMEDIATE")  # the create waits for the store's lock ...
    try:
        conn.request("POST", "/", body=body, headers=signed(server, "CreateCluster", body))
        while unread_by_server(server.port, conn.sock.getsockname()[1]):
            time.sleep(0.01)  # ... once the worker has read it
        server.process.kill()  # the worker finishes the requests it has, then stops with its supervisor
        server.process.wait()
    finally:
        store.execute("ROLLBACK")
        store.close()
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["cluster"]["name"] == name and answer["cluster"]["status"] == "CREATING"

    restarted = OpenPcs(data, None, "--no-reconcile").start()
    assert restarted.client().get_cluster(clusterIdentifier=name)["cluster"]["id"] == answer["cluster"]["id"]


def memory_mib(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (the peak of VmRSS) of a process, in MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def test_a_client_pipelining_faster_than_it_reads_is_held_back_not_buffered(tmp_path):
    """One connection pipelines 50,000 tiny requests and reads nothing for a while. The worker stops reading from
    it instead of parsing them all (200,000 of them grew a worker from 53 to 493 MB); every answer still comes, in
    order."""
    server = OpenPcs(tmp_path / "data", None, "--workers", "1", "--no-reconcile").start()
    (worker,) = wait_workers(server, 1)
    answers = {b"GET / HTTP/1.1\r\n\r\n": 404, b"POST / HTTP/1.1\r\n\r\n": 403}  # no operation; not signed
    requests = random.Random(8).choices(list(answers), k=50_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(requests[0])
        assert read_status(stream) == answers[requests[0]]  # the worker has served this connection once
        resident = memory_mib(worker, "VmRSS")
        sender = threading.Thread(target=sock.sendall, args=(b"".join(requests),))
        sender.start()
        sender.join(timeout=1.0)  # a while in which the client reads nothing (unless all was sent sooner)
        statuses = [read_status(stream) for _ in requests]
        sender.join()
    assert statuses == [answers[request] for request in requests]
    assert memory_mib(worker, "VmHWM") - resident < 50, "the worker buffered what the client sent ahead"


def read_status(stream) -> int:
    """The status of one response read off a buffered stream, its headers and body skipped."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline().strip()):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    stream.read(length)
    return status
