"""A run's events grouped by profile row: each row's event times, in time order, found by row.

A run (``engine.store.runs``) keeps its events in time order, so the events of one row are spread
over all of it. Its ``RowIndex`` lists the same events sorted by (row, time): the distinct rows,
where each one's times begin, ``times`` the uint32 offsets from the run's base. The i-th row's
times begin at ``bases[i >> 6] + offsets[i]``: an int64 per 64 rows and a uint16 per row (uint32
when 64 rows of the run hold 65,536 events or more), 2 bytes per row instead of an int32's 4. The
distinct rows are a bitset with the rank of each word (``words``, ``ranks``: 12 bytes per 64 rows,
a row's position is its rank) when at least 3 in 64 rows of the run's range have events, else a
sorted int32 array (``keys``, 4 bytes per row, searched by galloping). Runs are never changed once
written, so an index built for a run stays exact for as long as the run exists
(``EventTypeStore.row_index`` builds one on first use and keeps it on the run while the shard's
row-index budget allows: ``engine.store.row_index_cache``).

>>> index = build_row_index(np.array([5, 2, 5, 9], np.int32), np.array([10, 20, 30, 40], np.uint32))
>>> index.words.tolist(), index.starts.tolist(), index.times.tolist()  # rows 2, 5, 9: dense
([548], [0, 1, 3, 4], [20, 10, 30, 40])
>>> index.bases.tolist(), index.offsets.dtype
([0], dtype('uint16'))
>>> a, b = row_slices(*index.lookup, 0, np.array([1, 5, 9]), 15, 39)
>>> a.tolist(), b.tolist()  # row 1: none; row 5: its events in [15, 39]; row 9: none
([0, 2, 3], [0, 3, 3])
>>> row_slices(*index.lookup, 0, np.array([5]), 15, 39, False)[0].tolist()
[1]
>>> build_row_index(np.array([5, 700], np.int32), np.array([1, 2], np.uint32)).keys.tolist()  # sparse
[5, 700]
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .runs import EPOCH_SPAN


@dataclass(frozen=True)
class RowIndex:
    """One run's events sorted by (row, time): distinct rows, their start offsets, uint32 times."""

    keys: np.ndarray  # int32 distinct rows, ascending (empty when ``words`` holds them)
    words: np.ndarray  # uint64 bitset of the distinct rows (empty when ``keys`` holds them)
    ranks: np.ndarray  # int32 per word: the rows set in the words before it
    # the i-th distinct row's times are times[start(i):start(i + 1)], start(i) = bases[i >> 6] + offsets[i]
    bases: np.ndarray  # int64 per 64 rows (and one for the end)
    offsets: np.ndarray  # uint16 (uint32 if needed) per row and one for the end, from its block's base
    times: np.ndarray  # uint32 offsets from the run's base, by row, then time

    @property
    def lookup(self) -> tuple[np.ndarray, ...]:
        """(keys, words, ranks, bases, offsets, times): the arrays ``row_slices`` reads."""
        return self.keys, self.words, self.ranks, self.bases, self.offsets, self.times

    @property
    def starts(self) -> np.ndarray:
        """Where each distinct row's times begin, and the end (int64; built on each call)."""
        return self.bases[np.arange(len(self.offsets)) >> 6] + self.offsets

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return sum(part.nbytes for part in self.lookup)


def build_row_index(rows: np.ndarray, ts: np.ndarray) -> RowIndex:
    """The index of a run's events (int32 ``rows``, uint32 ``ts`` in time order): a counting sort by
    row, which keeps each row's times in order."""
    no_words = np.empty(0, np.uint64), np.empty(0, np.int32)
    if len(rows) == 0:
        return RowIndex(np.empty(0, np.int32), *no_words, np.zeros(1, np.int64), np.zeros(1, np.uint16),
                        np.empty(0, np.uint32))
    keys, starts, times = _grouped_by_row(rows, ts, int(rows.max()) + 1)
    bases = starts[::64].copy()
    offsets = starts - np.repeat(bases, 64)[:len(starts)]
    offsets = offsets.astype(np.uint16 if int(offsets.max()) < 1 << 16 else np.uint32)
    n_words = (int(keys[-1]) >> 6) + 1
    if len(keys) * 4 < n_words * 12:  # sparse: the sorted rows are smaller
        return RowIndex(keys, *no_words, bases, offsets, times)
    words, ranks = _bitset(keys, n_words)
    return RowIndex(np.empty(0, np.int32), words, ranks, bases, offsets, times)


@numba.njit(cache=True, nogil=True)
def _bitset(keys, n_words):
    """The bitset of ``keys`` (sorted) and each word's rank base."""
    words = np.zeros(n_words, dtype=np.uint64)
    for row in keys:
        words[row >> 6] |= np.uint64(1) << np.uint64(row & 63)
    ranks = np.empty(n_words, dtype=np.int32)
    total = 0
    for w in range(n_words):
        ranks[w] = total
        total += _popcount(words[w])
    return words, ranks


@numba.njit(cache=True, nogil=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


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
def row_slices(keys, words, ranks, bases, offsets, times, base, rows, lo, hi, clip=True):
    """Per row of ``rows`` (ascending), the slice [a, b) of ``times`` holding its events with
    lo <= base + time <= hi (a == b when it has none; without ``clip``, all its events if the window
    reaches the epoch from ``base``): a row's position is its rank in ``words`` or found by one
    forward galloping search over ``keys``; its times are cut by a galloping search from each end (a
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
    dense = len(words) > 0
    p = 0
    for i in range(n):
        row = rows[i]
        if dense:
            w = row >> 6
            if w >= len(words):
                break
            bit = np.uint64(1) << np.uint64(row & 63)
            if not words[w] & bit:
                continue
            p = ranks[w] + _popcount(words[w] & (bit - np.uint64(1)))
            s, e = _start(bases, offsets, p), _start(bases, offsets, p + 1)
            if clip:
                s = _first_at_least(times, s, e, lo_off)
                e = _last_at_most(times, s, e, hi_off)
            a[i], b[i] = s, e
            continue
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
        s, e = _start(bases, offsets, p), _start(bases, offsets, p + 1)
        if clip:
            s = _first_at_least(times, s, e, lo_off)
            e = _last_at_most(times, s, e, hi_off)
        a[i], b[i] = s, e
    return a, b


@numba.njit(cache=True, nogil=True, inline="always")
def _start(bases, offsets, p):
    """Where the p-th distinct row's times begin."""
    return bases[p >> 6] + np.int64(offsets[p])


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
