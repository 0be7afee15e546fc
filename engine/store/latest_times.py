"""Per row, the time of its latest event of one type, kept only for the rows that have one.

A time is its epoch (``ts >> 32``, ~49.7 days) and its uint32 offset in it: ``low`` holds the
offset and ``high`` = epoch - ``epoch0`` + 1 (0: no time, a row cleared), uint8 while the times
span at most 255 epochs (~34.7 years), widened to uint16 and int64 beyond. Most event types reach
a minority of the profiles, so the times are packed by row: a bitset of the rows held (``words``)
with the rank of each word (``ranks``; 12 bytes per 64 rows) gives a row's position in ``low`` and
``high`` (5 bytes per row held). A row new to the times goes to a small sorted extra part (``xrows``,
``xlow``, ``xhigh``), folded into the packed one once it passes an eighth of it, so an append moves
no packed time. Kernels read rows' times with ``times_of(*parts, rows)``; ``parts`` is the tuple
they take, replaced as one when the layout changes (appends to held rows write into it in place).

>>> latest = LatestTimes()
>>> latest.add(np.array([2, 0, 2]), np.array([5 << 32 | 7, 9, 3 << 32]))
>>> latest.gather(np.array([0, 1, 2, 5])).tolist() == [9, NO_TIME, (5 << 32) + 7, NO_TIME]
True
>>> latest.high.dtype, latest.held, latest.size
(dtype('uint8'), 2, 3)
>>> latest.add(np.array([1]), np.array([300 << 32])); latest.high.dtype, latest.gather(np.array([1, 2])).tolist()
(dtype('uint16'), [1288490188800, 21474836487])
"""
from __future__ import annotations

import numba
import numpy as np

from .runs import NO_TIME

_HIGH_DTYPES = (np.uint8, np.uint16, np.int64)
#: The extra part is folded into the packed one past this share of it (and ``FOLD_MIN`` rows).
FOLD_SHARE = 8
FOLD_MIN = 1024


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, nogil=True, inline="always")
def slot_of(words, ranks, xrows, row):
    """Where ``row``'s time is: (0, position) in the packed part, (1, position) in the extra part, or (-1, 0).
    One exit."""
    part, p = -1, np.int64(0)
    w = row >> 6
    bit = np.uint64(1) << np.uint64(row & 63)
    if row >= 0 and w < len(words) and words[w] & bit:
        part, p = 0, ranks[w] + _popcount(words[w] & (bit - np.uint64(1)))
    elif len(xrows):
        x, y = 0, len(xrows)
        while x < y:
            mid = (x + y) >> 1
            if xrows[mid] < row:
                x = mid + 1
            else:
                y = mid
        if x < len(xrows) and xrows[x] == row:
            part, p = 1, np.int64(x)
    return part, p


@numba.njit(cache=True, nogil=True)
def _max_into_held(words, ranks, low, high, xrows, xlow, xhigh, epoch0, rows, ts):
    """Each event (rows, int64 times) of a held row raises its time; a mask of the events of rows not held."""
    new = np.zeros(len(rows), dtype=np.bool_)
    for i in range(len(rows)):
        row, t = rows[i], ts[i]
        part, p = slot_of(words, ranks, xrows, row)
        if part < 0:
            new[i] = True
            continue
        if part == 0:
            h, held = np.int64(high[p]), np.int64(low[p])
        else:
            h, held = np.int64(xhigh[p]), np.int64(xlow[p])
        if h == 0 or t > ((h - 1 + epoch0) << 32) + held:
            if part == 0:
                high[p] = (t >> 32) - epoch0 + 1
                low[p] = t & 0xFFFFFFFF
            else:
                xhigh[p] = (t >> 32) - epoch0 + 1
                xlow[p] = t & 0xFFFFFFFF
    return new


@numba.njit(cache=True, nogil=True)
def times_of(words, ranks, low, high, xrows, xlow, xhigh, epoch0, rows):
    """The latest time of each of ``rows`` (int64, NO_TIME: none). The lookup is written out in this
    loop: as a function numba inlines (or calls), it took ten to twenty times as long per row."""
    out = np.empty(len(rows), dtype=np.int64)
    n_extra = len(xrows)
    for i in range(len(rows)):
        row = rows[i]
        t = NO_TIME
        w = row >> 6
        bit = np.uint64(1) << np.uint64(row & 63)
        if row >= 0 and w < len(words) and words[w] & bit:
            p = ranks[w] + _popcount(words[w] & (bit - np.uint64(1)))
            h = np.int64(high[p])
            if h != 0:
                t = ((h - 1 + epoch0) << 32) + np.int64(low[p])
        elif n_extra:
            x, y = 0, n_extra
            while x < y:
                mid = (x + y) >> 1
                if xrows[mid] < row:
                    x = mid + 1
                else:
                    y = mid
            if x < n_extra and xrows[x] == row:
                h = np.int64(xhigh[x])
                if h != 0:
                    t = ((h - 1 + epoch0) << 32) + np.int64(xlow[x])
        out[i] = t
    return out


@numba.njit(cache=True, nogil=True)
def _clear_at_most(high, low, epoch0, cutoff):
    """Forget the times <= cutoff of one part."""
    for p in range(len(high)):
        if high[p] != 0 and ((np.int64(high[p]) - 1 + epoch0) << 32) + np.int64(low[p]) <= cutoff:
            high[p] = 0


@numba.njit(cache=True, nogil=True)
def _clear_rows(words, ranks, high, xrows, xhigh, rows):
    """Forget the times of ``rows``."""
    for i in range(len(rows)):
        part, p = slot_of(words, ranks, xrows, rows[i])
        if part == 0:
            high[p] = 0
        elif part == 1:
            xhigh[p] = 0


@numba.njit(cache=True, nogil=True)
def _unpacked_into(dense, words, ranks, low, high, xrows, xlow, xhigh, epoch0):
    """dense[row] = the time of every row held (below len(dense)) with one."""
    for w in range(len(words)):
        bits = words[w]
        p = ranks[w]
        while bits:
            row = (w << 6) + _popcount((bits & (~bits + np.uint64(1))) - np.uint64(1))
            if high[p] != 0 and row < len(dense):
                dense[row] = ((np.int64(high[p]) - 1 + epoch0) << 32) + np.int64(low[p])
            bits &= bits - np.uint64(1)
            p += 1
    for i in range(len(xrows)):
        if xhigh[i] != 0 and xrows[i] < len(dense):
            dense[xrows[i]] = ((np.int64(xhigh[i]) - 1 + epoch0) << 32) + np.int64(xlow[i])


@numba.njit(cache=True, nogil=True)
def _dense_max(dense, rows, ts):
    """dense[row] = the latest of it and each event's time."""
    for i in range(len(rows)):
        if ts[i] > dense[rows[i]]:
            dense[rows[i]] = ts[i]


@numba.njit(cache=True, nogil=True)
def _max_by_row(low, high, epoch0, rows, ts):
    """low/high[row] = the later of their time and each event's (one place per row: the unpacked layout)."""
    for i in range(len(rows)):
        row, t = rows[i], ts[i]
        h = np.int64(high[row])
        if h == 0 or t > ((h - 1 + epoch0) << 32) + np.int64(low[row]):
            high[row] = (t >> 32) - epoch0 + 1
            low[row] = t & 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _packed(dense, epoch0, low, high):
    """The bitset and ranks of the rows of ``dense`` with a time, their times written into low/high."""
    n_words = (len(dense) + 63) >> 6
    words = np.zeros(n_words, dtype=np.uint64)
    ranks = np.empty(n_words, dtype=np.int32)
    p = 0
    for w in range(n_words):
        ranks[w] = p
        for row in range(w << 6, min((w + 1) << 6, len(dense))):
            t = dense[row]
            if t != NO_TIME:
                words[w] |= np.uint64(1) << np.uint64(row & 63)
                high[p] = (t >> 32) - epoch0 + 1
                low[p] = t & 0xFFFFFFFF
                p += 1
    return words, ranks


def _wide_enough(largest: int, dtype: np.dtype) -> np.dtype:
    """``dtype``, or the first of the wider ``_HIGH_DTYPES`` that holds ``largest``."""
    for wider in _HIGH_DTYPES:
        if np.dtype(wider).itemsize >= np.dtype(dtype).itemsize and largest <= np.iinfo(wider).max:
            return np.dtype(wider)
    return np.dtype(np.int64)


def _empty_parts(dtype: np.dtype | type = np.uint8, epoch0: int = 0) -> tuple:
    return (np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.uint32), np.zeros(0, dtype),
            np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, dtype), epoch0)


class LatestTimes:
    """Per row, its latest event time of one type (see the module docstring)."""

    def __init__(self, size: int = 0):
        # (words, ranks, low, high, xrows, xlow, xhigh, epoch0): what ``time_at`` reads, replaced as one
        self.parts: tuple = _empty_parts()
        self.length = size  # rows addressed so far (rows beyond have no time)
        self.based = False  # epoch0 set (by the first time taken)

    @property
    def low(self) -> np.ndarray:
        """Per packed row, its time's offset in its epoch."""
        return self.parts[2]

    @property
    def high(self) -> np.ndarray:
        """Per packed row, its time's epoch - epoch0 + 1 (0: no time)."""
        return self.parts[3]

    @property
    def epoch0(self) -> int:
        """The epoch of ``high`` 1."""
        return self.parts[7]

    @property
    def size(self) -> int:
        """Rows addressed so far (rows beyond have no time)."""
        return self.length

    @property
    def held(self) -> int:
        """Rows with a place for a time (packed or extra; a cleared one keeps its place until a fold)."""
        return len(self.parts[2]) + len(self.parts[4])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        return sum(part.nbytes for part in self.parts[:7])

    def ensure(self, size: int) -> None:
        """Make rows ``[0, size)`` addressable (they have no time until one is added)."""
        self.length = max(self.length, size)

    def add(self, rows: np.ndarray, ts: np.ndarray) -> None:
        """Take the events (rows, int64 times): each row keeps its latest."""
        if not len(rows):
            return
        rows = np.asarray(rows, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        self.ensure(int(rows.max()) + 1)
        self._rebase(int(ts.min()) >> 32, int(ts.max()) >> 32)
        new = _max_into_held(*self.parts, rows, ts)
        if not new.any():
            return
        rows, ts = rows[new], ts[new]
        words, ranks, low, high, xrows, xlow, xhigh, epoch0 = self.parts
        if len(xrows) + len(rows) > max(FOLD_MIN, len(low) // FOLD_SHARE):
            self._fold(rows, ts)
            return
        order = np.lexsort((ts, rows))  # each new row once, with its latest time
        rows, ts = rows[order], ts[order]
        last = np.ones(len(rows), dtype=bool)
        last[:-1] = rows[1:] != rows[:-1]
        rows, ts = rows[last], ts[last]
        merged = np.concatenate([xrows, rows])
        order = np.argsort(merged, kind="stable")
        new_high = ((ts >> 32) - epoch0 + 1).astype(high.dtype)
        self.parts = (words, ranks, low, high, merged[order],
                      np.concatenate([xlow, (ts & 0xFFFFFFFF).astype(np.uint32)])[order],
                      np.concatenate([xhigh, new_high])[order], epoch0)

    def _rebase(self, first: int, last: int) -> None:
        """Set or lower ``epoch0`` for times in epochs first..last, and widen ``high`` to hold them."""
        words, ranks, low, high, xrows, xlow, xhigh, epoch0 = self.parts
        if not self.based:
            self.parts, self.based = (words, ranks, low, high, xrows, xlow, xhigh, first), True
            epoch0 = first
        elif first < epoch0:  # an older epoch (rare): every held high moves up, in a copy
            largest = max(int(high.max(initial=0)), int(xhigh.max(initial=0))) + epoch0 - first
            dtype = _wide_enough(largest, high.dtype)
            shift = epoch0 - first
            high, xhigh = high.astype(dtype), xhigh.astype(dtype)
            high[high != 0] += dtype.type(shift)
            xhigh[xhigh != 0] += dtype.type(shift)
            self.parts = (words, ranks, low, high, xrows, xlow, xhigh, first)
            epoch0 = first
        dtype = _wide_enough(last - epoch0 + 1, high.dtype)
        if dtype != high.dtype:
            words, ranks, low, high, xrows, xlow, xhigh, epoch0 = self.parts
            self.parts = (words, ranks, low, high.astype(dtype), xrows, xlow, xhigh.astype(dtype), epoch0)

    def _fold(self, rows: np.ndarray, ts: np.ndarray) -> None:
        """Pack every held time and the events (rows, ts) into a new packed part (the extra one emptied;
        cleared rows leave)."""
        dense = self.to_int64(max(self.length, int(rows.max()) + 1 if len(rows) else 0))
        _dense_max(dense, rows, ts)
        self.parts = self._packed_parts(dense, self.high.dtype, self.epoch0)

    @staticmethod
    def _packed_parts(dense: np.ndarray, dtype: np.dtype, epoch0: int) -> tuple:
        held = int(np.count_nonzero(dense != NO_TIME))
        low, high = np.empty(held, np.uint32), np.empty(held, dtype)
        words, ranks = _packed(dense, epoch0, low, high)
        return (words, ranks, low, high, *_empty_parts(dtype)[4:7], epoch0)

    def clear(self, rows: np.ndarray) -> None:
        """Forget the times of ``rows``."""
        words, ranks, _, high, xrows, _, xhigh, _ = self.parts
        _clear_rows(words, ranks, high, xrows, xhigh, np.asarray(rows, dtype=np.int64))

    def clear_at_most(self, cutoff: int) -> None:
        """Forget the times <= ``cutoff`` (their events expired)."""
        _, _, low, high, _, xlow, xhigh, epoch0 = self.parts
        _clear_at_most(high, low, epoch0, cutoff)
        _clear_at_most(xhigh, xlow, epoch0, cutoff)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The int64 times of ``rows`` (NO_TIME: none)."""
        return times_of(*self.parts, np.asarray(rows, dtype=np.int64))

    def to_int64(self, size: int | None = None) -> np.ndarray:
        """Every row's time as int64 (NO_TIME: none), for ``size`` rows (default: those addressed): the
        snapshot form."""
        dense = np.full(self.length if size is None else size, NO_TIME, dtype=np.int64)
        _unpacked_into(dense, *self.parts)
        return dense

    @classmethod
    def from_int64(cls, values: np.ndarray) -> "LatestTimes":
        """From int64 times (NO_TIME: none)."""
        latest = cls(len(values))
        held = values[values != NO_TIME]
        if len(held):
            latest._rebase(int(held.min()) >> 32, int(held.max()) >> 32)
            latest.parts = cls._packed_parts(np.asarray(values, dtype=np.int64), latest.high.dtype, latest.epoch0)
        return latest

    @classmethod
    def from_events(cls, size: int, rows: list[np.ndarray], ts: list[np.ndarray], packed: bool = True) -> "LatestTimes":
        """The latest times of events given in parts (rows, int64 times), rows below ``size`` at least.
        Without ``packed``, every row gets a place (5 bytes per row, every bit of ``words`` set, a
        row's rank is itself): a query's own times, built in a third of the time and dropped after it."""
        size = max([size, *[int(r.max()) + 1 for r in rows if len(r)]])
        if packed:
            dense = np.full(size, NO_TIME, dtype=np.int64)
            for r, t in zip(rows, ts):
                _dense_max(dense, np.asarray(r, dtype=np.int64), np.asarray(t, dtype=np.int64))
            return cls.from_int64(dense)
        latest = cls(size)
        held = [np.asarray(t, dtype=np.int64) for t in ts if len(t)]
        if not held:
            return latest
        first, last = min(int(t.min()) for t in held) >> 32, max(int(t.max()) for t in held) >> 32
        n_words = (size + 63) >> 6
        dtype = _wide_enough(last - first + 1, np.dtype(np.uint8))
        low, high = np.zeros(n_words << 6, np.uint32), np.zeros(n_words << 6, dtype)  # the heap: freed again after the query
        for r, t in zip(rows, ts):
            _max_by_row(low, high, first, np.asarray(r, dtype=np.int64), np.asarray(t, dtype=np.int64))
        words = np.full(n_words, np.iinfo(np.uint64).max, dtype=np.uint64)
        ranks = (np.arange(n_words, dtype=np.int64) << 6).astype(np.int32 if n_words << 6 < 2**31 else np.int64)
        latest.parts, latest.based = (words, ranks, low, high, *_empty_parts(dtype)[4:7], first), True
        return latest
