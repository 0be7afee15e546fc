"""DID SUM/AVG over the kept per-row window sums of a scaled float property (``engine.store.window_sums``).

A ``DID`` whose aggregates are all ``SUM`` or ``AVG`` of one scaled float property (cents), without
``WHERE`` or ``AFTER LAST``, reads no events: per row of the kept window it has the events, the
values, the sum of codes ``C`` and of residuals ``R``. One pass over those entries decides each row
by the sign of ``C - literal * scale`` (:func:`classify`); the rows whose sum lies within the
representation error of a literal get their correctly rounded sum from ``C`` and ``R``
(:func:`engine.exec.scaled_sums.correctly_rounded_sums`), so the answer is exact. A row with
MAX_VALUES values or more near a literal (never in practice) is left to the exact grouping path.
The answer is kept with the sums and patched on the rows whose sums change, so a repeated query,
or one whose clock moved a little, reads a bitmap.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap
from ..store.bitsets import sorted_bitmap
from ..store.events import EventTypeStore
from ..store.window_sums import Entries, WindowSums
from .exact_compare import compare
from .scaled_sums import MAX_VALUES, RESIDUAL_BITS, correctly_rounded_sums, residual_bits

#: A found set this many times smaller than the window's entries is looked up instead of scanning them all.
LOOKUP_RATIO = 8
#: Answers kept per window (the least recently used is dropped).
KEPT_ANSWERS = 8


def kept_sums_property(node: ast.Did, store: EventTypeStore) -> str | None:
    """The property whose kept window sums decide ``node``, or None (the events are read)."""
    if node.where is not None or node.after_last is not None:
        return None
    props = {agg.prop for agg in node.aggregates}
    if len(props) != 1 or any(agg.func not in ("SUM", "AVG") for agg in node.aggregates):
        return None
    prop = props.pop()
    scale = store.scaled.get(prop, 0)
    if store.definition.properties[prop] != "float" or not scale or residual_bits(scale) != RESIDUAL_BITS:
        return None
    return prop


#: |literal * scale| is clamped to this (beyond every |C| < 2**52 of a row with under MAX_VALUES values).
_FAR = 2.0**60


@numba.njit(cache=True, nogil=True)
def classify_one(rows, counts, sums, count_min, count_span, target, average, above, below, want_failing):
    """:func:`classify` for one aggregate and a count range ``count_min <= events <= count_min +
    count_span`` (not negated), in integer flags (ints 0/1) and with no branch: measured three times
    faster than the general loop. An AVG of no values (its ``C`` is 0, so it is close to its
    target 0) and a row with MAX_VALUES values or more (its band is huge) are left undecided."""
    n = len(rows)
    out = np.empty(n, dtype=np.int32)
    near = np.empty(n, dtype=np.int64)
    m = q = 0
    eps = 2.0**-48
    for k in range(n):
        packed = counts[k]
        events = packed >> 32
        nvals = packed & 0xFFFFFFFF
        count_ok = np.int64(np.uint64(events - count_min) <= np.uint64(count_span))  # events 0 fails too
        t = target * (np.float64(nvals) if average else 1.0)
        d = np.float64(sums[k]) - t
        band = 2.0 + eps * abs(t) + np.float64(nvals // MAX_VALUES) * 1e300
        up = np.int64(d > band)
        down = np.int64(d < -band)
        undecided = count_ok & (1 - (up | down))
        near[q] = k
        q += undecided
        out[m] = rows[k]
        m += np.int64(events != 0) & (1 - undecided) & ((count_ok & ((up & above) | (down & below))) ^ want_failing)
    return out[:m], near[:q]


@numba.njit(cache=True, nogil=True)
def classify(rows, counts, sums, count_min, count_max, count_negated, targets, averages, above, below, unequal,
             want_failing):
    """One pass over window entries (rows ascending, branch-free but for undecided entries): the rows
    with events whose count and every aggregate hold (``want_failing``: for which one fails), in
    order, and the positions of the entries left undecided.

    The count holds when ``count_min <= events <= count_max`` (negated with ``count_negated``). Per
    aggregate ``a``: ``targets[a]`` is ``literal * scale`` (clamped to +-_FAR), times the number of
    values for an AVG (``averages[a]``); the row's exact ``SUM * scale`` lies within 1/2 of its sum of
    codes ``C``, so when ``C`` is further than ``2 + 2**-48 |target|`` from the target, the sign of the
    difference decides: ``above[a]`` holds for a positive one (``>``, ``>=``), ``below[a]`` for a
    negative one, ``unequal[a]`` for either (``!=``). Closer rows, and rows with MAX_VALUES values or
    more, are undecided. An AVG of no values fails."""
    n = len(rows)
    out = np.empty(n, dtype=np.int32)
    near = np.empty(n, dtype=np.int64)
    m = q = 0
    for k in range(n):
        packed = counts[k]
        events = packed >> 32
        nvals = packed & 0xFFFFFFFF
        fails = ((events >= count_min) & (events <= count_max)) == count_negated
        close = nvals >= MAX_VALUES
        c = np.float64(sums[k])
        for a in range(len(targets)):
            t = targets[a] * (nvals if averages[a] else 1)
            d = c - t
            close_a = abs(d) <= 2.0 + 2.0**-48 * abs(t)
            holds = ((d > 0.0) & above[a]) | ((d < 0.0) & below[a]) | unequal[a]
            empty = averages[a] & (nvals == 0)
            fails |= empty | ((holds | close_a) ^ True)
            close |= close_a & (empty ^ True)
        undecided = (events != 0) & close & (fails ^ True)
        if undecided:
            near[q] = k
            q += 1
        out[m] = rows[k]
        m += (events != 0) & (undecided ^ True) & (fails == want_failing)
    return out[:m], near[:q]


def _count_range(op: str, n: int) -> tuple[int, int, bool]:
    """(lo, hi, negated): a count c satisfies ``c op n`` iff ``lo <= c <= hi`` (negated: iff not)."""
    n = max(-2, min(n, 1 << 40))  # counts lie in [0, 2**32): the same answers
    low, high = -(1 << 41), 1 << 41
    return {"=": (n, n, False), "!=": (n, n, True), "<": (low, n - 1, False), "<=": (low, n, False),
            ">": (n + 1, high, False), ">=": (n, high, False)}[op]


def _target(literal: int | float, scale: int) -> float:
    """``literal * scale`` as a float64 (within 2**-53 relative of it), clamped to +-_FAR."""
    try:
        target = float(literal) * scale
    except OverflowError:  # an int beyond the float range
        target = math.inf if literal > 0 else -math.inf
    return max(-_FAR, min(_FAR, target))


def _exact_holds(node: ast.Did, near: Entries, scale: int) -> np.ndarray:
    """Whether the DID holds for undecided entries (each with at most MAX_VALUES values), from their
    correctly rounded sums."""
    nvals = near.counts & 0xFFFFFFFF
    holds = compare(near.counts >> 32, node.count_op, node.count_n)
    total = correctly_rounded_sums(near.sums, near.residuals, scale)
    for agg in node.aggregates:
        if agg.func == "SUM":
            holds &= compare(total, agg.op, agg.value)
        else:
            holds &= (nvals > 0) & compare(total / np.maximum(nvals, 1), agg.op, agg.value)
    return holds


def _answer(node: ast.Did, sums: WindowSums, wanted: np.ndarray | None, want_failing: bool) -> tuple[BitMap, BitMap]:
    """(rows decided: those that hold, or with ``want_failing`` those with events that fail; rows
    with over MAX_VALUES values left to the exact path), of the rows ``wanted`` (ascending; None: all)."""
    parts = sums.parts()
    if wanted is not None:
        parts = [part.lookup(wanted) for part in parts]
    count = _count_range(node.count_op, node.count_n)
    scale = sums.scale
    targets = np.array([_target(agg.value, scale) for agg in node.aggregates], dtype=np.float64)
    averages = np.array([agg.func == "AVG" for agg in node.aggregates], dtype=np.bool_)
    above = np.array([agg.op in (">", ">=") for agg in node.aggregates], dtype=np.bool_)
    below = np.array([agg.op in ("<", "<=") for agg in node.aggregates], dtype=np.bool_)
    unequal = np.array([agg.op == "!=" for agg in node.aggregates], dtype=np.bool_)
    decided, left = BitMap(), BitMap()
    for part in parts:
        if len(targets) == 1 and not count[2]:
            least = max(count[0], 1)  # a row here has events
            least, span = (least, count[1] - least) if count[1] >= least else (1 << 41, 0)  # an empty range
            rows, near = classify_one(part.rows, part.counts, part.sums, least, span,
                                      targets[0], int(averages[0]), int(above[0] or unequal[0]),
                                      int(below[0] or unequal[0]), int(want_failing))
        else:
            rows, near = classify(part.rows, part.counts, part.sums, *count, targets, averages, above, below, unequal,
                                  want_failing)
        decided |= sorted_bitmap(rows)
        if len(near):
            near_entries = part.take(near)
            crowded = (near_entries.counts & 0xFFFFFFFF) >= MAX_VALUES
            left |= to_bitmap(near_entries.rows[crowded], assume_sorted=True)
            near_entries = near_entries.take(np.flatnonzero(~crowded))
            holds = _exact_holds(node, near_entries, sums.scale)
            decided |= to_bitmap(near_entries.rows[holds != want_failing], assume_sorted=True)
    return decided, left


def kept_sums_rows(node: ast.Did, store: EventTypeStore, prop: str, window: tuple[int, int], found: BitMap | None,
                   at_zero: bool) -> tuple[BitMap, BitMap]:
    """From the kept sums of ``prop`` over ``window`` (inclusive): (the rows with events for which
    ``node`` holds, or with ``at_zero`` fails; the rows left to the exact path), exact within ``found``.

    The answer over all rows is kept with the sums; after a change (a move of the window, a write)
    it is patched on the changed rows only, while they are few."""
    lo, hi = window
    with store.window_sums.at(store, prop, lo, hi) as sums:
        if found is not None and len(found) * LOOKUP_RATIO < len(sums):
            return _answer(node, sums, rows_of(found).astype(np.int32), at_zero)  # a few rows: looked up
        if sums.changed:
            changed = sums.take_changed()
            gone = to_bitmap(changed, assume_sorted=True)
            for key, (decided, left, failing) in list(sums.answers.items()):
                fresh, fresh_left = _answer(key, sums, changed, failing)
                sums.answers[key] = ((decided - gone) | fresh, (left - gone) | fresh_left, failing)
        kept = sums.answers.get(node)
        if kept is None:
            kept = (*_answer(node, sums, None, at_zero), at_zero)
            if len(sums.answers) >= KEPT_ANSWERS:
                del sums.answers[next(iter(sums.answers))]
            sums.answers[node] = kept
        return kept[0], kept[1]
