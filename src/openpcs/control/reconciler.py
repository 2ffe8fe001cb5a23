"""The reconciler: brings every resource in CREATING, UPDATING or DELETING to its next state.

Level-triggered and idempotent: each pass reads what is in transition from the store and asks the
runtime to converge it, so a restart (even after kill -9) just carries on. A result is committed only if
no API write changed the resource meanwhile (its generation); otherwise the next pass starts over.

A health pass looks after what is settled: an ACTIVE (or UPDATE_FAILED) cluster's munged and slurmctld,
and each node group's slurmd, are started again if they stopped, whether while the server ran or while it
was down. What cannot be brought back shows in the ACTIVE resource's errorInfo until it is.

Every pass also acts on Slurm's power-saving requests (control.scaling). slurmctld's ResumeProgram nudges
the loop through an abstract unix datagram socket named after the data dir, so a job's nodes are launched
at once rather than at the next idle wake-up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from sqlalchemy import delete

from ..domain import ids
from ..providers.base import ProviderError
from ..store import resources as rows
from ..store.db import IDEMPOTENCY_WINDOW_SECONDS, Store, idempotency
from ..store.resources import Resource
from .failures import ControllerBusy, RuntimeFailure, RuntimePending
from .runtime import Runtime

log = logging.getLogger("openpcs.reconciler")

FAILED = {"CREATING": "CREATE_FAILED", "UPDATING": "UPDATE_FAILED", "DELETING": "DELETE_FAILED"}
# Even with nothing to do, look again this often (housekeeping, and writes from other processes).
IDLE_INTERVAL_SECONDS = 2.0
PURGE_INTERVAL_SECONDS = 300.0
# How often the health pass looks at every settled cluster and node group (it reads records and /proc).
HEAL_INTERVAL_SECONDS = 3.0
# A daemon that will not start can hold the loop for seconds (slurmctld tries its port for 10 s): after each
# failure the resource waits longer before the next try, up to the last of these.
HEAL_BACKOFF_SECONDS = (30.0, 60.0, 120.0, 300.0)
# A change that waits for a slurmctld that runs but does not answer (busy) fails only after this long.
CONTROLLER_BUSY_BOUND_SECONDS = 600.0


class Reconciler:
    def __init__(self, store: Store, runtime: Runtime) -> None:
        self.store, self.runtime = store, runtime
        self._last_purge = 0.0
        self._last_heal = 0.0
        self._heal_failures: dict[str, tuple[int, float]] = {}  # resource id -> (failures in a row, next try)
        self._retry_after: float | None = None  # the soonest a pending change asked to be looked at
        self._busy_since: dict[str, float] = {}  # resource id -> since when its change waits for a busy slurmctld
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._nudges = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._listener = threading.Thread(target=self._listen, name="reconciler-nudges", daemon=True)

    def start(self) -> None:
        try:
            self._nudges.bind(self.runtime.layout.wake_address())
        except OSError as exc:  # another openpcs on this data dir: it hears the nudges, this one polls
            log.warning("cannot listen for power-saving requests (%s); looking for them every %.0f s", exc,
                        IDLE_INTERVAL_SECONDS)
        else:
            self._listener.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._nudges.close()  # ends the listener's recv

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._nudges.recv(64)
            except OSError:
                return
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                progressed = self.run_pass()
                scaling_after = self.runtime.scaler.run()
                self._heal()
                self._purge()
            except Exception:  # the loop must outlive any one bad pass; the next pass retries
                log.exception("reconcile pass failed")
                progressed, scaling_after = False, None
            if not progressed:
                self._wake.wait(min(self._retry_after or IDLE_INTERVAL_SECONDS, scaling_after or IDLE_INTERVAL_SECONDS,
                                    IDLE_INTERVAL_SECONDS))

    def run_pass(self) -> bool:
        """One pass over everything in transition; True if any resource moved on."""
        with self.store.read() as conn:
            pending = rows.in_transition(conn)
        self._retry_after = None
        return any([self._reconcile(resource) for resource in pending])

    def _reconcile(self, resource: Resource) -> bool:
        with self.store.read() as conn:
            cluster = resource if resource.kind == ids.CLUSTER else rows.by_id(conn, resource.cluster_id)
        if cluster is None:
            return False
        if resource is cluster and resource.status == "DELETING":
            with self.store.read() as conn:
                if rows.children(conn, cluster.id):
                    return False  # its node groups and queues go first (HyperPod's DeleteCluster deletes them too)
        if resource.kind != ids.CLUSTER and resource.status != "DELETING":
            if cluster.status in ("CREATING",):
                return False  # a node group or queue waits for its cluster to come up
            if cluster.status in ("CREATE_FAILED", "DELETING", "DELETE_FAILED"):
                return self._record(resource, FAILED[resource.status], {
                    **resource.state, "errorInfo": [{"code": "ClusterNotActive", "message":
                                                     f"Cluster {cluster.id} is {cluster.status}."}]})
        started = time.monotonic()
        try:
            if resource.status == "DELETING":
                getattr(self.runtime, f"remove_{_kind(resource)}")(*_args(cluster, resource))
                with self.store.write() as conn:
                    done = rows.remove(conn, resource)
                outcome = "deleted"
            else:
                state = getattr(self.runtime, f"converge_{_kind(resource)}")(*_args(cluster, resource))
                done = self._record(resource, "ACTIVE", state)
                outcome = "ACTIVE"
        except ControllerBusy as busy:
            since = self._busy_since.setdefault(resource.id, started)
            if started - since < CONTROLLER_BUSY_BOUND_SECONDS:
                log.warning("%s %s waits for its cluster's busy slurmctld (%s)", resource.kind, resource.id,
                            busy.message)
                self._retry_after = min(self._retry_after or busy.retry_after, busy.retry_after)
                return False
            error = {"code": "SlurmControllerUnreachable", "message": f"slurmctld did not answer for "
                     f"{CONTROLLER_BUSY_BOUND_SECONDS:.0f} s; last: {busy.message}"}
            done = self._record(resource, FAILED[resource.status], {**resource.state, "errorInfo": [error]})
            outcome = FAILED[resource.status]
        except RuntimePending as pending:
            self._busy_since.pop(resource.id, None)
            self._retry_after = min(self._retry_after or pending.retry_after, pending.retry_after)
            return False
        except (RuntimeFailure, ProviderError) as failure:
            error = {"code": failure.code, "message": failure.message}
            done = self._record(resource, FAILED[resource.status], {**resource.state, "errorInfo": [error]})
            outcome = FAILED[resource.status]
        except Exception as exc:
            log.exception("reconciling %s %s failed", resource.kind, resource.id)
            error = {"code": "InternalError", "message": f"openpcs could not apply the change ({type(exc).__name__}). "
                                                          "See the server log."}
            done = self._record(resource, FAILED[resource.status], {**resource.state, "errorInfo": [error]})
            outcome = FAILED[resource.status]
        self._busy_since.pop(resource.id, None)
        log.info("%s %s %s -> %s in %.3fs%s", resource.kind, resource.id, resource.status, outcome,
                 time.monotonic() - started, "" if done else " (superseded by a newer request)")
        return True

    def _heal(self) -> None:
        if time.monotonic() - self._last_heal < HEAL_INTERVAL_SECONDS:
            return
        self._last_heal = time.monotonic()
        with self.store.read() as conn:
            settled = rows.settled(conn)
        clusters = {r.id: r for r in settled if r.kind == ids.CLUSTER}
        settled_ids = {r.id for r in settled}
        self._heal_failures = {key: value for key, value in self._heal_failures.items() if key in settled_ids}
        for resource in settled:
            cluster = clusters.get(resource.cluster_id or resource.id)
            if resource.kind == ids.QUEUE or cluster is None:
                continue  # a queue has no daemon; a cluster in transition is the passes' to converge
            failures, next_try = self._heal_failures.get(resource.id, (0, 0.0))
            if time.monotonic() < next_try:
                continue
            try:
                getattr(self.runtime, f"heal_{_kind(resource)}")(*_args(cluster, resource))
                error = None
                self._heal_failures.pop(resource.id, None)
            except RuntimePending:
                continue  # e.g. slurmctld starting: the next health pass looks again
            except (RuntimeFailure, ProviderError) as failure:
                error = {"code": failure.code, "message": failure.message}
                wait = HEAL_BACKOFF_SECONDS[min(failures, len(HEAL_BACKOFF_SECONDS) - 1)]
                self._heal_failures[resource.id] = (failures + 1, time.monotonic() + wait)
            except Exception:
                log.exception("health check of %s %s failed", resource.kind, resource.id)
                continue
            self._note_health(resource, error)

    def _note_health(self, resource: Resource, error: dict | None) -> None:
        """An ACTIVE resource's errorInfo says what the health pass cannot bring back, until it can. (An
        UPDATE_FAILED one keeps its update's errorInfo.)"""
        wanted = [error] if error else None
        if resource.status != "ACTIVE" or resource.state.get("errorInfo") == wanted:
            return
        state = {key: value for key, value in resource.state.items() if key != "errorInfo"}
        if error:
            log.warning("%s %s: %s", resource.kind, resource.id, error["message"])
            state["errorInfo"] = wanted
        self._record(resource, resource.status, state)

    def _record(self, resource: Resource, status: str, state: dict) -> bool:
        with self.store.write() as conn:
            return rows.record_outcome(conn, resource, status, state)

    def _purge(self) -> None:
        """Forget idempotency records past their window, and events past their retention."""
        if time.monotonic() - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = time.monotonic()
        with self.store.write() as conn:
            conn.execute(delete(idempotency).where(
                idempotency.c.created_at < time.time() - IDEMPOTENCY_WINDOW_SECONDS))
        self.runtime.events.purge()


def _kind(resource: Resource) -> str:
    return {ids.CLUSTER: "cluster", ids.NODE_GROUP: "node_group", ids.QUEUE: "queue"}[resource.kind]


def _args(cluster: Resource, resource: Resource) -> tuple[Resource, ...]:
    return (cluster,) if resource.kind == ids.CLUSTER else (cluster, resource)
