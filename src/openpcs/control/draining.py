"""Taking nodes and queues away without killing jobs: wait for their jobs to end, cancelling late ones.

DeleteComputeNodeGroup and a lower minInstanceCount drain the nodes they take away; DeleteQueue drains
its partition (State=DRAIN: no new jobs, queued ones still run). Jobs then get the drain timeout to end;
after it they are cancelled, and Slurm gets CANCEL_GRACE_SECONDS to end their steps (slurmd kills them;
a step outlives a stopped slurmd otherwise). The clock of each drain lives in memory: after a restart of
the server a drain starts its clock again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("openpcs.runtime")

DEFAULT_DRAIN_TIMEOUT_SECONDS = 600.0
# After cancelling, how long Slurm may take to end the jobs' steps before the drain counts as done regardless.
CANCEL_GRACE_SECONDS = 60.0
# How often to look at a drain: jobs take seconds at least, and each look runs a Slurm command.
DRAIN_POLL_SECONDS = 1.0


@dataclass
class _Drain:
    since: float
    cancelled: bool = False


class Drains:
    """The drains under way, by the id of what is drained (a node group, a queue)."""

    def __init__(self, timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self._drains: dict[str, _Drain] = {}

    def started(self, key: str) -> bool:
        return key in self._drains

    def busy(self, key: str, what: str, jobs: Callable[[], list[str]], cancel: Callable[[list[str]], None]) -> bool:
        """Whether `what` still has jobs (`jobs()` lists what still holds them: nodes, job ids; empty once
        none), counting from the first call for `key`. Past the timeout `cancel` is given that list, once;
        past the cancel grace it counts as free."""
        drain = self._drains.setdefault(key, _Drain(time.monotonic()))
        holding = jobs()
        if not holding:
            return False
        waited = time.monotonic() - drain.since
        if waited >= self.timeout and not drain.cancelled:
            log.warning("%s still has jobs after %.0f s of draining; cancelling them", what, waited)
            cancel(holding)
            drain.cancelled = True
        if waited >= self.timeout + CANCEL_GRACE_SECONDS:
            log.warning("%s still has jobs %.0f s after cancelling them; going on regardless", what,
                        CANCEL_GRACE_SECONDS)
            return False
        return True

    def done(self, key: str) -> None:
        self._drains.pop(key, None)
