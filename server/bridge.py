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
``segengine-error`` (the client rebuilds the same class); anything else is a bug, logged with its
traceback and answered INTERNAL.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Iterator

import grpc

from engine.errors import SegengineError

from .gate import WouldWait
from .interceptors import ERROR_KEY

log = logging.getLogger("segengine.server")

#: Methods tried on the event loop first (point reads of a few microseconds).
INLINE = frozenset({"Membership", "GetProfile", "GetSegment", "GetSchema"})
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


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """End the call with the status ``error`` maps to (see the module docstring)."""
    if isinstance(error, SegengineError):
        code = getattr(grpc.StatusCode, error.grpc_status, grpc.StatusCode.INTERNAL)
        context.set_trailing_metadata(((ERROR_KEY, type(error).__name__),))
        await context.abort(code, str(error))
    log.error("internal error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


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
            return asyncio.run_coroutine_threadsafe(self.requests.__anext__(), self.loop).result()
        except StopAsyncIteration:
            raise StopIteration from None


class AsyncServicer:
    """grpc.aio handlers over a blocking servicer (``servicer.Name(request, context)``)."""

    def __init__(self, servicer: Any, service: Any, pool: Executor, heavy_pool: Executor | None = None):
        self.servicer = servicer
        self.pool = pool
        self.heavy_pool = heavy_pool
        self.heavy = getattr(servicer, "heavy", None)
        for method in service.methods:
            if method.client_streaming:
                wrapped = self._client_stream(method.name)
            elif method.server_streaming:
                wrapped = self._server_stream(method.name)
            else:
                wrapped = self._unary(method.name)
            setattr(self, method.name, wrapped)

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
                if inline:
                    try:
                        return behaviour(request, CallContext(context, on_loop=True))
                    except WouldWait:
                        pass
                return await self._run(behaviour, request, CallContext(context), pool=self._pool_for(name, request))
            except Exception as error:  # noqa: BLE001 - the one place errors become statuses
                await abort_with(context, error, name)

        handler.__name__ = name
        return handler

    def _server_stream(self, name: str) -> Callable:
        behaviour = getattr(self.servicer, name)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
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

        handler.__name__ = name
        return handler

    def _client_stream(self, name: str) -> Callable:
        behaviour = getattr(self.servicer, name)

        async def handler(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            blocking = _BlockingRequests(requests, asyncio.get_running_loop())
            try:
                return await self._run(behaviour, blocking, CallContext(context))
            except Exception as error:  # noqa: BLE001
                await abort_with(context, error, name)

        handler.__name__ = name
        return handler
