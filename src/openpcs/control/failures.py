"""How the runtime tells the reconciler that a change failed, or is under way and must be looked at again."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """The change cannot be made; `code` and `message` become the resource's errorInfo."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RuntimePending(Exception):
    """The change is under way (daemons starting, nodes registering, jobs draining): look again after
    `retry_after` seconds, or sooner if anything is written."""

    def __init__(self, retry_after: float = 0.05) -> None:
        super().__init__(f"look again in {retry_after} s")
        self.retry_after = retry_after


class ControllerBusy(RuntimePending):
    """slurmctld runs but did not answer within the patience of a command: a busy controller (thousands of nodes
    registering, a large job starting) is a reason to wait, not to fail. The reconciler looks again, and fails the
    change only if the controller has stayed silent past its bound (`message` then says why)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(retry_after)
        self.message = message
