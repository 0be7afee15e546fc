"""Engine.breakdown and Engine.overlap against the naive oracle (tests/oracle.py), at 1-3 shards,
and their argument errors with their exact messages."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine import Engine, QueryError, Schema
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA

try:
    from oracle import NaiveStore
    from strategies import AGE_LITERALS, EDGES, FLOAT_LITERALS, NOW, Dataset, clocks, datasets, queries
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore
    from tests.strategies import AGE_LITERALS, EDGES, FLOAT_LITERALS, NOW, Dataset, clocks, datasets, queries

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
KINDS = {name: spec["type"] for name, spec in CONTRACT_SCHEMA["attributes"].items()}
SETTINGS = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Edge pools per binned attribute (values present in the data and around them).
EDGE_POOLS = {"age": sorted({*AGE_LITERALS, -1000, 0, 250, 1000}),
              "cart_value": sorted({float(v) for v in FLOAT_LITERALS} | {-50.0, 500.0}),
              "signup_at": sorted(set(EDGES))}


def load(ds: Dataset, engine: Engine, oracle: NaiveStore) -> None:
    for kind, records in ds.batches:
        if kind == "profiles":
            engine.upsert_profiles(records)
            oracle.upsert(records)
        else:
            engine.track_events(records)
            oracle.track(records)


def naive_breakdown(oracle: NaiveStore, members: set[str], by: str, bins: list | None) -> dict[Any, int]:
    """The breakdown straight from the contract, one profile at a time."""
    out: dict[Any, int] = {}
    for pid in members:
        value = oracle.attrs[pid].get(by)
        if value is None:
            keys: list[Any] = [None]
        elif KINDS[by] == "tags":
            keys = list(value)
        elif bins is not None:
            keys = [(lo, hi) for lo, hi in zip(bins, bins[1:]) if lo <= value < hi]
        else:
            keys = [value]
        for key in keys:
            out[key] = out.get(key, 0) + 1
    return out


def bins_for(by: str) -> st.SearchStrategy[list | None]:
    if by not in EDGE_POOLS:
        return st.none()
    return st.lists(st.sampled_from(EDGE_POOLS[by]), min_size=2, max_size=6, unique=True).map(sorted).filter(
        lambda edges: all(a < b for a, b in zip(edges, edges[1:])))


CASE = st.tuples(queries(), clocks(), st.sampled_from(sorted(KINDS))).flatmap(
    lambda case: st.tuples(st.just(case[0]), st.just(case[1]), st.just(case[2]), bins_for(case[2])))


def check(ds: Dataset, cases: list[tuple[str, int, str, list | None]], overlaps: list[list[str]], shards: int) -> None:
    note(ds.describe())
    oracle = NaiveStore(CONTRACT_SCHEMA)
    with Engine(SCHEMA, shards=shards) as engine:
        load(ds, engine, oracle)
        for text, now, by, bins in cases:
            members = oracle.evaluate(bind(parse(text), SCHEMA), now)
            got = engine.breakdown(text, by, now=now, bins=bins)
            assert got == naive_breakdown(oracle, members, by, bins), (text, by, bins, now)
            assert 0 not in got.values()
        for texts in overlaps:
            answers = [oracle.evaluate(bind(parse(t), SCHEMA), NOW) for t in texts]
            assert engine.overlap(texts, now=NOW) == [[len(a & b) for b in answers] for a in answers], texts


@settings(SETTINGS, max_examples=10)
@given(ds=datasets(), cases=st.lists(CASE, min_size=8, max_size=8),
       overlaps=st.lists(st.lists(queries(3), min_size=1, max_size=4), min_size=2, max_size=2))
def test_breakdown_and_overlap_match_the_oracle(ds: Dataset, cases: list, overlaps: list[list[str]]) -> None:
    check(ds, cases, overlaps, shards=1)


@settings(SETTINGS, max_examples=3)
@given(ds=datasets(min_ids=300, max_ids=600, max_events=800, max_batches=6), cases=st.lists(CASE, min_size=8, max_size=8),
       overlaps=st.lists(st.lists(queries(3), min_size=2, max_size=5), min_size=1, max_size=1))
def test_breakdown_and_overlap_match_the_oracle_large(ds: Dataset, cases: list, overlaps: list[list[str]]) -> None:
    """Enough profiles for the range indexes to bin their values (bins then straddle index bins)."""
    check(ds, cases, overlaps, shards=1)


@pytest.mark.parametrize("shards", [2, pytest.param(3, marks=pytest.mark.slow)])
@settings(SETTINGS, max_examples=1)
@given(ds=datasets(max_events=300), cases=st.lists(CASE, min_size=12, max_size=12),
       overlaps=st.lists(st.lists(queries(3), min_size=2, max_size=4), min_size=2, max_size=2))
def test_breakdown_and_overlap_match_the_oracle_sharded(shards: int, ds: Dataset, cases: list,
                                                        overlaps: list[list[str]]) -> None:
    check(ds, cases, overlaps, shards=shards)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 2, 3])
@settings(SETTINGS, max_examples=20)
@given(ds=datasets(max_events=600), cases=st.lists(CASE, min_size=16, max_size=16),
       overlaps=st.lists(st.lists(queries(3), min_size=2, max_size=6), min_size=2, max_size=2))
def test_breakdown_and_overlap_match_the_oracle_many(shards: int, ds: Dataset, cases: list,
                                                     overlaps: list[list[str]]) -> None:
    """More datasets (slow)."""
    check(ds, cases, overlaps, shards=shards)


# -- hand-written cases ---------------------------------------------------------------------------

PROFILES = [
    {"id": "a", "country": "FR", "age": 17, "vip": True, "interests": ["shoes", "tech"], "cart_value": 10.0,
     "signup_at": NOW - 1000},
    {"id": "b", "country": "FR", "age": 18, "vip": False, "interests": [], "cart_value": 19.99},
    {"id": "c", "country": "BE", "age": 30, "interests": ["shoes"], "signup_at": NOW},
    {"id": "d", "age": 65},
    {"id": "e"},
]


@pytest.fixture(scope="module", params=[1, 2])
def engine(request: pytest.FixtureRequest):
    with Engine(SCHEMA, shards=request.param) as eng:
        eng.upsert_profiles(PROFILES)
        yield eng


def test_breakdown_keys_and_order(engine: Engine) -> None:
    assert list(engine.breakdown("ALL", "country", now=NOW).items()) == [("FR", 2), ("BE", 1), (None, 2)]
    assert engine.breakdown("ALL", "vip", now=NOW) == {True: 1, False: 1, None: 3}
    # a profile counts once under each tag; an empty list under no key
    assert list(engine.breakdown("ALL", "interests", now=NOW).items()) == [("shoes", 2), ("tech", 1), (None, 2)]
    # lo <= v < hi; values outside every bin are not counted; zero-count bins left out
    assert list(engine.breakdown("ALL", "age", now=NOW, bins=[0, 18, 30, 40, 50]).items()) == [
        ((0, 18), 1), ((18, 30), 1), ((30, 40), 1), (None, 1)]
    assert engine.breakdown("ALL", "cart_value", now=NOW, bins=[0, 10, 19.99, 20]) == {
        (10, 19.99): 1, (19.99, 20): 1, None: 3}
    assert engine.breakdown("ALL", "signup_at", now=NOW, bins=[NOW - 1000, NOW]) == {(NOW - 1000, NOW): 1, None: 3}
    assert engine.breakdown("country = 'XX'", "country", now=NOW) == {}
    assert engine.breakdown("ALL", "age", now=NOW, bins=np.array([17, 18, 65])) == {(17, 18): 1, (18, 65): 2, None: 1}


def test_overlap_matrix(engine: Engine) -> None:
    assert engine.overlap(["country = 'FR'", "interests HAS 'shoes'", "ALL"], now=NOW) == [
        [2, 1, 2], [1, 2, 2], [2, 2, 5]]
    assert engine.overlap([], now=NOW) == []
    assert engine.overlap(["age >= 18", "age >= 18"], now=NOW) == [[3, 3], [3, 3]]


def test_overlap_of_saved_segments(engine: Engine) -> None:
    engine.create_segment("fr", "country = 'FR'")
    try:
        assert engine.overlap(["SEGMENT('fr')", "vip = TRUE"], now=NOW) == [[2, 1], [1, 1]]
    finally:
        engine.delete_segment("fr")


@pytest.mark.parametrize(("by", "bins", "message"), [
    ("nope", None, "argument 'by': unknown attribute 'nope'"),
    ("country", [0, 1], "argument 'bins': only int, float and timestamp attributes take bins, and 'country' is a "
                        "category attribute"),
    ("interests", [], "argument 'bins': only int, float and timestamp attributes take bins, and 'interests' is a "
                      "tags attribute"),
    ("age", None, "argument 'bins': a breakdown by 'age' (an int attribute) needs bins: at least 2 strictly "
                  "increasing edges"),
    ("age", [18, 30, 30], "argument 'bins': edges must be strictly increasing, but edge 3 (30) is not above "
                          "edge 2 (30)"),
    ("cart_value", [5.5, 1], "argument 'bins': edges must be strictly increasing, but edge 2 (1) is not above "
                             "edge 1 (5.5)"),
    ("signup_at", [0, "2026-01-01"], "argument 'bins': edge 2 is not a finite number: '2026-01-01'"),
    ("age", [0, float("inf")], "argument 'bins': edge 2 is not a finite number: inf"),
    ("age", [True, 2], "argument 'bins': edge 1 is not a finite number: True"),
    ("age", [0, 2**63], "argument 'bins': edge 2 is outside the 64-bit integer range: 9223372036854775808"),
    ("age", [1], "argument 'bins': give at least 2 edges (a bin is [lo, hi) between consecutive edges), not 1"),
])
def test_breakdown_argument_errors(engine: Engine, by: str, bins: Any, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        engine.breakdown("ALL", by, now=NOW, bins=bins)
    assert str(caught.value) == message


def test_query_errors_name_the_query(engine: Engine) -> None:
    with pytest.raises(QueryError) as caught:
        engine.breakdown("age >", "country", now=NOW)
    assert str(caught.value) == "unexpected end of query at column 6"
    with pytest.raises(QueryError) as caught:
        engine.overlap(["ALL", "age = 'x'"], now=NOW)
    assert str(caught.value) == ("argument 'queries', query 1: type mismatch: attribute 'age' is int, "
                                 "got a string at column 7 near \"'x'\"")
