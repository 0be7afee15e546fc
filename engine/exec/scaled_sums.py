"""Exact DID aggregates of a float property kept as scaled int32 codes, in integer arithmetic.

A value stored as code ``c`` is the float64 ``d = c / scale`` (correctly rounded). Per row, one
pass over the window's events accumulates the count and, per property, the number of values,
the sum of codes ``C`` (exact int64) and, when MIN or MAX asks, the extreme codes. The exact sum
of a row's values differs from ``C / scale`` by the sum of the representation errors ``d - c /
scale``, each at most half an ulp of ``d``: a row whose ``SUM`` or ``AVG`` lies further from the
literal than that and a few ulps is decided by ``C / scale``. For the others (a sum of cents
exactly on the literal), a second pass over the window's events of those rows only adds up
``R``, the residuals ``r = scale * d - c`` (each an exact float64 and, for scale 100, a multiple
of ``2**-RESIDUAL_BITS``) as exact int64 units, and :func:`correctly_rounded_sums` turns
``(C + R * 2**-RESIDUAL_BITS) / scale`` into the correctly rounded sum (as ``math.fsum``).

Codes 10, 20 and -30 of one row (0.1 + 0.2 - 0.3, whose exact sum is not 0):

>>> state = np.zeros((1, SUMS_WIDTH), dtype=np.int64)
>>> rows, codes, no_pick = np.zeros(3, np.int32), np.array([10, 20, -30], np.int32), np.empty(0, np.bool_)
>>> accumulate_scaled(rows, no_pick, False, rank_table(np.ones(1, np.uint64)), codes, state, True)
>>> residuals = np.zeros(1, dtype=np.int64)
>>> accumulate_residuals(rows, no_pick, False, np.zeros(1, np.int64), codes, residuals, 100)
>>> correctly_rounded_sums(state[:, SUM], residuals, 100).tolist() == [math.fsum([0.1, 0.2, -0.3])]
True
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..store.bitsets import popcount, rank_table  # noqa: F401 (rank_table: the doctest and callers use it here)
from ..store.runs import RESIDUAL_BITS, SCALED_NULL, residual_units, times_scale

#: Columns of the per-row state (16 or 32 bytes: a record never straddles a cache line): the events
#: counted (high 32 bits) and the property's values (low 32 bits), the sum of codes, and with
#: extremes, the least and the greatest code (SUMS_WIDTH or EXTREMES_WIDTH columns).
COUNTS, SUM, LEAST, GREATEST = range(4)
SUMS_WIDTH, EXTREMES_WIDTH = 2, 4
_EVENT = 1 << 32
#: Rows with more values than this in a window leave the integer path (C and R stay far from overflow).
MAX_VALUES = 1 << 21
#: |c| < 2**CODE_BITS for every code, so each representation error is below 2**(CODE_BITS - 53) / scale.
CODE_BITS = 31


def counts_of(state: np.ndarray) -> np.ndarray:
    """Per row of a state, the events counted."""
    return state[:, COUNTS] >> 32


def values_of(state: np.ndarray) -> np.ndarray:
    """Per row of a state, the property's non-null values."""
    return state[:, COUNTS] & 0xFFFFFFFF


def residual_bits(scale: int) -> int:
    """The exponent ``k`` such that every value ``c / scale`` (c an int32) is a multiple of ``2**-k``."""
    return 53 - math.frexp(1.0 / scale)[1]


@numba.njit(cache=True, nogil=True)
def accumulate_scaled(rows, pick, use_pick, table, codes, state, counting):
    """Accumulate a window part's events into ``state`` (one row per rank, SUMS_WIDTH or
    EXTREMES_WIDTH columns).

    An event counts when ``pick`` holds (if ``use_pick``) and its row is set in the bitset of the
    rank ``table`` (:func:`rank_table`); its slot is the row's rank. ``counting``: also count the
    events; the property columns take the non-null codes only.
    """
    extremes = state.shape[1] > LEAST
    for i in range(len(rows)):
        if use_pick and not pick[i]:
            continue
        row = np.int64(rows[i])
        w = (row >> 6) * 2
        if w >= len(table):
            continue
        bit = np.uint64(1) << np.uint64(row & 63)
        word = table[w]
        if word & bit == 0:
            continue
        k = np.int64(table[w + 1]) + popcount(word & (bit - np.uint64(1)))
        c = codes[i]
        if c == SCALED_NULL:
            if counting:
                state[k, COUNTS] += _EVENT
            continue
        n = state[k, COUNTS] & 0xFFFFFFFF
        state[k, COUNTS] += _EVENT + 1 if counting else 1
        state[k, SUM] += c
        if extremes:
            if n == 0 or c < state[k, LEAST]:
                state[k, LEAST] = c
            if n == 0 or c > state[k, GREATEST]:
                state[k, GREATEST] = c


@numba.njit(cache=True, nogil=True)
def accumulate_residuals(rows, pick, use_pick, near, codes, residuals, scale):
    """Add each counted non-null event's residual ``scale * (c / scale) - c``, in units of
    ``2**-RESIDUAL_BITS``, to ``residuals[j]`` when its row is ``near[j]`` (``near`` ascending;
    events picked by ``pick`` if ``use_pick``). A 65536-bit filter of the rows' low 16 bits (8 KiB,
    cache resident) passes an event on to the binary search, so the pass streams the events."""
    filter_bits = np.zeros(1024, dtype=np.uint64)
    for j in range(len(near)):
        low = np.int64(near[j]) & 0xFFFF
        filter_bits[low >> 6] |= np.uint64(1) << np.uint64(low & 63)
    for i in range(len(rows)):
        row = np.int64(rows[i])
        low = row & 0xFFFF
        if filter_bits[low >> 6] & (np.uint64(1) << np.uint64(low & 63)) == 0:
            continue
        if use_pick and not pick[i]:
            continue
        j = np.searchsorted(near, row)
        if j == len(near) or near[j] != row:
            continue
        c = codes[i]
        if c == SCALED_NULL:
            continue
        residuals[j] += residual_units(c, scale)


#: Operator codes of :func:`sum_tests`.
OP_CODES = {"=": 0, "!=": 1, "<": 2, "<=": 3, ">": 4, ">=": 5}


@numba.njit(cache=True, nogil=True, inline="always")
def op_holds(v, op, lo, hi):
    """``v op literal`` exactly, where lo <= literal <= hi are the nearest float64 (lo == hi: it is one)."""
    if lo == hi:
        if op == 0:
            return v == lo
        if op == 1:
            return v != lo
        if op == 2:
            return v < lo
        if op == 3:
            return v <= lo
        if op == 4:
            return v > lo
        return v >= lo
    if op == 0:
        return False
    if op == 1:
        return True
    if op <= 3:
        return v <= lo
    return v >= hi


@numba.njit(cache=True, nogil=True)
def sum_tests(state, scale, op, lo, hi, average):
    """Per row of ``state``: whether ``C / scale`` (over the number of values, with ``average``)
    ``op`` the literal (bounded by the float64 ``lo`` <= literal <= ``hi``), and whether the exact
    SUM (AVG) may lie on its other side or on it (then it must be computed exactly). An AVG of no
    values holds for none."""
    n = state.shape[0]
    holds = np.empty(n, dtype=np.bool_)
    near = np.empty(n, dtype=np.bool_)
    drift_per_value = 2.0 ** (CODE_BITS - 53) / scale
    size = abs(lo) if math.isfinite(lo) else 0.0
    for k in range(n):
        count = state[k, COUNTS] & 0xFFFFFFFF
        v = state[k, SUM] / scale
        drift = count * drift_per_value
        if average:
            if count == 0:
                holds[k] = False
                near[k] = False
                continue
            v = v / count
            drift = drift / count
        slack = drift + 2.0**-50 * (abs(v) + size) + 1e-300
        holds[k] = op_holds(v, op, lo, hi)
        near[k] = abs(v - lo) <= slack or abs(v - hi) <= slack
    return holds, near


@numba.njit(cache=True, nogil=True)
def add_partial(partials, m, x):
    """Add ``x`` exactly to Shewchuk's non-overlapping partials ``partials[:m]`` (increasing
    magnitude); returns their new count. The largest partial, if any, is ``partials[count - 1]``."""
    j = 0
    for q in range(m):
        y = partials[q]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            partials[j] = lo
            j += 1
        x = hi
    if x != 0.0:
        partials[j] = x
        j += 1
    return j


@numba.njit(cache=True, nogil=True)
def _sign_of_sum(terms, partials):
    """The sign of the exact sum of ``terms`` (Shewchuk's partials; no overflow possible here)."""
    m = 0
    for i in range(len(terms)):
        m = add_partial(partials, m, terms[i])
    if m == 0:
        return 0
    return 1 if partials[m - 1] > 0.0 else -1  # the largest partial carries the sign


@numba.njit(cache=True, nogil=True)
def _even(x):
    return (np.int64(np.float64(x).view(np.int64)) & 1) == 0


@numba.njit(cache=True, nogil=True)
def correctly_rounded_sums(sums, residuals, scale):
    """Per row, the float64 nearest (ties to even) to ``(C + R * 2**-RESIDUAL_BITS) / scale``: the
    ``math.fsum`` of its values (``sums`` = C, ``residuals`` = R; |C| < 2**53)."""
    out = np.empty(len(sums), dtype=np.float64)
    terms = np.empty(6, dtype=np.float64)
    partials = np.empty(16, dtype=np.float64)
    unit = 2.0 ** -RESIDUAL_BITS
    for k in range(len(sums)):
        c = np.float64(sums[k])
        r_hi = np.float64(residuals[k] >> 32) * (4294967296.0 * unit)  # both parts exact
        r_lo = np.float64(residuals[k] & 0xFFFFFFFF) * unit
        q = (c + (r_hi + r_lo)) / scale
        for _ in range(64):  # q moves by one ulp a step; it starts within a few
            p, e = times_scale(q, scale)
            up = np.nextafter(q, np.inf)
            terms[0], terms[1], terms[2], terms[3], terms[4] = c, r_hi, r_lo, -p, -e
            terms[5] = -(up - q) * 0.5 * scale  # exact: a power of two times scale
            s = _sign_of_sum(terms, partials)  # the sign of scale * (exact - midpoint above q)
            if s > 0 or (s == 0 and _even(up)):
                q = up
                continue
            down = np.nextafter(q, -np.inf)
            terms[5] = (q - down) * 0.5 * scale
            s = _sign_of_sum(terms, partials)
            if s < 0 or (s == 0 and _even(down)):
                q = down
                continue
            break
        out[k] = q
    return out
