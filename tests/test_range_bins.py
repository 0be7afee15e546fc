"""The range index's bulk-write arithmetic (engine/store/range_bins.py) against NumPy and naive
recomputation, and the id map's one-pass find-or-insert."""
from __future__ import annotations

import numpy as np
import pytest
from pyroaring import BitMap

from engine.columns import ValueColumn
from engine.store.bitmaps import group_rows
from engine.store.idmap import IdMap
from engine.store.numeric import NumericIndex
from engine.store.range_bins import lower_quantiles, value_counts_if_few
from engine.store.range_bins import bin_groups, coarse_of_fine, move_cumulative


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
@pytest.mark.parametrize("n_edges", [0, 1, 2, 15, 16, 17, 33, 256])
def test_bin_groups_bins_like_searchsorted_groups_stably_and_widens_min_max(dtype, n_edges):
    rng = np.random.default_rng(n_edges)
    values = (rng.normal(0, 100, 5000)).astype(dtype)
    edges = np.unique(rng.choice(values, n_edges, replace=False)) if n_edges else np.empty(0, dtype)
    values = np.concatenate([values, edges])  # values equal to an edge go to the bin above it
    if dtype == np.float64:
        values = np.concatenate([values, [np.nan]])
    big, small = (np.inf, -np.inf) if dtype == np.float64 else (np.iinfo(dtype).max, np.iinfo(dtype).min)
    mins, maxs = np.full(len(edges) + 1, big, dtype), np.full(len(edges) + 1, small, dtype)
    bins, order, starts = bin_groups(values, edges, mins, maxs)
    expected = np.searchsorted(edges, values, side="right")
    assert bins.tolist() == expected.tolist()
    assert order.tolist() == np.argsort(expected, kind="stable").tolist()
    assert starts.tolist() == [0, *np.cumsum(np.bincount(expected, minlength=len(edges) + 1)).tolist()]
    want_min, want_max = np.full_like(mins, big), np.full_like(maxs, small)
    with np.errstate(invalid="ignore"):  # NaN propagates, as in the kernel
        np.minimum.at(want_min, expected, values)
        np.maximum.at(want_max, expected, values)
    assert np.array_equal(mins, want_min, equal_nan=True) and np.array_equal(maxs, want_max, equal_nan=True)


@pytest.mark.parametrize("kind", ["float", "wide int", "few ints", "one value", "nan"])
def test_lower_quantiles_equal_numpys(kind):
    rng = np.random.default_rng(3)
    values = {"float": rng.lognormal(3, 1, 9999).round(1), "wide int": rng.integers(-10**15, 10**15, 7777),
              "few ints": rng.integers(18, 90, 5000), "one value": np.full(300, 42),
              "nan": np.concatenate([rng.normal(0, 1, 500), [np.nan]])}[kind]
    quantiles = np.linspace(0, 1, 257)[1:-1]
    expected = np.quantile(values, quantiles, method="lower")
    assert np.array_equal(lower_quantiles(values, quantiles), expected, equal_nan=True)
    counts = value_counts_if_few(values)
    assert (counts is not None) == (kind in ("few ints", "one value"))
    if counts is not None:
        assert lower_quantiles(values, quantiles, counts).tolist() == expected.tolist()


def test_coarse_of_fine_needs_every_coarse_edge_among_the_fine_ones():
    assert coarse_of_fine(np.array([20, 40]), np.array([10, 20, 30, 40]), 3).tolist() == [0, 0, 1, 1, 2, 3]
    assert coarse_of_fine(np.array([25]), np.array([10, 20, 30]), 2) is None


def test_move_cumulative_matches_bitmaps_rebuilt_from_the_bins():
    rng = np.random.default_rng(5)
    n, levels = 3000, 6
    bins = rng.integers(0, levels + 2, n)  # levels + 1: past every bitmap (the top bin or null)
    cumulative = [BitMap(np.flatnonzero(bins <= k).tolist()) for k in range(levels)]
    rows = np.sort(rng.choice(n, 700, replace=False))
    new_bins = rng.integers(0, levels + 2, len(rows))
    move_cumulative(cumulative, rows, bins[rows], new_bins)
    bins[rows] = new_bins
    assert [sorted(b) for b in cumulative] == [np.flatnonzero(bins <= k).tolist() for k in range(levels)]


def test_group_rows_of_unsorted_rows_with_wide_and_narrow_keys():
    rows = np.array([9, 2, 7, 4, 1])
    assert [(k, m.tolist()) for k, m in group_rows(rows, np.array([3, 1, 3, 1, 2]))] == [(1, [2, 4]), (2, [1]), (3, [7, 9])]
    wide = np.array([10**12, -5, 10**12, -5, 0])
    assert [(k, m.tolist()) for k, m in group_rows(rows, wide)] == [(-5, [2, 4]), (0, [1]), (10**12, [7, 9])]


def test_chunked_loads_and_updates_give_the_same_index_as_values_assigned_at_once():
    """Bulk appends (with rebins as the column doubles) then updates: the bins hold exactly the rows
    their values say, and ranges answer like a scan of the column."""
    rng = np.random.default_rng(11)
    index, values, valid = NumericIndex("float"), np.zeros(0), np.zeros(0, bool)
    for size in (300, 700, 2000, 5000):
        chunk = rng.lognormal(3, 1, size)
        ok = rng.random(size) > 0.05
        rows = np.arange(len(values), len(values) + size)
        index.grow(len(values) + size)
        index.assign(rows, ValueColumn(chunk, ok))
        values, valid = np.concatenate([values, chunk]), np.concatenate([valid, ok])
    rows = np.sort(rng.choice(len(values), 1500, replace=False))
    update, ok = rng.lognormal(3, 1, len(rows)), rng.random(len(rows)) > 0.2
    index.assign(rows, ValueColumn(update, ok))
    values[rows], valid[rows] = update, ok
    bins = np.where(valid, np.searchsorted(index.edges, values, side="right"), len(index.edges) + 1)
    assert [sorted(b) for b in index.cumulative] == [np.flatnonzero(bins <= k).tolist() for k in range(len(index.edges))]
    fine = np.where(valid, np.searchsorted(index.fine_edges, values, side="right"), -1)
    assert [sorted(b) for b in index.fine] == [np.flatnonzero(fine == j).tolist() for j in range(len(index.fine))]
    for lo, hi in ((10.0, 30.0), (None, 5.5), (40.0, None)):
        inside = valid & (values >= (lo if lo is not None else -np.inf)) & (values <= (hi if hi is not None else np.inf))
        assert sorted(index.range(lo, hi)) == np.flatnonzero(inside).tolist()


def test_id_map_finds_or_inserts_in_order_of_first_sight_in_one_batch():
    ids = IdMap()
    assert ids.lookup_or_insert(["a", "b"])[0].tolist() == [0, 1]
    rows, before = ids.lookup_or_insert(["c", "a", "c", "d", "b", "d"])  # room for all: one probe pass
    assert (rows.tolist(), before, len(ids)) == ([2, 0, 2, 3, 1, 3], 2, 4)
    many = [f"id{i}" for i in range(5000)] + ["a", "id7"]  # no room: looked up, then the missing inserted
    rows, before = ids.lookup_or_insert(many)
    assert rows[:3].tolist() == [4, 5, 6] and rows[-2:].tolist() == [0, 11] and before == 4 and len(ids) == 5004
    assert ids.lookup(["id4999", "zz"]).tolist() == [5003, -1] and ids.id_of(5003) == "id4999"
