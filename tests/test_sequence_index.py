"""The runs' events grouped by row (engine/store/row_index.py) and the SEQUENCE evaluation that reads
them (engine/exec/sequence_index.py): exact against a naive grouping and the oracle while the store
changes under kept indexes (new runs and merged runs, out-of-order batches, an epoch edge, equal
timestamps, profile merges, erasure, expiry, a restart), in-process and over 3 worker shards."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from engine import Engine, Schema
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA
from engine.store.row_index import build_row_index, row_slices
from engine.store.runs import EPOCH_SPAN

try:
    from oracle_retention import RetentionStore
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore

DAY = 86_400_000
SCHEMA_DICT = {**CONTRACT_SCHEMA, "events": {**CONTRACT_SCHEMA["events"],
                                             "page_view": {**CONTRACT_SCHEMA["events"]["page_view"], "retention": "20d"}}}
SCHEMA = Schema.from_dict(SCHEMA_DICT)
EDGE = 419 * EPOCH_SPAN  # an epoch starts here: runs on both sides
NOW = EDGE + 10 * DAY
QUERIES = [
    "SEQUENCE(page_view THEN cart_abandoned THEN purchase)",
    "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d)",
    "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 2h, WITHIN 15d)",
    "SEQUENCE(page_view THEN purchase, SPAN 30m, SINCE NOW - 12d, BEFORE NOW - 1d)",
    "SEQUENCE(purchase THEN page_view THEN page_view, SPAN 3h)",
    "SEQUENCE(page_view THEN page_view THEN purchase, WITHIN 25d)",
    "SEQUENCE(cart_abandoned THEN purchase THEN cart_abandoned, SPAN 12h)",
    "SEQUENCE(purchase THEN purchase, SPAN 1h)",
]


def test_row_slices_match_a_naive_grouping() -> None:
    """Each row's events in [lo, hi] (all of them without clipping, when the window reaches the run's
    epoch), in time order, for random runs."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(0, 80))
        rows = rng.integers(0, int(rng.choice([12, 2000])), n).astype(np.int32)  # dense or sparse rows
        ts = np.sort(rng.integers(0, 60, n)).astype(np.uint32)
        index = build_row_index(rows, ts)
        wanted = np.unique(np.concatenate([rng.choice(rows, min(n, 5)) if n else [], rng.integers(0, 2100, 8)]))
        wanted = wanted.astype(np.int64)
        lo, hi = sorted(int(x) for x in rng.integers(-5, 65, 2))
        base = int(rng.integers(0, 3)) * 10
        for clip in (True, False):
            a, b = row_slices(*index.lookup, base, wanted, base + lo, base + hi, clip)
            for i, row in enumerate(wanted.tolist()):
                times = sorted(int(t) for r, t in zip(rows.tolist(), ts.tolist()) if r == row)
                expected = [t for t in times if lo <= t <= hi] if clip else times if hi >= 0 else []
                assert index.times[a[i]:b[i]].tolist() == expected, (row, lo, hi, clip)


def test_row_slices_at_the_extremes_of_a_window() -> None:
    """A window from the int64 minimum, one past the epoch, and one that ends before the run."""
    index = build_row_index(np.array([3, 3, 7], np.int32), np.array([0, 5, EPOCH_SPAN - 1], np.uint32))
    rows = np.array([3, 7])
    a, b = row_slices(*index.lookup, EDGE, rows, np.iinfo(np.int64).min, EDGE + EPOCH_SPAN)
    assert (b - a).tolist() == [2, 1]
    a, b = row_slices(*index.lookup, EDGE, rows, EDGE + EPOCH_SPAN, EDGE + 2 * EPOCH_SPAN)
    assert (b - a).tolist() == [0, 0]
    a, b = row_slices(*index.lookup, EDGE, rows, 0, EDGE - 1)
    assert (b - a).tolist() == [0, 0]


def _events(rng: random.Random, ids: list[str], size: int) -> list[dict]:
    """Events around the epoch edge, in no time order, with many equal timestamps."""
    events = []
    for _ in range(size):
        ts = EDGE + rng.choice([rng.randint(-20 * DAY, 10 * DAY), rng.randint(-3, 3) * 3_600_000,
                                rng.randint(-2, 2) * DAY - rng.randint(0, 2)])
        events.append({"id": rng.choice(ids), "event": rng.choice(["page_view", "page_view", "cart_abandoned",
                                                                    "purchase"]), "ts": ts})
    return events


def _check(engine: Engine, oracle: RetentionStore, now: int = NOW) -> None:
    for text in QUERIES:
        expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
        assert engine.ids(text, now=now) == expected, (text, now)


@pytest.mark.parametrize("shards", [1, 3])
def test_sequences_stay_exact_as_the_store_changes(shards: int, tmp_path: Path) -> None:
    """The row indexes built by the first queries never serve stale runs: after appends (new and
    merged runs), merges of profiles, erasure, expiry and a restart the answers equal the oracle's."""
    rng = random.Random(shards)
    ids = [f"p{i}" for i in range(40)]
    oracle = RetentionStore(SCHEMA_DICT)
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        for _ in range(3):
            batch = _events(rng, ids, 150)
            engine.track_events(batch)
            oracle.track(batch)
            _check(engine, oracle)
        for _ in range(6):  # small batches: new runs beside indexed ones, then merges into one
            batch = _events(rng, ids, 20)
            engine.track_events(batch)
            oracle.track(batch)
        _check(engine, oracle)
        for source, target in [("p1", "p2"), ("p3", "p4"), ("p5", "p2")]:
            engine.merge(source, target)
            oracle.merge(source, target)
        _check(engine, oracle)
        assert engine.delete_profiles(["p4", "p6"]) == oracle.delete(["p4", "p6"])
        _check(engine, oracle)
        assert engine.expire(NOW) == oracle.expire(NOW) > 0
        _check(engine, oracle)
        _check(engine, oracle, NOW - 3 * DAY)
        engine.snapshot()
    with Engine(SCHEMA, shards=shards, data_dir=str(tmp_path)) as engine:
        _check(engine, oracle)
        batch = _events(rng, ids, 30)
        engine.track_events(batch)
        oracle.track(batch)
        _check(engine, oracle)


def test_row_indexes_are_built_on_first_use_and_kept_on_their_runs() -> None:
    """No index before a SEQUENCE reads a run; after, each run the window reaches carries one equal to a
    rebuild; a later append adds a run without one, and the next SEQUENCE indexes it too."""
    rng = random.Random(9)
    ids = [f"p{i}" for i in range(30)]
    query = "SEQUENCE(page_view THEN purchase, WITHIN 40d)"
    with Engine(SCHEMA, shards=1) as engine:
        engine.track_events(_events(rng, ids, 200))
        store = engine.shards[0].events.types["purchase"]
        assert [run.row_index for run in store.runs] == [None] * len(store.runs)
        first = engine.count(query, now=NOW)
        held = list(store.runs)
        assert len(held) == 2 and all(run.row_index is not None for run in held)  # one run per epoch
        for run in held:
            rebuilt = build_row_index(run.rows, run.ts)
            assert [x.tolist() for x in run.row_index.lookup] == [x.tolist() for x in rebuilt.lookup]
        engine.track_events([{"id": "p0", "event": "purchase", "ts": NOW - 5}])
        assert [run.row_index is None for run in store.runs] == [False, False, True]
        assert all(run is old for run, old in zip(store.runs, held))  # the indexed runs are kept
        engine.count(query, now=NOW)
        assert all(run.row_index is not None for run in store.runs)
        assert engine.count(query, now=NOW) >= first


def test_a_later_step_past_its_retention_never_completes_a_chain() -> None:
    """Walked forwards from the rare first step (purchases), a page view after the purchase but at or
    before the page views' retention floor (20 days) does not exist, even for a row with other page
    views in the window; one after the floor does."""
    floor = NOW - 20 * DAY
    events = [
        {"id": "expired", "event": "purchase", "ts": floor - 7_200_000},
        {"id": "expired", "event": "page_view", "ts": floor},  # ts <= now - retention: gone
        {"id": "expired", "event": "page_view", "ts": NOW - 60_000},  # in the window, but hours after
        {"id": "kept", "event": "purchase", "ts": floor - 7_200_000},
        {"id": "kept", "event": "page_view", "ts": floor + 1},
    ]
    events += [{"id": f"v{i}", "event": "page_view", "ts": NOW - i * 60_000} for i in range(20)]  # views outnumber buys
    with Engine(SCHEMA, shards=1) as engine:
        engine.track_events(events)
        assert engine.ids("SEQUENCE(purchase THEN page_view, SPAN 3h)", now=NOW) == ["kept"]
        assert engine.ids("SEQUENCE(purchase THEN page_view THEN page_view, SPAN 3h)", now=NOW) == []


def test_the_last_two_steps_in_one_pass_match_the_oracle_with_many_runs_of_the_first() -> None:
    """The funnel walked backwards with the last two steps in one pass (one run each, here with rows
    sparse enough that the page views' index keeps sorted rows) while the purchases, where the walk
    starts, lie in several runs: each run's ends start over from the first rows."""
    rng = random.Random(21)
    ids = [f"p{i:03d}" for i in range(400)]
    active = ids[::37]  # about 1 row in 37 has events
    oracle = RetentionStore(SCHEMA_DICT)
    with Engine(SCHEMA, shards=1) as engine:
        engine.upsert_profiles([{"id": pid} for pid in ids])
        oracle.upsert([{"id": pid} for pid in ids])
        views = [{"id": rng.choice(active), "event": rng.choice(["page_view", "cart_abandoned"]),
                  "ts": NOW - rng.randint(0, 9 * DAY)} for _ in range(300)]  # one epoch
        views += [{"id": pid, "event": "cart_abandoned", "ts": NOW - 3 * DAY} for pid in active]  # equal times
        batches = [views] + [[{"id": rng.choice(active), "event": "purchase", "ts": NOW - rng.randint(0, 9 * DAY)}
                              for _ in range(size)] for size in (60, 12, 3)]
        batches[-1].append({"id": active[0], "event": "purchase", "ts": NOW - 3 * DAY})
        for batch in batches:
            engine.track_events(batch)
            oracle.track(batch)
        types = engine.shards[0].events.types
        assert len(types["purchase"].runs) > 1 and len(types["page_view"].runs) == len(types["cart_abandoned"].runs) == 1
        for text in ["SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d)",
                     "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 6h, WITHIN 10d)",
                     "SEQUENCE(purchase THEN cart_abandoned THEN page_view, SPAN 2d)",
                     "SEQUENCE(cart_abandoned THEN page_view THEN page_view, SPAN 1d)"]:
            expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), NOW))
            assert engine.ids(text, now=NOW) == expected, text
