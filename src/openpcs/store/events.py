"""Events: what happened to a cluster's nodes and instances, with time, node, instance and reason.

Kept in the store, so they survive restarts and any process (the reconciler, an API worker, `openpcs
events`) reads the same history. Retention is bounded by age and by count per cluster (`purge`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, delete, func, select

from .db import events

# Event types.
POWER_UP_REQUESTED = "PowerUpRequested"    # slurmctld's ResumeProgram asked for the node
POWER_DOWN_REQUESTED = "PowerDownRequested"  # slurmctld's SuspendProgram stopped it (idle, or powered down)
LAUNCHED = "InstanceLaunched"
LAUNCH_FAILED = "InstanceLaunchFailed"
REGISTERED = "InstanceRegistered"
TERMINATED = "InstanceTerminated"
POWERED_DOWN = "NodePoweredDown"           # openpcs powered it down in Slurm (a launch failure, a repair)
HEALTH = "HealthVerdict"
REPAIR = "Repair"
PROTECTED_MODE = "ProtectedModeEntered"
PROTECTED_MODE_CLEARED = "ProtectedModeCleared"
FAULT_INJECTED = "FaultInjected"           # `openpcs inject`
NODES_ADDED = "NodesAdded"                 # SageMaker's BatchAddClusterNodes and kin, as asked
NODES_DELETED = "NodesDeleted"
NODES_REBOOTED = "NodesRebootRequested"
NODES_REPLACED = "NodesReplaceRequested"


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    cluster_id: str
    node_group_id: str
    type: str
    node: str
    instance_id: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def record(conn: Connection, cluster_id: str, type_: str, reason: str, *, node_group_id: str = "", node: str = "",
           instance_id: str = "", at: float | None = None) -> None:
    conn.execute(events.insert().values(
        time=time.time() if at is None else at, cluster_id=cluster_id, node_group_id=node_group_id, type=type_,
        node=node, instance_id=instance_id, reason=reason))


def query(conn: Connection, cluster_id: str, *, node_group_id: str | None = None, since: float | None = None,
          after_seq: int = 0, limit: int | None = None) -> list[Event]:
    """A cluster's events, oldest first."""
    statement = select(events).where(events.c.cluster_id == cluster_id, events.c.seq > after_seq)
    if node_group_id is not None:
        statement = statement.where(events.c.node_group_id == node_group_id)
    if since is not None:
        statement = statement.where(events.c.time >= since)
    statement = statement.order_by(events.c.seq)
    if limit is not None:
        statement = statement.limit(limit)
    return [Event(**row._mapping) for row in conn.execute(statement)]


def page(conn: Connection, cluster_id: str, *, after: int, limit: int, descending: bool = False,
         node_group_id: str | None = None, instance_id: str | None = None, resource_type: str | None = None,
         since: float | None = None, until: float | None = None) -> list[Event]:
    """A page of a cluster's events for the SageMaker API, oldest (or newest) first, continuing past sequence number
    `after` (0: from the start). `resource_type` is Cluster, InstanceGroup or Instance: what the event is about."""
    statement = select(events).where(events.c.cluster_id == cluster_id)
    if after:
        statement = statement.where(events.c.seq < after if descending else events.c.seq > after)
    if node_group_id is not None:
        statement = statement.where(events.c.node_group_id == node_group_id)
    if instance_id is not None:
        statement = statement.where(events.c.instance_id == instance_id)
    if resource_type == "Instance":
        statement = statement.where(events.c.instance_id != "")
    elif resource_type == "InstanceGroup":
        statement = statement.where(events.c.instance_id == "", events.c.node_group_id != "")
    elif resource_type == "Cluster":
        statement = statement.where(events.c.instance_id == "", events.c.node_group_id == "")
    if since is not None:
        statement = statement.where(events.c.time > since)
    if until is not None:
        statement = statement.where(events.c.time < until)
    statement = statement.order_by(events.c.seq.desc() if descending else events.c.seq).limit(limit)
    return [Event(**row._mapping) for row in conn.execute(statement)]


def by_seq(conn: Connection, cluster_id: str, seq: int) -> Event | None:
    row = conn.execute(select(events).where(events.c.cluster_id == cluster_id, events.c.seq == seq)).first()
    return Event(**row._mapping) if row else None


def purge(conn: Connection, older_than: float, keep_per_cluster: int) -> int:
    """Delete events older than `older_than` (epoch seconds), and beyond the newest `keep_per_cluster` of each
    cluster; how many went."""
    removed = conn.execute(delete(events).where(events.c.time < older_than)).rowcount or 0
    counts = conn.execute(select(events.c.cluster_id, func.count()).group_by(events.c.cluster_id)).all()
    for cluster_id, count in counts:
        if count > keep_per_cluster:
            cutoff = conn.execute(select(events.c.seq).where(events.c.cluster_id == cluster_id)
                                  .order_by(events.c.seq.desc()).offset(keep_per_cluster).limit(1)).scalar()
            removed += conn.execute(delete(events).where(events.c.cluster_id == cluster_id,
                                                         events.c.seq <= cutoff)).rowcount or 0
    return removed
