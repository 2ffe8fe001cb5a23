"""TCP ports for the daemons of every cluster on this host: slurmctld's and each node's slurmd.

Ports are chosen below the kernel's ephemeral range, so that no client connection can be holding one
when its daemon (re)starts, and are kept in each cluster's ports.json so that a node keeps its port for
its whole life (slurm.conf names it) and no two daemons of any cluster are given the same one.
"""

from __future__ import annotations

import socket
from pathlib import Path

import orjson

from ..files import write_private
from ..layout import DataLayout
from .failures import RuntimeFailure

FIRST_PORT = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Ports:
    """One cluster's ports: {"slurmctld": port, ..., "nodes": {node name: port}}."""

    def __init__(self, layout: DataLayout, cluster_id: str) -> None:
        self.layout, self.cluster_id = layout, cluster_id
        self.path = layout.cluster_dir(cluster_id) / "ports.json"
        self.data = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {"nodes": {}}

    def daemon(self, name: str) -> int:
        """The port of one of the cluster's daemons: slurmctld, slurmdbd, slurmrestd."""
        if name not in self.data:
            self.data[name] = self._allocate(1)[0]
            self._save()
        return self.data[name]

    def nodes(self, names: list[str]) -> dict[str, int]:
        """Ports of these nodes, allocating any that have none; the other nodes' ports are released."""
        current = self.data["nodes"]
        missing = [name for name in names if name not in current]
        kept = {name: current[name] for name in names if name in current}
        if missing or len(kept) != len(current):
            kept.update(zip(missing, self._allocate(len(missing)), strict=True))
            self.data["nodes"] = kept
            self._save()
        return {name: kept[name] for name in names}

    def _save(self) -> None:
        write_private(self.path, orjson.dumps(self.data, option=orjson.OPT_SORT_KEYS))

    def _allocate(self, count: int) -> list[int]:
        taken = _ports_in(self.data)
        for other in (self.layout.data_dir / "clusters").glob("*/ports.json"):
            if other != self.path:
                taken |= _ports_in(self._read(other))
        chosen: list[int] = []
        port = FIRST_PORT
        limit = _ephemeral_start()
        while len(chosen) < count:
            if port >= limit:
                raise RuntimeFailure("NoFreePorts", f"No free TCP ports left between {FIRST_PORT} and {limit} for "
                                                    "this host's Slurm daemons. Delete unused clusters or node groups.")
            if port not in taken and _bindable(port):
                chosen.append(port)
            port += 1
        return chosen


def _ports_in(data: dict) -> set[int]:
    return set(data.get("nodes", {}).values()) | {v for k, v in data.items() if k != "nodes"}
