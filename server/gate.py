"""The one way gRPC handlers reach the engine: deadline-aware calls under a readers-writer lock.

Three kinds of calls:

- ``write``: anything that changes the engine (writes, saved segment definitions, refreshes,
  watch subscriptions): alone, no other call running;
- ``read``: calls that only read shard data without the executor (Membership, GetProfile,
  GetSegment, ListSegments): any number at once, alongside queries;
- ``query``: calls that run the executor (Count, Query, Explain): alongside reads, but one at
  a time, because a shard's executor keeps scratch state.

Waiting respects the caller's deadline (a call whose deadline passes while it waits fails with
DEADLINE_EXCEEDED instead of running late). Before a read, or a query that reads saved segments,
time-relative saved segments that are more than ``refresh_ms`` behind the clock are refreshed
(as a write); the server's timer does the same periodically, so the engine's own read-time
refresh is turned off.
Writers go first: once a write waits, new reads and queries wait behind it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import grpc

from engine import Engine
from engine.errors import SegengineError

T = TypeVar("T")


class DeadlineExceeded(SegengineError):
    """The caller's deadline passed before its call could run."""

    grpc_status = "DEADLINE_EXCEEDED"


class ShuttingDown(SegengineError):
    """The server is shutting down."""

    grpc_status = "UNAVAILABLE"


class Unimplemented(SegengineError):
    """The engine behind this server cannot do what the call asks."""

    grpc_status = "UNIMPLEMENTED"


class RequestTooLarge(SegengineError):
    """A request asks for more than the server allows (e.g. a stream chunk size)."""

    grpc_status = "RESOURCE_EXHAUSTED"


class WouldWait(Exception):
    """A read on the server's event loop would have to wait (the server runs it in its thread pool)."""


class ReadWriteLock:
    """Many readers or one writer; a waiting writer keeps new readers out."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.readers = 0
        self.writing = False
        self.writers_waiting = 0

    def acquire_read(self, timeout: float | None) -> bool:
        with self.changed:
            if not self.changed.wait_for(lambda: not self.writing and not self.writers_waiting, timeout):
                return False
            self.readers += 1
            return True

    def release_read(self) -> None:
        with self.changed:
            self.readers -= 1
            if not self.readers:
                self.changed.notify_all()

    def try_read(self) -> bool:
        """Take a read share only if no write runs or waits (never blocks on them)."""
        with self.changed:
            if self.writing or self.writers_waiting:
                return False
            self.readers += 1
            return True

    def acquire_write(self, timeout: float | None) -> bool:
        with self.changed:
            self.writers_waiting += 1
            try:
                ok = self.changed.wait_for(lambda: not self.writing and not self.readers, timeout)
            finally:
                self.writers_waiting -= 1
            if ok:
                self.writing = True
            else:
                self.changed.notify_all()  # readers held back by this writer may go on
            return ok

    def release_write(self) -> None:
        with self.changed:
            self.writing = False
            self.changed.notify_all()


def _timeout(context: grpc.ServicerContext | None) -> float | None:
    """Seconds left before the caller's deadline (None = no deadline)."""
    if context is None:
        return None
    remaining = context.time_remaining()
    if remaining is None or remaining > threading.TIMEOUT_MAX:
        return None
    if remaining <= 0:
        raise DeadlineExceeded("deadline exceeded before the call started")
    return remaining


class EngineGate:
    """An engine behind a readers-writer lock (see the module docstring)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.engine.auto_refresh = False
        self.lock = ReadWriteLock()
        self.executor_lock = threading.Lock()
        self.closing = False

    @contextmanager
    def _held(self, acquire: Callable[[float | None], bool], release: Callable[[], None],
              context: grpc.ServicerContext | None) -> Iterator[None]:
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        if not acquire(_timeout(context)):
            raise DeadlineExceeded("deadline exceeded while waiting for the engine")
        try:
            if context is not None and context.time_remaining() is not None and context.time_remaining() <= 0:
                raise DeadlineExceeded("deadline exceeded while waiting for the engine")
            yield
        finally:
            release()

    def write(self, context: grpc.ServicerContext | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` alone."""
        with self._held(self.lock.acquire_write, self.lock.release_write, context):
            return fn(*args)

    def read(self, context: grpc.ServicerContext | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` alongside other reads and queries (``fn`` must not change the engine).

        On the server's event loop (``context.on_loop``) it never waits: WouldWait instead.
        """
        if getattr(context, "on_loop", False):
            return self._read_now(fn, *args)
        self._refresh_if_due(context)
        with self._held(self.lock.acquire_read, self.lock.release_read, context):
            return fn(*args)

    def _read_now(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` at once, or WouldWait if anything runs or waits (a write, a query, a due refresh).

        For point reads on the server's event loop, which must never block: holding the
        executor lock too keeps a query from starting on the same in-process shard meanwhile.
        """
        if self.closing or self.engine.refresh_due() or not self.lock.try_read():
            raise WouldWait
        try:
            if not self.executor_lock.acquire(blocking=False):
                raise WouldWait
            try:
                return fn(*args)
            finally:
                self.executor_lock.release()
        finally:
            self.lock.release_read()

    def query(self, context: grpc.ServicerContext | None, fn: Callable[..., T], text: str, *args: Any) -> T:
        """``fn(text, *args)`` alongside reads, one query at a time.

        Only a query that reads saved segments waits for a due refresh of time-relative ones;
        others never depend on them (the server's timer keeps refreshing).
        """
        if self.engine.reads_segments(text):
            self._refresh_if_due(context)
        with self._held(self.lock.acquire_read, self.lock.release_read, context):
            with self._held(lambda timeout: self.executor_lock.acquire(timeout=-1 if timeout is None else timeout),
                            self.executor_lock.release, context):
                return fn(text, *args)

    def refresh(self, context: grpc.ServicerContext | None = None) -> None:
        """Bring time-relative saved segments to the clock (a write)."""
        self.write(context, self.engine.refresh_segments)

    def _refresh_if_due(self, context: grpc.ServicerContext | None) -> None:
        if self.engine.refresh_due():
            self.write(context, lambda: self.engine.refresh_segments() if self.engine.refresh_due() else None)
