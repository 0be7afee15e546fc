"""Per-row latest times in 5 bytes a row (engine/store/latest_times.py) against a dict: times in
many epochs (older ones arriving later move the base), spans that widen the epoch array to uint16
and int64, negative times, clearing rows and times up to a cutoff, and the int64 snapshot form."""
from __future__ import annotations

import numpy as np
import pytest

from engine.store.latest_times import LatestTimes
from engine.store.runs import NO_TIME

EPOCH = 1 << 32


def _expected(latest: dict[int, int], rows: np.ndarray) -> list[int]:
    return [latest.get(row, NO_TIME) for row in rows.tolist()]


@pytest.mark.parametrize("spread, dtype", [(3, np.uint8), (254, np.uint8), (300, np.uint16), (70_000, np.int64)])
def test_random_writes_match_a_dict(spread: int, dtype: type) -> None:
    rng = np.random.default_rng(spread)
    latest = LatestTimes()
    naive: dict[int, int] = {}
    for step in range(60):
        n = int(rng.integers(1, 40))
        rows = rng.integers(0, 500, n)
        epochs = rng.integers(-spread // 2, spread - spread // 2, n) + 400
        if step < 5:
            epochs[:] = 400  # the base is set by the first times, then older ones come
        ts = epochs * EPOCH + rng.integers(0, EPOCH, n)
        ts[::7] = epochs[::7] * EPOCH  # offsets of 0 and the last millisecond of an epoch
        ts[1::7] = epochs[1::7] * EPOCH + EPOCH - 1
        latest.add(rows, ts)
        for row, t in zip(rows.tolist(), ts.tolist()):
            naive[row] = max(naive.get(row, NO_TIME), t)
        if step % 10 == 9:
            gone = rng.integers(0, 600, 20)
            latest.clear(gone)
            for row in gone.tolist():
                naive.pop(row, None)
        if step % 15 == 14:
            cutoff = int(np.median(list(naive.values())))
            latest.clear_at_most(cutoff)
            naive = {row: t for row, t in naive.items() if t > cutoff}
        probe = np.arange(0, 2 * 500)
        assert latest.gather(probe).tolist() == _expected(naive, probe)
    assert latest.high.dtype == dtype
    restored = LatestTimes.from_int64(latest.to_int64())
    assert restored.gather(np.arange(1000)).tolist() == _expected(naive, np.arange(1000))


def test_negative_times_and_the_bytes_per_row() -> None:
    latest = LatestTimes(1000)
    latest.add(np.array([0, 1, 1, 999]), np.array([-5, -EPOCH - 1, 3, 7 * EPOCH]))
    assert latest.gather(np.array([0, 1, 2, 999, 5000])).tolist() == [-5, 3, NO_TIME, 7 * EPOCH, NO_TIME]
    assert latest.nbytes == 5 * 1000
