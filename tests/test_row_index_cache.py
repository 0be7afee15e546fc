"""The shard's budget for row indexes (engine/store/row_index_cache.py): kept indexes stay within it,
a workload larger than it keeps a fixed part instead of thrashing, a frequently used run displaces a
rarely used one, a run's index goes with the run, and SEQUENCE answers with evicted and refused
indexes equal the oracle's and an unbounded engine's as the store changes."""
from __future__ import annotations

import gc
import random

import numpy as np

from engine import Engine
from engine.query import bind, parse
from engine.store.row_index import build_row_index
from engine.store.row_index_cache import RowIndexCache
from engine.store.runs import Run

try:
    from oracle_retention import RetentionStore
    from test_sequence_index import NOW, QUERIES, SCHEMA, SCHEMA_DICT, _events
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore
    from tests.test_sequence_index import NOW, QUERIES, SCHEMA, SCHEMA_DICT, _events

INDEX_BYTES = 642  # a run of 100 events of 100 distinct rows: 400 times, 16 + 202 starts (2 bases, 101 offsets), 16 words, 8 ranks


def _run(seed: int) -> Run:
    rows = np.random.default_rng(seed).permutation(100).astype(np.int32)
    return Run(0, np.arange(100, dtype=np.uint32), rows, {})


def _kept(runs: list[Run]) -> list[bool]:
    return [run.row_index is not None for run in runs]


def test_indexes_equal_a_rebuild_and_stay_within_the_budget() -> None:
    """Room for two of four: the first two are kept, the others built per request and handed out whole."""
    runs = [_run(seed) for seed in range(4)]
    cache = RowIndexCache(None, min_bytes=2 * INDEX_BYTES)
    for _ in range(3):
        for run in runs:
            index = cache.get(run)
            rebuilt = build_row_index(run.rows, run.ts)
            assert [x.tolist() for x in index.lookup] == [x.tolist() for x in rebuilt.lookup]
    assert _kept(runs) == [True, True, False, False]
    assert cache.nbytes == 2 * INDEX_BYTES
    assert cache.builds == 2 + 2 * 3  # the kept two once, the refused two on every request


def test_a_frequently_used_run_displaces_a_rarely_used_one() -> None:
    """Run 2, asked for again and again, takes the place of the least used kept index (run 0)."""
    runs = [_run(seed) for seed in range(3)]
    cache = RowIndexCache(None, min_bytes=2 * INDEX_BYTES)
    cache.get(runs[0])
    cache.get(runs[1])
    cache.get(runs[1])
    cache.get(runs[2])
    assert _kept(runs) == [True, True, False]  # run 2 (1 use) does not displace run 0 (1 use)
    cache.get(runs[2])
    assert _kept(runs) == [False, True, True]  # 2 uses beat run 0's 1


def test_a_runs_index_goes_with_the_run() -> None:
    """A run that no longer exists frees its share of the budget for the next index."""
    runs = [_run(seed) for seed in range(2)]
    cache = RowIndexCache(None, min_bytes=INDEX_BYTES)
    cache.get(runs[0])
    cache.get(runs[0])
    cache.get(runs[1])
    assert _kept(runs) == [True, False]
    del runs[0]
    gc.collect()
    cache.get(runs[0])
    assert _kept(runs) == [True] and cache.nbytes == INDEX_BYTES


def test_the_budget_follows_the_events_of_the_shard() -> None:
    """bytes_per_event x the events held (every type's), never below min_bytes; shared by the types."""
    with Engine(SCHEMA, shards=1) as engine:
        engine.track_events(_events(random.Random(3), [f"p{i}" for i in range(30)], 500))
        events = engine.shards[0].events
        cache = events.row_indexes
        assert all(typed.row_indexes is cache for typed in events.types.values())
        cache.min_bytes = 0
        assert cache.budget == int(cache.bytes_per_event * 500)


def test_sequences_with_a_tight_budget_equal_the_oracle_and_an_unbounded_engine() -> None:
    """A budget that holds about one run's index: every query rebuilds most of its indexes, and the
    answers still equal the oracle's and those of an engine that keeps every index, through appends,
    profile merges, erasure and expiry."""
    rng = random.Random(11)
    ids = [f"p{i}" for i in range(40)]
    oracle = RetentionStore(SCHEMA_DICT)
    with Engine(SCHEMA, shards=1) as tight, Engine(SCHEMA, shards=1) as unbounded:
        cache = tight.shards[0].events.row_indexes
        cache.bytes_per_event, cache.min_bytes = 0.0, 600
        unbounded.shards[0].events.row_indexes.min_bytes = 1 << 30

        def check(now: int = NOW) -> None:
            for text in QUERIES:
                expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
                assert tight.ids(text, now=now) == expected == unbounded.ids(text, now=now), (text, now)
            assert cache.nbytes <= 600

        def track(batch: list[dict]) -> None:
            for engine in (tight, unbounded):
                engine.track_events(batch)
            oracle.track(batch)

        for size in (150, 150, 20, 20, 20):
            track(_events(rng, ids, size))
            check()
        for source, target in [("p1", "p2"), ("p3", "p4"), ("p5", "p2")]:
            for engine in (tight, unbounded):
                engine.merge(source, target)
            oracle.merge(source, target)
        check()
        assert tight.delete_profiles(["p4", "p6"]) == unbounded.delete_profiles(["p4", "p6"]) == oracle.delete(["p4", "p6"])
        check()
        assert tight.expire(NOW) == unbounded.expire(NOW) == oracle.expire(NOW) > 0
        check()
        check(NOW - 3 * 86_400_000)
        runs = sum(len(typed.runs) for typed in tight.shards[0].events.types.values())
        assert cache.builds > 2 * runs  # indexes were refused and built again
        assert any(run.row_index is not None for typed in tight.shards[0].events.types.values() for run in typed.runs)
