"""DID aggregate options (SUM, AVG, MIN, MAX) over the events a DID counts.

The counted events of the window (WHERE, AFTER LAST and the found set applied) are grouped by
row with a counting sort on each row's rank among the window's rows (:mod:`.grouping`); per row, the count and each aggregate of the non-null property values
are computed and tested. ``SUM`` is exact: each row's values go through Shewchuk's
non-overlapping partials and the same final rounding as ``math.fsum``, so it is the correctly
rounded sum whatever the order of the events. Float properties kept as scaled int32 codes are
summed in integers by :mod:`.scaled_sums` when a SUM or AVG asks, else decoded to their exact
float64 values first. A SUM or AVG of such a property without WHERE or AFTER LAST reads the kept
per-row window sums instead of the events (:mod:`.kept_sums`).

>>> segment_fsum(np.array([0, 3]), np.array([1e100, 1.0, -1e100, 0.1, 0.2]))[0].tolist()
[1.0, 0.30000000000000004]
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import EventTypeStore
from ..store.runs import SCALED_NULL, Run
from .exact_compare import CMP, compare, float_bounds
from .grouping import bit_ranks, bitset_of, popcount, rank_bases, rows_in, stable_group_order
from .kept_sums import kept_sums_property, kept_sums_rows
from .scaled_sums import (COUNTS, EXTREMES_WIDTH, GREATEST, LEAST, MAX_VALUES, OP_CODES, RESIDUAL_BITS, SUM, SUMS_WIDTH, add_partial,
                          accumulate_residuals, accumulate_scaled, correctly_rounded_sums, counts_of, rank_table,
                          residual_bits, sum_tests, values_of)

if TYPE_CHECKING:
    from .did import DidEvaluator


@numba.njit(cache=True, nogil=True)
def _fsum(values, a, b, partials):
    """The correctly rounded sum of values[a:b] (as math.fsum) and whether a partial overflowed."""
    if b - a == 1:
        return values[a], False
    if b - a == 2:  # one IEEE addition is correctly rounded
        total = values[a] + values[a + 1]
        return total, not math.isfinite(total)
    m = 0
    for i in range(a, b):
        grown = add_partial(partials, m, values[i])
        if grown > 0 and not math.isfinite(partials[grown - 1]):  # the largest partial overflowed
            return 0.0, True
        m = grown
    if m == 0:
        return 0.0, False
    n = m - 1
    hi = partials[n]
    lo = 0.0
    while n > 0:
        x = hi
        n -= 1
        y = partials[n]
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            break
    if n > 0 and ((lo < 0.0 and partials[n - 1] < 0.0) or (lo > 0.0 and partials[n - 1] > 0.0)):
        y = lo * 2.0
        x = hi + y
        if y == x - hi:
            hi = x
    return hi, False


@numba.njit(cache=True, nogil=True)
def segment_fsum(starts, values):
    """Per segment ``values[starts[k]:starts[k + 1]]``: its correctly rounded sum (as math.fsum) and
    whether a partial overflowed (then the sum is not valid)."""
    g = len(starts)
    sums = np.zeros(g, dtype=np.float64)
    bad = np.zeros(g, dtype=np.bool_)
    partials = np.empty(128, dtype=np.float64)
    for k in range(g):
        b = starts[k + 1] if k + 1 < g else len(values)
        if b > starts[k]:
            sums[k], bad[k] = _fsum(values, starts[k], b, partials)
    return sums, bad


@numba.njit(cache=True, nogil=True)
def group_values(starts, values, valid):
    """Per row group (``starts`` into row-ordered events), its non-null values packed: (packed values,
    their group starts, the number of values per group)."""
    g = len(starts)
    packed = np.empty(len(values), dtype=values.dtype)
    vstarts = np.empty(g, dtype=np.int64)
    counts = np.zeros(g, dtype=np.int64)
    n = 0
    for k in range(g):
        b = starts[k + 1] if k + 1 < g else len(values)
        vstarts[k] = n
        for i in range(starts[k], b):
            if valid[i]:
                packed[n] = values[i]
                n += 1
        counts[k] = n - vstarts[k]
    return packed[:n], vstarts, counts


@numba.njit(cache=True, nogil=True)
def group_extreme(values, vstarts, counts, want_max):
    """Per group with values, its least (or greatest) value (0 for a group without values)."""
    out = np.zeros(len(vstarts), dtype=values.dtype)
    for k in range(len(vstarts)):
        if counts[k] == 0:
            continue
        best = values[vstarts[k]]
        for i in range(vstarts[k] + 1, vstarts[k] + counts[k]):
            v = values[i]
            if (v > best) if want_max else (v < best):
                best = v
        out[k] = best
    return out


def exact_sum(values: np.ndarray) -> float:
    """The correctly rounded sum of float64 values (an overflowing sum is an infinity of its sign)."""
    total = sum((Fraction(float(v)) for v in values), Fraction(0))
    try:
        return float(total)
    except OverflowError:
        return math.copysign(math.inf, total)


def holds_at_zero(node: ast.Did) -> bool:
    """Whether the DID holds for a row with no counted event (SUM 0; AVG, MIN, MAX null)."""
    if not CMP[node.count_op](0, node.count_n):
        return False
    return all(a.func == "SUM" and CMP[a.op](0.0, a.value) for a in node.aggregates)


def property_values(store: EventTypeStore, part: Run, prop: str) -> tuple[np.ndarray, np.ndarray]:
    """A property's values in a window part (float64 exact values, or int64) and its not-null mask."""
    values = part.props[prop]
    if store.definition.properties[prop] == "int":
        return values, part.valid[prop]
    if store.scaled.get(prop, 0):
        valid = values != SCALED_NULL
        return store.float_values(prop, values), valid
    return values, ~np.isnan(values)


def aggregate_rows(evaluator: "DidEvaluator", node: ast.Did, store: EventTypeStore, window: tuple[int, int],
                   parts: list[Run], keeps: list[np.ndarray | None], found: BitMap | None, base: BitMap) -> BitMap:
    """The rows of ``base`` for which a DID with aggregate options holds (exact within ``found``).

    ``window``: the inclusive time window; ``parts``/``keeps``: its events and the masks of those
    counted (None: all). Each counted event's slot is its row's rank among the window's rows (a
    bitset of them stays in cache); events are accumulated per slot with no sort: for properties
    kept as scaled codes, integer records in one pass (:func:`_scaled_tests`), else one pass per
    aggregate of compensated sums or extremes (:func:`_float_tests`). A SUM or AVG that these cannot
    decide (compensated sums within their error bound of the literal, rare: within about 1e-15 of
    the sum of magnitudes) is decided again by :func:`exact_aggregate_rows` on those rows only.
    """
    lo, hi = window
    prop = kept_sums_property(node, store)
    if prop is not None:
        return _from_kept_sums(evaluator, node, store, prop, window, parts, keeps, found, base)
    window_rows = evaluator.present(store, lo, hi) if found is None else evaluator.present(store, lo, hi, found) & found
    words = bitset_of(window_rows)
    distinct = rows_of(window_rows)
    sums = any(agg.func in ("SUM", "AVG") for agg in node.aggregates)  # MIN/MAX alone: the float pass is faster
    if sums and all(_integer_path(store, agg.prop) for agg in node.aggregates):
        counts, passing, unsure = _scaled_tests(node, store, parts, keeps, words, distinct)
    else:
        counts, passing, unsure = _float_tests(node, store, parts, keeps, words, len(distinct))
    counted = counts > 0
    unsure &= counted
    if unsure.any():  # decide those rows exactly; their other tests are redone there too
        redo = to_bitmap(distinct[unsure].astype(np.uint32), assume_sorted=True)
        exact = exact_aggregate_rows(evaluator, node, store, window, parts, keeps, redo, redo)
        passing[unsure] = [int(row) in exact for row in distinct[unsure]]
    if holds_at_zero(node):
        return base - to_bitmap(distinct[counted & ~passing].astype(np.uint32), assume_sorted=True)
    return base & to_bitmap(distinct[counted & passing].astype(np.uint32), assume_sorted=True)


def _from_kept_sums(evaluator: "DidEvaluator", node: ast.Did, store: EventTypeStore, prop: str, window: tuple[int, int],
                    parts: list[Run], keeps: list[np.ndarray | None], found: BitMap | None, base: BitMap) -> BitMap:
    """``aggregate_rows`` from the kept window sums of ``prop`` (:mod:`.kept_sums`)."""
    at_zero = holds_at_zero(node)
    if window[0] > window[1]:
        return base if at_zero else BitMap()
    decided, left = kept_sums_rows(node, store, prop, window, found, at_zero)
    if left:  # rows with over MAX_VALUES values near a literal: grouped and summed exactly
        exact = exact_aggregate_rows(evaluator, node, store, window, parts, keeps, left, left)
        decided = decided | (left - exact if at_zero else exact)
    return base - decided if at_zero else base & decided


def _float_tests(node: ast.Did, store: EventTypeStore, parts: list[Run], keeps: list[np.ndarray | None],
                 words: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot: the events counted, whether the count and every aggregate hold, and whether that is
    left undecided (compensated float64 sums)."""
    before = rank_bases(words)
    counts = np.zeros(n, dtype=np.int64)
    slots = []
    for part, keep in zip(parts, keeps):
        pick = np.ones(len(part), dtype=bool) if keep is None else keep
        slots.append(_slots(part.rows, pick, words, before, counts))
    passing = compare(counts, node.count_op, node.count_n)
    unsure = np.zeros(n, dtype=bool)
    for agg in node.aggregates:
        holds, undecided = _fast_test(agg, store, parts, slots, n)
        passing &= holds
        unsure |= undecided
    return counts, passing, unsure


def _integer_path(store: EventTypeStore, prop: str) -> bool:
    """Whether a property's values are scaled int32 codes that :mod:`.scaled_sums` sums exactly."""
    scale = store.scaled.get(prop, 0)
    return store.definition.properties[prop] == "float" and scale != 0 and residual_bits(scale) == RESIDUAL_BITS


def _scaled_tests(node: ast.Did, store: EventTypeStore, parts: list[Run], keeps: list[np.ndarray | None],
                  words: np.ndarray, distinct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_float_tests`` for scaled float properties (``distinct``: the rows of the slots): one pass
    per property over the window's events into per-slot integer records (:mod:`.scaled_sums`), and
    one over the events of the rows whose SUM or AVG lies on or near its literal; only rows with
    over MAX_VALUES values near a literal are left undecided."""
    n = len(distinct)
    table = rank_table(words)
    props = list(dict.fromkeys(agg.prop for agg in node.aggregates))
    dummy = np.empty(0, dtype=bool)
    states: dict[str, np.ndarray] = {}
    for i, prop in enumerate(props):
        extremes = any(agg.prop == prop and agg.func in ("MIN", "MAX") for agg in node.aggregates)
        state = np.zeros((n, EXTREMES_WIDTH if extremes else SUMS_WIDTH), dtype=np.int64)
        for part, keep in zip(parts, keeps):
            accumulate_scaled(part.rows, dummy if keep is None else keep, keep is not None, table, part.props[prop],
                              state, i == 0)
        states[prop] = state
    counts = counts_of(states[props[0]])
    passing = compare(counts, node.count_op, node.count_n)
    unsure = np.zeros(n, dtype=bool)
    for agg in node.aggregates:
        state, scale = states[agg.prop], store.scaled[agg.prop]
        if agg.func in ("MIN", "MAX"):
            has = values_of(state) > 0
            holds = np.zeros(n, dtype=bool)
            codes = state[:, LEAST if agg.func == "MIN" else GREATEST]
            holds[has] = compare(codes[has] / scale, agg.op, agg.value)
            passing &= holds
            continue
        lo, hi = (agg.value, agg.value) if isinstance(agg.value, float) else float_bounds(agg.value)
        holds, near = sum_tests(state, scale, OP_CODES[agg.op], lo, hi, agg.func == "AVG")
        exact = np.flatnonzero(near)
        if len(exact):
            nvals = state[exact, COUNTS] & 0xFFFFFFFF
            crowded = nvals >= MAX_VALUES
            unsure[exact[crowded]] = True
            exact, nvals = exact[~crowded], nvals[~crowded]
            holds[exact] = _exact_scaled(agg, parts, keeps, distinct[exact], state[exact, SUM], nvals, scale)
        passing &= holds
    return counts, passing, unsure


def _exact_scaled(agg: ast.Aggregate, parts: list[Run], keeps: list[np.ndarray | None], rows: np.ndarray,
                  sums: np.ndarray, nvals: np.ndarray, scale: int) -> np.ndarray:
    """Whether a SUM or AVG holds for ``rows`` (ascending; their sums of codes and numbers of values
    given), from their exact sums: a pass over the window's events of those rows adds up residuals."""
    residuals = np.zeros(len(rows), dtype=np.int64)
    dummy = np.empty(0, dtype=bool)
    near = rows.astype(np.int64)
    for part, keep in zip(parts, keeps):
        accumulate_residuals(part.rows, dummy if keep is None else keep, keep is not None, near,
                             part.props[agg.prop], residuals, scale)
    total = correctly_rounded_sums(sums, residuals, scale)
    if agg.func == "AVG":
        total = total / np.maximum(nvals, 1)
    return compare(total, agg.op, agg.value)


@numba.njit(cache=True, nogil=True)
def _slots(rows, pick, words, before, counts):
    """Per event of a part, its row's rank among the rows set in ``words`` (-1: not picked, or its
    row not set), counted in ``counts``; ``before``: the set bits before each word."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for i in range(len(rows)):
        if not pick[i]:
            continue
        row = np.int64(rows[i])
        w = row >> 6
        if w >= len(words):
            continue
        bit = np.uint64(1) << np.uint64(row & 63)
        if words[w] & bit == 0:
            continue
        k = before[w] + popcount(words[w] & (bit - np.uint64(1)))
        out[i] = k
        counts[k] += 1
    return out


@numba.njit(cache=True, nogil=True)
def _accumulate_sums(slots, values, valid, sums, errors, magnitudes, nvals):
    """Per slot, Neumaier's compensated sum of its non-null values (sum + error term), the sum of
    their magnitudes and their number."""
    for i in range(len(slots)):
        k = slots[i]
        if k < 0 or not valid[i]:
            continue
        x = values[i]
        t = sums[k] + x
        if abs(sums[k]) >= abs(x):
            errors[k] += (sums[k] - t) + x
        else:
            errors[k] += (x - t) + sums[k]
        sums[k] = t
        magnitudes[k] += abs(x)
        nvals[k] += 1


@numba.njit(cache=True, nogil=True)
def _accumulate_extremes(slots, values, valid, extremes, nvals, want_max):
    """Per slot, the least (or greatest) of its non-null values and their number."""
    for i in range(len(slots)):
        k = slots[i]
        if k < 0 or not valid[i]:
            continue
        x = values[i]
        if nvals[k] == 0 or ((x > extremes[k]) if want_max else (x < extremes[k])):
            extremes[k] = x
        nvals[k] += 1


def _fast_test(agg: ast.Aggregate, store: EventTypeStore, parts: list[Run], slots: list[np.ndarray],
               n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slot, whether the aggregate condition holds, and whether that is left undecided."""
    nvals = np.zeros(n, dtype=np.int64)
    undecided = np.zeros(n, dtype=bool)
    pieces = [property_values(store, part, agg.prop) for part in parts]
    if agg.func in ("MIN", "MAX"):
        dtype = pieces[0][0].dtype if pieces else np.float64
        extremes = np.zeros(n, dtype=dtype)
        for (values, valid), part_slots in zip(pieces, slots):
            _accumulate_extremes(part_slots, values, valid, extremes, nvals, agg.func == "MAX")
        has = nvals > 0
        holds = np.zeros(n, dtype=bool)
        holds[has] = compare(extremes[has], agg.op, agg.value)
        return holds, undecided
    sums, errors, magnitudes = np.zeros(n), np.zeros(n), np.zeros(n)
    for (values, valid), part_slots in zip(pieces, slots):
        _accumulate_sums(part_slots, values.astype(np.float64, copy=False), valid, sums, errors, magnitudes, nvals)
    total = sums + errors
    # |exact - total| <= 2u|exact| + 2n u^2 sum|x| for Neumaier's sum (u = 2^-53); the slack also
    # covers the final rounding of the exact sum and of AVG's division
    bound = 2.0**-51 * np.abs(total) + (nvals + 4) * 2.0**-100 * magnitudes
    literal = _as_float(agg.value)
    has = nvals > 0
    if agg.func == "SUM":
        value, slack = total, bound
    else:
        safe = np.maximum(nvals, 1)
        value, slack = total / safe, bound / safe
    slack = slack + 2.0**-50 * np.maximum(np.abs(value), abs(literal) if math.isfinite(literal) else 0.0) + 1e-300
    undecided = (~np.isfinite(value)) | (~np.isfinite(magnitudes)) | (np.abs(value - literal) <= slack)
    if not math.isfinite(literal):
        undecided[:] = True
    holds = compare(value, agg.op, agg.value)
    if agg.func == "AVG":
        undecided &= has
        holds &= has
    return holds, undecided


def _as_float(value: int | float) -> float:
    """The literal as a float64 (an int too large for one: infinity, so its rows are decided exactly)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def exact_aggregate_rows(evaluator: "DidEvaluator", node: ast.Did, store: EventTypeStore, window: tuple[int, int],
                         parts: list[Run], keeps: list[np.ndarray | None], found: BitMap | None,
                         base: BitMap) -> BitMap:
    """``aggregate_rows`` by exact grouping: rows grouped by a counting sort, SUM as ``math.fsum``."""
    lo, hi = window
    member = bitset_of(found) if found is not None else None
    picks: list[np.ndarray] = []
    for part, keep in zip(parts, keeps):
        pick = np.ones(len(part), dtype=bool) if keep is None else keep
        if member is not None:
            pick = pick & rows_in(part.rows, member)
        picks.append(pick)
    rows = np.concatenate([part.rows[pick] for part, pick in zip(parts, picks)]) if parts else np.empty(0, np.int32)
    # group by row with a counting sort on the row's rank among the rows with an event here
    window_rows = evaluator.present(store, lo, hi) if member is None else evaluator.present(store, lo, hi, found) & found
    words = bitset_of(window_rows)
    order = stable_group_order(bit_ranks(rows, words), len(window_rows))
    rows = rows[order]
    if len(rows):
        starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    else:
        starts = np.empty(0, dtype=np.int64)
    distinct = rows[starts]
    counts = np.diff(np.append(starts, len(rows)))
    passing = compare(counts.astype(np.int64), node.count_op, node.count_n)
    for agg in node.aggregates:
        pieces = [property_values(store, part, agg.prop) for part in parts]
        values = np.concatenate([v[pick] for (v, _), pick in zip(pieces, picks)]) if parts else np.empty(0)
        valid = np.concatenate([ok[pick] for (_, ok), pick in zip(pieces, picks)]) if parts else np.empty(0, bool)
        passing &= _aggregate_test(agg, starts, values[order], valid[order])
    if holds_at_zero(node):
        return base - to_bitmap(distinct[~passing].astype(np.uint32), assume_sorted=True)
    return base & to_bitmap(distinct[passing].astype(np.uint32), assume_sorted=True)


def _aggregate_test(agg: ast.Aggregate, starts: np.ndarray, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row group (``starts`` into row-ordered ``values``), whether the aggregate condition holds."""
    packed, vstarts, counts = group_values(starts.astype(np.int64), values, valid)
    has = counts > 0
    if agg.func in ("SUM", "AVG"):
        floats = packed.astype(np.float64)
        sums = np.zeros(len(starts), dtype=np.float64)
        if len(starts):
            sums, bad = _group_sums(floats, vstarts, counts)
            for k in np.flatnonzero(bad):
                sums[k] = exact_sum(floats[vstarts[k]:vstarts[k] + counts[k]])
        if agg.func == "SUM":
            return compare(sums, agg.op, agg.value)
        result = np.zeros(len(starts), dtype=bool)
        result[has] = compare(sums[has] / counts[has], agg.op, agg.value)
        return result
    extremes = group_extreme(packed, vstarts, counts, agg.func == "MAX")
    result = np.zeros(len(starts), dtype=bool)
    result[has] = compare(extremes[has], agg.op, agg.value)
    return result


@numba.njit(cache=True, nogil=True)
def _group_sums(values, vstarts, counts):
    """Per group, the exact sum of its packed values (0 for none) and whether a partial overflowed."""
    sums = np.zeros(len(vstarts), dtype=np.float64)
    bad = np.zeros(len(vstarts), dtype=np.bool_)
    partials = np.empty(128, dtype=np.float64)
    for k in range(len(vstarts)):
        if counts[k]:
            sums[k], bad[k] = _fsum(values, vstarts[k], vstarts[k] + counts[k], partials)
    return sums, bad
