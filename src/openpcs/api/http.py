"""A small HTTP/1.1 server for the API's ASGI app, on uvloop and httptools.

Why not uvicorn: profiling showed its general-purpose per-request machinery (and two socket writes per
response) costing more CPU than openpcs's own request handling (docs/performance.md). This server does
only what AWS JSON clients need: keep-alive, sequential pipelining, Expect: 100-continue, one write per
response. It also guards what uvicorn left open: a client must finish its request headers within
HEADER_TIMEOUT seconds and within MAX_HEADER_BYTES, and an idle keep-alive connection is closed after
KEEP_ALIVE_TIMEOUT seconds. A connection parses only a few requests ahead of the one it answers, and
answers nothing more while its socket's write buffer is full; past that it stops reading, so that a client
that pipelines faster than it reads its answers is held back by its own TCP window instead of growing this
process. The ASGI app (ApiApp) still owns body limits and body timeouts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import signal
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger("openpcs.http")

HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
SHUTDOWN_GRACE_SECONDS = 10.0
LISTEN_BACKLOG = 1024
# Requests parsed ahead of the one being answered, at most (plus what one PARSE_SLICE holds): past that a
# connection stops reading. A parsed request costs far more memory than its bytes on the wire.
MAX_PIPELINED = 16
PARSE_SLICE = 4096
_NOTHING = memoryview(b"")

_REASONS = {200: b"OK", 400: b"Bad Request", 402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found",
            408: b"Request Timeout", 409: b"Conflict", 413: b"Payload Too Large",
            431: b"Request Header Fields Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error"}


class _Date:
    """The Date header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second, self._value = -1, b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, email.utils.formatdate(now, usegmt=True).encode()
        return self._value


_date = _Date()


class _Request:
    __slots__ = ("scope", "chunks", "complete", "waiter", "keep_alive", "expect_continue")

    def __init__(self, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.scope = scope
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.queue: deque[_Request] = deque()  # parsed (at least to their headers), not yet answered
        self.running: _Request | None = None
        self.parsing: _Request | None = None
        self.unparsed = _NOTHING  # received, not yet parsed: reading is paused while any is left
        self.reading_paused = False
        self.writing_paused = False  # the transport's write buffer is full: answer nothing more until it drains
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.in_headers = False  # between a request's first byte and the end of its headers
        self.timer: asyncio.TimerHandle | None = None
        self.client: tuple[str, int] | None = None

    # -- transport events -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if peer else None
        self.server.connections.add(self)
        self._arm(KEEP_ALIVE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._disarm()
        if self.running is not None:
            self.running.wake()  # its app sees the disconnect
        self.queue.clear()  # never to be answered: free them now
        self.unparsed = _NOTHING

    def data_received(self, data: bytes) -> None:
        self.unparsed = memoryview(data)  # nothing is left from before: reading was paused until it was parsed
        self._parse()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._next()  # parsing goes on as requests are answered (_run)

    def _parse(self) -> None:
        """Parse what arrived, a slice at a time, while the client is not too far ahead of its responses.

        Parsing stops while MAX_PIPELINED requests wait, or while a waiting request's body is being read (the
        app bounds a body only once its request runs); the rest stays unparsed and reading pauses, until
        answering has caught up.
        """
        while (self.unparsed and len(self.queue) < MAX_PIPELINED and not self.closed
               and (self.parsing is None or self.parsing is self.running)):
            chunk, self.unparsed = self.unparsed[:PARSE_SLICE], self.unparsed[PARSE_SLICE:]
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                self._refuse(400, "Protocol upgrades are not supported.")
            except httptools.HttpParserError as exc:
                self._refuse(400, f"Malformed HTTP request: {exc}.")
        if self.closed or self.transport is None:
            return
        if self.unparsed:
            self._disarm()  # headers waiting here are late because of us, not the client
        else:
            self.unparsed = _NOTHING  # let go of the chunk the empty slice still refers to
            if self.in_headers and self.timer is None:
                self._arm(HEADER_TIMEOUT)  # parsing again: the rest of the headers is up to the client
        if bool(self.unparsed) != self.reading_paused:
            self.reading_paused = not self.reading_paused
            if self.reading_paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url, self.headers, self.header_bytes = b"", [], 0
        self.in_headers = True
        self._arm(HEADER_TIMEOUT)  # from its first byte, a request has this long to finish its headers

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_header_bytes(len(name) + len(value))

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": self.parser.get_http_version(),
            "method": self.parser.get_method().decode("ascii"), "scheme": "http",
            "path": unquote(parsed.path.decode("latin-1")), "raw_path": parsed.path,
            "query_string": parsed.query or b"", "headers": self.headers,
            "client": self.client, "server": self.server.address,
        }
        expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in self.headers)
        request = _Request(scope, self.parser.should_keep_alive(), expect)
        self.parsing = request
        self.queue.append(request)
        self.headers, self.in_headers = [], False
        self._disarm()
        self._next()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.chunks.append(body)
            self.parsing.wake()

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.complete = True
            self.parsing.wake()
            self.parsing = None

    # -- running requests -------------------------------------------------------------------------

    def _next(self) -> None:
        if self.running is None and self.queue and not self.closed and not self.writing_paused:
            self.running = self.queue.popleft()
            self.loop.create_task(self._run(self.running))

    async def _run(self, request: _Request) -> None:
        responded = {"status": 500, "headers": [], "done": False}

        async def receive() -> dict[str, Any]:
            while True:
                if request.chunks:
                    body = request.chunks.popleft()
                    return {"type": "http.request", "body": body,
                            "more_body": bool(request.chunks) or not request.complete}
                if request.complete:
                    return {"type": "http.request", "body": b"", "more_body": False}
                if self.closed:
                    return {"type": "http.disconnect"}
                if request.expect_continue and self.transport is not None:
                    request.expect_continue = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.waiter = self.loop.create_future()
                await request.waiter
                request.waiter = None

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                responded["status"], responded["headers"] = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                responded["done"] = True
                self._respond(request, responded["status"], responded["headers"], message.get("body", b""))

        try:
            await self.app(request.scope, receive, send)
        except Exception:
            log.exception("the API app failed on a request")
            if not responded["done"]:
                body = orjson.dumps({"__type": "InternalServerException", "message": "Internal error."})
                self._respond(request, 500, [(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode())], body)
        finally:
            self.running = None
            if not self.closed and not request.complete:
                self._close()  # the app answered before the body ended: the rest cannot be skipped safely
            elif not self.closed and not request.keep_alive:
                self._close()
            elif not self.closed:
                if not self.queue and not self.in_headers:
                    self._arm(KEEP_ALIVE_TIMEOUT)
                self._next()
                self._parse()

    def _respond(self, request: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.closed or self.transport is None:
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
                 b"date: ", _date.value(), b"\r\n"]
        for name, value in headers:
            if name.lower() == b"connection" and value.lower() == b"close":
                request.keep_alive = False
            parts += [name, b": ", value, b"\r\n"]
        if not request.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        self.transport.write(b"".join(parts))
        if not request.keep_alive:
            self._close()

    # -- guards -----------------------------------------------------------------------------------

    def _count_header_bytes(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, f"The request's URL and headers exceed {MAX_HEADER_BYTES} bytes.")
            raise httptools.HttpParserError("headers too large")  # stop parsing this connection's data

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that never reached the app, and close: its framing can no longer be trusted."""
        if self.closed or self.transport is None:
            return
        code = {400: "BadRequestException", 408: "RequestTimeoutException",
                431: "RequestHeaderFieldsTooLargeException"}.get(status, "BadRequestException")
        body = orjson.dumps({"__type": code, "message": message})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"x-amzn-errortype: %s\r\nconnection: close\r\n\r\n%s"
                             % (status, _REASONS.get(status, b"Unknown"), len(body), code.encode(), body))
        self._close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.in_headers:
            self._refuse(408, f"The request's headers were not received within {HEADER_TIMEOUT:.0f} seconds.")
        elif self.running is None and not self.queue:
            self._close()  # an idle keep-alive connection; a running request has the app's body timeout

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self._disarm()
            self.transport.close()

    def idle(self) -> bool:
        return self.running is None and not self.queue


def bind(host: str, port: int) -> socket.socket:
    """The API's socket, bound once by the supervisor and shared by every worker process.

    It is bound at once, so that a port in use fails fast, but listens only once the service is ready to
    answer (Server or the supervisor calls listen): an open port means a working service.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"openpcs cannot listen on {host}:{port}: {exc.strerror}. "
                         "Choose another --port or --host.") from None
    sock.set_inheritable(True)
    return sock


class Server:
    """Serves `app` on a listening socket until SIGINT or SIGTERM, then drains and returns."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.app, self.sock = app, sock
        self.address = sock.getsockname()[:2]
        sock.listen(LISTEN_BACKLOG)  # a no-op if the supervisor already listens on it
        self.connections: set[_Connection] = set()

    def run(self) -> None:
        import uvloop

        uvloop.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = await loop.create_server(lambda: _Connection(self.app, self), sock=self.sock, backlog=LISTEN_BACKLOG)
        try:
            await stop.wait()
        finally:
            server.close()
            deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
            while any(not c.idle() for c in self.connections) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for connection in list(self.connections):
                connection._close()
            await server.wait_closed()
