"""What the SageMaker operations share: finding a HyperPod cluster, its nodes, and pages of lists."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection

from ..domain import hyperpod, ids
from ..domain.hyperpod import not_found, validation
from ..pcs.handlers import ServiceContext
from ..store import instances as instance_rows
from ..store import resources as rows
from ..store.resources import Resource
from .views import HyperPodViews, Node

DEFAULT_MAX_RESULTS = 100  # SageMaker's List* calls return up to MaxResults (1-100); 100 when it is not given


class Base:
    """The service context, the views, and the lookups every operation makes."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.views = HyperPodViews(ctx.views.region, ctx.views.account)

    def _cluster(self, conn: Connection, name_or_arn: str) -> Resource:
        parsed = hyperpod.parse_cluster_arn(name_or_arn)
        if parsed is not None:
            found = rows.by_id(conn, parsed[2]) if parsed[:2] == (self.views.region, self.views.account) else None
        else:
            found = rows.find(conn, ids.CLUSTER, name_or_arn, ids.SAGEMAKER_SCOPE)
        if found is None or found.kind != ids.CLUSTER or found.cluster_id != ids.SAGEMAKER_SCOPE:
            raise not_found(f"Cluster {name_or_arn} does not exist. ListClusters lists the HyperPod clusters.")
        return found

    def _nodes(self, conn: Connection, cluster: Resource) -> list[Node]:
        groups = rows.children(conn, cluster.id, ids.NODE_GROUP)
        return self.views.nodes(cluster, groups, instance_rows.of_cluster(conn, cluster.id))

    def _page(self, items: list[Any], p: dict[str, Any], operation: str, scope_id: str) -> tuple[list[Any], str | None]:
        """A page of a list sorted and filtered in memory; the token is bound to the request's filters."""
        scope = f"{operation}:{scope_id}:{digest(p)}"
        start = self.ctx.tokens.position(p.get("NextToken"), scope)
        end = start + (p.get("MaxResults") or DEFAULT_MAX_RESULTS)
        return items[start:end], self.ctx.tokens.issue(scope, end) if end < len(items) else None


def digest(p: dict[str, Any]) -> str:
    """What a list request asks for, apart from where it continues and how much it takes."""
    rest = {k: v for k, v in p.items() if k not in ("NextToken", "MaxResults")}
    return hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]


def epoch(value: Any) -> float | None:
    """A timestamp member as epoch seconds: boto3 sends numbers; a string may be ISO 8601 or a number."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise validation(f"{value!r} is not a timestamp: give epoch seconds or ISO 8601.") from None


def created_within(at: float | None, p: dict[str, Any]) -> bool:
    after, before = epoch(p.get("CreationTimeAfter")), epoch(p.get("CreationTimeBefore"))
    return at is not None and (after is None or at > after) and (before is None or at < before)
