"""Recording what happens to nodes and instances, for `openpcs events` (and the log).

Every launch, registration, power up and down, health verdict, repair and failure is one event with time,
node, instance and reason (the types are store.events'). Retention is bounded: RETENTION_SECONDS of age,
and at most RETENTION_PER_CLUSTER events of each cluster, purged by the reconciler now and then.
"""

from __future__ import annotations

import logging
import time

from ..store import events as event_rows
from ..store.db import Store

log = logging.getLogger("openpcs.events")

RETENTION_SECONDS = 14 * 24 * 3600
RETENTION_PER_CLUSTER = 100_000

class Events:
    def __init__(self, store: Store) -> None:
        self.store = store

    def emit(self, cluster_id: str, type_: str, reason: str, *, node_group_id: str = "", node: str = "",
             instance_id: str = "") -> None:
        with self.store.write() as conn:
            event_rows.record(conn, cluster_id, type_, reason, node_group_id=node_group_id, node=node,
                              instance_id=instance_id)
        log.info("%s %s %s%s: %s", cluster_id, type_, node or node_group_id or "-",
                 f" ({instance_id})" if instance_id else "", reason)

    def purge(self) -> None:
        with self.store.write() as conn:
            event_rows.purge(conn, time.time() - RETENTION_SECONDS, RETENTION_PER_CLUSTER)
