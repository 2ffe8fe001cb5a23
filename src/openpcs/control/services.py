"""A cluster's optional Slurm services: accounting (slurmdbd on its database) and the REST API (slurmrestd).

The runtime calls these around slurmctld: `before_slurmctld` starts slurmdbd first, since slurmctld adds its
cluster to the database when it starts; `after_slurmctld` starts slurmrestd (which asks slurmctld) or stops
what the cluster no longer wants. Turning accounting off stops slurmdbd but keeps the database, for when it
is turned on again; the database goes only with the cluster (`remove`), after its daemons have stopped. The
MariaDB server openpcs runs stops once no cluster has accounting on (control.accounting, openpcs.mariadb).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from ..layout import DataLayout
from ..slurm.controller import SlurmController
from ..slurm.dbd import DbdSpec, SlurmDbd, render_slurmdbd_conf
from ..slurm.restd import SlurmRestd, ensure_jwt_key
from ..store.resources import Resource
from .accounting import AccountingDatabases
from .ports import Ports

log = logging.getLogger("openpcs.runtime")


def wants_accounting(cluster: Resource) -> bool:
    return cluster.spec["slurmConfiguration"]["accounting"]["mode"] == "STANDARD"


def wants_rest(cluster: Resource) -> bool:
    return cluster.spec["slurmConfiguration"]["slurmRest"]["mode"] == "STANDARD"


def port(layout: DataLayout, cluster: Resource, daemon: str) -> int:
    """The port of one of the cluster's daemons, allocated the first time."""
    return Ports.of_cluster(layout, cluster.id).daemon(daemon)


class ClusterServices:
    def __init__(self, layout: DataLayout, databases: AccountingDatabases,
                 accounting_clusters: Callable[[], list[Resource]]) -> None:
        """`accounting_clusters`: every cluster that is not being deleted (to know who still needs MariaDB)."""
        self.layout, self.databases, self.clusters = layout, databases, accounting_clusters

    def before_slurmctld(self, cluster: Resource, controller: SlurmController) -> None:
        if wants_accounting(cluster):
            self._ensure_slurmdbd(cluster, controller)
            if not self.databases.registered(cluster.id):
                controller.forget_cluster_id()

    def after_slurmctld(self, cluster: Resource, controller: SlurmController) -> None:
        accounting = wants_accounting(cluster)
        if not accounting:
            SlurmDbd(self.layout, cluster.id, None).stop()  # its database stays, for when accounting is back
            self._release_server()
        restd = SlurmRestd(self.layout, cluster.id, controller.build)
        if wants_rest(cluster):
            restd.ensure_running(port(self.layout, cluster, "slurmrestd"), accounting)
        else:
            restd.stop()

    def heal(self, cluster: Resource, controller: SlurmController) -> None:
        """Start slurmdbd (and its MariaDB) or slurmrestd again if it has stopped."""
        accounting = wants_accounting(cluster)
        if accounting and not (SlurmDbd(self.layout, cluster.id, None).alive() and self.databases.server_alive()):
            log.warning("cluster %s: its slurmdbd or the accounting database server had stopped; starting it again",
                        cluster.id)
            self._ensure_slurmdbd(cluster, controller)
        restd = SlurmRestd(self.layout, cluster.id, controller.build)
        if wants_rest(cluster) and not restd.alive():
            log.warning("cluster %s: its slurmrestd had stopped; starting it again", cluster.id)
            restd.ensure_running(port(self.layout, cluster, "slurmrestd"), accounting)

    def remove(self, cluster: Resource, controller: SlurmController) -> None:
        """Stop slurmrestd, then slurmctld (it sends what it has left to slurmdbd as it stops), then slurmdbd; then
        drop the cluster's database: the cluster is gone, and so are its records."""
        SlurmRestd(self.layout, cluster.id, None).stop()
        controller.stop()
        SlurmDbd(self.layout, cluster.id, None).stop()
        self.databases.drop(cluster.id)
        self._release_server()

    def state(self, cluster: Resource, region: str, account: str) -> dict[str, Any]:
        """The members the cluster reports for them: its endpoints, and a reference to its JWT key (never the key;
        `openpcs token` makes tokens with it)."""
        running = [("SLURMCTLD", "slurmctld", True), ("SLURMDBD", "slurmdbd", wants_accounting(cluster)),
                   ("SLURMRESTD", "slurmrestd", wants_rest(cluster))]
        state: dict[str, Any] = {"endpoints": [
            {"type": kind, "privateIpAddress": "127.0.0.1", "port": str(port(self.layout, cluster, daemon))}
            for kind, daemon, wanted in running if wanted]}
        if wants_rest(cluster):
            state["jwtAuth"] = {"jwtKey": {
                "secretArn": f"arn:aws:secretsmanager:{region}:{account}:secret:pcs!slurmrest-jwt-key-{cluster.id}",
                "secretVersion": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster.id}/jwt"))}}
        return state

    def _ensure_slurmdbd(self, cluster: Resource, controller: SlurmController) -> None:
        """The cluster's database (and the MariaDB server openpcs runs, if it is the one), munged and slurmdbd."""
        storage = self.databases.ensure(cluster.id)
        controller.ensure_munged()
        slurm = cluster.spec["slurmConfiguration"]
        spec = DbdSpec(
            port=port(self.layout, cluster, "slurmdbd"),
            munge_socket=str(self.layout.munge_socket(cluster.id)),
            log_file=str(self.layout.log_dir(cluster.id) / "slurmdbd.log"),
            pid_file=str(self.layout.run_dir(cluster.id) / "slurmdbd.pid"),
            storage_host=storage.host, storage_port=storage.port, storage_user=storage.user,
            storage_password=storage.password, storage_database=storage.database,
            purge_days=slurm["accounting"].get("defaultPurgeTimeInDays", -1),
            custom_settings=tuple((s["parameterName"], s["parameterValue"])
                                  for s in slurm.get("slurmdbdCustomSettings") or []),
            jwt_key=ensure_jwt_key(self.layout, cluster.id) if wants_rest(cluster) else None)
        SlurmDbd(self.layout, cluster.id, controller.build).ensure_running(render_slurmdbd_conf(spec), spec.port)

    def _release_server(self) -> None:
        """Stop the MariaDB server openpcs runs once no cluster (but those being deleted) has accounting on."""
        if not any(wants_accounting(c) for c in self.clusters()):
            self.databases.release_server()
