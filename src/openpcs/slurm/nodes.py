"""What Slurm says of its nodes: `scontrol -o show node` read into states, and what those states mean.

A node's state is a base state and flags, "MIXED+DRAIN" or "IDLE+CLOUD+POWERED_DOWN".
"""

from __future__ import annotations

import re

# Base states of a node that is up and taking work, and flags that deny it.
UP_STATES = {"IDLE", "MIXED", "ALLOCATED", "COMPLETING"}
NOT_UP_FLAGS = {"NOT_RESPONDING", "POWERED_DOWN", "POWERING_UP", "POWERING_DOWN", "DRAIN", "FAIL", "INVALID_REG"}
# A node in any of these (base or flag) still has a job on it, running or being cleaned up.
BUSY = {"ALLOCATED", "MIXED", "COMPLETING"}
# Power saving: asked to power down (POWER_DOWN), on its way (POWERING_DOWN), done (POWERED_DOWN).
POWERING_DOWN = {"POWER_DOWN", "POWERING_DOWN"}
POWER_DOWN_BEGUN = {"POWERING_DOWN", "POWERED_DOWN"}
# Asked to power up (POWER_UP), on its way (POWERING_UP): its ResumeProgram launches it.
POWERING_UP = {"POWER_UP", "POWERING_UP"}
_NODE_FIELD = re.compile(r"\b(NodeName|State|Reason)=(.*?)(?= \w+=|$)")


def node_states(scontrol_show_node: str) -> dict[str, tuple[str, str]]:
    """`scontrol -o show node` -> {node name: (state, reason)}."""
    states = {}
    for line in scontrol_show_node.splitlines():
        fields = dict(_NODE_FIELD.findall(line))
        if "NodeName" in fields:
            states[fields["NodeName"]] = (fields.get("State", "UNKNOWN"), fields.get("Reason", ""))
    return states


def node_flags(state: str) -> set[str]:
    """A node's base state and flags: "IDLE+CLOUD+POWERED_DOWN" -> {"IDLE", "CLOUD", "POWERED_DOWN"}."""
    return set(state.split("+"))


def node_is_up(state: str) -> bool:
    base, *flags = state.split("+")
    return base in UP_STATES and not NOT_UP_FLAGS.intersection(flags)


def node_is_busy(state: str) -> bool:
    return bool(BUSY & node_flags(state))
