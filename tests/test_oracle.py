"""The engine against a naive row-by-row evaluator (tests/oracle.py): exact counts and ids.

Random datasets (partial updates, null clears, consents, out-of-order events on window edges)
and random query texts come from tests/strategies.py; hand-written cases pin the trickiest
semantics of the contract with their exact expected ids.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine import Engine, Schema
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA

try:
    from oracle import NaiveStore
    from strategies import DAY, MIDNIGHT, NOW, Dataset, clocks, datasets, did_queries, iso, queries
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore
    from tests.strategies import DAY, MIDNIGHT, NOW, Dataset, clocks, datasets, did_queries, iso, queries

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
QUERIES_PER_DATASET = 8


def open_engine(shards: int) -> Engine:
    """An empty engine over CONTRACT_SCHEMA (more than one shard: worker processes)."""
    return Engine(SCHEMA, shards=shards)


def load(ds: Dataset, engine: Engine, oracle: NaiveStore) -> None:
    """Apply every batch of ``ds``, in order, to both the engine and the oracle."""
    for kind, records in ds.batches:
        if kind == "profiles":
            assert engine.upsert_profiles(records) == len(records)
            oracle.upsert(records)
        else:
            assert engine.track_events(records) == len(records)
            oracle.track(records)


def assert_same(engine: Engine, oracle: NaiveStore, text: str, now: int = NOW) -> list[str]:
    """The engine's count and sorted ids for ``text`` equal the oracle's; returns the ids."""
    expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
    assert engine.ids(text, now=now) == expected, f"{text} (now={now})"
    assert engine.count(text, now=now) == len(expected), f"{text} (now={now})"
    return expected


def check_dataset(ds: Dataset, cases: list[tuple[str, int]], shards: int) -> None:
    """Load ``ds`` and compare every (query, clock) in ``cases``."""
    note(ds.describe())
    oracle = NaiveStore(CONTRACT_SCHEMA)
    with open_engine(shards) as engine:
        load(ds, engine, oracle)
        assert engine.count("ALL", now=NOW) == len(oracle.attrs)
        for text, now in cases:
            assert_same(engine, oracle, text, now)


CASES = st.lists(st.tuples(queries(), clocks()), min_size=QUERIES_PER_DATASET, max_size=QUERIES_PER_DATASET)
SETTINGS = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(SETTINGS, max_examples=60)
@given(ds=datasets(), cases=CASES)
def test_random_queries_match_oracle(ds: Dataset, cases: list[tuple[str, int]]) -> None:
    """60 datasets x 8 queries on one shard."""
    check_dataset(ds, cases, shards=1)


@settings(SETTINGS, max_examples=40)
@given(ds=datasets(max_events=600), cases=st.lists(st.tuples(did_queries(), clocks()), min_size=10, max_size=10))
def test_random_did_queries_match_oracle(ds: Dataset, cases: list[tuple[str, int]]) -> None:
    """40 event-heavy datasets x 10 DID-centred queries on one shard."""
    check_dataset(ds, cases, shards=1)


@settings(SETTINGS, max_examples=12)
@given(ds=datasets(min_ids=300, max_ids=700, max_events=1500, max_batches=8), cases=CASES)
def test_random_queries_match_oracle_large(ds: Dataset, cases: list[tuple[str, int]]) -> None:
    """Enough profiles for the range indexes to bin their values (and for > 63 tag labels)."""
    check_dataset(ds, cases, shards=1)


@pytest.mark.parametrize("shards", [2, pytest.param(3, marks=pytest.mark.slow)])
@settings(SETTINGS, max_examples=6)
@given(ds=datasets(max_events=300), cases=st.lists(st.tuples(queries(), clocks()), min_size=16, max_size=16))
def test_random_queries_match_oracle_sharded(shards: int, ds: Dataset, cases: list[tuple[str, int]]) -> None:
    """The same comparison over worker-process shards (few datasets: each starts its workers)."""
    check_dataset(ds, cases, shards=shards)


# -- hand-written cases: exact expected ids -----------------------------------------------------


@pytest.fixture(params=[1, 2])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, NaiveStore]]:
    """An empty engine (1 or 2 shards) and an empty oracle."""
    with open_engine(request.param) as engine:
        yield engine, NaiveStore(CONTRACT_SCHEMA)


def feed(pair: tuple[Engine, NaiveStore], profiles: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Load the same records into both."""
    engine, oracle = pair
    load(Dataset([], [("profiles", profiles), ("events", events)]), engine, oracle)


def expect(pair: tuple[Engine, NaiveStore], text: str, ids: list[str], now: int = NOW) -> None:
    """Both the engine and the oracle answer exactly ``ids``."""
    assert assert_same(pair[0], pair[1], text, now) == ids


def test_window_edges_to_the_millisecond(pair: tuple[Engine, NaiveStore]) -> None:
    """WITHIN 7d is now - 7d < ts <= now; events after now never count."""
    week = 7 * DAY
    ts = {"a": NOW - week - 1, "b": NOW - week, "c": NOW - week + 1, "d": NOW, "e": NOW + 1}
    feed(pair, [], [{"id": k, "event": "page_view", "ts": v} for k, v in ts.items()])
    expect(pair, "DID(page_view, WITHIN 7d)", ["c", "d"])
    expect(pair, "DID(page_view, WITHIN 1w)", ["c", "d"])
    expect(pair, "DID(page_view)", ["a", "b", "c", "d"])
    expect(pair, "NOT DID(page_view)", ["e"])
    expect(pair, f"DID(page_view, SINCE {NOW - week})", ["b", "c", "d"])
    expect(pair, f"DID(page_view, BEFORE {NOW - week})", ["a"])
    expect(pair, "DID(page_view, SINCE NOW - 7d, BEFORE NOW)", ["b", "c"])
    expect(pair, "DID(page_view, WITHIN 7d)", ["b", "c"], now=NOW - 1)
    expect(pair, "DID(page_view, WITHIN 0s)", [])


def test_utc_midnight_edges(pair: tuple[Engine, NaiveStore]) -> None:
    """SINCE/BEFORE a midnight given as ISO text with Z or an offset, to the ms."""
    feed(pair, [], [
        {"id": "before", "event": "purchase", "ts": iso(MIDNIGHT - 1)},
        {"id": "at", "event": "purchase", "ts": iso(MIDNIGHT, 120)},
        {"id": "after", "event": "purchase", "ts": MIDNIGHT + 1},
    ])
    expect(pair, f"DID(purchase, SINCE '{iso(MIDNIGHT)}')", ["after", "at"])
    expect(pair, f"DID(purchase, BEFORE '{iso(MIDNIGHT, -300)}')", ["before"])
    expect(pair, f"DID(purchase, SINCE '{iso(MIDNIGHT + 1)}', COUNT = 0)", ["at", "before"])


def test_window_starting_on_midnight_ending_mid_day(pair: tuple[Engine, NaiveStore]) -> None:
    """A window [midnight, t] inside one UTC day selects the events inside it."""
    feed(pair, [], [
        {"id": "prev_day", "event": "page_view", "ts": MIDNIGHT - 1},
        {"id": "at", "event": "page_view", "ts": MIDNIGHT},
        {"id": "noon", "event": "page_view", "ts": MIDNIGHT + 12 * 3_600_000 - 1},
    ])
    noon = MIDNIGHT + 12 * 3_600_000 - 1
    expect(pair, "DID(page_view, WITHIN 12h)", ["at", "noon"], now=noon)
    expect(pair, f"DID(page_view, SINCE {MIDNIGHT})", ["at", "noon"], now=noon)
    expect(pair, f"DID(page_view, SINCE {MIDNIGHT}, BEFORE {noon})", ["at"])
    expect(pair, f"NOT DID(page_view, SINCE {MIDNIGHT})", ["noon", "prev_day"], now=MIDNIGHT + 5)


def test_after_last(pair: tuple[Engine, NaiveStore]) -> None:
    """AFTER LAST f: strictly after the latest f with ts <= now; no such f counts zero."""
    feed(pair, [{"id": "quiet"}], [
        {"id": "bought_after", "event": "cart_abandoned", "ts": NOW - 3 * DAY},
        {"id": "bought_after", "event": "purchase", "ts": NOW - 2 * DAY},
        {"id": "same_ms", "event": "cart_abandoned", "ts": NOW - DAY},
        {"id": "same_ms", "event": "purchase", "ts": NOW - DAY},
        {"id": "no_cart", "event": "purchase", "ts": NOW - DAY},
        {"id": "future_cart", "event": "purchase", "ts": NOW - DAY},
        {"id": "future_cart", "event": "cart_abandoned", "ts": NOW - 2 * DAY},
        {"id": "future_cart", "event": "cart_abandoned", "ts": NOW + DAY},
    ])
    expect(pair, "DID(purchase, AFTER LAST cart_abandoned)", ["bought_after", "future_cart"])
    expect(pair, "DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)", ["no_cart", "quiet", "same_ms"])
    expect(pair, "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)", ["same_ms"])
    expect(pair, "DID(purchase, AFTER LAST purchase, COUNT >= 1)", [])


def test_count_conditions_that_hold_at_zero(pair: tuple[Engine, NaiveStore]) -> None:
    """COUNT = 0 / COUNT < n include profiles with no events at all."""
    feed(pair, [{"id": "none", "age": 3}], [
        {"id": "one", "event": "page_view", "ts": NOW - 1},
        {"id": "two", "event": "page_view", "ts": NOW - 2},
        {"id": "two", "event": "page_view", "ts": NOW - 2},
        {"id": "other", "event": "purchase", "ts": NOW - 2},
    ])
    expect(pair, "DID(page_view, COUNT = 0)", ["none", "other"])
    expect(pair, "DID(page_view, COUNT < 2)", ["none", "one", "other"])
    expect(pair, "DID(page_view, COUNT >= 2)", ["two"])
    expect(pair, "DID(page_view, COUNT != 1)", ["none", "other", "two"])
    expect(pair, "DID(page_view, COUNT <= 0, WITHIN 1s)", ["none", "other"])


def test_nulls_partial_updates_and_not(pair: tuple[Engine, NaiveStore]) -> None:
    """Null clears, absent stays; comparisons on null are false; NOT includes nulls."""
    feed(pair, [
        {"id": "a", "age": 30, "country": "FR", "interests": ["x"], "consent": {"email": True}},
        {"id": "b", "age": 40, "interests": []},
        {"id": "c", "age": 50, "country": "BE"},
        {"id": "a", "country": None, "consent": {"sms": True}},
        {"id": "c", "age": None},
    ], [])
    expect(pair, "age = 30", ["a"])
    expect(pair, "country != 'FR'", ["c"])
    expect(pair, "NOT country = 'BE'", ["a", "b"])
    expect(pair, "country NOT IN ('FR')", ["c"])
    expect(pair, "age NOT BETWEEN 35 AND 45", ["a"])
    expect(pair, "NOT age BETWEEN 35 AND 45", ["a", "c"])
    expect(pair, "age < 30.5 OR age >= 40.0", ["a", "b"])
    expect(pair, "interests IS NULL", ["c"])
    expect(pair, "NOT interests HAS ANY ('x', 'y')", ["b", "c"])
    expect(pair, "CONSENTED(email) AND CONSENTED(sms)", ["a"])
    expect(pair, "NOT CONSENTED(push)", ["a", "b", "c"])


def test_where_not_includes_null_properties(pair: tuple[Engine, NaiveStore]) -> None:
    """Inside WHERE, NOT is the complement within the event type's events."""
    feed(pair, [], [
        {"id": "big", "event": "cart_abandoned", "ts": NOW - 1, "cart_value": 100.0},
        {"id": "small", "event": "cart_abandoned", "ts": NOW - 1, "cart_value": 5.0},
        {"id": "null", "event": "cart_abandoned", "ts": NOW - 1, "cart_value": None},
        {"id": "absent", "event": "cart_abandoned", "ts": NOW - 1},
    ])
    expect(pair, "DID(cart_abandoned WHERE cart_value > 50)", ["big"])
    expect(pair, "DID(cart_abandoned WHERE cart_value <= 50)", ["small"])
    expect(pair, "DID(cart_abandoned WHERE NOT cart_value > 50)", ["absent", "null", "small"])
    expect(pair, "DID(cart_abandoned WHERE cart_value != 5)", ["big"])
    expect(pair, "DID(cart_abandoned WHERE cart_value IS NULL)", ["absent", "null"])


def test_sample_matches_contract_formula(pair: tuple[Engine, NaiveStore]) -> None:
    """SAMPLE membership is the contract's blake2b + splitmix64 rule, per id."""
    feed(pair, [{"id": f"p{i}"} for i in range(300)], [])
    for text in ("SAMPLE(10)", "SAMPLE(50, 7)", "SAMPLE(12.345, 18446744073709551615)", "SAMPLE(0)"):
        expect(pair, text, sorted(pair[1].evaluate(bind(parse(text), SCHEMA), NOW)))
    assert pair[0].count("SAMPLE(100)", now=NOW) == 300


# -- bulk loading equals record loading ---------------------------------------------------------

BULK_QUERIES = [
    "ALL",
    "country = 'FR'",
    "country IN ('FR', 'DE', 'US') AND age BETWEEN 25 AND 40",
    "NOT country IS NULL AND age > 30.5",
    "cart_value >= 100 OR vip = TRUE",
    "interests HAS 'tech'",
    "interests HAS ALL ('shoes', 'tech')",
    "NOT interests HAS ANY ('books', 'music')",
    "signup_at > NOW - 365d",
    "CONSENTED(email) AND NOT CONSENTED(sms)",
    "SAMPLE(25, 3)",
    "DID(page_view, WITHIN 7d)",
    "DID(page_view, COUNT >= 3, WITHIN 30d)",
    "DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2)",
    "DID(purchase WHERE category IN ('shoes', 'books'))",
    "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    "DID(add_to_cart, SINCE NOW - 14d, BEFORE NOW - 1d)",
    "DID(purchase, COUNT = 0) AND DID(page_view, WITHIN 1d)",
    "NOT DID(purchase WHERE NOT amount < 20)",
]


def test_bulk_loading_equals_record_loading() -> None:
    """load_profiles/load_events give the same answers as upserting the equivalent records."""
    pytest.importorskip("loaders.writer")
    from loaders.generator import generate
    from loaders.writer import dataset_records

    ds = generate(profiles=2000, events=10000, seed=1, now_ms=NOW)
    schema = Schema.from_dict(ds.schema)
    oracle = NaiveStore(ds.schema)
    with Engine(schema, shards=1) as bulk, Engine(schema, shards=1) as records:
        bulk.load_profiles(ds.profiles)
        for batch in ds.events:
            bulk.load_events(batch)
        profiles, events = dataset_records(ds)
        profiles, events = list(profiles), list(events)
        records.upsert_profiles(profiles)
        records.track_events(events)
        oracle.upsert(profiles)
        oracle.track(events)
        for text in BULK_QUERIES:
            expected = sorted(oracle.evaluate(bind(parse(text), schema), NOW))
            assert records.ids(text, now=NOW) == expected, text
            assert bulk.ids(text, now=NOW) == expected, text
            assert bulk.count(text, now=NOW) == len(expected), text
