"""Resources as the PCS API shows them: the members of Cluster, ComputeNodeGroup and Queue."""

from __future__ import annotations

from typing import Any

from ..domain import ids
from ..store.resources import Resource


class Views:
    def __init__(self, region: str, account: str) -> None:
        self.region, self.account = region, account

    def arn(self, resource: Resource) -> str:
        return ids.arn(self.region, self.account, resource.kind, resource.id)

    def summary(self, resource: Resource) -> dict[str, Any]:
        out = {"name": resource.name, "id": resource.id, "arn": self.arn(resource),
               "status": resource.status, "createdAt": resource.created_at,
               "modifiedAt": resource.modified_at}
        if resource.kind != ids.CLUSTER:
            out["clusterId"] = resource.cluster_id
        return out

    def full(self, resource: Resource) -> dict[str, Any]:
        out = {**resource.spec, **self.summary(resource)}
        # What went wrong (errorInfo), then what the resource asks for that openpcs does not do yet (notices).
        errors = [*resource.state.get("errorInfo", []), *resource.state.get("notices", [])]
        if errors:
            out["errorInfo"] = errors
        if resource.kind == ids.CLUSTER:
            out["endpoints"] = resource.state.get("endpoints", [])
            slurm = dict(resource.spec.get("slurmConfiguration", {}))
            for secret in ("authKey", "jwtAuth"):
                if secret in resource.state:
                    slurm[secret] = resource.state[secret]
            out["slurmConfiguration"] = slurm
        return out
