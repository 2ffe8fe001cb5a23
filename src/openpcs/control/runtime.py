"""Where resources become real: the seam between the control plane and the machines.

The reconciler calls `converge_*` to make a resource match its spec and `remove_*` to take it away; both
are idempotent, so a restart can call them again at any point. Each returns the state the service
reports (endpoints, secret references) or raises `RuntimeFailure`, which becomes the resource's
errorInfo. This runtime keeps each cluster's secret and endpoints and issues each node group's
instances with their bootstrap data; the Slurm daemons and the node provider plug in behind the same
calls.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import orjson

from ..files import write_private
from ..layout import DataLayout
from ..store import instances as instance_rows
from ..store.db import Store
from ..store.resources import Resource

MUNGE_KEY_BYTES = 1024


class RuntimeFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Runtime:
    def __init__(self, data_dir: Path, store: Store, region: str, account: str, api_url: str) -> None:
        self.data_dir, self.store = data_dir, store
        self.layout = DataLayout(data_dir)
        self.region, self.account, self.api_url = region, account, api_url

    def _guard(self, what: str, action: Any) -> Any:
        try:
            return action()
        except OSError as exc:
            raise RuntimeFailure("InternalError", f"Could not {what}: {exc.strerror or exc} "
                                                  f"({exc.filename or self.data_dir})") from exc

    # -- clusters ---------------------------------------------------------------------------------

    def converge_cluster(self, cluster: Resource) -> dict[str, Any]:
        directory = self.layout.cluster_dir(cluster.id)
        key = self.layout.munge_key(cluster.id)

        def prepare() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            if not key.exists():
                write_private(key, secrets.token_bytes(MUNGE_KEY_BYTES))

        self._guard("prepare the cluster's directory and secret", prepare)
        state = dict(cluster.state)
        state.pop("errorInfo", None)
        state.setdefault("authKey", {
            "secretArn": f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:pcs!slurm-secret-"
                         f"{cluster.id}",
            "secretVersion": str(uuid.uuid5(uuid.NAMESPACE_URL, cluster.id))})
        endpoints = {e["type"]: e for e in state.get("endpoints", [])}
        wanted = ["SLURMCTLD"]
        slurm = cluster.spec["slurmConfiguration"]
        if slurm["accounting"]["mode"] == "STANDARD":
            wanted.append("SLURMDBD")
        if slurm["slurmRest"]["mode"] == "STANDARD":
            wanted.append("SLURMRESTD")
            state.setdefault("jwtAuth", {"jwtKey": {
                "secretArn": f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:pcs!jwt-"
                             f"{cluster.id}", "secretVersion": "1"}})
        else:
            state.pop("jwtAuth", None)
        state["endpoints"] = [endpoints.get(kind) or {"type": kind, "privateIpAddress": "127.0.0.1",
                                                      "port": str(_free_port())} for kind in wanted]
        return state

    def remove_cluster(self, cluster: Resource) -> None:
        directory = self.layout.cluster_dir(cluster.id)
        self._guard("remove the cluster's files",
                    lambda: shutil.rmtree(directory) if directory.exists() else None)

    # -- compute node groups ----------------------------------------------------------------------

    def converge_node_group(self, cluster: Resource, group: Resource) -> dict[str, Any]:
        """Keep minInstanceCount instances issued, named <group name>-<n> with the lowest free n."""
        wanted = group.spec["scalingConfiguration"]["minInstanceCount"]
        written: list[str] = []
        try:
            with self.store.write() as conn:
                current = instance_rows.of_node_group(conn, group.id)
                by_index = sorted(current, key=lambda i: _node_index(i.node_name))
                surplus = by_index[wanted:]
                instance_rows.terminate(conn, [i.id for i in surplus])
                used = {_node_index(i.node_name) for i in by_index[:wanted]}
                free = (n for n in range(1, wanted + len(current) + 2) if n not in used)
                for _ in range(wanted - len(current) + len(surplus)):
                    instance, bootstrap_id = instance_rows.launch(conn, cluster.id, group.id,
                                                                  f"{group.name}-{next(free)}")
                    written.append(instance.id)
                    self._guard("write the instance's bootstrap data",
                                lambda i=instance, b=bootstrap_id: self._write_bootstrap(cluster, i, b))
        except BaseException:
            # The transaction rolled back: take back the files of instances that were never recorded.
            for instance_id in written:
                shutil.rmtree(self.layout.instance_dir(instance_id), ignore_errors=True)
            raise
        for instance in surplus:
            shutil.rmtree(self.layout.instance_dir(instance.id), ignore_errors=True)
        state = dict(group.state)
        state.pop("errorInfo", None)
        return state

    def _write_bootstrap(self, cluster: Resource, instance: instance_rows.Instance, bootstrap_id: str) -> None:
        data = {"instanceId": instance.id, "clusterIdentifier": cluster.id, "bootstrapId": bootstrap_id,
                "endpointUrl": self.api_url, "region": self.region}
        write_private(self.layout.instance_dir(instance.id) / "bootstrap.json", orjson.dumps(data))

    def remove_node_group(self, cluster: Resource, group: Resource) -> None:
        with self.store.write() as conn:
            issued = instance_rows.of_node_group(conn, group.id)
            instance_rows.terminate(conn, [i.id for i in issued])
        for instance in issued:
            shutil.rmtree(self.layout.instance_dir(instance.id), ignore_errors=True)

    # -- queues -----------------------------------------------------------------------------------

    def converge_queue(self, cluster: Resource, queue: Resource) -> dict[str, Any]:
        state = dict(queue.state)
        state.pop("errorInfo", None)
        return state

    def remove_queue(self, cluster: Resource, queue: Resource) -> None:
        """A queue owns nothing outside the store yet; its Slurm partition goes with the config."""


def _node_index(node_name: str) -> int:
    return int(node_name.rsplit("-", 1)[1])
