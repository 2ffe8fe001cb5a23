"""Where things live in the data dir: one place that knows the paths, for every process that needs them.

    DATA/clusters/<cluster id>/   munge.key, jwt.key, accounting.password, etc/ (slurm.conf,
                                  slurmdbd.conf ...), state/, run/ (pid files, daemon records,
                                  applied-config.json, power/ requests), ports.json, slurm-build.json,
                                  faults.json, lifecycle/<node group>/<version>/ (its nodes' scripts)
    DATA/buckets/<bucket>/<key>   what s3://bucket/key means without an object store (openpcs.objects)
    DATA/mariadb/                 the host's MariaDB server for accounting: data/, its daemon record,
                                  ports.json
    /run/openpcs/<hash>/          the cluster's munge socket and slurmd spool dirs (short paths: sockets),
                                  etc/ (a copy of its configuration that anyone may read, for slurmrestd)
    /run/openpcs/ports/<port>     host-wide claim of a TCP port by a cluster (control.ports)
    DATA/instances/<instance id>/ bootstrap.json, the instance's munge key, its daemon record
    DATA/logs/<cluster id>/       munged, slurmctld, slurmdbd, slurmrestd and slurmd logs; kept after the
                                  cluster is deleted; nodes/<node>/, the working dir of a node's slurmd
                                  and job steps
    DATA/logs/mariadb/            the MariaDB server's log
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

# /run is a tmpfs meant for this; where it is not ours to write, the temp dir.
SOCKET_BASE = Path("/run/openpcs") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir()) / (
    f"openpcs-{os.getuid()}")


class DataLayout:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def cluster_dir(self, cluster_id: str) -> Path:
        return self.data_dir / "clusters" / cluster_id

    def munge_key(self, cluster_id: str) -> Path:
        return self.cluster_dir(cluster_id) / "munge.key"

    def conf_dir(self, cluster_id: str) -> Path:
        return self.cluster_dir(cluster_id) / "etc"

    def slurm_conf(self, cluster_id: str) -> Path:
        return self.conf_dir(cluster_id) / "slurm.conf"

    def lifecycle_dir(self, cluster_id: str, node_group: str) -> Path:
        return self.cluster_dir(cluster_id) / "lifecycle" / node_group

    @property
    def buckets_dir(self) -> Path:
        return self.data_dir / "buckets"

    def run_dir(self, cluster_id: str) -> Path:
        return self.cluster_dir(cluster_id) / "run"

    def socket_dir(self, cluster_id: str) -> Path:
        """A short directory for the cluster's unix sockets (munged's; slurmd's, in its spool) and nothing else.

        A unix socket's path has at most 107 bytes, and slurmd names its step sockets
        <spool>/<node>_<job>.<step>: under a data dir of any depth they would not fit.
        """
        digest = hashlib.sha256(str(self.cluster_dir(cluster_id).resolve()).encode()).hexdigest()[:10]
        return SOCKET_BASE / digest

    def readable_conf_dir(self, cluster_id: str) -> Path:
        """A copy of the cluster's slurm.conf, cgroup.conf and gres.conf (none holds a secret) that a daemon
        running as `nobody` can read: slurmrestd reads its configuration after it drops root."""
        return self.socket_dir(cluster_id) / "etc"

    def munge_socket(self, cluster_id: str) -> Path:
        return self.socket_dir(cluster_id) / "munge.socket"

    def spool_dir(self, cluster_id: str) -> Path:
        return self.socket_dir(cluster_id) / "spool"

    def log_dir(self, cluster_id: str) -> Path:
        return self.data_dir / "logs" / cluster_id

    def jwt_key(self, cluster_id: str) -> Path:
        """The key slurmctld signs and checks slurmrestd's JSON Web Tokens with (AuthAltParameters=jwt_key)."""
        return self.cluster_dir(cluster_id) / "jwt.key"

    def accounting_password(self, cluster_id: str) -> Path:
        """The password of the cluster's own database user, which its slurmdbd logs in with."""
        return self.cluster_dir(cluster_id) / "accounting.password"

    def mariadb_dir(self) -> Path:
        return self.data_dir / "mariadb"

    def mariadb_socket(self) -> Path:
        """The MariaDB server's unix socket, where openpcs manages its databases and users (as its own OS user)."""
        digest = hashlib.sha256(str(self.mariadb_dir().resolve()).encode()).hexdigest()[:10]
        return SOCKET_BASE / digest / "mariadb.sock"

    def faults(self, cluster_id: str) -> Path:
        """Faults injected into the cluster's launches (`openpcs inject`), read by the local provider."""
        return self.cluster_dir(cluster_id) / "faults.json"

    def power_requests(self, cluster_id: str) -> Path:
        """Where slurmctld's ResumeProgram and SuspendProgram leave their requests (slurm.power_hook)."""
        return self.run_dir(cluster_id) / "power"

    def wake_address(self) -> str:
        """The abstract unix socket on which the reconciler hears that there is work (a power request): named
        after the data dir, so that two openpcs on one host never hear each other's."""
        return "\0openpcs-" + hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]

    def instance_dir(self, instance_id: str) -> Path:
        return self.data_dir / "instances" / instance_id

    def node_records(self) -> list[Path]:
        """The records (openpcs.processes) of every node agent and every node's slurmd (or a login node's sackd)."""
        return [*self.data_dir.glob("agents/*.json"), *self.data_dir.glob("instances/*/slurmd.json")]

    def service_records(self) -> list[Path]:
        """The records of the daemons the nodes use, in the order to stop them after the nodes: slurmrestd,
        slurmctld, slurmdbd, munged, and the MariaDB server."""
        services = [record for daemon in ("slurmrestd", "slurmctld", "slurmdbd", "munged")
                    for record in self.data_dir.glob(f"clusters/*/run/{daemon}.json")]
        return [*services, *self.mariadb_dir().glob("mariadb.json")]

    def shared_secret(self, cluster_id: str) -> bytes | None:
        """The cluster's munge key, for RegisterComputeNodeGroupInstance; None until the cluster has one."""
        try:
            return self.munge_key(cluster_id).read_bytes()
        except FileNotFoundError:
            return None
