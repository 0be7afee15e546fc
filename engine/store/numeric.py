"""Range index for int, float and timestamp attributes: a column plus range-encoded bin bitmaps.

Values are split into at most ``BINS`` bins by quantile edges chosen from the data (re-chosen
when the column doubles). ``cumulative[k]`` holds the rows whose bin is <= k, so the rows of
the bins strictly inside a range are one and-not of two bitmaps; only the (at most two) edge
bins are checked exactly, by gathering their values, and only within the caller's found set
when one is given. Per-bin min/max let aligned edges skip the exact check.

>>> idx = NumericIndex("int")
>>> idx.assign(np.arange(6), ValueColumn(np.array([5, 1, 9, 3, 3, 7]), np.ones(6, bool)))
>>> list(idx.range(3, 7))
[0, 3, 4, 5]
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
from pyroaring import BitMap

from ..columns import ValueColumn
from .bitmaps import SCATTER_GROUPED_MIN, group_rows, rows_of, scatter_rows, to_bitmap, union_all
from .growable import GrowableArray
from .lru import drop_oldest
from .range_bins import (bin_groups, bins_of, coarse_of_fine, cumulative_bitmaps, cumulative_of_bitmaps, lower_quantiles,
                         move_cumulative, value_counts_if_few)

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter

BINS = 16
#: Finer equi-depth bins (one bitmap each, every row in exactly one) nested in the coarse ones, for
#: columns without per-value bitmaps: a range's edge is then resolved bitmap by bitmap and only the
#: rows of the one or two fine bins that straddle a bound are gathered.
FINE_BINS = 256
REBIN_MIN = 256
#: Int columns with at most this many distinct values keep a bitmap per value.
MAX_VALUE_BITMAPS = 256
#: Gather values directly (skipping the bins) when the found set is this many times smaller than the column.
GATHER_RATIO = 256
#: Bin bitmaps (rows of one bin) kept per index between writes, for the edges of range queries.
BIN_CACHE = 4
#: Ranges asked for at least twice keep their full result bitmap, updated by every write, so a
#: repeated range (a saved segment, a dashboard query) costs one intersection with the found set.
RANGE_CACHE = 8
#: Ranges remembered as "asked once" (the second request builds the cached bitmap).
RANGE_SEEN = 64
#: Key suffix of a kept complement (NOT BETWEEN) in the range cache.
OUTSIDE = "outside"
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@numba.njit(cache=True, nogil=True)
def filter_rows(rows, column, lo, hi, lo_open, hi_open, has_lo, has_hi, inside=True):
    """The ``rows`` whose column value lies within the bounds (fused gather + compare); ``inside``
    False: those outside them."""
    out = np.empty(len(rows), dtype=np.uint32)
    n = 0
    for i in range(len(rows)):
        value = column[rows[i]]
        within = not ((has_lo and (value < lo or (lo_open and value == lo)))
                      or (has_hi and (value > hi or (hi_open and value == hi))))
        if within == inside:
            out[n] = rows[i]
            n += 1
    return out[:n]


def _within(values: np.ndarray, bounds) -> np.ndarray:
    """Mask of ``values`` inside ``bounds`` = (lo, hi, lo_open, hi_open) (None = unbounded)."""
    lo, hi, lo_open, hi_open = bounds
    mask = np.ones(len(values), dtype=bool)
    if lo is not None:
        mask &= (values > lo) if lo_open else (values >= lo)
    if hi is not None:
        mask &= (values < hi) if hi_open else (values <= hi)
    return mask


def float_bound(value: int | float, low: bool, is_open: bool) -> tuple[float, bool]:
    """A bound of a range over float values as a float bound that selects the same floats.

    An int is compared exactly (as Python compares numbers): one that no float equals becomes the
    nearest float inside the range, closed; one past the float range becomes an infinity.

    >>> float_bound(2**53 + 1, True, True), float_bound(2**53 + 1, False, True)
    ((9007199254740994.0, False), (9007199254740992.0, False))
    >>> float_bound(10**400, False, False), float_bound(-(10**400), False, False)
    ((inf, False), (-inf, False))
    """
    if isinstance(value, float):
        return value, is_open
    try:
        f = float(value)
    except OverflowError:
        return (math.inf if value > 0 else -math.inf), False
    if int(f) == value:
        return f, is_open
    if low:
        return (f if f > value else math.nextafter(f, math.inf)), False
    return (f if f < value else math.nextafter(f, -math.inf)), False


class NumericIndex:
    """An int/timestamp (int64) or float (float64) attribute with range-encoded bins."""

    def __init__(self, kind: str):
        self.kind = kind
        self.dtype = np.float64 if kind == "float" else np.int64
        # int attributes are stored in the narrowest integer type holding every value so far (an age
        # takes 1 byte, not 8) and widened when a larger value arrives; reads see them as int64
        self.column = GrowableArray(np.int8 if kind == "int" else self.dtype, 0)
        self.notnull = BitMap()
        self.edges = np.empty(0, dtype=self.dtype)  # bin k holds edges[k-1] <= v < edges[k]
        self.cumulative: list[BitMap] = []  # cumulative[k] = rows with bin <= k, for k < len(edges)
        self.bin_min = np.empty(0, dtype=self.dtype)
        self.bin_max = np.empty(0, dtype=self.dtype)
        self.binned_count = 0
        # low-cardinality int columns (ages, counts) also keep a bitmap per value, so an edge bin
        # is a union of a few value bitmaps instead of a gather of its values
        self.by_value: dict[int, BitMap] | None = None
        self.fine_edges = np.empty(0, dtype=self.dtype)  # fine bin j holds fine_edges[j-1] <= v < fine_edges[j]
        self.fine: list[BitMap] | None = None  # rows per fine bin (None: no fine bins)
        self.fine_min = np.empty(0, dtype=self.dtype)
        self.fine_max = np.empty(0, dtype=self.dtype)
        self.fine_start = np.empty(0, dtype=np.int64)  # coarse bin k = fine bins fine_start[k] .. fine_start[k+1]-1

    def grow(self, size: int) -> None:
        """Make rows up to ``size`` addressable."""
        self.column.ensure(size)

    # -- writes ---------------------------------------------------------------------------
    def assign(self, rows: np.ndarray, column: ValueColumn) -> None:
        """Set the value of each of ``rows`` (unique) from ``column`` (valid False = null)."""
        self.__dict__.pop("_bin_cache", None)
        valid = np.asarray(column.valid, dtype=bool)
        new_values = np.asarray(column.values).astype(self.dtype)
        if not self.notnull or int(rows.min()) > self.notnull.max():
            was_valid = np.zeros(len(rows), dtype=bool)  # new rows (a bulk load): nothing to move out
        elif len(rows) < 4096:  # the few rows' bitmap against notnull, not notnull's every row
            was_valid = np.isin(rows, rows_of(self.notnull & to_bitmap(rows)))
        else:
            was_valid = np.isin(rows, rows_of(self.notnull))
        old_values = self.column.data[rows].astype(self.dtype)
        if self.column.data.dtype != self.dtype and valid.any():
            self._widen_storage(new_values[valid])
        fresh = not was_valid.any()  # nothing to move out (no old bin to look up)
        old_fine = new_fine = None
        if self.fine is not None:
            new_fine = np.full(len(rows), -1)
            new_fine[valid] = bin_groups(new_values[valid], self.fine_edges, self.fine_min, self.fine_max)[0]
            old_fine = np.full(len(rows), -1) if fresh else bins_of(self.fine_edges, old_values, was_valid, -1)
            self._move_fine(rows, old_fine, new_fine)
        if len(self.edges):
            null_bin = len(self.edges) + 1
            lookup = None if new_fine is None else self._coarse_lookup()
            new_bins = lookup[new_fine] if lookup is not None else bins_of(self.edges, new_values, valid, null_bin)
            if fresh:
                old_bins = np.full(len(rows), null_bin)
            else:
                old_bins = lookup[old_fine] if lookup is not None else bins_of(self.edges, old_values, was_valid, null_bin)
            move_cumulative(self.cumulative, rows, old_bins, new_bins)
            if lookup is not None:  # a coarse bin's values span its fine bins' (widened above)
                first = self.fine_start[:-1]
                np.minimum(self.bin_min[:-1], np.minimum.reduceat(self.fine_min, first), out=self.bin_min[:-1])
                np.maximum(self.bin_max[:-1], np.maximum.reduceat(self.fine_max, first), out=self.bin_max[:-1])
            else:
                self._widen_bins(new_bins[valid], new_values[valid])
        if self.by_value is not None:
            self._move_values(rows, was_valid, old_values, valid, new_values)
        self._update_cached_ranges(rows, was_valid, old_values, valid, new_values)
        self.column.data[rows] = np.where(valid, new_values, 0)
        if valid.any():
            self.notnull.update(to_bitmap(rows[valid]))
        if not valid.all():
            self.notnull.difference_update(to_bitmap(rows[~valid]))
        if len(self.notnull) >= max(REBIN_MIN, 2 * self.binned_count):
            self.rebin()

    def _update_cached_ranges(self, rows: np.ndarray, was_valid: np.ndarray, old_values: np.ndarray,
                              valid: np.ndarray, new_values: np.ndarray) -> None:
        """Move the written rows into or out of every cached range bitmap."""
        for key, bitmap in self.__dict__.get("_range_cache", {}).items():
            bounds, inside = key[:4], len(key) == 4
            was_in = was_valid & (_within(old_values, bounds) == inside)
            now_in = valid & (_within(new_values, bounds) == inside)
            if (now_in & ~was_in).any():
                bitmap.update(to_bitmap(rows[now_in & ~was_in]))
            if (was_in & ~now_in).any():
                bitmap.difference_update(to_bitmap(rows[was_in & ~now_in]))

    def _widen_storage(self, values: np.ndarray) -> None:
        """Widen the stored integer type if ``values`` do not all fit in it."""
        low, high = int(values.min()), int(values.max())
        for dtype in (np.int8, np.int16, np.int32, np.int64):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                break
        if np.dtype(dtype).itemsize > self.column.data.dtype.itemsize:
            self.column.data = self.column.data.astype(dtype)

    def _move_values(self, rows: np.ndarray, was_valid: np.ndarray, old_values: np.ndarray, valid: np.ndarray,
                     new_values: np.ndarray) -> None:
        assert self.by_value is not None
        changed = (was_valid != valid) | (was_valid & valid & (old_values != new_values))
        leaving, entering = changed & was_valid, changed & valid
        if len(rows) < SCATTER_GROUPED_MIN * len(self.by_value):  # few rows per value: one by one
            for row, value in zip(rows[leaving].tolist(), old_values[leaving].tolist()):
                self.by_value[value].discard(row)
            for row, value in zip(rows[entering].tolist(), new_values[entering].tolist()):
                self.by_value.setdefault(value, BitMap()).add(row)
        else:
            for value, members in group_rows(rows[leaving], old_values[leaving]):
                self.by_value[value].difference_update(to_bitmap(members, assume_sorted=True))
            for value, members in group_rows(rows[entering], new_values[entering]):
                self.by_value.setdefault(value, BitMap()).update(to_bitmap(members, assume_sorted=True))
        if len(self.by_value) > MAX_VALUE_BITMAPS:
            self.by_value = None

    def _coarse_lookup(self) -> np.ndarray | None:
        """``coarse_of_fine`` of the current edges (kept until a rebin replaces the fine edges)."""
        kept = self.__dict__.get("_coarse_of_fine")
        if kept is None or kept[0] is not self.fine_edges:
            kept = self.__dict__["_coarse_of_fine"] = (
                self.fine_edges, coarse_of_fine(self.edges, self.fine_edges, len(self.edges) + 1))
        return kept[1]

    def _move_fine(self, rows: np.ndarray, old_fine: np.ndarray, new_fine: np.ndarray) -> None:
        assert self.fine is not None
        moved = old_fine != new_fine
        leaving, entering = moved & (old_fine >= 0), moved & (new_fine >= 0)
        scatter_rows(self.fine, rows[leaving], old_fine[leaving], remove=True)
        scatter_rows(self.fine, rows[entering], new_fine[entering])

    def _widen_bins(self, bins: np.ndarray, values: np.ndarray) -> None:
        if len(bins):
            np.minimum.at(self.bin_min, bins, values)
            np.maximum.at(self.bin_max, bins, values)

    def rebin(self) -> None:
        """Choose bin edges from the current values and rebuild the cumulative bitmaps."""
        self.__dict__.pop("_bin_cache", None)
        rows = rows_of(self.notnull)
        values = self.column.data[rows].astype(self.dtype)
        self.binned_count = len(rows)
        value_counts = value_counts_if_few(values)
        distinct = None if value_counts is None else value_counts[0]
        fine_edges = None
        if distinct is not None and len(distinct) <= BINS:
            edges = distinct[1:]
        else:
            # one pass for both: the coarse quantiles k/BINS are the fine ones (FINE_BINS/BINS)*k
            picks = lower_quantiles(values, np.linspace(0, 1, FINE_BINS + 1)[1:-1], value_counts).astype(self.dtype)
            edges = self._distinct_edges(picks[FINE_BINS // BINS - 1 :: FINE_BINS // BINS], values)
            fine_edges = np.union1d(self._distinct_edges(picks, values), edges).astype(self.dtype)
        self.edges = edges.astype(self.dtype)
        self.by_value = None
        if self.dtype == np.int64 and distinct is not None and len(distinct) <= MAX_VALUE_BITMAPS:
            self.by_value = {value: to_bitmap(members, assume_sorted=True) for value, members in group_rows(rows, values)}
            fine_edges = None
        nbins = len(self.edges) + 1
        info = np.finfo(self.dtype) if self.dtype == np.float64 else np.iinfo(self.dtype)
        if fine_edges is None or len(fine_edges) <= len(self.edges):
            self.fine, self.fine_edges = None, np.empty(0, dtype=self.dtype)
            self.bin_min = np.full(nbins + 1, info.max, dtype=self.dtype)
            self.bin_max = np.full(nbins + 1, info.min, dtype=self.dtype)
            _, order, starts = bin_groups(values, self.edges, self.bin_min, self.bin_max)
            self.cumulative = cumulative_bitmaps([rows[order[starts[k] : starts[k + 1]]] for k in range(nbins - 1)])
            return
        # fine bins first; a coarse bin is a run of fine bins, so its rows, min and max follow from theirs
        self.fine_edges = fine_edges
        self.fine_min = np.full(len(fine_edges) + 1, info.max, dtype=self.dtype)
        self.fine_max = np.full(len(fine_edges) + 1, info.min, dtype=self.dtype)
        _, order, starts = bin_groups(values, fine_edges, self.fine_min, self.fine_max)
        self.fine = [to_bitmap(rows[order[starts[j] : starts[j + 1]]], assume_sorted=True)
                     for j in range(len(fine_edges) + 1)]
        # coarse edge e is fine edge m: coarse bin k spans fine bins (m of its lower edge) + 1 .. m of its upper edge
        positions = np.searchsorted(fine_edges, self.edges, side="left")
        self.fine_start = np.concatenate(([0], positions + 1, [len(fine_edges) + 1])).astype(np.int64)
        first = self.fine_start[:-1]
        self.bin_min = np.append(np.minimum.reduceat(self.fine_min, first), info.max).astype(self.dtype)
        self.bin_max = np.append(np.maximum.reduceat(self.fine_max, first), info.min).astype(self.dtype)
        # a coarse bin's rows are its fine bins' bitmaps united (no sort of its rows)
        coarse = [union_all(self.fine[self.fine_start[k] : self.fine_start[k + 1]]) for k in range(nbins - 1)]
        self.cumulative = cumulative_of_bitmaps(coarse)

    @staticmethod
    def _distinct_edges(picks: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Bin edges from quantile ``picks`` of ``values`` (duplicates merged, none at the minimum)."""
        edges = np.unique(picks)
        return edges[edges > values.min()]

    # -- reads ----------------------------------------------------------------------------
    def _prefix(self, k: int) -> BitMap:
        """Rows with bin <= k (k may be -1 or len(edges))."""
        if k < 0:
            return BitMap()
        return self.cumulative[k] if k < len(self.cumulative) else self.notnull

    def range(self, lo: float | int | None, hi: float | int | None, lo_open: bool = False, hi_open: bool = False,
              found: BitMap | None = None) -> BitMap:
        """Rows with lo <= value <= hi (open ends exclude; None = unbounded), within ``found`` if given.

        The rows of whole coarse bins come from at most two prefix bitmaps (found & prefix -
        prefix); an edge bin is resolved through its fine bins (or value bitmaps): either its
        failing rows are removed or its passing rows added, whichever touches fewer bitmaps, in
        one union each. Only a fine bin straddling a bound is gathered. With ``found`` the result
        is a subset of it.
        """
        span = self._span(lo, hi, lo_open, hi_open)
        if span is None:
            return BitMap()
        first, last, edges, bounds = span
        if (found is not None and len(found) * GATHER_RATIO < len(self.notnull)) or not len(self.edges):
            return self._filter(self.notnull if found is None else found & self.notnull, bounds)
        full = self._cached_range(span)
        if full is not None:  # the stored bitmap when found is None: do not mutate
            return full if found is None else found & full
        return self._evaluate(span, found)

    def _evaluate(self, span, found: BitMap | None) -> BitMap:
        first, last, edges, bounds = span
        low, high, adds, removes = self._resolve_edges(first, last, edges, bounds, found)
        if high < low:
            candidates = BitMap()
        elif found is None:
            candidates = self._prefix(high) - self._prefix(low - 1) if low > 0 else self._prefix(high).copy()
        else:
            candidates = found & self._prefix(high)
            if low > 0:
                candidates.difference_update(self._prefix(low - 1))
        if removes:
            candidates.difference_update(union_all(removes))
        if adds:
            added = union_all(adds)
            candidates |= added if found is None else added & found
        return candidates

    def count_range(self, lo: float | int | None, hi: float | int | None, lo_open: bool, hi_open: bool,
                    found: BitMap) -> int:
        """``len(range(lo, hi, ..., found=found))`` without building the result: cardinalities only."""
        span = self._span(lo, hi, lo_open, hi_open)
        if span is None:
            return 0
        first, last, edges, bounds = span
        if len(found) * GATHER_RATIO < len(self.notnull) or not len(self.edges):
            return len(self._filter(found & self.notnull, bounds))
        full = self._cached_range(span)
        if full is not None:
            return found.intersection_cardinality(full)
        low, high, adds, removes = self._resolve_edges(first, last, edges, bounds, found)
        total = 0
        if high >= low:
            total = found.intersection_cardinality(self._prefix(high))
            if low > 0:
                total -= found.intersection_cardinality(self._prefix(low - 1))
        if removes:
            total -= found.intersection_cardinality(union_all(removes))
        if adds:
            total += found.intersection_cardinality(union_all(adds))
        return total

    def _resolve_edges(self, first: int, last: int, edges: list[int], bounds, found: BitMap | None):
        """(low, high, adds, removes): the range is bins low..high of the prefixes, minus the union of
        ``removes``, plus the union of ``adds`` (exact within ``found``)."""
        low, high = first, last
        adds: list[BitMap] = []
        removes: list[BitMap] = []
        for k in edges:
            inside, outside, straddling = self._split_bin(k, bounds)
            add = len(inside) < len(outside) and first != last
            if add:  # leave bin k out of the prefixes, add its passing rows
                low, high = (low + 1, high) if k == first else (low, high - 1)
                adds.extend(inside)
            else:
                removes.extend(outside)
            for bitmap in straddling:
                rows = bitmap if found is None else bitmap & found
                (adds if add else removes).append(self._filter(rows, bounds, inside=add))
        return low, high, adds, removes

    def _split_bin(self, k: int, bounds) -> tuple[list[BitMap], list[BitMap], list[BitMap]]:
        """Coarse bin ``k`` as bitmaps wholly inside / wholly outside / straddling the bounds: its
        value bitmaps, its fine bins, or (with neither) the bin itself, straddling."""
        lo, hi, lo_open, hi_open = bounds
        parts: list[tuple[Any, Any, BitMap]]
        if self.by_value is not None:
            parts = [(value, value, bitmap) for value, bitmap in self.by_value.items()
                     if self.bin_min[k] <= value <= self.bin_max[k]]
        elif self.fine is not None:
            parts = [(self.fine_min[j], self.fine_max[j], self.fine[j])
                     for j in range(int(self.fine_start[k]), int(self.fine_start[k + 1]))]
        else:
            return [], [], [self._bin(k)]
        inside, outside, straddling = [], [], []
        for low, high, bitmap in parts:
            if low > high or not bitmap:
                continue  # empty
            if (lo is not None and (high < lo or (high == lo and lo_open))) or (
                    hi is not None and (low > hi or (low == hi and hi_open))):
                outside.append(bitmap)
            elif (lo is None or low > lo or (low == lo and not lo_open)) and (
                    hi is None or high < hi or (high == hi and not hi_open)):
                inside.append(bitmap)
            else:
                straddling.append(bitmap)
        return inside, outside, straddling

    def _span(self, lo, hi, lo_open: bool, hi_open: bool):
        """(first bin, last bin, bins needing an exact check, exact bounds) of a range; None if empty."""
        bounds = self._normalise(lo, hi, lo_open, hi_open)
        if bounds is None:
            return None
        lo, hi, lo_open, hi_open = bounds
        if not len(self.edges):
            return 0, 0, [], bounds
        first = 0 if lo is None else int(np.searchsorted(self.edges, lo, side="right"))
        last = len(self.edges) if hi is None else int(np.searchsorted(self.edges, hi, side="right"))
        edges = []
        for k in sorted({first, last}):
            below = lo is not None and (self.bin_max[k] < lo or (self.bin_max[k] == lo and lo_open))
            above = hi is not None and (self.bin_min[k] > hi or (self.bin_min[k] == hi and hi_open))
            if below:
                first = k + 1  # the bin's values all lie below the range
            elif above:
                last = k - 1
            else:
                low_ok = lo is None or self.bin_min[k] > lo or (self.bin_min[k] == lo and not lo_open)
                high_ok = hi is None or self.bin_max[k] < hi or (self.bin_max[k] == hi and not hi_open)
                if not (low_ok and high_ok):
                    edges.append(k)
        if last < first:
            return None
        return first, last, edges, bounds

    def _cached_range(self, span, outside: bool = False) -> BitMap | None:
        """The full result of a range (``outside``: of its complement among non-null rows) asked
        for before, kept current by writes; None on a first request."""
        key = span[3] + ((OUTSIDE,) if outside else ())
        cache = self.__dict__.setdefault("_range_cache", {})
        bitmap = cache.pop(key, None)
        if bitmap is None:
            seen = self.__dict__.setdefault("_range_seen", {})
            if seen.pop(key, None) is None:
                if len(seen) >= RANGE_SEEN:
                    drop_oldest(seen)
                seen[key] = True
                return None
            bitmap = self._evaluate(span, None)
            if outside:
                bitmap = self.notnull - bitmap
            if len(cache) >= RANGE_CACHE:
                drop_oldest(cache)
        cache[key] = bitmap  # most recent last
        return bitmap

    def outside(self, lo, hi) -> BitMap:
        """Non-null rows with value < lo or > hi (NOT BETWEEN), kept from the second request on (do not mutate)."""
        span = self._span(lo, hi, False, False)
        if span is None:
            return self.notnull
        kept = self._cached_range(span, outside=True) if len(self.edges) else None
        return kept if kept is not None else self.notnull - self.range(lo, hi)

    def kept_outside(self, lo, hi) -> BitMap | None:
        """The kept result of ``outside(lo, hi)`` if it was asked for before (do not mutate), else None."""
        cache = self.__dict__.get("_range_cache")
        span = self._span(lo, hi, False, False) if cache else None
        return None if span is None else cache.get(span[3] + (OUTSIDE,))

    def kept_range(self, lo, hi, lo_open: bool, hi_open: bool) -> BitMap | None:
        """The kept full result of this range if it was asked for before (do not mutate), else None."""
        cache = self.__dict__.get("_range_cache")
        if not cache:
            return None
        span = self._span(lo, hi, lo_open, hi_open)
        return None if span is None else cache.get(span[3])

    def _bin(self, k: int) -> BitMap:
        """Rows in bin ``k`` (0 <= k <= len(edges)); the last few asked for are cached until a write."""
        cache = self.__dict__.setdefault("_bin_cache", {})
        rows = cache.pop(k, None)
        if rows is None:
            rows = self._prefix(k) - self._prefix(k - 1)
            if len(cache) >= BIN_CACHE:
                drop_oldest(cache)
        cache[k] = rows  # most recent last
        return rows

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for cache in ("_bin_cache", "_range_cache", "_range_seen", "_coarse_of_fine"):
            state.pop(cache, None)
        return state

    def estimate(self, lo, hi) -> float:
        """Rows in the bins a range [lo, hi] overlaps (None = unbounded): a cheap upper estimate."""
        if not len(self.edges):
            return float(len(self.notnull))
        first = 0 if lo is None else int(np.searchsorted(self.edges, lo, side="right"))
        last = len(self.edges) if hi is None else int(np.searchsorted(self.edges, hi, side="right"))
        if last < first:
            return 0.0
        return len(self.notnull) * (last - first + 1) / (len(self.edges) + 1)

    def _filter(self, candidates: BitMap, bounds, inside: bool = True) -> BitMap:
        """The ``candidates`` whose value lies within the bounds (``inside`` False: outside them), gathered."""
        lo, hi, lo_open, hi_open = bounds
        zero = self.dtype(0)
        rows = filter_rows(rows_of(candidates), self.column.data, zero if lo is None else self.dtype(lo),
                           zero if hi is None else self.dtype(hi), lo_open, hi_open, lo is not None, hi is not None,
                           inside)
        return to_bitmap(rows, assume_sorted=True)

    def _normalise(self, lo, hi, lo_open: bool, hi_open: bool):
        """Turn float bounds on an int column into exact closed int bounds; None if empty."""
        if self.dtype == np.int64:
            if lo is not None:
                lo = math.floor(lo) + 1 if lo_open else math.ceil(lo)
                lo_open = False
                if lo > INT64_MAX:
                    return None
                lo = None if lo <= INT64_MIN else int(lo)
            if hi is not None:
                hi = math.ceil(hi) - 1 if hi_open else math.floor(hi)
                hi_open = False
                if hi < INT64_MIN:
                    return None
                hi = None if hi >= INT64_MAX else int(hi)
            if lo is not None and hi is not None and lo > hi:
                return None
        else:
            if lo is not None:
                lo, lo_open = float_bound(lo, True, lo_open)
            if hi is not None:
                hi, hi_open = float_bound(hi, False, hi_open)
            if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_open or hi_open))):
                return None
        return lo, hi, lo_open, hi_open

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The index's part of a snapshot (cached bins and kept ranges are not stored)."""
        by_value = None if self.by_value is None else \
            [[int(value), writer.bitmap(bitmap)] for value, bitmap in self.by_value.items()]
        return {"kind": self.kind, "column": writer.array(self.column.view()), "notnull": writer.bitmap(self.notnull),
                "edges": writer.array(self.edges), "cumulative": writer.bitmaps(self.cumulative),
                "bin_min": writer.array(self.bin_min), "bin_max": writer.array(self.bin_max),
                "binned_count": self.binned_count, "by_value": by_value, "fine_edges": writer.array(self.fine_edges),
                "fine": None if self.fine is None else writer.bitmaps(self.fine),
                "fine_min": writer.array(self.fine_min), "fine_max": writer.array(self.fine_max),
                "fine_start": writer.array(self.fine_start)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], kind: str, rows: int) -> "NumericIndex":
        """An index of attribute type ``kind`` over ``rows`` rows from its part of a snapshot."""
        if state["kind"] != kind:
            raise ValueError(f"a {state['kind']} index where the schema has a {kind} attribute")
        index = cls(kind)
        stored = (np.int8, np.int16, np.int32, np.int64) if kind == "int" else (index.dtype,)
        index.column = GrowableArray.adopt(reader.column(state["column"], stored, rows), 0)
        index.notnull = reader.bitmap(state["notnull"], rows)
        for name in ("edges", "bin_min", "bin_max", "fine_edges", "fine_min", "fine_max"):
            values = reader.array(state[name])
            if values.dtype != index.dtype or values.ndim != 1:
                raise ValueError(f"{name} is {values.dtype}, not {np.dtype(index.dtype)}")
            setattr(index, name, values)
        index.fine_start = reader.array(state["fine_start"])
        index.cumulative = reader.bitmaps(state["cumulative"], rows)
        index.binned_count = int(state["binned_count"])
        by_value = state["by_value"]
        index.by_value = None if by_value is None else \
            {int(value): reader.bitmap(bitmap, rows) for value, bitmap in by_value}
        index.fine = None if state["fine"] is None else reader.bitmaps(state["fine"], rows)
        if len(index.cumulative) != len(index.edges) or index.fine_start.dtype != np.int64:
            raise ValueError("the bins of a numeric index do not agree")
        return index

    def value(self, row: int) -> int | float | None:
        """The value of ``row`` (None if null)."""
        if row not in self.notnull:
            return None
        value = self.column.data[row]
        return float(value) if self.dtype == np.float64 else int(value)

    def values_of(self, rows: np.ndarray) -> list[int | float | None]:
        """The value of each of ``rows`` (None if null), one gather."""
        held = np.isin(rows, rows_of(self.notnull & to_bitmap(rows)))
        values = self.column.data[rows].astype(self.dtype).tolist()
        return [value if ok else None for value, ok in zip(values, held.tolist())]
