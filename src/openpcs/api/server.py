"""The HTTP front door: AWS JSON protocol over ASGI, generic for any service model.

POST / with `X-Amz-Target: <targetPrefix>.<Operation>`: read the body (bounded in size and time), check
the SigV4 signature, find the operation in the model, parse and validate the input against it, run the
handler, and shape the output by the model. Reads run on the event loop; writes, which may wait for the
store's write lock, run on one worker thread so that they never stall the loop. Every response carries
`x-amzn-RequestId` and every request leaves one structured log line; neither ever carries a secret or a
stack trace. A request refused before its whole body arrived (413, 408) is answered with
`Connection: close`: the rest of its body may still be on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from .dispatch import Dispatcher, is_read
from .errors import ApiError, internal_error
from .model import Service
from .serialize import shape_output
from .sigv4 import AuthError, SigV4Verifier
from .validate import require_object, validate

log = logging.getLogger("openpcs.api")

MAX_BODY_BYTES = 1024 * 1024
# A client must send each chunk of its body within this many seconds, and all of it within the total.
BODY_CHUNK_TIMEOUT = 10.0
BODY_TOTAL_TIMEOUT = 30.0
ACCEPTED_CONTENT_TYPES = ("application/x-amz-json-1.0", "application/x-amz-json-1.1", "application/json")


@dataclass
class Frontend:
    """One service the server answers: its model and the dispatcher that runs its operations."""

    service: Service
    dispatcher: Dispatcher


class ApiApp:
    def __init__(self, frontends: list[Frontend], verifier: SigV4Verifier,
                 scope_of: Callable[[str], str | None] = lambda _key: None) -> None:
        self.frontends = {f.service.target_prefix: f for f in frontends}
        self.verifier = verifier
        self.scope_of = scope_of
        # Writes wait for the store's write lock (BEGIN IMMEDIATE, or PostgreSQL's advisory lock), which a
        # reconciler or another process may hold for a while: they run on this one thread, in arrival order,
        # so that the event loop keeps answering reads (which never wait for a writer) meanwhile.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openpcs-api-write")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = _next_request_id()
        operation_name, caller, status, code = "-", "-", 200, None
        content_type = "application/x-amz-json-1.0"
        body_read = False
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            body = await self._read_body(headers, receive)
            body_read = True
            if scope["method"] != "POST" or scope["path"] != "/":
                raise ApiError("UnknownOperationException",
                               "This endpoint answers AWS JSON requests: POST / with an X-Amz-Target header.",
                               status=404)
            target = headers.get("x-amz-target", "").strip()
            prefix, _, operation_name = target.partition(".")
            frontend = self.frontends.get(prefix)
            content_type = frontend.service.content_type if frontend else content_type
            caller = self._authenticate(scope, headers, body, frontend.service.signing_name if frontend else None)
            operation = frontend.service.operation(operation_name) if frontend else None
            if not target:
                operation_name = "-"
                raise ApiError("ValidationException",
                               "Missing X-Amz-Target header. AWS JSON requests name their operation in it, e.g. "
                               f"X-Amz-Target: {next(iter(self.frontends))}.ListClusters.",
                               reason="unknownOperation")
            if operation is None:
                raise ApiError("ValidationException",
                               f"Unknown operation {target!r}. The X-Amz-Target header must name an operation "
                               f"of {', '.join(self.frontends)}.", reason="unknownOperation")
            if not frontend.dispatcher.serves(operation_name):
                raise ApiError("UnknownOperationException",
                               f"openpcs does not serve {prefix}'s {operation_name} operation (yet).", status=400)
            scope = self.scope_of(caller)
            if scope is not None and scope != f"{frontend.service.signing_name}:{operation_name}":
                raise ApiError("AccessDeniedException", f"User: {caller} is not authorized to perform: "
                               f"{frontend.service.signing_name}:{operation_name}. This key may only call {scope}.")
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type not in ACCEPTED_CONTENT_TYPES:
                raise ApiError("ValidationException", f"Content-Type {media_type or 'missing'!r} is not "
                               f"supported; send {frontend.service.content_type}.", reason="cannotParse")
            params = self._parse(body)
            validate(operation.input_shape, params)
            if is_read(operation):
                result = frontend.dispatcher.call(operation, params)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._writer, frontend.dispatcher.call, operation, params)
            payload = orjson.dumps(shape_output(operation.output_shape, result))
        except ApiError as error:
            status, code, payload = error.status, error.code, orjson.dumps(error.body())
        except AuthError as exc:
            status, code = exc.status, exc.code
            payload = orjson.dumps({"__type": exc.code, "message": exc.message})
        except _Disconnected:
            self._log(request_id, operation_name, caller, 499, "ClientDisconnected", started)
            return
        except Exception:
            log.exception("internal error in %s (request %s)", operation_name, request_id)
            error = internal_error()
            status, code, payload = error.status, error.code, orjson.dumps(error.body())
        response_headers = [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(payload)).encode()),
                            (b"x-amzn-requestid", request_id.encode())]
        if code:
            response_headers.append((b"x-amzn-errortype", code.encode()))
        if not body_read:
            # Refused before the whole body arrived (too large, too slow): the rest of it may still be on
            # the wire, so this connection cannot carry another request. Close it once answered.
            response_headers.append((b"connection", b"close"))
        try:
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": payload})
        finally:
            self._log(request_id, operation_name, caller, status, code, started)

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            raise ApiError("RequestEntityTooLargeException", f"The request body is larger than {MAX_BODY_BYTES} bytes.",
                           status=413)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_TOTAL_TIMEOUT
        try:
            # One timer for the whole body, moved on after each chunk (asyncio.timeout costs no Task, unlike
            # wait_for, which matters on the hot path).
            async with asyncio.timeout(min(BODY_CHUNK_TIMEOUT, BODY_TOTAL_TIMEOUT)) as timer:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ApiError("RequestEntityTooLargeException",
                                       f"The request body is larger than {MAX_BODY_BYTES} bytes.", status=413)
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
                    timer.reschedule(min(loop.time() + BODY_CHUNK_TIMEOUT, deadline))
        except TimeoutError:
            raise ApiError("RequestTimeoutException", "The request body was not received in time.",
                           status=408) from None

    def _authenticate(self, scope: dict[str, Any], headers: dict[str, str], body: bytes,
                      service: str | None) -> str:
        return self.verifier.verify(scope["method"], scope.get("raw_path", b"/").split(b"?")[0].decode(),
                                    scope.get("query_string", b"").decode("latin-1"), headers, body,
                                    service=service)

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            params = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError("ValidationException", f"The request body is not valid JSON: {exc}",
                           reason="cannotParse") from None
        return require_object(params)

    @staticmethod
    def _log(request_id: str, operation: str, caller: str, status: int, code: str | None,
             started: float) -> None:
        # Written straight to stderr as the JsonLogFormatter would write it: the logging module's record
        # machinery cost a tenth of the server's CPU per request (docs/performance.md). One os.write of
        # a line shorter than PIPE_BUF stays whole even beside the other threads' log lines.
        if not log.isEnabledFor(logging.INFO):
            return
        now = time.time()
        os.write(2, orjson.dumps({
            "time": round(now, 3), "level": "INFO", "logger": log.name, "message": "request",
            "requestId": request_id, "operation": operation, "status": status, "error": code,
            "accessKeyId": caller, "latencyMs": round((time.perf_counter() - started) * 1000, 3),
        }, option=orjson.OPT_APPEND_NEWLINE))


# Request ids are UUID-shaped: 80 random bits chosen per process, then a counter. Unique like uuid4 for
# all practical purposes, at a tenth of its cost.
_REQUEST_ID_PREFIX = uuid.uuid4().hex[:20]
_request_counter = itertools.count()


def _next_request_id() -> str:
    h = f"{_REQUEST_ID_PREFIX}{next(_request_counter) % 16**12:012x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Disconnected(Exception):
    """The client went away before sending its whole request; nothing was applied."""


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: easy to grep, parse and ship. Request lines carry their fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("openpcs")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
