"""PCS identifiers and ARNs: `pcs_` + 10 lowercase alphanumerics; arn:aws:pcs:<region>:<account>:<kind>/<id>."""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits

# The resource kinds as they appear in ARNs, and the names the API uses for them in errors.
CLUSTER = "cluster"
NODE_GROUP = "computenodegroup"
QUEUE = "queue"
KINDS = (CLUSTER, NODE_GROUP, QUEUE)
# A resource row's cluster_id is the scope its name is unique in: its cluster for node groups and queues, '' for
# PCS's clusters, and this for SageMaker HyperPod's clusters (whose names are a namespace of their own). A
# HyperPod cluster is a cluster row like a PCS one, so the engine runs both alike.
SAGEMAKER_SCOPE = "sagemaker"

_ARN = re.compile(r"arn:aws:pcs:(?P<region>[^:]+):(?P<account>[0-9]{12}):(?P<kind>[a-z]+)/(?P<id>pcs_[a-z0-9]+)")


def new_id() -> str:
    return "pcs_" + "".join(secrets.choice(_ALPHABET) for _ in range(10))


def looks_like_id(identifier: str) -> bool:
    """Every *Identifier member takes a name or an id; names may not start with pcs_, so the prefix decides."""
    return identifier.startswith("pcs_")


def arn(region: str, account: str, kind: str, resource_id: str) -> str:
    return f"arn:aws:pcs:{region}:{account}:{kind}/{resource_id}"


def parse_arn(value: str) -> tuple[str, str, str, str] | None:
    """(region, account, kind, id) of a PCS resource ARN, or None if it is not one."""
    match = _ARN.fullmatch(value)
    if not match or match["kind"] not in KINDS:
        return None
    return match["region"], match["account"], match["kind"], match["id"]
