"""Stopping everything a data dir runs, for whoever throws the data dir away (tests, benchmarks).

A user deletes clusters through the API; this is for a data dir that is removed with its clusters still
in it, so that no daemon, socket dir or host-wide port claim outlives it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import processes
from ..layout import DataLayout
from .ports import Ports


def stop_everything(data_dir: Path, timeout: float = 5.0) -> None:
    """Stop every daemon recorded under `data_dir` by PID (node agents, slurmd, slurmrestd, slurmctld, slurmdbd,
    munged, the MariaDB server), then remove their socket dirs and release their ports."""
    layout = DataLayout(data_dir)
    processes.stop_all(layout.node_records(), timeout=timeout)  # thousands of nodes at once
    for record in layout.service_records():  # then the daemons they use, in order
        processes.stop(record, timeout=timeout)
    for cluster in data_dir.glob("clusters/*"):
        shutil.rmtree(layout.socket_dir(cluster.name), ignore_errors=True)
        Ports.of_cluster(layout, cluster.name).release()
    shutil.rmtree(layout.mariadb_socket().parent, ignore_errors=True)
    Ports(layout.mariadb_dir() / "ports.json").release()
