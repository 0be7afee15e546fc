"""SEQUENCE's gathered events as packed int64 keys: gathered, merged by time and grouped by row.

A key holds an event's time (from ``t0``), its row's rank among the candidates and its step bits:
``(t - t0) << (rank_bits + steps) | rank << steps | step_bits``. Keys compare in time order, so
time-ordered runs merge by value, and a counting sort on the rank field groups them by row while
keeping the time order within a row. One int64 per event instead of three arrays: the merges
and the counting sort, whose writes land at random places, move a third of the bytes.

>>> layout = key_layout(1000, 1999, 3, 2)
>>> layout.time_shift, layout.rank_bits
(4, 2)
>>> key_layout(0, 2**47, 2, 16) is None  # 48 + 1 + 16 bits
True
>>> keys = np.array([(5 << 4) | (2 << 2) | 1, (7 << 4) | (0 << 2) | 2, (9 << 4) | (2 << 2) | 2])
>>> grouped, offsets = group_keys(merged_keys(keys[:1], keys[1:]), layout.steps, (1 << layout.rank_bits) - 1, 3)
>>> offsets.tolist(), unpacked(grouped, layout)[0].tolist()
([0, 1, 1, 3], [1007, 1005, 1009])
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .grouping import popcount


@dataclass(frozen=True)
class KeyLayout:
    """How times, ranks and step bits share an int64 key."""

    t0: int  # the time that key time 0 stands for
    rank_bits: int
    steps: int  # step bits, the lowest field

    @property
    def time_shift(self) -> int:
        return self.rank_bits + self.steps


def key_layout(t0: int, t1: int, n_ranks: int, steps: int) -> KeyLayout | None:
    """The layout for times in [t0, t1], ``n_ranks`` rows and ``steps`` step bits, or None when they
    do not fit in 63 bits (a window of decades with many steps: the caller groups three arrays)."""
    rank_bits = max(1, (n_ranks - 1).bit_length())
    if (t1 - t0).bit_length() + rank_bits + steps > 63:
        return None
    return KeyLayout(t0, rank_bits, steps)


@numba.njit(cache=True, nogil=True)
def gather_keys(rows, ts, base, words, before, step_bits, t0, time_shift, rank_shift, out, n):
    """Append to ``out`` from position ``n`` the key of each event (rows, uint32 times from ``base``)
    whose row is set in the bitset ``words`` (``before``: ``rank_bases(words)``), all with
    ``step_bits``. Returns the new length."""
    offset = np.int64(base) - np.int64(t0)
    for i in range(len(rows)):
        row = np.int64(rows[i])
        w = row >> 6
        if w < len(words):
            bit = np.uint64(1) << np.uint64(row & 63)
            if words[w] & bit:
                rank = before[w] + popcount(words[w] & (bit - np.uint64(1)))
                out[n] = ((offset + np.int64(ts[i])) << time_shift) | (rank << rank_shift) | step_bits
                n += 1
    return n


def packed_keys(ts: np.ndarray, ranks: np.ndarray, step_bits: np.ndarray, layout: KeyLayout) -> np.ndarray:
    """Keys of events given as int64 times, ranks and step bits."""
    keys = ts - layout.t0
    keys <<= layout.time_shift
    keys |= ranks.astype(np.int64) << layout.steps
    keys |= step_bits.astype(np.int64)
    return keys


@numba.njit(cache=True, nogil=True)
def merged_keys(a, b):
    """Two sorted key arrays merged into one."""
    na, nb = len(a), len(b)
    out = np.empty(na + nb, dtype=np.int64)
    i = j = 0
    for k in range(na + nb):
        if j == nb or (i < na and a[i] <= b[j]):
            out[k] = a[i]
            i += 1
        else:
            out[k] = b[j]
            j += 1
    return out


@numba.njit(cache=True, nogil=True)
def group_keys(keys, rank_shift, rank_mask, n_groups):
    """``keys`` grouped by their rank field (a counting sort: the order within a rank is kept) and
    the offsets of the ranks: (keys, offsets)."""
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(len(keys)):
        offsets[((keys[i] >> rank_shift) & rank_mask) + 1] += 1
    for g in range(n_groups):
        offsets[g + 1] += offsets[g]
    fill = offsets[:-1].copy()
    out = np.empty_like(keys)
    for i in range(len(keys)):
        g = (keys[i] >> rank_shift) & rank_mask
        out[fill[g]] = keys[i]
        fill[g] += 1
    return out, offsets


def unpacked(keys: np.ndarray, layout: KeyLayout) -> tuple[np.ndarray, np.ndarray]:
    """(int64 times, uint64 step bits) of ``keys``."""
    ts = keys >> layout.time_shift
    ts += layout.t0
    return ts, (keys & ((1 << layout.steps) - 1)).view(np.uint64)
