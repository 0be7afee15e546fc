"""The one way gRPC handlers reach the engine: deadlines, shutdown and due refreshes.

Consistency is the engine's: every engine read holds its publish lock (``engine.concurrency``)
shared and every write's application holds it alone, so readers see the state before or after
a write, never half of it, and queries run alongside each other and alongside point reads. The
gate adds what a server needs around each call:

- the caller's deadline bounds every wait for the engine inside the call (a call whose deadline
  passes while it waits fails with DEADLINE_EXCEEDED and never runs);
- calls are refused once the server shuts down;
- before a read, or a query that reads saved segments, time-relative saved segments that are
  more than ``refresh_ms`` behind the clock are refreshed (as a write; skipped while a snapshot
  capture keeps writers out or a heavy query runs, so reads never wait for either); the
  server's timer refreshes them periodically too, so the engine's own read-time refresh is
  turned off;
- point reads on the server's event loop never wait (``WouldWait`` instead: the bridge runs
  them in the thread pool), nor, with shard workers, run while a query or a snapshot capture may
  keep a worker busy;
- each query's engine time is remembered by query text, so the server can run the queries
  known to be heavy (``heavy``) apart from short calls: the time of its work (its waits for
  writes left out) in its last ``RUNS_KEPT`` runs, and a query is heavy when the fastest of them
  took ``heavy_ms`` or more, so a short query that one write or a busy machine held back keeps
  running with the short calls (moved to the lower priority pool, it would wait longer still).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import grpc

from engine import Engine
from engine.errors import QueryError, SegengineError
from engine.store.lru import drop_oldest

T = TypeVar("T")

#: A query whose last runs all took at least this long (engine ms) is heavy (see ``EngineGate.heavy``).
HEAVY_MS = 20.0
#: Query texts whose latest engine times are remembered, and how many runs of each.
COSTS_KEPT = 4096
RUNS_KEPT = 3


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
    """An engine behind deadline handling, shutdown and due refreshes (see the module docstring)."""

    def __init__(self, engine: Engine, heavy_ms: float = HEAVY_MS):
        self.engine = engine
        self.engine.auto_refresh = False
        self.publish = engine.publish
        self.heavy_ms = heavy_ms
        self.costs: dict[str, tuple[float, ...]] = {}  # query text -> engine ms of its last runs (most recent text last)
        self.closing = False
        self.in_process = getattr(engine.shards, "backend", "local") == "local"
        self.queries_running = 0
        self._counting = threading.Lock()

    @contextmanager
    def _call(self, context: grpc.ServicerContext | None) -> Iterator[None]:
        """The block as one call: refused when closing, its waits bounded by the caller's deadline."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        with self.publish.deadline(_timeout(context)):
            yield

    def write(self, context: grpc.ServicerContext | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a call that changes the engine (the engine applies it alone)."""
        with self._call(context):
            return fn(*args)

    def read(self, context: grpc.ServicerContext | None, fn: Callable[..., T], *args: Any, view: bool = False) -> T:
        """``fn(*args)`` alongside other reads and queries (``fn`` must not change the engine).

        On the server's event loop (``context.on_loop``) it never waits: WouldWait instead.
        ``view``: ``fn`` is ``Engine.membership``, a view read (engine.concurrency).
        """
        if getattr(context, "on_loop", False):
            return self._read_now(fn, *args, view=view)
        self._refresh_if_due(context)
        with self._call(context):
            return fn(*args)

    def _read_now(self, fn: Callable[..., T], *args: Any, view: bool = False) -> T:
        """``fn(*args)`` at once, or WouldWait if it would wait (a write runs that ``view`` cannot pass, a
        refresh is due, or a write waits and no longer read holds the engine).

        For point reads on the server's event loop, which must never block: the point read share
        is taken without waiting, and the engine's own read share inside ``fn`` nests in it.
        """
        if self.closing or self._refresh_wanted() or self._workers_busy():
            raise WouldWait
        if not self.publish.acquire_read(blocking=False, point=True, view=view):
            raise WouldWait
        try:
            return fn(*args)
        finally:
            self.publish.release_read()

    def query(self, context: grpc.ServicerContext | None, fn: Callable[..., T], text: str, *args: Any) -> T:
        """``fn(text, *args)`` alongside reads and other queries; its engine time is remembered.

        Only a query that reads saved segments waits for a due refresh of time-relative ones;
        others never depend on them (the server's timer keeps refreshing).
        """
        if self.engine.reads_segments(text):
            self._refresh_if_due(context)
        with self._call(context), self._running():
            started, waited = time.perf_counter(), self.publish.waited()
            result = fn(text, *args)
            worked = time.perf_counter() - started - (self.publish.waited() - waited)
        self._remember(text, worked * 1000)
        return result

    def queries(self, context: grpc.ServicerContext | None, fn: Callable[..., T], texts: list[str], *args: Any) -> T:
        """``fn(texts, *args)``: one call that runs several queries (an overlap), as ``query`` runs one
        (its time is not remembered: no single text names it)."""
        try:
            reads = any(self.engine.reads_segments(text) for text in texts)
        except QueryError:
            reads = False  # the call itself reports the bad query, naming its position
        if reads:
            self._refresh_if_due(context)
        with self._call(context), self._running():
            return fn(texts, *args)

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Count the block as a query in flight (see ``_workers_busy``)."""
        with self._counting:
            self.queries_running += 1
        try:
            yield
        finally:
            with self._counting:
                self.queries_running -= 1

    def heavy(self, text: str) -> bool:
        """True if each of the last runs of query ``text`` worked at least ``heavy_ms`` (unknown: False)."""
        runs = self.costs.get(text)
        return runs is not None and min(runs) >= self.heavy_ms

    def _remember(self, text: str, ms: float) -> None:
        runs = self.costs.pop(text, ())
        if len(self.costs) >= COSTS_KEPT:
            drop_oldest(self.costs)
        self.costs[text] = (*runs[1 - RUNS_KEPT:], ms)

    def refresh(self, context: grpc.ServicerContext | None = None) -> None:
        """Bring time-relative saved segments to the clock (a write)."""
        self.write(context, self.engine.refresh_segments)

    def _workers_busy(self) -> bool:
        """Shard workers may be busy with a query or a snapshot capture (a worker serves one request
        at a time): a round trip to one from the event loop could wait for it."""
        return not self.in_process and (self.queries_running > 0 or self.publish.pinned)

    def _refresh_wanted(self) -> bool:
        """A refresh is due and may run now: no snapshot capture keeps writers out and no heavy query
        runs (the refresh would wait for it; the server's timer refreshes once it ends)."""
        return self.engine.refresh_due() and not self.publish.pinned and not self.publish.heavy

    def _refresh_if_due(self, context: grpc.ServicerContext | None) -> None:
        if self._refresh_wanted():
            with self._call(context), self.publish.writing():
                if self.engine.refresh_due():
                    self.engine.refresh_segments()
