"""Presence in a time window (day and hour buckets plus exact edges) equals a scan of the events."""
from __future__ import annotations

import numpy as np

from engine.exec.did import DidEvaluator
from engine.schema import EventDef
from engine.store.events import DAY_MS, HOUR_MS, EventStore


def test_presence_matches_a_scan_for_windows_on_and_off_bucket_edges() -> None:
    rng = np.random.default_rng(3)
    store = EventStore({"visit": EventDef("visit", {})})
    base = 1_790_000_000_000 // DAY_MS * DAY_MS
    ts = base + rng.integers(-3 * DAY_MS, 3 * DAY_MS, 4000)
    ts[:200] = base + rng.integers(-3, 3, 200) * HOUR_MS + rng.integers(-1, 2, 200)  # on hour edges, +-1 ms
    rows = rng.integers(0, 500, len(ts))
    for part in np.array_split(np.arange(len(ts)), 5):  # several batches: several runs
        store.types["visit"].append(rows[part], ts[part], {})
    evaluator = DidEvaluator(store)
    edges = [base + k * HOUR_MS + d for k in range(-80, 80, 7) for d in (-1, 0, 1)] + [base - 3 * DAY_MS, base]
    for lo in edges[::3]:
        for hi in edges[1::4]:
            expected = sorted(set(rows[(ts >= lo) & (ts <= hi)].tolist()))
            assert list(evaluator.present(store.types["visit"], lo, hi)) == expected, (lo - base, hi - base)
