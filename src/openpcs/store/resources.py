"""Resource rows: clusters, compute node groups and queues, read and written inside a caller's transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update

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
    created_at: float
    modified_at: float
    # The JSON columns, decoded on first use: a List shows summaries and never needs them.
    spec_json: str = field(repr=False)
    state_json: str = field(repr=False)
    tags_json: str = field(repr=False)

    @cached_property
    def spec(self) -> dict[str, Any]:
        return loads(self.spec_json)

    @cached_property
    def state(self) -> dict[str, Any]:
        return loads(self.state_json)

    @cached_property
    def tags(self) -> dict[str, str]:
        return loads(self.tags_json)

    @classmethod
    def from_row(cls, row: Any) -> Resource:
        m = row._mapping
        return cls(m["seq"], m["id"], m["kind"], m["cluster_id"], m["name"], m["status"], m["generation"],
                   m["created_at"], m["modified_at"], m["spec"], m["state"], m["tags"])


# Statements built once with bound parameters: the hot read path reuses their compiled form.
_IN_SCOPE = (resources.c.kind == bindparam("kind")) & (resources.c.cluster_id == bindparam("cluster_id"))
_FIND_BY_ID = select(resources).where(_IN_SCOPE, resources.c.id == bindparam("identifier"))
_FIND_BY_NAME = select(resources).where(_IN_SCOPE, resources.c.name == bindparam("identifier"))
_BY_ID = select(resources).where(resources.c.id == bindparam("id"))
_CHILDREN = select(resources).where(resources.c.cluster_id == bindparam("cluster_id")).order_by(resources.c.seq)
_CHILDREN_OF_KIND = select(resources).where(_IN_SCOPE).order_by(resources.c.seq)
_CLUSTERS = select(resources).where(resources.c.kind == ids.CLUSTER).order_by(resources.c.seq)
_COUNT_CLUSTERS = select(func.count()).select_from(resources).where(resources.c.kind == ids.CLUSTER)
_COUNT = select(func.count()).select_from(resources).where(_IN_SCOPE)
_PAGE = (select(resources).where(_IN_SCOPE, resources.c.seq > bindparam("after"))
         .order_by(resources.c.seq).limit(bindparam("limit")))
_IN_TRANSITION = (select(resources).where(resources.c.status.in_(("CREATING", "UPDATING", "DELETING")))
                  .order_by(resources.c.seq))
_SETTLED = (select(resources).where(resources.c.status.in_(("ACTIVE", "UPDATE_FAILED")))
            .order_by(resources.c.seq))


def find(conn: Connection, kind: str, identifier: str, cluster_id: str = "") -> Resource | None:
    """A resource by name or id; node groups and queues only within their cluster."""
    statement = _FIND_BY_ID if ids.looks_like_id(identifier) else _FIND_BY_NAME
    row = conn.execute(statement, {"kind": kind, "cluster_id": cluster_id, "identifier": identifier}).first()
    return Resource.from_row(row) if row else None


def by_id(conn: Connection, resource_id: str) -> Resource | None:
    row = conn.execute(_BY_ID, {"id": resource_id}).first()
    return Resource.from_row(row) if row else None


def children(conn: Connection, cluster_id: str, kind: str | None = None) -> list[Resource]:
    if kind:
        result = conn.execute(_CHILDREN_OF_KIND, {"kind": kind, "cluster_id": cluster_id})
    else:
        result = conn.execute(_CHILDREN, {"cluster_id": cluster_id})
    return [Resource.from_row(row) for row in result]


def count(conn: Connection, kind: str, cluster_id: str = "") -> int:
    return conn.execute(_COUNT, {"kind": kind, "cluster_id": cluster_id}).scalar_one()


def page(conn: Connection, kind: str, cluster_id: str, after: int, limit: int) -> list[Resource]:
    result = conn.execute(_PAGE, {"kind": kind, "cluster_id": cluster_id, "after": after, "limit": limit})
    return [Resource.from_row(row) for row in result]


def clusters(conn: Connection) -> list[Resource]:
    """Every cluster, PCS's and HyperPod's (whose names are unique in a scope of their own, ids.SAGEMAKER_SCOPE)."""
    return [Resource.from_row(row) for row in conn.execute(_CLUSTERS)]


def count_clusters(conn: Connection) -> int:
    """How many clusters there are, PCS's and HyperPod's: they share the host, and its quota."""
    return conn.execute(_COUNT_CLUSTERS).scalar_one()


def in_transition(conn: Connection) -> list[Resource]:
    return [Resource.from_row(row) for row in conn.execute(_IN_TRANSITION)]


def settled(conn: Connection) -> list[Resource]:
    """Resources meant to be running as they are (ACTIVE, UPDATE_FAILED): what the health pass looks after."""
    return [Resource.from_row(row) for row in conn.execute(_SETTLED)]


def insert(conn: Connection, kind: str, cluster_id: str, name: str, spec: dict[str, Any],
           tags: dict[str, str] | None, resource_id: str | None = None) -> Resource:
    now = time.time()
    values = dict(id=resource_id or ids.new_id(), kind=kind, cluster_id=cluster_id, name=name, status="CREATING",
                  generation=1, spec=dumps(spec), state=dumps({}), tags=dumps(tags or {}),
                  created_at=now, modified_at=now)
    result = conn.execute(resources.insert().values(**values))
    return Resource(result.inserted_primary_key[0], values["id"], kind, cluster_id, name, "CREATING", 1,
                    now, now, values["spec"], values["state"], values["tags"])


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
