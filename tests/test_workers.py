"""`openpcs serve` runs its API in worker processes: they share the load, are replaced when they die, die
with the server, and never carry a secret where other users can read it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import OpenPcs, create_cluster, unique


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
