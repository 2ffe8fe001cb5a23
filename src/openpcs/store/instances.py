"""Instances openpcs launched for node groups, and the bootstrap ids that let them register."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from .db import instances


@dataclass(frozen=True)
class Instance:
    id: str
    cluster_id: str
    node_group_id: str
    node_name: str
    status: str
    access_key_id: str | None = None  # the instance's own key, which may only register it
    dynamic: bool = False  # launched for Slurm's power saving, above minInstanceCount
    registered_at: float | None = None  # when its agent registered it (epoch seconds)
    created_at: float | None = None  # when openpcs launched it (epoch seconds)


def _hash(bootstrap_id: str) -> str:
    return hashlib.sha256(bootstrap_id.encode()).hexdigest()


def _from_row(row) -> Instance:  # noqa: ANN001 - a SQLAlchemy row
    m = row._mapping
    return Instance(m["id"], m["cluster_id"], m["node_group_id"], m["node_name"], m["status"], m["access_key_id"],
                    bool(m["dynamic"]), m["registered_at"], m["created_at"])


def new_instance_id() -> str:
    """An EC2-shaped instance id: i- and 17 hex digits."""
    return "i-" + secrets.token_hex(9)[:17]


def launch(conn: Connection, cluster_id: str, node_group_id: str, node_name: str,
           access_key_id: str | None = None, dynamic: bool = False) -> tuple[Instance, str]:
    """Record a new instance; returns it with its bootstrap id, which is stored only as a hash."""
    bootstrap_id = secrets.token_urlsafe(32)
    instance = Instance(new_instance_id(), cluster_id, node_group_id, node_name, "pending",
                        access_key_id, dynamic, created_at=time.time())
    conn.execute(instances.insert().values(
        id=instance.id, cluster_id=cluster_id, node_group_id=node_group_id, node_name=node_name,
        bootstrap_hash=_hash(bootstrap_id), status=instance.status, created_at=instance.created_at,
        access_key_id=access_key_id, dynamic=dynamic))
    return instance, bootstrap_id


def of_node_group(conn: Connection, node_group_id: str) -> list[Instance]:
    rows = conn.execute(select(instances).where(instances.c.node_group_id == node_group_id)
                        .order_by(instances.c.created_at, instances.c.id))
    return [_from_row(row) for row in rows]


def of_cluster(conn: Connection, cluster_id: str) -> list[Instance]:
    rows = conn.execute(select(instances).where(instances.c.cluster_id == cluster_id)
                        .order_by(instances.c.created_at, instances.c.id))
    return [_from_row(row) for row in rows]


def by_bootstrap_id(conn: Connection, cluster_id: str, bootstrap_id: str) -> Instance | None:
    row = conn.execute(select(instances).where(instances.c.bootstrap_hash == _hash(bootstrap_id),
                                               instances.c.cluster_id == cluster_id)).first()
    return _from_row(row) if row else None


def mark_registered(conn: Connection, instance: Instance) -> None:
    conn.execute(update(instances).where(instances.c.id == instance.id).values(
        status="registered", registered_at=time.time()))


def terminate(conn: Connection, instance_ids: list[str]) -> None:
    if instance_ids:
        conn.execute(delete(instances).where(instances.c.id.in_(instance_ids)))
