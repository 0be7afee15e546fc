"""Saved segment sizes over time: one ``SizeSeries`` of (time ms, size) points per segment.

The engine observes every saved segment's size after each write and each clock refresh, at
that write's (or refresh's) clock; ``SizeHistory.observe`` keeps a point only when a size
changed, and at most one point per segment per second of the clock: a later change in the same
second replaces that second's point (the latest size wins; a point whose size went back to the
previous point's is dropped). Points older than a day (``now - t > DAY_MS``) are thinned to the
last point of each minute, and points older than 90 days (``now - t > KEEP_MS``) are dropped,
both against the history's clock (the latest clock observed; it never goes back). Consecutive
points never have the same size.

A deleted segment's history goes with it; a created or replaced one starts a new history with
its size at that moment. Every change to the points is also queued as an operation (put or
delete of one point, drop of a whole series) for a durable store (``engine.persist.history_store``)
to apply.

>>> history = SizeHistory()
>>> history.start("vips", 1_000_400, 3)
>>> history.observe(1_000_700, {"vips": 4})   # same second: replaces (1_000_400, 3)
>>> history.observe(1_001_200, {"vips": 4})   # unchanged: no point
>>> history.observe(1_002_000, {"vips": 5})
>>> history.points("vips")
[(1000700, 4), (1002000, 5)]
"""
from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from typing import Iterable

SECOND_MS = 1000
MINUTE_MS = 60_000
#: Points older than this are thinned to one a minute.
DAY_MS = 86_400_000
#: Points older than this are dropped.
KEEP_MS = 90 * DAY_MS

#: A queued change for the durable store: ("put", series id, time, size), ("delete", series id, time),
#: ("start", series id, name, stamp) or ("drop", series id).
Operation = tuple


class SizeSeries:
    """The points of one segment's history, in time order (parallel int64 arrays)."""

    def __init__(self, ident: int, stamp: str, times: Iterable[int] = (), sizes: Iterable[int] = ()):
        self.ident = ident  # the store's key of this history (a replaced segment gets a new one)
        self.stamp = stamp  # identifies the definition it follows (see SizeHistory.stamp)
        self.times = array("q", times)
        self.sizes = array("q", sizes)
        self.settled = 0  # points before this index are older than a day and already thinned

    def record(self, at: int, size: int, ops: list[Operation]) -> None:
        """Size ``size`` at clock ``at`` (not before the last point): a point if it changed, one per second."""
        times, sizes = self.times, self.sizes
        if sizes and sizes[-1] == size:
            return
        if times and times[-1] // SECOND_MS == at // SECOND_MS:
            ops.append(("delete", self.ident, times[-1]))
            times.pop()
            sizes.pop()
            self.settled = min(self.settled, len(times))
            if sizes and sizes[-1] == size:
                return
        times.append(at)
        sizes.append(size)
        ops.append(("put", self.ident, at, size))

    def maintain(self, now: int, ops: list[Operation]) -> None:
        """Drop the points older than 90 days and thin those older than a day to one a minute (at clock ``now``)."""
        times, sizes = self.times, self.sizes
        expired = bisect_left(times, now - KEEP_MS)
        if expired:
            ops.extend(("delete", self.ident, t) for t in times[:expired])
            del times[:expired], sizes[:expired]
            self.settled = max(self.settled - expired, 0)
        old = bisect_left(times, now - DAY_MS)  # times[:old] are older than a day
        start = self.settled
        if old <= start:
            return
        if start > 0 and times[start - 1] // MINUTE_MS == times[start] // MINUTE_MS:
            start -= 1  # that minute's settled point may no longer be its last
        keep_t, keep_s = array("q"), array("q")
        previous = sizes[start - 1] if start > 0 else None
        for i in range(start, old):
            last_of_minute = i + 1 == old or times[i + 1] // MINUTE_MS != times[i] // MINUTE_MS
            if not last_of_minute:
                continue
            if previous is not None and sizes[i] == previous:
                continue
            keep_t.append(times[i])
            keep_s.append(sizes[i])
            previous = sizes[i]
        if len(keep_t) == old - start:
            self.settled = old
            return
        kept = set(keep_t)
        ops.extend(("delete", self.ident, t) for t in times[start:old] if t not in kept)
        times[start:old], sizes[start:old] = keep_t, keep_s
        self.settled = start + len(keep_t)

    def between(self, since: int | None, until: int | None) -> list[tuple[int, int]]:
        """The points with ``since <= t <= until`` (None: unbounded)."""
        lo = 0 if since is None else bisect_left(self.times, since)
        hi = len(self.times) if until is None else bisect_right(self.times, until)
        return list(zip(self.times[lo:hi], self.sizes[lo:hi]))


class SizeHistory:
    """The size histories of every saved segment of one engine (thread-safe)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable  # False: changes are not queued for a store
        self.clock: int | None = None  # the latest clock observed
        self.next_ident = 1
        self.series: dict[str, SizeSeries] = {}
        self.ops: list[Operation] = []  # changes not yet taken by the durable store (if durable)
        self.lock = threading.Lock()
        self._maintained_at: int | None = None

    @staticmethod
    def stamp(query: str, updated_ms: int) -> str:
        """What identifies one definition of a segment (a replaced segment has a new one)."""
        return f"{updated_ms}:{query}"

    def _at(self, now: int) -> int:
        self.clock = now if self.clock is None else max(self.clock, now)
        return self.clock

    def start(self, name: str, now: int, size: int, stamp: str = "") -> None:
        """Begin a new history of ``name`` (created or replaced) with ``size`` at clock ``now``."""
        with self.lock:
            at = self._at(now)
            self._drop(name)
            series = self.series[name] = SizeSeries(self.next_ident, stamp)
            self.next_ident += 1
            self._sink().append(("start", series.ident, name, stamp))
            series.record(at, size, self._sink())

    def adopt(self, name: str, series: SizeSeries) -> None:
        """Take a history loaded from the durable store."""
        with self.lock:
            self.series[name] = series
            self.next_ident = max(self.next_ident, series.ident + 1)
            if series.times:
                self._at(series.times[-1])

    def drop(self, name: str) -> None:
        """Forget the history of ``name`` (a deleted segment)."""
        with self.lock:
            self._drop(name)

    def _drop(self, name: str) -> None:
        series = self.series.pop(name, None)
        if series is not None:
            self._sink().append(("drop", series.ident))

    def observe(self, now: int, sizes: dict[str, int]) -> None:
        """Record the segments' ``sizes`` at clock ``now`` (an earlier clock counts as the latest one)."""
        with self.lock:
            at = self._at(now)
            for name, size in sizes.items():
                series = self.series.get(name)
                if series is not None:
                    series.record(at, int(size), self._sink())
            if self._maintained_at is None or at - self._maintained_at >= MINUTE_MS:
                self._maintain_all(at)

    def _maintain_all(self, at: int) -> None:
        self._maintained_at = at
        for series in self.series.values():
            series.maintain(at, self._sink())

    def points(self, name: str, since: int | None = None, until: int | None = None) -> list[tuple[int, int]]:
        """The points of ``name`` with ``since <= t <= until``, thinned and expired at the history's clock."""
        with self.lock:
            series = self.series.get(name)
            if series is None:
                return []
            if self.clock is not None:
                series.maintain(self.clock, self._sink())
            return series.between(since, until)

    def take_ops(self) -> list[Operation]:
        """The queued changes for the durable store (thinning all histories first), emptied."""
        with self.lock:
            if self.clock is not None:
                self._maintain_all(self.clock)
            ops, self.ops = self.ops, []
            return ops

    def requeue(self, ops: list[Operation]) -> None:
        """Put back operations a store failed to write, before those queued since."""
        with self.lock:
            self.ops[:0] = ops

    def _sink(self) -> list[Operation]:
        """Where changes are queued: the store's queue if durable, else a list nobody keeps."""
        return self.ops if self.durable else []
