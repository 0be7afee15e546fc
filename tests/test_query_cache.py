"""The DID evaluator's kept results (``engine.exec.query_cache``): one byte budget, least recently
used out, and the same answers whether a result is kept, evicted and rebuilt, or never kept."""
from __future__ import annotations

import numpy as np
import pytest
from pyroaring import BitMap

from engine.exec import query_cache
from engine.exec.count_levels import WholeLevels
from engine.exec.query_cache import QueryCache, held_bytes

try:
    from test_count_levels import test_counts_from_levels_match_the_oracle_through_writes_merges_erasure_and_expiry as oracle_run
except ImportError:  # tests/ imported as a package
    from tests.test_count_levels import test_counts_from_levels_match_the_oracle_through_writes_merges_erasure_and_expiry as oracle_run


class Events:
    """A stand-in owner of ``n`` events (the budget reads its len())."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_the_budget_follows_the_events_and_evicts_the_least_recently_used() -> None:
    owner = Events(1000)
    cache = QueryCache(owner, bytes_per_event=0.2, min_bytes=0)  # 200 bytes
    assert cache.budget == 200
    a, b, c = BitMap(range(0, 160, 2)), BitMap(range(0, 80, 2)), BitMap(range(0, 100, 2))  # 160, 80, 100 bytes
    cache.put("a", a)
    cache.put("b", b)
    assert sorted(cache.entries) == ["b"] and cache.nbytes == 80  # a and b exceed 200: a, the oldest, left
    cache.put("c", c)
    assert sorted(cache.entries) == ["b", "c"] and cache.nbytes == 180
    cache.get("b")
    cache.put("a", a)  # 160 more: c is the least recently used, then b
    assert list(cache.entries) == ["a"] and cache.nbytes == 160
    owner.n = 10  # the shard shrank: nothing fits any more, and a new result is not kept
    cache.put("b", b)
    assert list(cache.entries) == ["a"] and cache.get("b") is None


def test_a_value_that_grows_after_it_is_kept_is_measured_again_when_read() -> None:
    levels = WholeLevels([BitMap(range(0, 200, 2)), BitMap(range(0, 100, 2))], rows=640)
    cache = QueryCache(None, bytes_per_event=0, min_bytes=1000)
    cache.put("levels", levels)
    cache.put("other", BitMap(range(0, 400, 2)))  # 400 bytes
    assert cache.nbytes == 300 + 400
    levels.bitsets(2)  # 2 levels x 10 words: 160 bytes more
    assert cache.get("levels") is levels and cache.nbytes == 460 + 400
    assert levels.nbytes == held_bytes(levels) == 460
    levels.bitsets(8)  # 8 levels: 640 bytes of bitsets, 940 in all; "other" makes room
    assert cache.get("levels") is levels and list(cache.entries) == ["levels"] and cache.nbytes == 940


@pytest.mark.parametrize("budget", [0, 3000])
def test_counts_match_the_oracle_with_results_never_kept_or_evicted_on_the_way(
        budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count-level oracle run (writes, merges, erasure, expiry; every query twice per state) with
    no result kept, and with a budget small enough that results are evicted and built again."""
    monkeypatch.setattr(query_cache, "BYTES_PER_EVENT", 0.0)
    monkeypatch.setattr(query_cache, "MIN_BUDGET_BYTES", budget)
    oracle_run(1)


def test_the_default_budget_is_a_share_of_the_events() -> None:
    large, small = Events(100_000_000), Events(10)
    assert QueryCache(large).budget == int(query_cache.BYTES_PER_EVENT * 100_000_000) > query_cache.MIN_BUDGET_BYTES
    assert QueryCache(small).budget == query_cache.MIN_BUDGET_BYTES
    assert held_bytes({"x": [BitMap([1, 3]), np.zeros(4, np.int64)]}) == 4 + 32
