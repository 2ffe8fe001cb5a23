"""The one interface between the control plane and wherever instances run.

A provider launches instances (each with the bootstrap data its node agent needs), describes them and
terminates them. The local provider runs them as processes on this host; a provider for other hosts, EC2 or
Kubernetes implements the same four calls. Calls go through `Bounded`, so a provider that hangs or raises
becomes a ProviderError (a reason on the node, an event), never a stuck reconciler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# Instance states a provider reports.
PENDING = "PENDING"    # launched, its node not registered and running yet
RUNNING = "RUNNING"    # its slurmd runs
IMPAIRED = "IMPAIRED"  # it runs but does not work (EC2's impaired status check; a stopped process here)
STOPPED = "STOPPED"    # it exists but its node's daemons do not run: a launch starts them again
FAILED = "FAILED"      # its bootstrap failed (detail says how); it must be launched again or replaced
GONE = "GONE"          # it no longer exists (terminated, or died): only a new instance can take its place
# Codes of an IMPAIRED instance: it does not answer at all, or it answers but fails its health checks.
UNRESPONSIVE = "Unresponsive"
HEALTH_CHECK_FAILED = "HealthCheckFailed"
# Code of a FAILED instance whose deep health checks on start failed.
DEEP_HEALTH_CHECK_FAILED = "DeepHealthCheckFailed"

# How long one provider call may take before the control plane gives up on it.
CALL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LaunchRequest:
    instance_id: str
    cluster_id: str
    node_group_id: str
    node_name: str
    instance_type: str
    # What the node agent needs to register (endpoint, bootstrapId, its own key): a secret. None starts an
    # instance launched before again, with what it was given then.
    bootstrap: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class InstanceStatus:
    state: str
    detail: str = ""
    code: str = ""  # FAILED: an error code, as EC2 would give; IMPAIRED: UNRESPONSIVE or HEALTH_CHECK_FAILED


class Provider(Protocol):
    def launch(self, requests: Sequence[LaunchRequest]) -> dict[str, str]:
        """Launch these instances; returns instance id -> error code of each the provider refused at once."""

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceStatus]:
        """The status of each instance (GONE for one it does not know)."""

    def stop(self, instance_ids: Sequence[str]) -> None:
        """Stop the instances' Slurm daemons and keep the instances (a launch starts them again)."""

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Terminate the instances and forget them."""


class ProviderError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


T = TypeVar("T")


class Bounded:
    """A provider whose every call returns within `timeout` seconds, or raises ProviderError.

    A call that times out keeps running in its thread; the control plane moves on and treats its instances by
    what the next describe says."""

    def __init__(self, provider: Provider, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self.provider, self.timeout = provider, timeout
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="provider")

    def _call(self, what: str, function: Callable[..., T], *args: Any) -> T:
        future = self._pool.submit(function, *args)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout as exc:
            raise ProviderError("ProviderTimeout", f"the provider did not {what} within {self.timeout:.0f} s") from exc
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError("ProviderError", f"the provider could not {what}: {type(exc).__name__}: {exc}") from exc

    def launch(self, requests: Sequence[LaunchRequest]) -> dict[str, str]:
        return self._call("launch instances", self.provider.launch, list(requests)) if requests else {}

    def describe(self, instance_ids: Sequence[str]) -> dict[str, InstanceStatus]:
        return self._call("describe instances", self.provider.describe, list(instance_ids)) if instance_ids else {}

    def stop(self, instance_ids: Sequence[str]) -> None:
        if instance_ids:
            self._call("stop instances", self.provider.stop, list(instance_ids))

    def terminate(self, instance_ids: Sequence[str]) -> None:
        if instance_ids:
            self._call("terminate instances", self.provider.terminate, list(instance_ids))
