"""TCP ports for the daemons of every cluster on this host: slurmctld's and each node's slurmd.

Ports are chosen below the kernel's ephemeral range, so that no client connection can be holding one
when its daemon (re)starts, and are kept in each cluster's ports.json so that a node keeps its port for
its whole life (slurm.conf names it) and no two daemons of any cluster are given the same one.

Several data dirs (servers) may share a host, and a port is free for a moment whenever its daemon
restarts, so a bind test alone would let another server take it. Each port is therefore also claimed
host-wide: a file named after it under /run/openpcs/ports holding the path of the ports.json that owns it.
A claim whose owner no longer lists the port (a data dir deleted without its clusters) is taken over.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import orjson

from ..files import write_private
from ..layout import SOCKET_BASE, DataLayout
from .failures import RuntimeFailure

FIRST_PORT = 20000
CLAIMS = SOCKET_BASE / "ports"
# A claim is made just before its owner's ports.json is written: that young, it counts even if not listed yet.
CLAIM_GRACE_SECONDS = 60.0


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
    """One owner's ports, kept in its ports.json: a cluster's {"slurmctld": port, ..., "nodes": {node name: port}},
    or the host's MariaDB server's {"mariadb": port}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = self._read(self.path)

    @classmethod
    def of_cluster(cls, layout: DataLayout, cluster_id: str) -> Ports:
        return cls(layout.cluster_dir(cluster_id) / "ports.json")

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {"nodes": {}}

    def daemon(self, name: str) -> int:
        """The port of one of the owner's daemons: slurmctld, slurmdbd, slurmrestd, sackd (login nodes), mariadb."""
        self._reload()
        if name not in self.data:
            self.data[name] = self._allocate(1)[0]
            self._save()
        return self.data[name]

    def nodes(self, names: list[str]) -> dict[str, int]:
        """Ports of these nodes, allocating any that have none; the other nodes' ports are released."""
        self._reload()
        current = self.data["nodes"]
        missing = [name for name in names if name not in current]
        kept = {name: current[name] for name in names if name in current}
        if missing or len(kept) != len(current):
            kept.update(zip(missing, self._allocate(len(missing)), strict=True))
            released = set(current.values()) - set(kept.values())
            self.data["nodes"] = kept
            self._save()
            self._unclaim(released)
        return {name: kept[name] for name in names}

    def release(self) -> None:
        """Give up every port of the owner (it is being deleted)."""
        self._unclaim(_ports_in(self.data))
        self.data = {"nodes": {}}
        self.path.unlink(missing_ok=True)

    def _reload(self) -> None:
        """Read ports.json again before changing it: another Ports of the same owner may have allocated since
        this one read it, and saving a stale view would take that allocation back."""
        self.data = self._read(self.path)

    def _save(self) -> None:
        write_private(self.path, orjson.dumps(self.data, option=orjson.OPT_SORT_KEYS))

    def _allocate(self, count: int) -> list[int]:
        taken = _ports_in(self.data)
        chosen: list[int] = []
        port = FIRST_PORT
        limit = _ephemeral_start()
        while len(chosen) < count:
            if port >= limit:
                raise RuntimeFailure("NoFreePorts", f"No free TCP ports left between {FIRST_PORT} and {limit} for "
                                                    "this host's Slurm daemons. Delete unused clusters or node groups.")
            if port not in taken and _bindable(port) and self._claim(port):
                chosen.append(port)
            port += 1
        return chosen

    def _claim(self, port: int) -> bool:
        CLAIMS.mkdir(parents=True, exist_ok=True)
        claim = CLAIMS / str(port)
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if _claim_is_live(claim, port):
                    return False
                claim.unlink(missing_ok=True)  # its owner gave the port up without saying so: take it over
                continue
            with os.fdopen(fd, "w") as out:
                out.write(str(self.path.resolve()))
            return True
        return False

    def _unclaim(self, ports: set[int]) -> None:
        mine = str(self.path.resolve())
        for port in ports:
            claim = CLAIMS / str(port)
            try:
                if claim.read_text() == mine:
                    claim.unlink()
            except FileNotFoundError:
                continue


def _claim_is_live(claim: Path, port: int) -> bool:
    try:
        owner = Path(claim.read_text())
        if time.time() - claim.stat().st_mtime < CLAIM_GRACE_SECONDS:
            return True
    except FileNotFoundError:
        return False  # released meanwhile
    return port in _ports_in(Ports._read(owner))


def _ports_in(data: dict) -> set[int]:
    return set(data.get("nodes", {}).values()) | {v for k, v in data.items() if k != "nodes"}
