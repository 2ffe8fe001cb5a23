"""Resource rows: clusters, compute node groups and queues, read and written inside a caller's transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from ..domain import ids
from .db import dumps, loads, resources


@dataclass
class Resource:
    seq: int
    id: str
    kind: str
    cluster_id: str
    name: str
    status: str
    generation: int
    spec: dict[str, Any]
    state: dict[str, Any]
    tags: dict[str, str]
    created_at: float
    modified_at: float

    @classmethod
    def from_row(cls, row: Any) -> Resource:
        m = row._mapping
        return cls(m["seq"], m["id"], m["kind"], m["cluster_id"], m["name"], m["status"], m["generation"],
                   loads(m["spec"]), loads(m["state"]), loads(m["tags"]), m["created_at"], m["modified_at"])


def find(conn: Connection, kind: str, identifier: str, cluster_id: str = "") -> Resource | None:
    """A resource by name or id; node groups and queues only within their cluster."""
    column = resources.c.id if ids.looks_like_id(identifier) else resources.c.name
    row = conn.execute(select(resources).where(resources.c.kind == kind, resources.c.cluster_id == cluster_id,
                                               column == identifier)).first()
    return Resource.from_row(row) if row else None


def by_id(conn: Connection, resource_id: str) -> Resource | None:
    row = conn.execute(select(resources).where(resources.c.id == resource_id)).first()
    return Resource.from_row(row) if row else None


def children(conn: Connection, cluster_id: str, kind: str | None = None) -> list[Resource]:
    query = select(resources).where(resources.c.cluster_id == cluster_id).order_by(resources.c.seq)
    if kind:
        query = query.where(resources.c.kind == kind)
    return [Resource.from_row(row) for row in conn.execute(query)]


def count(conn: Connection, kind: str, cluster_id: str = "") -> int:
    return conn.execute(select(func.count()).select_from(resources).where(
        resources.c.kind == kind, resources.c.cluster_id == cluster_id)).scalar_one()


def page(conn: Connection, kind: str, cluster_id: str, after: int, limit: int) -> list[Resource]:
    query = (select(resources)
             .where(resources.c.kind == kind, resources.c.cluster_id == cluster_id, resources.c.seq > after)
             .order_by(resources.c.seq).limit(limit))
    return [Resource.from_row(row) for row in conn.execute(query)]


def in_transition(conn: Connection) -> list[Resource]:
    query = select(resources).where(resources.c.status.in_(("CREATING", "UPDATING", "DELETING"))) \
        .order_by(resources.c.seq)
    return [Resource.from_row(row) for row in conn.execute(query)]


def insert(conn: Connection, kind: str, cluster_id: str, name: str, spec: dict[str, Any],
           tags: dict[str, str] | None) -> Resource:
    now = time.time()
    values = dict(id=ids.new_id(), kind=kind, cluster_id=cluster_id, name=name, status="CREATING",
                  generation=1, spec=dumps(spec), state=dumps({}), tags=dumps(tags or {}),
                  created_at=now, modified_at=now)
    result = conn.execute(resources.insert().values(**values))
    return Resource(result.inserted_primary_key[0], values["id"], kind, cluster_id, name, "CREATING", 1,
                    spec, {}, tags or {}, now, now)


def request_change(conn: Connection, resource: Resource, status: str, spec: dict[str, Any] | None = None) -> None:
    """An API write: new desired state and status, and a new generation so in-flight reconciles yield."""
    resource.status, resource.generation = status, resource.generation + 1
    resource.modified_at = time.time()
    if spec is not None:
        resource.spec = spec
    conn.execute(update(resources).where(resources.c.id == resource.id).values(
        status=status, generation=resource.generation, spec=dumps(resource.spec),
        modified_at=resource.modified_at))


def set_tags(conn: Connection, resource: Resource, tags: dict[str, str]) -> None:
    resource.tags = tags
    conn.execute(update(resources).where(resources.c.id == resource.id).values(tags=dumps(tags)))


def record_outcome(conn: Connection, resource: Resource, status: str, state: dict[str, Any]) -> bool:
    """A reconciler's result; applied only if no API write came in since it read `resource`."""
    result = conn.execute(update(resources).where(
        resources.c.id == resource.id, resources.c.generation == resource.generation).values(
        status=status, state=dumps(state), modified_at=time.time()))
    return result.rowcount == 1


def remove(conn: Connection, resource: Resource) -> bool:
    result = conn.execute(delete(resources).where(
        resources.c.id == resource.id, resources.c.generation == resource.generation))
    return result.rowcount == 1
