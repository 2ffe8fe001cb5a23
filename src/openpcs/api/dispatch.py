"""Runs one operation's handler inside the right store transaction, with clientToken idempotency.

Reads (Get*, List*) run in a read transaction; every other operation is one serialized write
transaction that also records its idempotency token, so a retried request and the original can never
both create a resource. Which member is the token is read from the model (`idempotencyToken`). After a
write commits, `after_write` wakes the reconciler, best-effort: nothing after the commit can fail the call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from botocore.model import OperationModel
from sqlalchemy import Connection, delete, select

from ..store.db import IDEMPOTENCY_WINDOW_SECONDS, Store, dumps, idempotency, loads
from .errors import ApiError

log = logging.getLogger("openpcs.api")

READ_PREFIXES = ("Get", "List", "Describe")


def is_read(operation: OperationModel) -> bool:
    return operation.name.startswith(READ_PREFIXES)


def _token_member(operation: OperationModel) -> str | None:
    shape = operation.input_shape
    if shape is None:
        return None
    return next((name for name, member in shape.members.items() if member.metadata.get("idempotencyToken")),
                None)


def _request_hash(params: dict[str, Any], token_member: str) -> str:
    rest = {k: v for k, v in params.items() if k != token_member}
    return hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Dispatcher:
    def __init__(self, store: Store, handlers: object, after_write: Callable[[], None],
                 client_error_status: int | None = None) -> None:
        """`client_error_status`: the HTTP status of the service's client errors where it has one for all (SageMaker
        answers every client error 400); None for the usual status of each error (errors.HTTP_STATUS)."""
        self.store, self.handlers, self.after_write = store, handlers, after_write
        self.client_error_status = client_error_status

    def serves(self, operation_name: str) -> bool:
        """Whether the handlers implement this operation of the model."""
        return callable(getattr(self.handlers, operation_name, None))

    def call(self, operation: OperationModel, params: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self.handlers, operation.name)
        if is_read(operation):
            with self.store.read() as conn:
                return handler(conn, params)
        token_member = _token_member(operation)
        token = params.get(token_member) if token_member else None
        with self.store.write() as conn:
            if token is None:
                result = handler(conn, params)
            else:
                result = self._idempotent(conn, operation.name, token, _request_hash(params, token_member), params,
                                          lambda: handler(conn, params))
        if operation.name in getattr(self.handlers, "WRITES_THAT_CHANGE_NO_RESOURCE", ()):
            return result
        try:
            self.after_write()
        except Exception:
            # The write is committed, so it must be answered as applied. A lost wake-up costs nothing: the
            # reconciler is level-triggered and reads the store again when it starts and every few seconds.
            # (Its pipe breaks when the supervisor has died, while this worker finishes its requests.)
            log.warning("could not wake the reconciler after a committed %s", operation.name, exc_info=True)
        return result

    def _idempotent(self, conn: Connection, operation: str, token: str, request_hash: str, params: dict[str, Any],
                    run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = (idempotency.c.operation == operation) & (idempotency.c.token == token)
        record = conn.execute(select(idempotency).where(key)).first()
        now = time.time()
        if record is not None and record.created_at > now - IDEMPOTENCY_WINDOW_SECONDS:
            if record.request_hash != request_hash:
                raise ApiError("ConflictException",
                               f"The clientToken {token!r} was already used for a {operation} request with "
                               "different parameters. Use a new clientToken for a different request.",
                               status=self.client_error_status, resourceId=token, resourceType="clientToken")
            # A service may bring the stored answer up to date (HyperPod's retried BatchAddClusterNodes returns
            # its nodes' latest status).
            replay = getattr(self.handlers, "replay", None)
            response = loads(record.response)
            return replay(operation, conn, params, response) if replay else response
        result = run()
        if record is not None:
            conn.execute(delete(idempotency).where(key))
        conn.execute(idempotency.insert().values(operation=operation, token=token, request_hash=request_hash,
                                                 response=dumps(result), created_at=now))
        return result
