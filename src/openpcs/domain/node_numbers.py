"""Which nodes a node group has, by number: node `<group>-<n>` is number n.

A PCS compute node group has nodes 1..maxInstanceCount, of which 1..minInstanceCount are static (always on) and
the rest are power-saving nodes. A HyperPod instance group has the nodes its spec lists, all static: a node can
be taken out of the middle (BatchDeleteClusterNodes) and the others keep their numbers, names and NodeLogicalIds.
Its spec keeps them as `logicalNodes`, node number (as a string: JSON keys) -> NodeLogicalId.
"""

from __future__ import annotations

from typing import Any


def number(node_name: str) -> int:
    """n of a node named <group>-<n>."""
    return int(node_name.rsplit("-", 1)[1])


def listed(spec: dict[str, Any]) -> list[int] | None:
    """The node numbers of a group that lists its nodes (a HyperPod instance group); None for a PCS group."""
    nodes = spec.get("logicalNodes")
    return None if nodes is None else sorted(int(n) for n in nodes)


def static_numbers(spec: dict[str, Any]) -> list[int]:
    numbers = listed(spec)
    if numbers is not None:
        return numbers
    return list(range(1, spec["scalingConfiguration"]["minInstanceCount"] + 1))


def is_static(spec: dict[str, Any], node_name: str) -> bool:
    numbers = listed(spec)
    if numbers is not None:
        return number(node_name) in numbers
    return number(node_name) <= spec["scalingConfiguration"]["minInstanceCount"]


def defined_numbers(spec: dict[str, Any]) -> list[int]:
    """Every node number the group defines in Slurm (static and power-saving)."""
    numbers = listed(spec)
    if numbers is not None:
        return numbers
    return list(range(1, spec["scalingConfiguration"]["maxInstanceCount"] + 1))
