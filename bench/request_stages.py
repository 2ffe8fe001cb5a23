#!/usr/bin/env python3
"""What each stage of openpcs's request path costs, in microseconds, in-process (no sockets).

    python bench/request_stages.py

Builds the service as `openpcs serve` does (fresh temp data dir, 5 clusters), then times, for GetCluster
and ListClusters: the whole ASGI app called directly (no HTTP server), and each stage on its own —
SigV4 verification, input validation, the handler in its store transaction, output shaping, orjson,
the request log line (JSON formatter, written to a file) and uuid4. The difference between the app
called directly and `CPU us/req` in bench/api_throughput.py is what the HTTP server (uvicorn, uvloop,
the sockets) costs. Uses openpcs internals, so it may need updating when they change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openpcs.api.serialize import shape_output
from openpcs.api.server import ApiApp, JsonLogFormatter
from openpcs.api.validate import validate
from openpcs.app import Service

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_throughput import read_key  # noqa: E402

HOST = "127.0.0.1:8080"


def signed(key: tuple[str, str], operation: str, payload: dict) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    request = AWSRequest(method="POST", url=f"http://{HOST}/", data=body,
                         headers={"Content-Type": "application/x-amz-json-1.0",
                                  "X-Amz-Target": f"AWSParallelComputingService.{operation}"})
    SigV4Auth(Credentials(*key), "pcs", "us-east-1").add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = HOST
    return headers, body


def asgi_call(app: ApiApp, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def per_call_us(fn, number: int) -> float:
    fn()
    return min(timeit.repeat(fn, timer=time.process_time, number=number, repeat=3)) / number * 1e6


def time_stages(app: ApiApp, frontend, key: tuple[str, str], loop: asyncio.AbstractEventLoop,
                operation_name: str, payload: dict, n: int = 3000) -> dict[str, float]:
    headers, body = signed(key, operation_name, payload)
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def many() -> None:
        for _ in range(n):
            await app(scope, receive, send)

    loop.run_until_complete(many())  # warm
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        loop.run_until_complete(many())
        best = min(best, time.process_time() - start)
    whole = best / n * 1e6

    operation = frontend.service.operation(operation_name)
    params = orjson.loads(body)
    result = frontend.dispatcher.call(operation, params)
    shaped = shape_output(operation.output_shape, result)
    return {
        "whole ApiApp, called directly (no HTTP server)": whole,
        "  SigV4 verification": per_call_us(lambda: app.verifier.verify("POST", "/", "", headers, body), n),
        "  input validation": per_call_us(lambda: validate(operation.input_shape, params), n),
        "  handler + store transaction (Dispatcher.call)": per_call_us(
            lambda: frontend.dispatcher.call(operation, params), n),
        "  output shaping (shape_output)": per_call_us(lambda: shape_output(operation.output_shape, result), n),
        "  orjson.dumps of the response": per_call_us(lambda: orjson.dumps(shaped), n),
        "  request log line (ApiApp._log, to a file)": per_call_us(
            lambda: app._log("x", operation_name, key[0], 200, None, time.perf_counter()), n),
        "  uuid4 request id": per_call_us(lambda: str(uuid.uuid4()), n),
    }


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="openpcs-stages-"))
    service = None
    try:
        log_file = work / "requests.log"
        handler = logging.FileHandler(log_file)
        handler.setFormatter(JsonLogFormatter())
        root = logging.getLogger("openpcs")
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)

        service = Service(work / "data", None, None, 5, f"http://{HOST}")
        app: ApiApp = service.app
        key = read_key(work / "data")
        for i in range(5):
            headers, body = signed(key, "CreateCluster", {
                "clusterName": "bench" if i == 0 else f"bench-{i}", "scheduler": {"type": "SLURM", "version": "24.11"},
                "size": "SMALL", "networking": {"subnetIds": ["subnet-0123456789abcdef0"]}})
            status, answer = asgi_call(app, headers, body)
            assert status == 200, answer
        frontend = next(iter(app.frontends.values()))

        # One event loop for the whole-app timing, as under uvicorn.
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()

        print(f"{'stage (CPU time, best of 3 x 3000 calls)':<52} {'GetCluster':>11} {'ListClusters':>13}")
        rows: dict[str, list[float]] = {}
        for operation_name, payload in (("GetCluster", {"clusterIdentifier": "bench"}), ("ListClusters", {})):
            stages = time_stages(app, frontend, key, loop, operation_name, payload)
            for name, value in stages.items():
                rows.setdefault(name, []).append(value)
        loop.close()
        for name, (get, lst) in rows.items():
            print(f"{name:<52} {get:>9.1f}us {lst:>11.1f}us")
        return 0
    finally:
        if service is not None:
            service.store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
