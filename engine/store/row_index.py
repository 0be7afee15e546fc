"""A run's events grouped by profile row: each row's event times, in time order, found by row.

A run (``engine.store.runs``) keeps its events in time order, so the events of one row are spread
over all of it. Its ``RowIndex`` lists the same events sorted by (row, time): ``keys`` the distinct
rows (ascending), ``starts`` where each key's times begin, ``times`` the uint32 offsets from the
run's base. Runs are never changed once written, so an index built for a run stays exact for as
long as the run exists (``EventTypeStore.row_index`` builds one on first use and drops it with the run).

>>> index = build_row_index(np.array([5, 2, 5, 9], np.int32), np.array([10, 20, 30, 40], np.uint32))
>>> index.keys.tolist(), index.starts.tolist(), index.times.tolist()
([2, 5, 9], [0, 1, 3, 4], [20, 10, 30, 40])
>>> a, b = row_slices(index.keys, index.starts, index.times, 0, np.array([1, 5, 9]), 15, 39)
>>> a.tolist(), b.tolist()  # row 1: none; row 5: its events in [15, 39]; row 9: none
([0, 2, 3], [0, 3, 3])
>>> row_slices(index.keys, index.starts, index.times, 0, np.array([5]), 15, 39, False)[0].tolist()
[1]
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .runs import EPOCH_SPAN


@dataclass(frozen=True)
class RowIndex:
    """One run's events sorted by (row, time): distinct rows, their start offsets, uint32 times."""

    keys: np.ndarray  # int32 distinct rows, ascending
    starts: np.ndarray  # int32 (int64 past 2**31 events), len(keys) + 1: row keys[i]'s times are times[starts[i]:starts[i + 1]]
    times: np.ndarray  # uint32 offsets from the run's base, by row, then time

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return self.keys.nbytes + self.starts.nbytes + self.times.nbytes


def build_row_index(rows: np.ndarray, ts: np.ndarray) -> RowIndex:
    """The index of a run's events (int32 ``rows``, uint32 ``ts`` in time order): a counting sort by
    row, which keeps each row's times in order."""
    if len(rows) == 0:
        return RowIndex(np.empty(0, np.int32), np.zeros(1, np.int64), np.empty(0, np.uint32))
    keys, starts, times = _grouped_by_row(rows, ts, int(rows.max()) + 1)
    if len(times) < 2**31:
        starts = starts.astype(np.int32)
    return RowIndex(keys, starts, times)


@numba.njit(cache=True, nogil=True)
def _grouped_by_row(rows, ts, size):
    """(distinct rows, their start offsets, the times grouped by row) by a counting sort."""
    counts = np.zeros(size + 1, dtype=np.int64)
    for i in range(len(rows)):
        counts[rows[i] + 1] += 1
    distinct = 0
    for r in range(size):
        if counts[r + 1]:
            distinct += 1
        counts[r + 1] += counts[r]
    keys = np.empty(distinct, dtype=np.int32)
    starts = np.empty(distinct + 1, dtype=np.int64)
    k = 0
    for r in range(size):
        if counts[r + 1] > counts[r]:
            keys[k] = r
            starts[k] = counts[r]
            k += 1
    starts[distinct] = len(rows)
    times = np.empty(len(rows), dtype=np.uint32)
    for i in range(len(rows)):  # in time order: each row's times stay sorted
        times[counts[rows[i]]] = ts[i]
        counts[rows[i]] += 1
    return keys, starts, times


@numba.njit(cache=True, nogil=True)
def row_slices(keys, starts, times, base, rows, lo, hi, clip=True):
    """Per row of ``rows`` (ascending), the slice [a, b) of ``times`` holding its events with
    lo <= base + time <= hi (a == b when it has none; without ``clip``, all its events if the window
    reaches the epoch from ``base``): one forward
    galloping search over ``keys``, and a galloping search from each end of a row's times (a
    window usually holds most of a row's events)."""
    n = len(rows)
    a = np.zeros(n, dtype=np.int64)
    b = np.zeros(n, dtype=np.int64)
    if hi < base or (lo > base and lo - base >= EPOCH_SPAN):  # lo may be the int64 minimum: no lo - base then
        return a, b
    lo_off = lo - base if lo > base else np.int64(0)
    hi_off = min(hi - base, np.int64(EPOCH_SPAN - 1))
    if lo_off > hi_off:
        return a, b
    m = len(keys)
    p = 0
    for i in range(n):
        row = rows[i]
        step = 1  # gallop from p to the first key >= row
        while p + step < m and keys[p + step] < row:
            step *= 2
        x, y = p, min(p + step + 1, m)
        while x < y:
            mid = (x + y) >> 1
            if keys[mid] < row:
                x = mid + 1
            else:
                y = mid
        p = x
        if p == m:
            break
        if keys[p] != row:
            continue
        s, e = starts[p], starts[p + 1]
        if clip:
            s = _first_at_least(times, s, e, lo_off)
            e = _last_at_most(times, s, e, hi_off)
        a[i], b[i] = s, e
    return a, b


@numba.njit(cache=True, nogil=True)
def _first_at_least(times, s, e, limit):
    """The first position in [s, e) of sorted ``times`` whose time is >= limit (e if none), galloping from s."""
    if s == e or np.int64(times[s]) >= limit:
        return s
    step = 1  # times[s] < limit: find y with times[y] >= limit or y == e
    while s + step < e and np.int64(times[s + step]) < limit:
        step *= 2
    x, y = s + step // 2 + 1, min(s + step, e)
    while x < y:
        mid = (x + y) >> 1
        if np.int64(times[mid]) < limit:
            x = mid + 1
        else:
            y = mid
    return x


@numba.njit(cache=True, nogil=True)
def _last_at_most(times, s, e, limit):
    """One past the last position in [s, e) of sorted ``times`` whose time is <= limit (s if none),
    galloping back from e."""
    if s == e or np.int64(times[e - 1]) <= limit:
        return e
    step = 1  # times[e - 1] > limit: find x with times[x - 1] <= limit or x == s
    while e - 1 - step >= s and np.int64(times[e - 1 - step]) > limit:
        step *= 2
    x, y = max(e - step, s), e - 1 - step // 2
    while x < y:
        mid = (x + y) >> 1
        if np.int64(times[mid]) <= limit:
            x = mid + 1
        else:
            y = mid
    return x
