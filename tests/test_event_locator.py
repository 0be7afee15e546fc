"""The event locator (engine/store/event_locator.py) against a naive scan of every run: covered runs
(found through the per-row block index), runs written after it was built (scanned), a profile whose
events lie all over a run, rows deleted by marking, and the rebuild once uncovered runs grow."""
from __future__ import annotations

import numpy as np

from engine.schema import EventDef
from engine.store.event_locator import FULL, GROUP_BITS, MIN_COVERED_RUN, REBUILD_SHARE, locate
from engine.store.event_rows import bury_rows, drop_rows
from engine.store.events import EventStore

ROWS = 3000


def naive(events: EventStore, rows: np.ndarray) -> list[tuple[str, list[int], list[int]]]:
    """Per run holding events of ``rows``: (type, their rows, their times), in run order."""
    out = []
    for name, store in events.types.items():
        for run in store.runs:
            picks = np.flatnonzero(np.isin(run.rows, rows))
            if len(picks):
                out.append((name, run.rows[picks].tolist(), run.absolute_ts()[picks].tolist()))
    return out


def located(events: EventStore, rows: np.ndarray) -> list[tuple[str, list[int], list[int]]]:
    return [(name, run.rows[picks].tolist(), run.absolute_ts()[picks].tolist())
            for name, run, picks in locate(events, rows, ROWS)]


def store_with_runs(rng: np.random.Generator) -> EventStore:
    events = EventStore({"view": EventDef("view", {}), "buy": EventDef("buy", {})})
    for name, n in (("view", 4 * MIN_COVERED_RUN), ("buy", 2 * MIN_COVERED_RUN)):
        rows = rng.integers(0, ROWS, n)
        rows[::7] = 5  # row 5 has events all over each run
        events.types[name].append(rows, rng.integers(0, 10**9, n), {})
    return events


def test_covered_and_uncovered_runs_match_a_scan() -> None:
    rng = np.random.default_rng(1)
    events = store_with_runs(rng)
    for wanted in (np.array([7]), np.array([5]), np.array([5, 17, 2999]), rng.choice(ROWS, 200, replace=False)):
        assert located(events, wanted) == naive(events, wanted)
    index = events.locator
    assert index is not None and index.covered_events == 6 * MIN_COVERED_RUN
    events.types["view"].append(np.array([7, 7, 8]), np.array([5, 6, 7]), {})  # a small, uncovered run
    wanted = np.array([7, 8, 9])
    assert located(events, wanted) == naive(events, wanted)
    assert events.locator is index  # a few uncovered events: the index is kept


def test_counts_at_the_full_mark_and_group_edges() -> None:
    """Rows with FULL - 1 covered events, FULL and more (their counts in the overflow arrays), beside
    rows at the edges of their group of 64 whose entries start after them; every lookup equals a scan."""
    rng = np.random.default_rng(3)
    events = EventStore({"view": EventDef("view", {})})
    group = 1 << GROUP_BITS
    heavy = {group - 1: FULL - 1, group: FULL, group + 1: FULL + 40, 2 * group + 5: 3 * FULL}
    light = rng.integers(0, ROWS, 3 * MIN_COVERED_RUN)
    rows = np.concatenate([light[~np.isin(light, list(heavy))]] + [np.full(n, row) for row, n in heavy.items()])
    events.types["view"].append(rng.permutation(rows), rng.integers(0, 10**9, len(rows)), {})
    for wanted in ([group - 1], [group - 2, group - 1], [group], [group - 1, group, group + 2], [group + 1],
                   [2 * group + 5, 2 * group + 6], [0, 2 * group - 1, 2 * group], [ROWS - 1]):
        assert located(events, np.array(wanted)) == naive(events, np.array(wanted)), wanted
    index = events.locator
    assert index.counts[group - 1] == FULL - 1 and index.counts[group] == index.counts[group + 1] == FULL
    assert index.over_rows.tolist() == [group, group + 1, 2 * group + 5]
    assert index.over_counts.tolist() == [FULL, FULL + 40, 3 * FULL] and len(index.entries) == len(rows)


def test_rows_deleted_by_marking_and_rebuilds() -> None:
    rng = np.random.default_rng(2)
    events = store_with_runs(rng)
    located(events, np.array([1]))
    dead = np.arange(100, 200)
    bury_rows(events, dead, None)
    assert events.types["view"].dead_events + events.types["buy"].dead_events == int(
        sum(np.isin(run.rows, dead).sum() for store in events.types.values() for run in store.runs))
    wanted = np.array([5, 99, 200, 250])
    assert located(events, wanted) == naive(events, wanted)
    first = events.locator
    drop_rows(events, np.array([1, 2, 3]), ROWS)  # every run rebuilt: uncovered, so the index is built again
    assert not any(events.types[name].dead for name in events.types)
    assert located(events, wanted) == naive(events, wanted)
    assert events.locator is not first and events.locator.covered_events == sum(len(events.types[n]) for n in events.types)
    n = events.locator.covered_events // (REBUILD_SHARE - 1) + 1  # then more than 1/REBUILD_SHARE is uncovered
    events.types["buy"].append(rng.integers(0, ROWS, n), rng.integers(0, 10**9, n), {})
    second = events.locator
    assert located(events, wanted) == naive(events, wanted)
    assert events.locator is not second


def test_compaction_removes_dead_events_past_their_share() -> None:
    from engine.store.event_rows import COMPACT_DEAD_SHARE, COMPACT_MIN_DEAD_EVENTS, compact

    rng = np.random.default_rng(4)
    events = EventStore({"view": EventDef("view", {})})
    n = 4 * COMPACT_MIN_DEAD_EVENTS
    rows = rng.integers(0, ROWS, n)
    events.types["view"].append(rows, rng.integers(0, 10**9, n), {})
    store = events.types["view"]
    few = np.arange(10)  # far fewer dead events than the minimum: kept
    bury_rows(events, few, None)
    assert compact(events) == 0 and store.dead_events == int(np.isin(rows, few).sum())
    many = np.arange(10, ROWS // 2)  # past both the minimum and the share of the live events: compacted
    bury_rows(events, many, None)
    dead = int(np.isin(rows, np.arange(ROWS // 2)).sum())
    assert dead >= COMPACT_MIN_DEAD_EVENTS and dead * COMPACT_DEAD_SHARE >= n - dead
    assert store.dead_events == dead and store.count == n - dead
    assert compact(events) == dead
    assert store.dead_events == 0 and not store.dead and sum(len(run) for run in store.runs) == n - dead
    assert not any(np.isin(run.rows, many).any() for run in store.runs)
