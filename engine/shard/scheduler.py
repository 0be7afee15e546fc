"""The order in which a worker runs its requests: reads together, writes alone, short reads first.

Requests are admitted in id order (the order the coordinator numbered them). ``take`` hands out
the next one that may start now:

- a write starts only when it is the oldest request waiting and nothing is running; requests
  after it wait until it has finished (so writes keep the id order against everything);
- reads before the first waiting write may start while other reads run: point reads
  (``Access.POINT``) and the prepare of a write (``Access.PREPARE``) first, whatever queries
  wait ahead of them, then a snapshot step or a write's sync step (``Access.SNAPSHOT``,
  ``Access.SYNC``: they keep writes out, not reads), then the oldest query; these steps and
  queries start only while fewer than ``max_queries`` of them are running (so a thread stays
  free for point reads);
- a view read (a point read sent by a view call: engine.concurrency) may also start while a view
  write runs or waits ahead of it (a write sent by a view call: an event batch, whose membership
  switch waits for a later ``publish_view``, or that ``publish_view``), as long as no other write
  comes before it.

Not thread-safe: the worker calls it under its own lock.

>>> from engine.shard.api import Access
>>> s = Scheduler(max_queries=1)
>>> for n, kind in enumerate([Access.QUERY, Access.QUERY, Access.POINT, Access.WRITE, Access.POINT]):
...     s.admit(n, kind)
>>> s.take(), s.take(), s.take()  # the point read first, then the oldest query
(2, 0, None)
>>> s.finish(0); s.take(), s.take()
(1, None)
>>> s.finish(2); s.finish(1); s.take(), s.take()
(3, None)
>>> s.finish(3); s.take()
4
>>> s.finish(4)
>>> for n, kind in enumerate([Access.QUERY, Access.SNAPSHOT, Access.POINT, Access.WRITE], start=5):
...     s.admit(n, kind)
>>> s.take(), s.take(), s.take()  # the snapshot step runs alongside reads, ahead of the queued query
(7, 6, None)
>>> s.finish(6); s.take()
5
>>> s.finish(5); s.finish(7); s.take()
8
>>> s.finish(8)
>>> s.max_queries = 2
>>> for n, kind in enumerate([Access.SYNC, Access.QUERY, Access.WRITE], start=20):
...     s.admit(n, kind)
>>> s.take(), s.take(), s.take()  # a write's sync step runs alongside a query, the next write waits
(20, 21, None)
>>> s.finish(20); s.finish(21); s.take()
22
>>> s.finish(22); s.max_queries = 1
>>> s.admit(9, Access.WRITE, view=True); s.admit(10, Access.POINT, view=True); s.admit(11, Access.POINT)
>>> s.take(), s.take(), s.take()  # the view read runs beside the view write; the point read waits
(9, 10, None)
>>> s.finish(10); s.finish(9); s.take()
11
"""
from __future__ import annotations

from collections import deque
from typing import Any

from .api import Access

#: The requests that take a query's place (see the module docstring).
_QUERY_PLACES = (Access.QUERY, Access.SNAPSHOT, Access.SYNC)
#: The steps that keep writes out but go ahead of queued queries.
_STEPS = (Access.SNAPSHOT, Access.SYNC)


class Scheduler:
    """Reader/writer ordering of one worker's requests, with point reads ahead of queries."""

    def __init__(self, max_queries: int = 1):
        self.max_queries = max_queries
        self.waiting: deque[tuple[Any, Access, bool]] = deque()  # admitted, not started, in id order
        self.running: dict[int, Access] = {}  # id(item) -> access of the requests being served
        self.queries = 0  # queries and snapshot steps running
        self.writing = False  # a write is running
        self.view_writing = False  # the write running is a view write

    def admit(self, item: Any, kind: Access, view: bool = False) -> None:
        """Queue ``item`` (the next request in id order; ``view``: sent by a view call)."""
        self.waiting.append((item, kind, view))

    def take(self) -> Any | None:
        """The request to start now, or None if none may start."""
        index = self._pick()
        return None if index is None else self._start(index)

    def runnable(self) -> bool:
        """Whether ``take`` would return a request."""
        return self._pick() is not None

    def _pick(self) -> int | None:
        """The position in ``waiting`` of the request to start now."""
        if not self.waiting:
            return None
        if self.writing:
            return self._view_read(0) if self.view_writing else None
        first_query = first_step = None
        for index, (_, kind, view) in enumerate(self.waiting):
            if kind is Access.WRITE:
                if index == 0 and not self.running:
                    return 0
                beside = self._view_read(index + 1) if view else None
                return beside if beside is not None else self._query_place(first_query, first_step)
            if kind is Access.POINT or kind is Access.PREPARE:
                return index
            if kind in _STEPS:
                first_step = index if first_step is None else first_step
            elif first_query is None:
                first_query = index
        return self._query_place(first_query, first_step)

    def _query_place(self, first_query: int | None, first_step: int | None) -> int | None:
        """The snapshot step or query to start, if a query's place is free."""
        if self.queries < self.max_queries:
            return first_step if first_step is not None else first_query
        return None

    def _view_read(self, start: int) -> int | None:
        """The first view read from position ``start`` on that no write other than a view write precedes."""
        for index in range(start, len(self.waiting)):
            _, kind, view = self.waiting[index]
            if kind is Access.WRITE and not view:
                return None
            if view and kind is Access.POINT:
                return index
        return None

    def _start(self, index: int) -> Any:
        item, kind, view = self.waiting[index]
        del self.waiting[index]
        self.running[id(item)] = kind
        self.queries += kind in _QUERY_PLACES
        if kind is Access.WRITE:
            self.writing, self.view_writing = True, view
        return item

    def finish(self, item: Any) -> None:
        """``item`` (returned by ``take``) is done."""
        kind = self.running.pop(id(item))
        self.queries -= kind in _QUERY_PLACES
        if kind is Access.WRITE:
            self.writing = self.view_writing = False

    def idle(self) -> bool:
        """Nothing waiting or running."""
        return not self.waiting and not self.running
