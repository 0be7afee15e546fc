"""Bearer-token auth for the aio server, and the metadata key that names an error's class.

``AuthInterceptor`` rejects calls without ``authorization: Bearer <token>`` with
UNAUTHENTICATED, except the health service (load balancers probe it without credentials).
Two scopes: the read/write token, and the admin token, which also allows the identity and
privacy calls and adding or removing a destination (``ADMIN_METHODS``: merge, erase, export,
add/remove destination; merges inside ``Write`` are checked by
the servicer with ``is_admin``). A call of an admin method with the read/write token answers
PERMISSION_DENIED.
``Why`` is not an admin method: like ``GetProfile`` it shows what the read/write scope already reads
(docs/grpc.md, "Auth and TLS").
Errors are mapped to statuses in ``server.bridge``.
"""
from __future__ import annotations

import hmac
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

ERROR_KEY = "segengine-error"
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
DENIED = "missing or invalid bearer token"
ADMIN_DENIED = "this call needs the admin token"
ADMIN_METHODS = frozenset(f"/segengine.v1.Segmentation/{name}" for name in (
    "Merge", "DeleteProfiles", "ExportProfile", "AddDestination", "RemoveDestination"))


def bearer(metadata: Any) -> bytes:
    """The ``authorization`` value of call metadata, as bytes."""
    given = dict(metadata or ()).get("authorization", "")
    return given.encode() if isinstance(given, str) else given


def is_admin(metadata: Any, token: str | None, admin_token: str | None) -> bool:
    """Whether a call with ``metadata`` may run admin calls (a server without any token allows them)."""
    if admin_token:
        return hmac.compare_digest(bearer(metadata), f"Bearer {admin_token}".encode())
    return not token


def _denied(handler: grpc.RpcMethodHandler, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
            message: str = DENIED) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``code``."""
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    codecs = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, *codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, *codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, *codecs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, *codecs)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str | None, admin_token: str | None = None):
        if not token and not admin_token:
            raise ValueError("the bearer token must not be empty")
        self.token, self.admin_token = token, admin_token
        self.expected = f"Bearer {token}".encode() if token else None

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if is_admin(metadata, self.token, self.admin_token):
            return handler
        member = self.expected is None or hmac.compare_digest(bearer(metadata), self.expected)
        if handler_call_details.method in ADMIN_METHODS and member and bearer(metadata):
            return _denied(handler, grpc.StatusCode.PERMISSION_DENIED, ADMIN_DENIED)
        if member and handler_call_details.method not in ADMIN_METHODS:
            return handler
        return _denied(handler)
