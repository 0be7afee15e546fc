"""The sync servicer served by a grpc.aio server: fast reads on the event loop, the rest in threads.

The servicer (``server.servicer``) is plain blocking code behind the engine gate. ``AsyncServicer``
wraps each of its methods into the coroutine (or async generator) grpc.aio expects:

- **point reads** (``INLINE``: Membership, GetProfile, GetSegment, GetSchema) run on the event
  loop itself when the gate is free at once (on the loop ``EngineGate.read`` raises
  WouldWait instead of waiting): no hand-over to a
  thread, which is most of what a 20 us Membership costs in a thread-pool server. A read that
  would wait (a write or query in flight, a refresh due) goes to the pool like everything else;
- every other call runs in the server's thread pool, except queries known to be heavy
  (``servicer.heavy(name, request)``), which run in a separate, smaller pool (``heavy_pool``) whose
  threads have a lower OS priority: where no core is free, short calls go first;
- streams step their sync generator in the pool, one message at a time; a client stream is
  read by the servicer through a blocking iterator over the async one.

Errors are mapped here, in one place: a ``SegengineError`` becomes the status its class names
(``grpc_status``) with the text as details and the class name in the trailing metadata
``segengine-error`` (the client rebuilds the same class); anything else is a bug, answered INTERNAL.
Every failed call logs one line (its traceback at debug level only). A request whose bytes do not
decode (malformed protobuf, a string field that is not UTF-8) answers INVALID_ARGUMENT.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Iterator

import grpc

from engine.errors import BadRequest, SegengineError

from .gate import ShuttingDown, WouldWait
from .interceptors import ERROR_KEY

log = logging.getLogger("segengine.server")

#: Methods tried on the event loop first (point reads of a few microseconds).
INLINE = frozenset({"Membership", "GetProfile", "GetSegment", "GetSchema"})
#: Most bytes of status details sent (percent-encoded); a longer error text is cut with "...".
MAX_DETAILS_BYTES = 4000
_END = object()


class CallContext:
    """The blocking servicer's view of an aio call context (safe to use from pool threads)."""

    def __init__(self, context: grpc.aio.ServicerContext, on_loop: bool = False):
        self.context = context
        self.on_loop = on_loop  # called on the event loop: gate reads must not wait (WouldWait)

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        return self.context.time_remaining()

    def is_active(self) -> bool:
        """False once the call has ended (cancelled, deadline passed, or finished)."""
        return not self.context.done()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` when the call ends."""
        self.context.add_done_callback(lambda _context: callback())

    def invocation_metadata(self) -> Any:
        """The caller's metadata."""
        return self.context.invocation_metadata()

    def peer(self) -> str:
        """The caller's address (e.g. ``ipv4:127.0.0.1:50000``)."""
        return self.context.peer()


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """End the call with the status ``error`` maps to (see the module docstring); log one line."""
    if isinstance(error, SegengineError):
        code = getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)
        log.info("%s failed: %s: %s", method, code.name, _one_line(str(error)))
        log.debug("%s failed", method, exc_info=error)
        context.set_trailing_metadata(((ERROR_KEY, type(error).__name__),))
        await context.abort(code, status_details(str(error)))
    log.error("%s failed: INTERNAL: %s: %s", method, type(error).__name__, _one_line(str(error)))
    log.debug("%s failed", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, status_details(f"internal error: {type(error).__name__}: {error}"))


def status_details(text: str, budget: int = MAX_DETAILS_BYTES) -> str:
    """An error's text as status details, cut so that it stays within ``budget`` bytes as sent:
    gRPC refuses trailers past 8 KiB (soft limit) and percent-encodes every byte outside
    printable ASCII (so a 4-byte character takes 12).

    >>> status_details("x" * 2000, 10), status_details("\U0001F600" * 10, 30)
    ('xxxxxxxxxx...', '\U0001f600\U0001f600...')
    """
    if len(text) * 12 <= budget:
        return text
    cost = 0
    for at, char in enumerate(text):
        cost += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "surrogatepass"))
        if cost > budget:
            return text[:at] + "..."
    return text


def _one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class Undecodable:
    """What a request's bytes decode to when they are not a valid message (answered INVALID_ARGUMENT)."""

    def __init__(self, message_type: str, error: Exception):
        self.message_type = message_type
        self.error = error

    def raise_error(self) -> None:
        """Raise the BadRequest this request answers."""
        raise BadRequest(f"the request is not a valid {self.message_type} "
                         f"(malformed protobuf or a string that is not UTF-8): {self.error}")


def _checked(request: Any) -> Any:
    """``request``, or BadRequest if it did not decode."""
    if isinstance(request, Undecodable):
        request.raise_error()
    return request


def tolerant_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that returns an Undecodable instead of raising."""
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as error:  # noqa: BLE001 - any decode failure is the caller's bad request
            return Undecodable(name, error)

    return decode


def add_to_server(handlers: "AsyncServicer", service: Any, messages: Any, server: grpc.aio.Server) -> None:
    """Register ``handlers`` for ``service`` (a ServiceDescriptor) with tolerant request decoding.

    ``messages`` is the generated ``*_pb2`` module holding the request and response classes.
    """
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    methods = {}
    for method in service.methods:
        request_class = getattr(messages, method.input_type.name)
        response_class = getattr(messages, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        methods[method.name] = make(getattr(handlers, method.name),
                                    request_deserializer=tolerant_deserializer(request_class),
                                    response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, methods),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(service.full_name, methods)


class _SyncStream:
    """A sync generator stepped from the event loop, one message per pool task."""

    def __init__(self, generator: Iterator[Any]):
        self.generator = generator
        self.lock = threading.Lock()  # a step and the final close never overlap

    def step(self) -> Any:
        with self.lock:
            return next(self.generator, _END)

    def close(self) -> None:
        with self.lock:
            close = getattr(self.generator, "close", None)
            if close is not None:
                close()


class _BlockingRequests:
    """A blocking iterator over an aio request stream (for a servicer running in a pool thread)."""

    def __init__(self, requests: AsyncIterator[Any], loop: asyncio.AbstractEventLoop):
        self.requests = requests.__aiter__()
        self.loop = loop

    def __iter__(self) -> "_BlockingRequests":
        return self

    def __next__(self) -> Any:
        try:
            return _checked(asyncio.run_coroutine_threadsafe(self.requests.__anext__(), self.loop).result())
        except StopAsyncIteration:
            raise StopIteration from None


class AsyncServicer:
    """grpc.aio handlers over a blocking servicer (``servicer.Name(request, context)``).

    It counts the calls its handlers are running (``in_flight``); once ``closing`` is set it
    answers every new call UNAVAILABLE itself, so a shutdown can wait for the calls in flight
    (``drained``) before gRPC stops accepting connections.
    """

    def __init__(self, servicer: Any, service: Any, pool: Executor, heavy_pool: Executor | None = None):
        self.servicer = servicer
        self.pool = pool
        self.heavy_pool = heavy_pool
        self.heavy = getattr(servicer, "heavy", None)
        self.closing = False
        self.in_flight = 0  # changed on the event loop only
        for method in service.methods:
            if method.client_streaming:
                wrapped = self._client_stream(method.name)
            elif method.server_streaming:
                wrapped = self._server_stream(method.name)
            else:
                wrapped = self._unary(method.name)
            setattr(self, method.name, wrapped)

    def _enter(self) -> None:
        """Count one more call in flight, or refuse it once closing."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        self.in_flight += 1

    async def drained(self, timeout: float) -> bool:
        """Wait until no call is in flight (True), or ``timeout`` seconds (False)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight > 0:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _run(self, fn: Callable[..., Any], *args: Any, pool: Executor | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool or self.pool, fn, *args)

    def _pool_for(self, name: str, request: Any) -> Executor:
        """The heavy pool for a call the servicer knows to be heavy, else the server's pool."""
        if self.heavy_pool is not None and self.heavy is not None and self.heavy(name, request):
            return self.heavy_pool
        return self.pool

    def _unary(self, name: str) -> Callable:
        behaviour = getattr(self.servicer, name)
        inline = name in INLINE

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self._enter()
            except ShuttingDown as error:
                await abort_with(context, error, name)
            try:
                _checked(request)
                if inline:
                    try:
                        return behaviour(request, CallContext(context, on_loop=True))
                    except WouldWait:
                        pass
                return await self._run(behaviour, request, CallContext(context), pool=self._pool_for(name, request))
            except Exception as error:  # noqa: BLE001 - the one place errors become statuses
                await abort_with(context, error, name)
            finally:
                self.in_flight -= 1

        handler.__name__ = name
        return handler

    def _server_stream(self, name: str) -> Callable:
        behaviour = getattr(self.servicer, name)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                self._enter()
            except ShuttingDown as error:
                await abort_with(context, error, name)
            try:
                if isinstance(request, Undecodable):
                    try:
                        request.raise_error()
                    except BadRequest as error:
                        await abort_with(context, error, name)
                stream = _SyncStream(behaviour(request, CallContext(context)))
                pool = self._pool_for(name, request)
                try:
                    while True:
                        message = await self._run(stream.step, pool=pool)
                        if message is _END:
                            return
                        yield message
                except Exception as error:  # noqa: BLE001
                    await abort_with(context, error, name)
                finally:
                    self.pool.submit(stream.close)
            finally:
                self.in_flight -= 1

        handler.__name__ = name
        return handler

    def _client_stream(self, name: str) -> Callable:
        behaviour = getattr(self.servicer, name)

        async def handler(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                self._enter()
            except ShuttingDown as error:
                await abort_with(context, error, name)
            blocking = _BlockingRequests(requests, asyncio.get_running_loop())
            try:
                return await self._run(behaviour, blocking, CallContext(context))
            except Exception as error:  # noqa: BLE001
                await abort_with(context, error, name)
            finally:
                self.in_flight -= 1

        handler.__name__ = name
        return handler
