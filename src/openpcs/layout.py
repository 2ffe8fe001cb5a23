"""Where things live in the data dir: one place that knows the paths, for every process that needs them.

    DATA/clusters/<cluster id>/   munge.key, etc/ (slurm.conf ...), state/, spool/<node>/, run/ (munge
                                  socket, pid files, daemon records), ports.json
    DATA/instances/<instance id>/ bootstrap.json, the instance's munge key, its daemon record
    DATA/logs/<cluster id>/       munged, slurmctld and slurmd logs; kept after the cluster is deleted
"""

from __future__ import annotations

from pathlib import Path


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

    def run_dir(self, cluster_id: str) -> Path:
        return self.cluster_dir(cluster_id) / "run"

    def munge_socket(self, cluster_id: str) -> Path:
        return self.run_dir(cluster_id) / "munge.socket"

    def log_dir(self, cluster_id: str) -> Path:
        return self.data_dir / "logs" / cluster_id

    def instance_dir(self, instance_id: str) -> Path:
        return self.data_dir / "instances" / instance_id

    def shared_secret(self, cluster_id: str) -> bytes | None:
        """The cluster's munge key, for RegisterComputeNodeGroupInstance; None until the cluster has one."""
        try:
            return self.munge_key(cluster_id).read_bytes()
        except FileNotFoundError:
            return None
