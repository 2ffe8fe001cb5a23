"""Test harness: a real `openpcs serve` on a free loopback port, driven by unmodified boto3 and AWS CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import boto3
import pytest
from botocore.config import Config

from openpcs.control.teardown import stop_everything

sys.path.insert(0, str(Path(__file__).parent))
from pgserver import PostgresServer, postgres_available  # noqa: E402

SUBNET = "subnet-0123456789abcdef0"
PROFILE_ARN = "arn:aws:iam::123456789012:instance-profile/AWSPCS-test"
LAUNCH_TEMPLATE = {"id": "lt-0123456789abcdef0", "version": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OpenPcs:
    """One `openpcs serve` process, started and stopped by PID."""

    created: ClassVar[list[OpenPcs]] = []  # every one made, so that what a test started is stopped after it

    def __init__(self, data_dir: Path, database: str | None = None, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        OpenPcs.created.append(self)
        self.data_dir, self.database, self.extra, self.env = data_dir, database, list(extra), env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    def start(self) -> OpenPcs:
        command = [sys.executable, "-m", "openpcs", "serve", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), *self.extra]
        if self.database:
            command += ["--database", self.database]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env={**os.environ, **(self.env or {})})
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"openpcs serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"openpcs serve did not listen within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._wait_workers_gone()

    def kill9(self) -> None:
        """kill -9 of `openpcs serve` itself, as a user would; its API workers follow it on their own."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._wait_workers_gone()

    def close(self) -> None:
        """Stop the server and every daemon its clusters started (they outlive the server by design), by the
        PIDs recorded under the data dir: node agents, slurmd, slurmctld, munged."""
        self.stop()
        stop_everything(self.data_dir)

    def _wait_workers_gone(self, timeout: float = 20.0) -> None:
        # The workers are in serve's process group (its session, by start_new_session) until they exit.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)
        raise AssertionError(f"openpcs serve's API workers outlived it by {timeout:.0f} s")

    def credentials(self) -> dict[str, str]:
        import configparser

        config = configparser.ConfigParser()
        config.read(self.data_dir / "credentials")
        return dict(config["openpcs"])

    def client(self, service: str = "pcs", access_key: str | None = None, secret_key: str | None = None,
               parameter_validation: bool = True):
        """boto3 without retries (they would hide errors); parameter_validation=False sends what it is
        given, so that the server's validation answers rather than botocore's own checks."""
        creds = self.credentials()
        return boto3.client(
            service, endpoint_url=self.url, region_name=creds["region"],
            aws_access_key_id=access_key or creds["aws_access_key_id"],
            aws_secret_access_key=secret_key or creds["aws_secret_access_key"],
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=30,
                          parameter_validation=parameter_validation))

    def cli_env(self) -> dict[str, str]:
        exports = subprocess.run([sys.executable, "-m", "openpcs", "env", "--data-dir", str(self.data_dir)],
                                 check=True, capture_output=True, text=True).stdout
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        for line in exports.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.strip("'")
        return env

    def aws(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["aws", "--output", "json", *args], env=self.cli_env(), capture_output=True,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {result.stderr}")
        return result

    def aws_json(self, *args: str) -> dict:
        return json.loads(self.aws(*args).stdout or "{}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not installed; .ci/run installs it (apt-get install postgresql)")
    with PostgresServer() as server:  # started on entry, stopped by PID on exit
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def openpcs(request, tmp_path_factory, postgres_url_factory) -> Iterator[OpenPcs]:
    """A running openpcs, once on each store engine."""
    data_dir = tmp_path_factory.mktemp("openpcs") / "data"
    database = postgres_url_factory() if request.param == "postgresql" else None
    server = OpenPcs(data_dir, database, "--max-clusters", "1000").start()
    yield server
    server.close()
    OpenPcs.created.remove(server)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[OpenPcs]:
    """One SQLite-backed openpcs for a module whose subject (auth, protocol, Slurm) is not the store engine."""
    running = OpenPcs(tmp_path_factory.mktemp("server") / "data", None, "--max-clusters", "20").start()
    yield running
    running.close()
    OpenPcs.created.remove(running)


@pytest.fixture(autouse=True)
def _close_what_the_test_started() -> Iterator[None]:
    before = len(OpenPcs.created)
    yield
    # Newest first: a server started again on a killed one's data dir must stop before the killed one's close
    # stops that dir's daemons, or its health pass starts them again meanwhile (a munged was left running so).
    for server in reversed(OpenPcs.created[before:]):
        server.close()
    del OpenPcs.created[before:]


@pytest.fixture(scope="module")
def postgres_url_factory(request) -> Callable[[], str]:
    def make() -> str:
        server = request.getfixturevalue("postgres")
        return server.create_database("t" + uuid.uuid4().hex[:12])
    return make


@pytest.fixture
def pcs(openpcs: OpenPcs):
    return openpcs.client()


def unique(prefix: str = "c") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_for(fetch: Callable[[], dict], key: str, statuses: tuple[str, ...], timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        item = fetch()[key]
        if item["status"] in statuses:
            return item
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} stayed {item['status']}, expected one of {statuses}; errorInfo: "
                                 f"{item.get('errorInfo')}")
        time.sleep(0.05)


def wait_gone(fetch: Callable[[], dict], exception: type[Exception], timeout: float = 15.0) -> None:
    """Wait until fetching a resource raises `exception` (ResourceNotFoundException once it is deleted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fetch()
        except exception:
            return
        time.sleep(0.05)
    raise AssertionError("the resource was not deleted in time")


def create_cluster(pcs, name: str | None = None, wait: bool = True, **extra) -> dict:
    params = {"clusterName": name or unique(), "scheduler": {"type": "SLURM", "version": "24.11"},
              "size": "SMALL", "networking": {"subnetIds": [SUBNET]}, **extra}
    cluster = pcs.create_cluster(**params)["cluster"]
    if wait:
        cluster = wait_for(lambda: pcs.get_cluster(clusterIdentifier=cluster["id"]), "cluster", ("ACTIVE",))
    return cluster


def node_group_params(cluster_id: str, name: str | None = None, min_count: int = 0, max_count: int = 4,
                      **extra) -> dict:
    return {"clusterIdentifier": cluster_id, "computeNodeGroupName": name or unique("g"),
            "subnetIds": [SUBNET], "customLaunchTemplate": LAUNCH_TEMPLATE, "iamInstanceProfileArn": PROFILE_ARN,
            "scalingConfiguration": {"minInstanceCount": min_count, "maxInstanceCount": max_count},
            "instanceConfigs": [{"instanceType": "c6i.xlarge"}], **extra}


def create_node_group(pcs, cluster_id: str, wait: bool = True, **kwargs) -> dict:
    group = pcs.create_compute_node_group(**node_group_params(cluster_id, **kwargs))["computeNodeGroup"]
    if wait:
        group = wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster_id,
                                                            computeNodeGroupIdentifier=group["id"]),
                         "computeNodeGroup", ("ACTIVE",))
    return group


def update_scaling(pcs, cluster_id: str, group_id: str, min_count: int, max_count: int,
                   statuses: tuple[str, ...] = ("ACTIVE",), timeout: float = 60.0) -> dict:
    """UpdateComputeNodeGroup's scalingConfiguration, and the group once it is in one of `statuses`."""
    pcs.update_compute_node_group(clusterIdentifier=cluster_id, computeNodeGroupIdentifier=group_id,
                                  scalingConfiguration={"minInstanceCount": min_count, "maxInstanceCount": max_count})
    return wait_for(lambda: pcs.get_compute_node_group(clusterIdentifier=cluster_id,
                                                       computeNodeGroupIdentifier=group_id),
                    "computeNodeGroup", statuses, timeout=timeout)


def create_queue(pcs, cluster_id: str, group_ids: list[str], name: str | None = None, wait: bool = True,
                 **extra) -> dict:
    queue = pcs.create_queue(clusterIdentifier=cluster_id, queueName=name or unique("q"),
                             computeNodeGroupConfigurations=[{"computeNodeGroupId": g} for g in group_ids],
                             **extra)["queue"]
    if wait:
        queue = wait_for(lambda: pcs.get_queue(clusterIdentifier=cluster_id, queueIdentifier=queue["id"]),
                         "queue", ("ACTIVE",))
    return queue


def error_of(excinfo) -> dict:
    """The parsed error response of a botocore ClientError."""
    return excinfo.value.response
