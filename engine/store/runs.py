"""Runs of events: time-sorted columns of one event type, and the codes they keep values in.

A run holds events sorted by time: uint32 offsets from its epoch's ``base``, profile rows
(int32), property columns (category codes in the narrowest int type, floats as int32 hundredths
while they round-trip exactly) and not-null masks of int/timestamp properties. Runs are never
changed once written; a merge makes new arrays (see engine.store.events). A run may carry the
index of its events by row (``engine.store.row_index``), built on first use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from .row_index import RowIndex

EPOCH_BITS = 32
#: No time at all (an empty latest-time entry, an unbounded window edge).
NO_TIME = np.iinfo(np.int64).min
EPOCH_SPAN = 1 << EPOCH_BITS


#: Float properties are kept as int32 multiples of 1/FLOAT_SCALE (money in cents: half the bytes)
#: as long as every value of the type round-trips exactly; the first that does not turns them to float64.
FLOAT_SCALE = 100
SCALED_NULL = np.iinfo(np.int32).min
_SCALED_MAX = np.iinfo(np.int32).max


def encode_scaled(values: np.ndarray, valid: np.ndarray, scale: int) -> np.ndarray | None:
    """int32 codes c with ``c / scale`` equal to each valid value bit for bit (SCALED_NULL where not
    valid), or None if some valid value has no such code."""
    kept = np.where(valid, values, 0.0)
    codes = np.rint(kept * scale)
    if not bool(np.all(np.abs(codes) < _SCALED_MAX)):  # also false for NaN and infinities
        return None
    codes = codes.astype(np.int32)
    if not np.array_equal((codes / scale).view(np.int64), kept.view(np.int64)):  # bitwise: -0.0 fails too
        return None
    codes[~valid] = SCALED_NULL
    return codes


def decode_scaled(codes: np.ndarray, scale: int) -> np.ndarray:
    """float64 values (NaN = null) of scaled int32 codes."""
    values = codes / scale
    values[codes == SCALED_NULL] = np.nan
    return values


#: Residuals of scaled codes (``scale * (c / scale) - c``, exact float64s) are counted in units of
#: 2**-RESIDUAL_BITS: for scale 100, the ulp of the least nonzero |value| (1/100).
RESIDUAL_BITS = 59
_SPLIT = 134217729.0  # 2**27 + 1, Dekker's splitter


@numba.njit(cache=True, nogil=True, inline="always")
def times_scale(d, scale):
    """``scale * d`` as ``p + e`` exactly (Dekker's product; ``scale`` fits in 26 bits)."""
    p = d * scale
    t = _SPLIT * d
    hi = t - (t - d)
    lo = d - hi
    return p, (hi * scale - p) + lo * scale


@numba.njit(cache=True, nogil=True, inline="always")
def residual_units(c, scale):
    """The residual ``scale * (c / scale) - c`` of code ``c`` in units of 2**-RESIDUAL_BITS (exact:
    ``p - c`` by Sterbenz's lemma, and the sum is representable)."""
    p, e = times_scale(c / scale, scale)
    return np.int64(((p - c) + e) * 2.0 ** RESIDUAL_BITS)


def code_dtype(n_labels: int) -> type:
    """The smallest signed integer dtype for category codes 0..n_labels-1 plus -1 (null)."""
    if n_labels < 127:
        return np.int8
    return np.int16 if n_labels < 32767 else np.int32


def time_order(ts: np.ndarray) -> np.ndarray:
    """A stable argsort of int64 timestamps.

    When (time span bits + index bits) fit in 63 bits, time and position are packed into one
    int64 key and sorted by value (several times faster than an argsort); else a stable argsort.
    """
    n = len(ts)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    lo, hi = int(ts.min()), int(ts.max())
    shift = (n - 1).bit_length()
    if (hi - lo).bit_length() + shift > 63:
        return np.argsort(ts, kind="stable")
    keys = ts - lo
    keys <<= shift
    keys |= np.arange(n, dtype=np.int64)
    keys.sort()
    keys &= (1 << shift) - 1
    return keys


@numba.njit(cache=True, nogil=True)
def merge_order(a, b):
    """Positions (in a + b concatenated) that merge two time-sorted arrays stably (a first on ties)."""
    na, nb = len(a), len(b)
    out = np.empty(na + nb, dtype=np.int64)
    i = j = k = 0
    while i < na and j < nb:
        if b[j] < a[i]:
            out[k] = na + j
            j += 1
        else:
            out[k] = i
            i += 1
        k += 1
    while i < na:
        out[k] = i
        i += 1
        k += 1
    while j < nb:
        out[k] = na + j
        j += 1
        k += 1
    return out


@numba.njit(cache=True, nogil=True)
def max_at(target, rows, ts):
    """target[row] = max(target[row], ts) for each event."""
    for i in range(len(rows)):
        if ts[i] > target[rows[i]]:
            target[rows[i]] = ts[i]


@dataclass
class Run:
    """Events sorted by time: uint32 offsets from ``base``, profile rows and property values."""

    base: int
    ts: np.ndarray  # uint32 offsets from base
    rows: np.ndarray  # int32
    props: dict[str, np.ndarray]
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # int/timestamp properties: not-null mask
    eids: np.ndarray | None = None  # int32 event id entries (-1: none; see engine.store.event_ids), None: no ids
    # the events grouped by row (engine.store.row_index), a cache built on first use; never in a snapshot
    row_index: RowIndex | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ts)

    def __getstate__(self) -> dict:
        """The state to pickle: the row index is a cache, rebuilt on demand."""
        return {**self.__dict__, "row_index": None}

    def absolute_ts(self) -> np.ndarray:
        """Timestamps as int64 epoch ms."""
        return self.ts.astype(np.int64) + self.base

    def slice(self, start: int, stop: int) -> "Run":
        """Events ``start:stop`` (views)."""
        return Run(self.base, self.ts[start:stop], self.rows[start:stop],
                   {k: v[start:stop] for k, v in self.props.items()}, {k: v[start:stop] for k, v in self.valid.items()},
                   None if self.eids is None else self.eids[start:stop])

    def window_bounds(self, lo: int, hi: int) -> tuple[int, int]:
        """The positions [start, stop) of the events with lo <= ts <= hi."""
        lo_off, hi_off = max(lo - self.base, 0), min(hi - self.base, EPOCH_SPAN - 1)
        if lo_off > hi_off:
            return 0, 0
        start = int(np.searchsorted(self.ts, np.uint32(lo_off), side="left"))
        stop = int(np.searchsorted(self.ts, np.uint32(hi_off), side="right"))
        return start, max(start, stop)

    def window(self, lo: int, hi: int) -> "Run | None":
        """The events with lo <= ts <= hi, or None if there are none."""
        start, stop = self.window_bounds(lo, hi)
        return self.slice(start, stop) if stop > start else None

    def take(self, order: np.ndarray) -> "Run":
        """This run's events reordered/subset by ``order``."""
        return Run(self.base, self.ts[order], self.rows[order], {k: v[order] for k, v in self.props.items()},
                   {k: v[order] for k, v in self.valid.items()}, None if self.eids is None else self.eids[order])

    def event_ids(self) -> np.ndarray:
        """The event id entry of each event (-1: none)."""
        return self.eids if self.eids is not None else np.full(len(self), -1, dtype=np.int32)


def merge_runs(a: Run, b: Run) -> Run:
    """One sorted run from two runs of the same epoch (new arrays; ``a`` and ``b`` are unchanged)."""
    order = merge_order(a.ts, b.ts)

    def merged(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.concatenate([x, y]).take(order)

    eids = None if a.eids is None and b.eids is None else merged(a.event_ids(), b.event_ids())
    return Run(a.base, merged(a.ts, b.ts), merged(a.rows, b.rows),
               {k: merged(a.props[k], b.props[k]) for k in a.props},
               {k: merged(a.valid[k], b.valid[k]) for k in a.valid}, eids)
