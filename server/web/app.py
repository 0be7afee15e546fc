"""The HTTP side of a server: metrics, health, the JSON API and the web console on one port.

``WebFront`` is an aiohttp application served on the gRPC server's own event loop
(``segengine serve --http-port N``):

- ``/metrics`` (Prometheus text format), ``/healthz`` (the process answers), ``/readyz`` (the
  engine is loaded and the server serving: 503 before start and once shutdown begins);
- ``/v1/...``: the JSON API (``server.web.api.ROUTES``), with the gRPC service's token auth
  (``Authorization: Bearer ...``) and errors: an error's class names its gRPC status, which
  ``HTTP_STATUS`` maps to the HTTP status; the body is ``{"error": {"code", "message",
  "position"}}`` (the gRPC status name, the same message, the query's 1-based column or null);
- ``/openapi.json``: the API's OpenAPI 3.1 document; ``/`` and ``/console/...``: the web console.

With the server's TLS certificate and key, this port serves HTTPS.

Health, metrics, the OpenAPI document and the console's files need no token (they hold no
profile data); the console sends the token the user types with each API call.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from engine.errors import BadRequest, DataError, PermissionDenied, QueryError, SegengineError

from ..gate import RequestTooLarge, WouldWait
from ..interceptors import ADMIN_DENIED, DENIED, is_admin
from ..metrics import CONTENT_TYPE, error_code
from .api import ROUTES, ApiRequest, HttpCall, MemberStream, Route, parse_json, parse_records
from .openapi import openapi_document

log = logging.getLogger("segengine.server")

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: HTTP status of each gRPC status (the mapping of Google's API design guide and grpc-gateway).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
}
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})


class NoRoute(SegengineError):
    """A request for a path or method the API does not have."""

    grpc_status = "NOT_FOUND"


class Unauthenticated(SegengineError):
    """An API request without the server's bearer token."""

    grpc_status = "UNAUTHENTICATED"


def error_body(error: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of an error (see the module docstring); anything unexpected is INTERNAL."""
    code = error_code(error)
    message = str(error) if isinstance(error, SegengineError) else f"internal error: {type(error).__name__}: {error}"
    detail: dict[str, Any] = {"code": code, "message": message,
                              "position": error.column if isinstance(error, QueryError) else None}
    if isinstance(error, DataError):
        detail["record"], detail["field"] = error.record, error.field
    return HTTP_STATUS.get(code, 500), {"error": detail}


def _encode(value: Any) -> bytes:
    return json.dumps(value, default=_plain).encode()


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: sets and tuples as lists, NumPy scalars as numbers."""
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class WebFront:
    """The aiohttp application of one server (see the module docstring); runs on the server's loop."""

    def __init__(self, server: Any):
        self.server = server
        config = server.config
        self.token, self.admin_token = config.token, config.admin_token
        self.expected = f"Bearer {config.token}".encode() if config.token else None
        self.metrics = server.metrics
        self.app = web.Application(client_max_size=config.max_message_bytes)
        self.app.router.add_get("/metrics", self.metrics_page)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/openapi.json", self.openapi)
        self.app.router.add_get("/", self.console)
        self.app.router.add_static("/console/", CONSOLE_DIR)
        for route in ROUTES:
            self.app.router.add_route(route.http_method, route.path, self._endpoint(route))
        self.app.router.add_route("*", "/v1/{tail:.*}", self.no_route)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); the port."""
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.server.config.grace_s)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_port=False, ssl_context=self._tls())
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    def _tls(self) -> ssl.SSLContext | None:
        """With the server's TLS certificate and key, HTTPS on this port too (tokens never travel in clear)."""
        config = self.server.config
        if not config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        return context

    async def stop(self) -> None:
        """Stop listening; requests in flight get up to the server's grace period."""
        if self.runner is not None:
            await self.runner.cleanup()

    # -- operations pages -------------------------------------------------------------------
    async def metrics_page(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(self.server.pool, self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.server.serving
        return _json({"status": "ready" if ready else "not ready"}, 200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def console(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

    # -- the API ----------------------------------------------------------------------------
    async def no_route(self, request: web.Request) -> web.Response:
        status, body = error_body(NoRoute(f"no API route {request.method} {request.path} (see /openapi.json)"))
        return _json(body, status)

    def _authorize(self, header: str, admin: bool) -> None:
        """As ``server.interceptors.AuthInterceptor``: Unauthenticated or PermissionDenied unless allowed."""
        if not self.token and not self.admin_token:
            return
        if is_admin((("authorization", header),), self.token, self.admin_token):
            return
        member = self.expected is None or hmac.compare_digest(header.encode(), self.expected)
        if admin and member and header:
            raise PermissionDenied(ADMIN_DENIED)
        if member and not admin:
            return
        raise Unauthenticated(DENIED)

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        metrics = self.metrics

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            metrics.call_started("http")
            code = "OK"
            streaming: list[web.StreamResponse] = []  # a streamed file's response, once its status is sent
            try:
                self._authorize(request.headers.get("Authorization", ""), route.admin)
                body = await self._run(route, request)
                if isinstance(body, MemberStream):
                    return await self._stream(request, body, streaming)
                return web.Response(body=body, status=route.status, content_type="application/json")
            except Exception as error:  # noqa: BLE001 - the one place API errors become responses
                code = error_code(error)
                if streaming:  # the status is sent: the client sees the file cut short (no final chunk)
                    log.error("HTTP %s failed while streaming: %s: %s: %s", route.name, code, type(error).__name__,
                              error)
                    raise
                status, body = error_body(error)
                if code == "INTERNAL":
                    log.error("HTTP %s failed: INTERNAL: %s: %s", route.name, type(error).__name__, error)
                    log.debug("HTTP %s failed", route.name, exc_info=error)
                else:
                    log.info("HTTP %s failed: %s: %s", route.name, code, " ".join(str(error).split())[:500])
                return _json(body, status)
            finally:
                metrics.call_ended("http", route.name, code, time.perf_counter() - started)

        handle.__name__ = route.name
        return handle

    async def _stream(self, request: web.Request, stream: MemberStream,
                      streaming: list[web.StreamResponse]) -> web.StreamResponse:
        """Send a streamed file: its first piece is made before the status is sent (so an error there is
        still a JSON error), the others as the client takes them."""
        loop = asyncio.get_running_loop()
        pool = self.server.heavy_pool or self.server.pool
        piece = await loop.run_in_executor(pool, stream.next_piece)
        response = web.StreamResponse(status=200, headers={
            "Content-Type": stream.content_type,
            "Content-Disposition": f'attachment; filename="members.{stream.format}"'})
        streaming.append(response)
        await response.prepare(request)
        while piece is not None:
            await response.write(piece)
            piece = await loop.run_in_executor(pool, stream.next_piece)
        await response.write_eof()
        return response

    async def _run(self, route: Route, request: web.Request) -> Any:
        """The route's answer as JSON bytes (encoded in the pool, but for point reads answered on the loop), or
        a route's MemberStream."""
        timeout = request.headers.get("X-Timeout-Ms")
        timeout_s = _timeout_s(timeout) if timeout else None
        authorization = request.headers.get("Authorization", "")
        peer = f"http:{request.remote}"
        base = partial(ApiRequest, self.server.gate, path=request.match_info, params=request.query,
                       started=self.server.started)
        if route.inline:
            try:
                return _encode(route.run(base(HttpCall(True, timeout_s, authorization, peer))))
            except WouldWait:
                pass
        try:
            text = await request.text() if route.body != "none" else ""
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(f"the request body is over the limit of {request.client_max_size} bytes") from None
        ndjson = request.content_type in NDJSON_TYPES

        def job() -> Any:
            body = None
            if route.body == "records":
                body = parse_records(text, ndjson)
            elif route.body == "json":
                body = parse_json(text) if text.strip() else {}
            api_request = base(HttpCall(False, timeout_s, authorization, peer), body=body)
            answer = route.run(api_request)
            return answer if route.stream else _encode(answer)

        pool = self.server.pool
        if route.heavy and self.server.heavy_pool is not None:
            pool = self.server.heavy_pool
        elif route.query and self.server.heavy_pool is not None:
            query = _peek_query(text)
            if query and self.server.gate.heavy(query):
                pool = self.server.heavy_pool
        return await asyncio.get_running_loop().run_in_executor(pool, job)


def _timeout_s(text: str) -> float:
    """Seconds of an ``X-Timeout-Ms`` header (BadRequest unless a number over 0)."""
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"X-Timeout-Ms must be a number of milliseconds, got {text!r}") from None
    if not value > 0:
        raise BadRequest(f"X-Timeout-Ms must be more than 0, got {text!r}")
    return value / 1000


def _peek_query(text: str) -> str:
    """The ``query`` field of a JSON body, or "" (the body is checked properly later, in the pool)."""
    if len(text) > 65536:
        return ""
    try:
        value = json.loads(text).get("query", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""
