"""Bearer-token auth for the aio server, and the metadata key that names an error's class.

``AuthInterceptor`` rejects calls without ``authorization: Bearer <token>`` with
UNAUTHENTICATED, except the health service (load balancers probe it without credentials).
Errors are mapped to statuses in ``server.bridge``.
"""
from __future__ import annotations

import hmac
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

ERROR_KEY = "segengine-error"
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
DENIED = "missing or invalid bearer token"


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
    yield  # pragma: no cover - makes this an async generator


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""
    codecs = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_deny, *codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, *codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny, *codecs)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, *codecs)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self.expected):
            return handler
        return _denied(handler)
