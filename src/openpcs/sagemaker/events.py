"""HyperPod's event operations, over the events the engine records: ListClusterEvents, DescribeClusterEvent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ..domain import ids
from ..domain.hyperpod import not_found
from ..store import events as event_rows
from ..store import resources as rows
from ..store.resources import Resource
from .common import DEFAULT_MAX_RESULTS, Base, digest, epoch
from .views import event_seq


class EventOperations(Base):
    """What happened to a cluster's nodes and instances, from the engine's events."""

    def ListClusterEvents(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        names = {g.id: g.name for g in groups}
        descending = p.get("SortOrder", "Descending") == "Descending"  # the model: newest first by default
        scope = "ListClusterEvents:" + cluster.id + ":" + digest(p)
        after = self.ctx.tokens.position(p.get("NextToken"), scope)
        limit = p.get("MaxResults") or DEFAULT_MAX_RESULTS
        group_id = None
        if p.get("InstanceGroupName") is not None:
            group_id = next((g.id for g in groups if g.name == p["InstanceGroupName"]), "-")
        found = [] if p.get("OperationId") else event_rows.page(
            conn, cluster.id, after=after, limit=limit + 1, descending=descending, node_group_id=group_id,
            instance_id=p.get("NodeId"), resource_type=p.get("ResourceType"),
            since=epoch(p.get("EventTimeAfter")), until=epoch(p.get("EventTimeBefore")))
        logical = _logical_ids(groups)
        out: dict[str, Any] = {"Events": [self.views.event(cluster, e, names, logical) for e in found[:limit]]}
        if len(found) > limit:
            out["NextToken"] = self.ctx.tokens.issue(scope, found[limit - 1].seq)
        return out

    def DescribeClusterEvent(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(conn, p["ClusterName"])
        event = event_rows.by_seq(conn, cluster.id, event_seq(p["EventId"]))
        if event is None:
            raise not_found(f"Cluster {cluster.name} has no event {p['EventId']}. ListClusterEvents lists them.")
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        return {"EventDetails": self.views.event(cluster, event, {g.id: g.name for g in groups},
                                                 _logical_ids(groups), detailed=True)}


def _logical_ids(groups: list[Resource]) -> dict[str, str]:
    """Slurm node name -> NodeLogicalId, for the nodes the groups list or are taking away."""
    out = {}
    for group in groups:
        for number, logical in {**group.spec.get("retiredNodes", {}), **group.spec["logicalNodes"]}.items():
            out[f"{group.name}-{number}"] = logical
    return out
