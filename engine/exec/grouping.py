"""Grouping a window's events by row without a comparison sort: row bitsets, ranks, counting sorts.

>>> words = bitset_of(BitMap([3, 64, 200]))
>>> rows_in(np.array([3, 4, 200, 9999]), words).tolist(), bit_ranks(np.array([200, 3, 64]), words).tolist()
([True, False, True, False], [2, 0, 1])
>>> stable_group_order(np.array([1, 0, 1, 0]), 2).tolist()
[1, 3, 0, 2]
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from ..store.bitmaps import rows_of
from ..store.bitsets import popcount


@numba.njit(cache=True, nogil=True)
def _fill_bits(words, rows):
    for i in range(len(rows)):
        row = np.int64(rows[i])
        words[row >> 6] |= np.uint64(1) << np.uint64(row & 63)


def bitset_of(bitmap: BitMap) -> np.ndarray:
    """A bitset (uint64 words, bit r of word r // 64) of the rows of ``bitmap``."""
    rows = rows_of(bitmap)
    words = np.zeros((int(rows[-1]) >> 6) + 1 if len(rows) else 0, dtype=np.uint64)
    _fill_bits(words, rows)
    return words


@numba.njit(cache=True, nogil=True)
def rows_in(rows, words):
    """Per event, whether its row's bit is set in the bitset ``words``."""
    out = np.empty(len(rows), dtype=np.bool_)
    for i in range(len(rows)):
        row = np.int64(rows[i])
        out[i] = (row >> 6) < len(words) and (words[row >> 6] >> np.uint64(row & 63)) & np.uint64(1) != 0
    return out


@numba.njit(cache=True, nogil=True)
def rank_bases(words):
    """Per word of the bitset ``words``, the number of bits set in the words before it."""
    before = np.empty(len(words), dtype=np.int64)
    total = 0
    for w in range(len(words)):
        before[w] = total
        total += popcount(words[w])
    return before


@numba.njit(cache=True, nogil=True)
def bit_ranks(rows, words):
    """Per row (each set in the bitset ``words``), its rank among the set rows."""
    before = rank_bases(words)
    out = np.empty(len(rows), dtype=np.int64)
    for i in range(len(rows)):
        row = np.int64(rows[i])
        w = row >> 6
        below = words[w] & ((np.uint64(1) << np.uint64(row & 63)) - np.uint64(1))
        out[i] = before[w] + popcount(below)
    return out


@numba.njit(cache=True, nogil=True)
def stable_group_order(groups, n_groups):
    """The permutation that sorts ``groups`` (ints in 0..n_groups-1), equal ones kept in order (a counting sort)."""
    starts = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(len(groups)):
        starts[groups[i] + 1] += 1
    for g in range(n_groups):
        starts[g + 1] += starts[g]
    out = np.empty(len(groups), dtype=np.int64)
    for i in range(len(groups)):
        g = groups[i]
        out[starts[g]] = i
        starts[g] += 1
    return out


@numba.njit(cache=True, nogil=True)
def gather_ranked(rows, ts, base, words, before, value, out_ts, out_ranks, out_values, n):
    """Append the events (rows, uint32 times from ``base``) whose row is set in the bitset ``words``
    to ``out_*`` from position ``n``: int64 time, the row's rank (``before``: ``rank_bases(words)``)
    and ``value``. Returns the new length."""
    for i in range(len(rows)):
        row = np.int64(rows[i])
        w = row >> 6
        if w < len(words):
            bit = np.uint64(1) << np.uint64(row & 63)
            if words[w] & bit:
                out_ts[n] = base + np.int64(ts[i])
                out_ranks[n] = before[w] + popcount(words[w] & (bit - np.uint64(1)))
                out_values[n] = value
                n += 1
    return n


@numba.njit(cache=True, nogil=True)
def group_by_rank(ts, ranks, values, n_groups):
    """``ts`` and ``values`` grouped by ``ranks`` (ints in 0..n_groups-1) with a counting sort that
    keeps the order within a group, and the offsets of the groups: (ts, values, offsets)."""
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(len(ranks)):
        offsets[ranks[i] + 1] += 1
    for g in range(n_groups):
        offsets[g + 1] += offsets[g]
    fill = offsets[:-1].copy()
    out_ts = np.empty_like(ts)
    out_values = np.empty_like(values)
    for i in range(len(ranks)):
        g = ranks[i]
        out_ts[fill[g]] = ts[i]
        out_values[fill[g]] = values[i]
        fill[g] += 1
    return out_ts, out_values, offsets
