"""Server interceptors: errors mapped to status codes in one place, and bearer-token auth.

``ErrorInterceptor`` turns every ``SegengineError`` raised by a handler (also while streaming)
into the status its class names (``grpc_status``), with the error text as details and the class
name in the trailing metadata ``segengine-error`` (the client rebuilds the same error class).
Anything else is a bug: logged with its traceback and answered INTERNAL.

``AuthInterceptor`` rejects calls without ``authorization: Bearer <token>`` with
UNAUTHENTICATED, except the health service (load balancers probe it without credentials).
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Callable, Iterator

import grpc

from engine.errors import SegengineError

log = logging.getLogger("segengine.server")

ERROR_KEY = "segengine-error"
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def _abort(context: grpc.ServicerContext, error: BaseException) -> None:
    if isinstance(error, SegengineError):
        code = getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)
        context.set_trailing_metadata(((ERROR_KEY, type(error).__name__),))
        context.abort(code, str(error))
    log.exception("internal error in %s", getattr(context, "_rpc_method", "a call"), exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def _guard_unary(behavior: Callable) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001 - the one place errors become statuses
            if _is_abort(error):
                raise
            _abort(context, error)

    return handler


def _guard_stream(behavior: Callable) -> Callable:
    def handler(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001
            if _is_abort(error):
                raise
            _abort(context, error)

    return handler


def _is_abort(error: BaseException) -> bool:
    """True for the exception ``context.abort`` raises (already a status)."""
    return type(error) is Exception and not error.args


def _rewrap(handler: grpc.RpcMethodHandler, wrap_unary: Callable, wrap_stream: Callable) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped (by response cardinality)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), handler.request_deserializer,
                                                 handler.response_serializer)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps SegengineError subclasses to their gRPC status codes (see the module docstring)."""

    def __init__(self) -> None:
        self.wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}  # per method, built once

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        cached = self.wrapped.get(handler_call_details.method)
        if cached is None or cached[0] is not handler:
            cached = self.wrapped[handler_call_details.method] = (handler, _rewrap(handler, _guard_unary, _guard_stream))
        return cached[1]


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call but health checks."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self.expected):
            return handler

        def deny_unary(behavior: Callable) -> Callable:
            def handler(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

            return handler

        def deny_stream(behavior: Callable) -> Callable:
            def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
                yield  # pragma: no cover - makes this a generator

            return handler

        return _rewrap(handler, deny_unary, deny_stream)
