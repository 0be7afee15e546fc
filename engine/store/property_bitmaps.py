"""Kept bitmaps of one event property: per value bin, the rows with such an event per UTC day and ever.

A category or bool property has one bin per code (and one for null). A numeric property (int or
float) has bins on a fixed 1-2-5 series of edges (0, ±0.01, ±0.02, ±0.05, ±0.1, ... ±5e15): each
edge is a bin of its own (the events whose value equals it) and so is each open interval between
two neighbouring edges, so a comparison with a literal on an edge (``cart_value > 50``) is a union
of whole bins, and only a literal strictly inside an interval leaves one bin to check event by
event. The edges do not depend on the data, so bins never move and every write only adds to them.

>>> [bin_bounds(int(k)) for k in bin_keys("float", np.array([50.0, 75.5]), None)]
[(50.0, 50.0), (50.0, 100.0)]
>>> int(bin_keys("float", np.array([np.nan]), None)[0]) == NULL_BIN
True
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from .bitmaps import group_rows, to_bitmap, union_all
from .count_levels import CountLevels
from .runs import SCALED_NULL

DAY_MS = 86_400_000
#: The bin of null values.
NULL_BIN = -1
#: Property kinds that get bins (timestamps compare with NOW-relative literals: they are scanned).
BINNED_KINDS = frozenset({"category", "bool", "int", "float"})


def _edges() -> np.ndarray:
    positive = [m * 10.0 ** e for e in range(-2, 16) for m in (1, 2, 5)]
    positive = [float(f"{v:.2e}") for v in positive]  # 0.01, not 0.010000000000000002
    return np.array(sorted([-v for v in positive] + [0.0] + positive), dtype=np.float64)


#: The bin edges of numeric properties (ascending).
EDGES = _edges()
#: Scaled float codes (value * 100, engine.store.events) compare with the edges times 100: exact,
#: since every edge times 100 is an integer that decodes back to the edge.
assert all((EDGES * 100 == np.round(EDGES * 100)) & (np.round(EDGES * 100) / 100 == EDGES))


def bin_bounds(key: int) -> tuple[float, float]:
    """The (lo, hi) of a numeric bin: lo == hi for an edge's own bin, else the open interval (lo, hi)."""
    i, point = divmod(key, 2)
    if point:
        return float(EDGES[i]), float(EDGES[i])
    lo = float(EDGES[i - 1]) if i > 0 else -np.inf
    hi = float(EDGES[i]) if i < len(EDGES) else np.inf
    return lo, hi


def bin_keys(kind: str, values: np.ndarray, valid: np.ndarray | None, scale: int = 0) -> np.ndarray:
    """The bin of each value (int64; NULL_BIN for null). ``values``: codes for category and bool (-1 =
    null), for floats float64 (NaN = null) or, with ``scale``, int32 codes of value * scale
    (SCALED_NULL = null), int64 with the ``valid`` mask for ints."""
    if kind in ("category", "bool"):
        keys = np.asarray(values).astype(np.int64)
        keys[keys < 0] = NULL_BIN
        return keys
    no_mask = np.zeros(0, dtype=np.bool_)
    if scale:
        return numeric_bins(values, EDGES * scale, np.int64(SCALED_NULL), True, no_mask, False)
    if valid is None:
        return numeric_bins(np.asarray(values, dtype=np.float64), EDGES, np.int64(0), False, no_mask, False)
    return numeric_bins(np.asarray(values), EDGES, np.int64(0), False, np.asarray(valid, dtype=np.bool_), True)


@numba.njit(cache=True, nogil=True)
def numeric_bins(values, edges, null_code, use_null_code, valid, use_valid):
    """Per value, 2i + 1 if it equals edges[i], else 2i with i the first edge above it; NULL_BIN for
    null (not ``valid``, equal to ``null_code``, or NaN). One binary search per value."""
    out = np.empty(len(values), dtype=np.int64)
    m = len(edges)
    for i in range(len(values)):
        v = values[i]
        if (use_valid and not valid[i]) or (use_null_code and v == null_code) or v != v:
            out[i] = -1
            continue
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) >> 1
            if edges[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = 2 * lo + (1 if lo < m and edges[lo] == v else 0)
    return out


@numba.njit(cache=True, nogil=True)
def bucket_order(groups, size):
    """A counting sort of ``groups`` (ints in [0, size)): (positions in group order, stable; starts,
    where group g occupies order[starts[g]:starts[g + 1]])."""
    starts = np.zeros(size + 1, dtype=np.int64)
    for g in groups:
        starts[g + 1] += 1
    for g in range(size):
        starts[g + 1] += starts[g]
    at = starts[:-1].copy()
    order = np.empty(len(groups), dtype=np.int64)
    for i in range(len(groups)):
        g = groups[i]
        order[at[g]] = i
        at[g] += 1
    return order, starts


class PropertyBitmaps:
    """Per bin of one event property: ``days[bin][day]`` (rows with such an event that UTC day) and
    ``ever[bin]`` (rows with such an event at any time). Empty bitmaps are not kept."""

    def __init__(self, prop: str, kind: str):
        self.prop = prop
        self.kind = kind
        self.days: dict[int, dict[int, BitMap]] = {}
        self.ever: dict[int, BitMap] = {}
        self.levels: CountLevels | None = None  # levels 2.. of the counts per bin, built on first use

    def add(self, keys: np.ndarray, rows: np.ndarray, ts: np.ndarray) -> None:
        """Add events (bins, rows, int64 timestamps; any order)."""
        if len(rows) == 0:
            return
        day = np.asarray(ts, dtype=np.int64) // DAY_MS
        first = int(day.min())
        span = int(day.max()) - first + 1
        present = np.flatnonzero(np.bincount(np.asarray(keys, dtype=np.int64) - NULL_BIN))  # the bins used
        dense = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        dense[present] = np.arange(len(present))
        groups = (dense[keys - NULL_BIN] * span + (day - first))
        if len(present) * span <= 4 * len(rows) + 65536:
            order, starts = bucket_order(groups, len(present) * span)
        else:  # a sparse key space: sort
            order = np.argsort(groups, kind="stable")
            starts = np.searchsorted(groups[order], np.arange(len(present) * span + 1))
        rows = np.asarray(rows)[order]
        added: dict[int, list[BitMap]] = {}
        for group in np.flatnonzero(starts[1:] > starts[:-1]).tolist():
            bin_key, day_key = int(present[group // span]) + NULL_BIN, first + group % span
            bitmap = to_bitmap(rows[starts[group]:starts[group + 1]])
            per_day = self.days.setdefault(bin_key, {})
            known = per_day.get(day_key)
            if known is None:
                per_day[day_key] = bitmap
            else:
                known |= bitmap
            added.setdefault(bin_key, []).append(bitmap)
        for key, bitmaps in added.items():
            union = union_all(bitmaps)
            ever = self.ever.get(key)
            if ever is None:
                self.ever[key] = union
            else:
                ever |= union

    def plan_drop(self, gone: BitMap) -> dict[int, dict[int, BitMap]]:
        """Per bin, per day, the rows of ``gone`` its bitmap holds (read only: ``drop``'s work, ahead)."""
        out: dict[int, dict[int, BitMap]] = {}
        for key, per_day in list(self.days.items()):
            parts = {day: bitmap & gone for day, bitmap in list(per_day.items()) if bitmap.intersect(gone)}
            if parts:
                out[key] = parts
        return out

    def drop(self, gone: BitMap, planned: dict[int, dict[int, BitMap]] | None = None) -> None:
        """Remove the rows ``gone`` (their events were deleted; ``planned``: ``plan_drop(gone)`` made
        against these bitmaps as they are, so only the day bitmaps holding some are changed)."""
        if self.levels is not None:
            self.levels.drop(gone)
        for key in list(self.ever):
            self.ever[key] -= gone
            per_day = self.days[key]
            parts = None if planned is None else planned.get(key, {})
            for day in list(per_day) if parts is None else list(parts):
                per_day[day] -= gone if parts is None else parts[day]
                if not per_day[day]:
                    del per_day[day]
            if not self.ever[key]:
                del self.ever[key], self.days[key]

    def expire(self, edge_day: int, keys: np.ndarray, rows: np.ndarray, touched: BitMap) -> None:
        """After the events before some instant of ``edge_day`` went: drop the earlier days, rebuild
        ``edge_day`` from its remaining events (``keys``, ``rows``), and recompute ``ever`` for the
        rows ``touched`` (those that lost events)."""
        for key in list(self.days):
            per_day = self.days[key]
            for day in [d for d in per_day if d <= edge_day]:
                del per_day[day]
        for key, picked in group_rows(np.asarray(rows), keys):
            self.days.setdefault(key, {})[edge_day] = to_bitmap(picked, assume_sorted=True)
        for key in list(self.days):
            per_day = self.days[key]
            still = [bitmap & touched for bitmap in per_day.values()]
            ever = (self.ever[key] - touched) | (BitMap.union(*still) if still else BitMap())
            if ever:
                self.ever[key] = ever
            else:
                del self.ever[key], self.days[key]

    def nbytes(self) -> int:
        """Serialized bytes of every bitmap (what Roaring holds, about)."""
        return sum(len(b.serialize()) for per_day in self.days.values() for b in per_day.values()) \
            + sum(len(b.serialize()) for b in self.ever.values()) \
            + (self.levels.nbytes() if self.levels is not None else 0)

    def same_as(self, other: "PropertyBitmaps") -> bool:
        """True if both hold the same bins, days and rows."""
        return self.ever == other.ever and self.days == other.days
