"""COUNT conditions answered from kept count levels, against the naive oracle with retention.

Profile p{i} gets i % 13 page views inside one UTC day (so per-day levels reach the cap of 8 and
pass it) and more spread over 20 days, many on midnights +-1 ms, written out of time order. The
tests sit on the levels' edges (exactly k events and k - 1, the cap 8 and 9), windows that start
and end inside a day, WHERE bins (passing whole, or with a literal inside a bin: counted from the
events), AFTER LAST, and go through merges, erasure and expiry. The first round of queries
builds the levels (in the calling thread here: SEGENGINE_LEVELS_SYNC); every later one sees them
kept by the writes. The last tests build in the background, with writes and erasures during the
build.
"""
from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine, Schema
from engine.columns import column_from_values
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA, EventDef
from engine.exec import count_levels as level_counts
from engine.store.count_levels import CAP
from engine.store import levels_build, type_levels
from engine.store.event_rows import drop_rows
from engine.store.events import EventStore

try:
    from oracle_retention import RetentionStore
    from strategies import CATEGORIES, DAY, HOUR, MIDNIGHT, NOW
    from test_event_predicates import KINDS, apply, operations
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore
    from tests.strategies import CATEGORIES, DAY, HOUR, MIDNIGHT, NOW
    from tests.test_event_predicates import KINDS, apply, operations

SPEC = copy.deepcopy(CONTRACT_SCHEMA)
SPEC["events"]["page_view"]["retention"] = "15d"
SCHEMA = Schema.from_dict(SPEC)
MID_DAY = MIDNIGHT - 2 * DAY + 9 * HOUR + 17
QUERIES = [
    *[f"DID(page_view, COUNT >= {k}, WITHIN 7d)" for k in (2, 3, 7, CAP, CAP + 1)],
    *[f"DID(page_view, COUNT {op} {k})" for op, k in (("<", 3), ("=", CAP), ("<=", CAP - 1), (">", CAP), ("!=", 2))],
    f"DID(page_view, COUNT >= 4, SINCE {MID_DAY - 5 * DAY}, BEFORE {MID_DAY})",
    f"DID(page_view, COUNT = 1, SINCE {MIDNIGHT - 4 * DAY}, BEFORE {MIDNIGHT})",
    "DID(page_view, COUNT < 5, WITHIN 30d)",
    "DID(page_view WHERE category IN ('books', 'shoes'), COUNT >= 3, WITHIN 14d)",
    "DID(page_view WHERE NOT category = 'books', COUNT >= 5)",
    "DID(page_view WHERE category IS NULL, COUNT = 2, WITHIN 3d)",
    "DID(purchase WHERE amount > 50, COUNT >= 2, WITHIN 10d)",
    "DID(purchase WHERE amount > 60, COUNT >= 2, WITHIN 10d)",
    "DID(purchase WHERE amount >= 20 OR category = 'books', COUNT >= 2)",
    "DID(page_view, COUNT >= 3, WITHIN 7d) AND DID(purchase, COUNT >= 1)",
    "DID(purchase, WITHIN 12d) AND DID(page_view, COUNT >= 2, WITHIN 7d)",
    "DID(page_view, WITHIN 9d) AND NOT DID(page_view WHERE category = 'books', COUNT = 1, WITHIN 5d)",
    "DID(purchase) AND DID(page_view, AFTER LAST purchase, COUNT = 0)",
    "DID(page_view, AFTER LAST purchase, WITHIN 5d)",
    "DID(purchase, AFTER LAST page_view)",
]
CLOCKS = [NOW + 2 * DAY, MIDNIGHT - 1, MID_DAY]  # the first is past every event


@pytest.fixture(autouse=True, scope="module")
def levels_built_by_the_caller() -> Iterator[None]:
    """The first query that wants levels builds them (worker processes inherit the setting)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGENGINE_LEVELS_SYNC", "1")
        yield


def events(rng: random.Random, ids: list[str], spread: int) -> list[dict[str, Any]]:
    """A burst of i % 13 page views within one day for profile p{i}, then ``spread`` events of any
    type at random times; shuffled, so arrival order is not time order."""
    out: list[dict[str, Any]] = []
    for i, pid in enumerate(ids):
        day = MIDNIGHT - rng.randint(0, 12) * DAY
        for _ in range(i % 13):
            out.append({"id": pid, "event": "page_view", "ts": day + rng.randint(0, DAY - 1),
                        "category": rng.choice(CATEGORIES + [None])})
    for _ in range(spread):
        kind = rng.choice(["page_view", "page_view", "purchase"])
        ts = MIDNIGHT - rng.randint(-1, 20) * DAY + rng.choice([-1, 0, 1]) if rng.random() < 0.3 \
            else NOW - rng.randint(-DAY, 20 * DAY)
        record: dict[str, Any] = {"id": rng.choice(ids), "event": kind, "ts": ts,
                                  "category": rng.choice(CATEGORIES + [None])}
        if kind == "purchase":
            record["amount"] = rng.choice([50.0, 75.0, 20.0, 19.99, None])
        out.append(record)
    rng.shuffle(out)
    return out


def check(engine: Engine, oracle: RetentionStore) -> None:
    for text in QUERIES:
        node = bind(parse(text), SCHEMA)
        for now in CLOCKS:
            assert engine.ids(text, now=now) == sorted(oracle.evaluate(node, now)), f"{text} (now={now})"


@pytest.mark.parametrize("shards", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_counts_from_levels_match_the_oracle_through_writes_merges_erasure_and_expiry(shards: int) -> None:
    rng = random.Random(shards)
    ids = [f"p{i:02d}" for i in range(40)]
    oracle = RetentionStore(SPEC)
    with Engine(SCHEMA, shards=shards) as engine:
        for batch in (events(rng, ids, 300), events(rng, ids[:20] + ["n1", "n2"], 200)):
            engine.track_events(batch)
            oracle.track(batch)
            check(engine, oracle)  # the first round builds the levels, the later one sees them kept
        engine.merge("p11", "p12")
        oracle.merge("p11", "p12")
        engine.merge_many([("p05", "p07"), ("n1", "p24")])
        oracle.merge_many([("p05", "p07"), ("n1", "p24")])
        engine.delete_profiles(["p25", "p12", "p30"])
        oracle.delete(["p25", "p12", "p30"])
        check(engine, oracle)
        assert engine.expire(NOW) == oracle.expire(NOW) > 0
        check(engine, oracle)
        batch = events(rng, ids[:15], 100)
        engine.track_events(batch)
        oracle.track(batch)
        check(engine, oracle)


def test_counts_up_to_two_next_to_other_predicates_come_from_levels_past_the_pair_counter_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``PAIR_COUNTER_ROWS`` rows (here: any) a count up to 2 within a found set is answered
    from the levels, not from the two-bit event counter: the same answers."""
    monkeypatch.setattr(level_counts, "PAIR_COUNTER_ROWS", 0)
    test_counts_from_levels_match_the_oracle_through_writes_merges_erasure_and_expiry(1)


def test_levels_kept_for_a_fixed_window_follow_every_change_of_the_store() -> None:
    """A window with absolute edges inside two days is answered again from the levels kept for it,
    until a write, a merge or an erasure changes the store: each answer equals the oracle's."""
    query = f"DID(purchase, COUNT >= 2, SINCE {MID_DAY - 5 * DAY}, BEFORE {MID_DAY})"
    node = bind(parse(query), SCHEMA)
    base = [{"id": f"q{i}", "event": "purchase", "ts": MID_DAY - (i + 2) * DAY} for i in range(3)]  # whole days
    edge = [{"id": "q0", "event": "purchase", "ts": MID_DAY - 1},  # the last partial day
            {"id": "q1", "event": "purchase", "ts": MID_DAY - 5 * DAY}]  # the first one, on its first ms
    oracle = RetentionStore(SPEC)
    with Engine(SCHEMA, shards=1) as engine:
        for batch in (base, edge[:1], edge[1:]):
            engine.track_events(batch)
            oracle.track(batch)
            for _ in range(2):  # the second answer comes from the kept levels
                assert engine.ids(query, now=NOW) == sorted(oracle.evaluate(node, NOW))
        assert engine.ids(query, now=NOW) == ["q0", "q1"]
        engine.merge("q2", "q0")
        oracle.merge("q2", "q0")
        engine.delete_profiles(["q1"])
        oracle.delete(["q1"])
        assert engine.ids(query, now=NOW) == sorted(oracle.evaluate(node, NOW)) == ["q0"]


def test_a_count_of_exactly_k_events_sits_on_level_k() -> None:
    """Row r has r events on each of two whole days and r more at the window's partial first day:
    COUNT >= k holds from 3r >= k, through the cap (8) and past it."""
    from pyroaring import BitMap

    from engine.exec.did import DidEvaluator

    store = EventStore({"act": EventDef("act", {})})
    rows, ts = [], []
    for r in range(6):
        for day in (1, 2):
            rows += [r] * r
            ts += [MIDNIGHT - day * DAY + 1000 * i for i in range(r)]
        rows += [r] * r
        ts += [MIDNIGHT - 3 * DAY + 12 * HOUR + 1000 * i for i in range(r)]  # inside the partial first day
    order = np.random.default_rng(3).permutation(len(rows))
    store.types["act"].append(np.array(rows)[order], np.array(ts)[order], {})
    schema = Schema.from_dict({"attributes": {}, "events": {"act": {"properties": {}}}, "consents": []})
    evaluator = DidEvaluator(store)
    live = BitMap(range(8))
    since = MIDNIGHT - 3 * DAY + 6 * HOUR
    for k in (2, 3, 6, 7, CAP, CAP + 1, 12, 13):
        for op, test in ((">=", lambda c: c >= k), ("<", lambda c: c < k), ("=", lambda c: c == k)):
            node = bind(parse(f"DID(act, COUNT {op} {k}, SINCE {since})"), schema)
            got = sorted(evaluator.did(node, MIDNIGHT, None, live))
            assert got == [r for r in range(8) if test(3 * r if r < 6 else 0)], (op, k)
    assert store.types["act"].count_levels is not None  # answered from the levels


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=operations(), after=operations())
def test_kept_count_levels_equal_a_rebuild_after_random_writes(before: list, after: list) -> None:
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for op, seed in before:
        apply(store, op, seed)
    typed = store.types["act"]
    typed.levels()
    for prop in KINDS:
        typed.levels(prop)
    for op, seed in after:
        apply(store, op, seed)
        assert typed.count_levels is not None and typed.count_levels.same_as(typed.build_levels(None, typed.runs)), op
        for prop in KINDS:
            kept = typed.prop_bitmaps[prop].levels
            assert kept is not None and kept.same_as(typed.build_levels(prop, typed.runs)), (prop, op)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=operations(), events_per_slice=st.integers(1, 40))
def test_levels_built_in_slices_equal_levels_built_at_once(writes: list, events_per_slice: int) -> None:
    """The build reads the stored events in slices (bounded scratch memory at 100M profiles): any
    slice size gives the levels of one pass over all the events."""
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for op, seed in writes:
        apply(store, op, seed)
    typed = store.types["act"]
    whole = [typed.build_levels(prop, typed.runs) for prop in (None, *KINDS)]
    saved = type_levels.LEVEL_BUILD_EVENTS
    type_levels.LEVEL_BUILD_EVENTS = events_per_slice
    try:
        sliced = [typed.build_levels(prop, typed.runs) for prop in (None, *KINDS)]
    finally:
        type_levels.LEVEL_BUILD_EVENTS = saved
    assert all(a.same_as(b) for a, b in zip(whole, sliced))


def _gated(typed: Any, gate: threading.Event) -> None:
    """Make the first build of ``typed``'s levels wait for ``gate`` before it reads the events."""
    build = typed.build_levels
    calls = []

    def gated_build(prop: str | None, runs: list, pause_s: float = 0.0) -> Any:
        if not calls:
            calls.append(prop)
            assert gate.wait(30)
        return build(prop, runs, pause_s)

    typed.build_levels = gated_build


def _installed(typed: Any, prop: str | None) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        levels = typed.count_levels if prop is None else typed.prop_bitmaps[prop].levels
        if levels is not None:
            return levels
        time.sleep(0.01)
    raise AssertionError("the levels were never installed")


@pytest.mark.parametrize("rounds", [0, levels_build.CATCH_UP_ROUNDS])
@pytest.mark.parametrize("prop", [None, "kind", "amount"])
def test_a_background_build_catches_up_with_appends_committed_during_it(
        rounds: int, prop: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build reads the events as they were when it began; the appends committed meanwhile are
    recounted before the levels are installed (rounds 0: only in the last round, under the lock)."""
    monkeypatch.delenv("SEGENGINE_LEVELS_SYNC")
    monkeypatch.setattr(levels_build, "CATCH_UP_ROUNDS", rounds)
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for seed in range(3):
        apply(store, "append", seed)
    typed = store.types["act"]
    gate = threading.Event()
    _gated(typed, gate)
    assert typed.levels(prop) is None  # being built: the caller counts the events
    for seed in range(3, 9):
        apply(store, "append", seed)
    gate.set()
    levels = _installed(typed, prop)
    assert levels.same_as(typed.build_levels(prop, typed.runs))
    apply(store, "append", 9)  # kept by the writes from now on
    assert levels.same_as(typed.build_levels(prop, typed.runs))


def test_an_erasure_during_a_background_build_drops_it_and_the_next_query_starts_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGENGINE_LEVELS_SYNC")
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for seed in range(4):
        apply(store, "append", seed)
    typed = store.types["act"]
    gate = threading.Event()
    _gated(typed, gate)
    assert typed.levels() is None
    drop_rows(store, np.arange(0, 50, 3), 50)
    gate.set()
    deadline = time.monotonic() + 30
    while typed.level_builds.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert typed.count_levels is None  # the stale build was dropped
    assert typed.levels() is None  # a new build
    assert _installed(typed, None).same_as(typed.build_levels(None, typed.runs))


@pytest.mark.parametrize("prop", [None, "kind"])
def test_levels_installed_between_an_appends_prepare_and_its_commit_count_its_events(prop: str | None) -> None:
    """A prepared append works out what it adds to the levels it sees; levels installed after the
    prepare (a build finishing in between) get the append's events at its commit instead."""
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for seed in range(3):
        apply(store, "append", seed)
    typed = store.types["act"]
    typed.property_bitmaps("kind")
    rng = np.random.default_rng(11)
    rows = rng.integers(0, 50, 200)
    ts = NOW - rng.integers(0, 5 * DAY, 200)
    columns = {"kind": column_from_values("category", [["a", "b", "c"][int(i)] for i in rng.integers(0, 3, 200)])}
    plan = typed.plan_append(rows, ts, columns)
    assert plan is not None and prop not in plan.levels
    assert typed.levels(prop) is not None  # installed now (built by the caller here)
    typed.commit_append(plan)
    levels = typed.count_levels if prop is None else typed.prop_bitmaps[prop].levels
    assert levels.same_as(typed.build_levels(prop, typed.runs))


@pytest.mark.parametrize("op", [">=", ">", "<", "<=", "=", "!="])
def test_a_count_far_above_the_levels_cap_is_counted_in_bounded_memory(op: str) -> None:
    """``COUNT op n`` with n far above CAP (a fuzzed query found a list of n items built before the
    levels were asked): the events are counted, the memory stays that of the window."""
    import tracemalloc

    n = 10**15
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
        engine.upsert_profiles([{"id": "a"}, {"id": "b"}])
        engine.track_events([{"id": "a", "event": "page_view", "ts": 1_700_000_000_000 - i} for i in range(CAP + 3)])
        tracemalloc.start()
        try:
            got = engine.ids(f"DID(page_view, COUNT {op} {n}, WITHIN 30d)", now=1_700_000_000_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    holds_at = {">=": False, ">": False, "<": True, "<=": True, "=": False, "!=": True}[op]
    assert got == (["a", "b"] if holds_at else [])
    assert peak < 16 << 20
