"""Per row, the time of its latest event of one type, in 5 bytes a row instead of an int64's 8.

A time is its epoch (``ts >> 32``, ~49.7 days) and its uint32 offset in it. ``LatestTimes`` keeps the
offset in ``low`` (uint32) and the epoch as ``high`` = epoch - ``epoch0`` + 1 (0: no event), uint8
while the times span at most 255 epochs (~34.7 years), widened to uint16 and int64 beyond (a copy of
``high`` only). ``epoch0`` moves down (the highs shifted) when an older time arrives. Kernels read a
row's time with ``time_at(low, high, epoch0, row)``; ``parts`` is the tuple they take.

>>> latest = LatestTimes()
>>> latest.add(np.array([2, 0, 2]), np.array([5 << 32 | 7, 9, 3 << 32]))
>>> latest.gather(np.array([0, 1, 2, 5])).tolist() == [9, NO_TIME, (5 << 32) + 7, NO_TIME]
True
>>> latest.high.dtype, latest.nbytes // len(latest.high), latest.size
(dtype('uint8'), 5, 3)
>>> latest.add(np.array([1]), np.array([300 << 32])); latest.high.dtype, latest.gather(np.array([1, 2])).tolist()
(dtype('uint16'), [1288490188800, 21474836487])
"""
from __future__ import annotations

import numba
import numpy as np

from .growable import zeroed
from .runs import NO_TIME

_HIGH_DTYPES = (np.uint8, np.uint16, np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def time_at(low, high, epoch0, row):
    """The latest time of ``row`` (NO_TIME if none or past the arrays)."""
    if row >= len(high) or high[row] == 0:
        return NO_TIME
    return ((np.int64(high[row]) - 1 + epoch0) << 32) + np.int64(low[row])


@numba.njit(cache=True, nogil=True)
def _max_into(low, high, epoch0, rows, ts):
    """low/high[row] = the later of their time and each event's (rows, int64 times, all representable)."""
    for i in range(len(rows)):
        row = rows[i]
        t = ts[i]
        if t > time_at(low, high, epoch0, row):
            high[row] = (t >> 32) - epoch0 + 1
            low[row] = t & 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _gather(low, high, epoch0, rows):
    out = np.empty(len(rows), dtype=np.int64)
    for i in range(len(rows)):
        out[i] = time_at(low, high, epoch0, rows[i])
    return out


@numba.njit(cache=True, nogil=True)
def _clear_at_most(low, high, epoch0, cutoff):
    """Forget the rows whose latest time is <= cutoff."""
    for row in range(len(high)):
        if high[row] != 0 and time_at(low, high, epoch0, row) <= cutoff:
            high[row] = 0


def _wide_enough(largest: int, dtype: np.dtype) -> np.dtype:
    """``dtype``, or the first of the wider ``_HIGH_DTYPES`` that holds ``largest``."""
    for wider in _HIGH_DTYPES:
        if np.dtype(wider).itemsize >= np.dtype(dtype).itemsize and largest <= np.iinfo(wider).max:
            return np.dtype(wider)
    return np.dtype(np.int64)


class LatestTimes:
    """Per row, its latest event time of one type (see the module docstring)."""

    def __init__(self, size: int = 0):
        # (low, high, epoch0): what ``time_at`` reads, replaced as one (a reader never sees a new
        # epoch0 with the old highs); appends write into the arrays in place, as they did into an int64 array
        self.parts: tuple[np.ndarray, np.ndarray, int] = (np.zeros(size, np.uint32), np.zeros(size, np.uint8), 0)
        self.length = size  # rows addressed so far (the arrays may hold more)
        self.based = False  # epoch0 set (by the first time taken)

    @property
    def low(self) -> np.ndarray:
        """Per row, its time's offset in its epoch."""
        return self.parts[0]

    @property
    def high(self) -> np.ndarray:
        """Per row, its time's epoch - epoch0 + 1 (0: no time)."""
        return self.parts[1]

    @property
    def epoch0(self) -> int:
        """The epoch of ``high`` 1."""
        return self.parts[2]

    @property
    def size(self) -> int:
        """Rows addressed so far (rows beyond have no time)."""
        return self.length

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays."""
        return self.low.nbytes + self.high.nbytes

    def ensure(self, size: int) -> None:
        """Make rows ``[0, size)`` addressable (new rows have no time); grows by half again at least."""
        self.length = max(self.length, size)
        old_low, old_high, epoch0 = self.parts
        if size > len(old_high):
            size = max(size, len(old_high) + len(old_high) // 2 + 1024)
            low, high = zeroed(size, np.uint32), zeroed(size, old_high.dtype)
            low[:len(old_low)], high[:len(old_high)] = old_low, old_high
            self.parts = (low, high, epoch0)

    def add(self, rows: np.ndarray, ts: np.ndarray) -> None:
        """Take the events (rows, int64 times): each row keeps its latest."""
        if not len(rows):
            return
        ts = np.asarray(ts, dtype=np.int64)
        self.ensure(int(rows.max()) + 1)
        first, last = int(ts.min()) >> 32, int(ts.max()) >> 32
        low, high, epoch0 = self.parts
        if not self.based:
            self.parts, self.based = (low, high, first), True
        elif first < epoch0:  # an older epoch (rare): every held high moves up, in a copy
            high = high.astype(_wide_enough(int(high.max()) + epoch0 - first, high.dtype))
            held = np.flatnonzero(high)
            high[held] += high.dtype.type(epoch0 - first)
            self.parts = (low, high, first)
        low, high, epoch0 = self.parts
        if _wide_enough(last - epoch0 + 1, high.dtype) != high.dtype:
            self.parts = (low, high.astype(_wide_enough(last - epoch0 + 1, high.dtype)), epoch0)
        _max_into(*self.parts, np.asarray(rows, dtype=np.int64), ts)

    def clear(self, rows: np.ndarray) -> None:
        """Forget the times of ``rows``."""
        self.high[rows[rows < len(self.high)]] = 0

    def clear_at_most(self, cutoff: int) -> None:
        """Forget the times <= ``cutoff`` (their events expired)."""
        _clear_at_most(*self.parts, cutoff)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The int64 times of ``rows`` (NO_TIME: none)."""
        return _gather(*self.parts, np.asarray(rows, dtype=np.int64))

    def to_int64(self) -> np.ndarray:
        """Every row's time as int64 (NO_TIME: none): the snapshot form."""
        return self.gather(np.arange(self.length))

    @classmethod
    def from_int64(cls, values: np.ndarray) -> "LatestTimes":
        """From int64 times (NO_TIME: none)."""
        latest = cls(len(values))
        held = np.flatnonzero(values != NO_TIME)
        latest.add(held, values[held])
        return latest
