"""Plain bitsets of rows (uint64 words, bit r of word r // 64) and ranks within them, for numba kernels.

A bitset of 10M rows takes 1.25 MB, so a kernel that tests each event's row in one stays in cache;
a row's rank among the set rows (its slot in a per-row array) is the bits set before its word plus
the bits below it in the word.

>>> words = np.zeros(2, dtype=np.uint64)
>>> mark_rows(words, np.array([70, 3, 64, 3], dtype=np.int32))
>>> set_rows(words).tolist(), ranks_of(np.array([70, 3], dtype=np.int32), rank_table(words)).tolist()
([3, 64, 70], [2, 0])
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap


@numba.njit(cache=True, nogil=True)
def popcount(x):
    """The number of bits set in a uint64."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, nogil=True)
def rank_table(words):
    """The bitset ``words`` interleaved with the number of bits set before each word (one cache
    line holds both for four words): ``[word 0, 0, word 1, popcount(word 0), ...]``."""
    table = np.empty(2 * len(words), dtype=np.uint64)
    total = 0
    for w in range(len(words)):
        table[2 * w] = words[w]
        table[2 * w + 1] = np.uint64(total)
        total += popcount(words[w])
    return table


@numba.njit(cache=True, nogil=True)
def mark_rows(words, rows):
    """Set the bits of ``rows`` (each below 64 * len(words))."""
    for i in range(len(rows)):
        row = np.int64(rows[i])
        words[row >> 6] |= np.uint64(1) << np.uint64(row & 63)


@numba.njit(cache=True, nogil=True)
def set_rows(words):
    """The rows set in ``words``, ascending (int32)."""
    total = 0
    for w in range(len(words)):
        total += popcount(words[w])
    out = np.empty(total, dtype=np.int32)
    n = 0
    for w in range(len(words)):
        word = words[w]
        while word:
            low = word & (~word + np.uint64(1))  # the lowest set bit
            out[n] = np.int32((w << 6) + popcount(low - np.uint64(1)))
            n += 1
            word ^= low
    return out


@numba.njit(cache=True, nogil=True)
def ranks_of(rows, table):
    """Per row (each set in the bitset of ``table``, see :func:`rank_table`), its rank among the set rows."""
    out = np.empty(len(rows), dtype=np.int64)
    for i in range(len(rows)):
        row = np.int64(rows[i])
        w = (row >> 6) * 2
        bit = np.uint64(1) << np.uint64(row & 63)
        out[i] = np.int64(table[w + 1]) + popcount(table[w] & (bit - np.uint64(1)))
    return out


#: Roaring's portable format: the cookie of a bitmap without run containers.
_NO_RUN_COOKIE = 12346


@numba.njit(cache=True, nogil=True)
def _portable(rows):
    """Roaring's portable serialization of ``rows`` (ascending, distinct, uint32 values): array
    containers of up to 4096 values, bitset containers above."""
    n = len(rows)
    keys = np.empty(min(n, 65536), dtype=np.int64)
    starts = np.empty(min(n, 65536) + 1, dtype=np.int64)
    c = 0
    for i in range(n):
        key = np.int64(rows[i]) >> 16
        if c == 0 or keys[c - 1] != key:
            keys[c] = key
            starts[c] = i
            c += 1
    starts[c] = n
    size = 8 + 8 * c
    for j in range(c):
        card = starts[j + 1] - starts[j]
        size += 2 * card if card <= 4096 else 8192
    out = np.zeros(size, dtype=np.uint8)
    head = out[:8 + 8 * c].view(np.uint32)  # 8 + 8c is a multiple of 4 and out starts aligned
    head[0] = _NO_RUN_COOKIE
    head[1] = c
    pairs = out[8:8 + 4 * c].view(np.uint16)
    offset = 8 + 8 * c
    for j in range(c):
        card = starts[j + 1] - starts[j]
        pairs[2 * j] = keys[j]
        pairs[2 * j + 1] = card - 1
        head[2 + c + j] = offset
        if card <= 4096:
            values = out[offset:offset + 2 * card].view(np.uint16)
            for i in range(card):
                values[i] = np.int64(rows[starts[j] + i]) & 0xFFFF
            offset += 2 * card
        else:
            words = out[offset:offset + 8192].view(np.uint64)
            for i in range(starts[j], starts[j + 1]):
                low = np.int64(rows[i]) & 0xFFFF
                words[low >> 6] |= np.uint64(1) << np.uint64(low & 63)
            offset += 8192
    return out


def sorted_bitmap(rows: np.ndarray) -> BitMap:
    """A bitmap of ``rows`` (ascending, distinct, below 2**32), built as Roaring's serialized form and
    deserialized: several times faster than adding the values (1 ms for 180K rows at 10M rows).

    >>> list(sorted_bitmap(np.array([1, 70000, 70001], dtype=np.int32)))
    [1, 70000, 70001]
    """
    if len(rows) == 0:
        return BitMap()
    return BitMap.deserialize(_portable(rows).tobytes())
