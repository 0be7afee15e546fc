"""A run's events grouped by row (engine/store/row_index.py) against a naive grouping: sparse and
dense rows, a row with 70,000 events (offsets widened to uint32), windows cut at each end."""
from __future__ import annotations

import numpy as np
import pytest

from engine.store.row_index import build_row_index, row_slices


def _naive(rows: np.ndarray, ts: np.ndarray, wanted: np.ndarray, lo: int, hi: int) -> list[list[int]]:
    inside = (ts >= lo) & (ts <= hi)
    return [sorted(ts[(rows == row) & inside].tolist()) for row in wanted.tolist()]


@pytest.mark.parametrize("n_rows, heavy", [(50, 0), (5000, 0), (300, 70_000)])
def test_row_slices_match_a_naive_grouping(n_rows: int, heavy: int) -> None:
    rng = np.random.default_rng(n_rows + heavy)
    rows = np.concatenate([rng.integers(0, n_rows, 4000), np.full(heavy, 7)]).astype(np.int32)
    ts = np.sort(rng.integers(0, 1 << 20, len(rows))).astype(np.uint32)
    rows = rng.permutation(rows)  # times stay in order, rows spread over them
    index = build_row_index(rows, ts)
    assert index.offsets.dtype == (np.uint32 if heavy else np.uint16)
    assert index.starts[-1] == len(rows) and index.nbytes == sum(part.nbytes for part in index.lookup)
    wanted = np.unique(rng.integers(0, n_rows + 10, 200)).astype(np.int64)
    for lo, hi in ((0, 1 << 20), (1000, 600_000), (500_000, 500_100)):
        a, b = row_slices(*index.lookup, 0, wanted, lo, hi)
        got = [sorted(index.times[x:y].tolist()) for x, y in zip(a.tolist(), b.tolist())]
        assert got == _naive(rows, ts, wanted, lo, hi), (lo, hi)
