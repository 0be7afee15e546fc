"""Engine.why: every node of the explanation is true iff the profile is in that node's answer, and the
deciding facts agree with the naive oracle (tests/oracle.py)."""
from __future__ import annotations

import random
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from engine import Engine, Schema
from engine.errors import ProfileNotFound, QueryError
from engine.query import bind, parse
from engine.query.ast import Did
from engine.schema import CONTRACT_SCHEMA

try:
    from oracle import CMP, NaiveStore, bucket, in_window, value_test
    from strategies import DAY, NOW, Dataset, behaviour_queries, clocks, datasets, queries
except ImportError:  # tests/ imported as a package
    from tests.oracle import CMP, NaiveStore, bucket, in_window, value_test
    from tests.strategies import DAY, NOW, Dataset, behaviour_queries, clocks, datasets, queries

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
KINDS = {name: spec["type"] for name, spec in CONTRACT_SCHEMA["attributes"].items()}
SETTINGS = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield tree
    for child in tree["children"]:
        yield from nodes(child)


def check_facts(node: dict[str, Any], oracle: NaiveStore, pid: str, now: int) -> None:
    """The facts of one node agree with the oracle's data and with the node's truth."""
    facts = node["facts"]
    if node["kind"] == "attribute":
        value = oracle.attrs[pid].get(facts["attribute"])
        expected = sorted(value) if isinstance(value, frozenset) else value
        assert facts["value"] == expected
    elif node["kind"] == "consent":
        assert facts["consent"] == oracle.consents[pid].get(facts["purpose"])
    elif node["kind"] in ("bucket", "sample"):
        assert facts["bucket"] == bucket(pid, facts["seed"])
    elif node["kind"] == "did":
        did = bind(parse(node["text"]), SCHEMA)
        assert isinstance(did, Did)
        counted = counted_events(oracle, did, pid, now)
        assert facts["count"] == len(counted)
        assert (facts["first_ts"], facts["last_ts"]) == ((min(counted), max(counted)) if counted else (None, None))
        if not did.aggregates:
            assert CMP[did.count_op](facts["count"], did.count_n) == node["value"]
    elif node["kind"] == "sequence":
        assert (facts["matched_ts"] is not None) == node["value"]
        if facts["matched_ts"] is not None:
            assert facts["matched_ts"] == sorted(set(facts["matched_ts"]))


def counted_events(oracle: NaiveStore, did: Did, pid: str, now: int) -> list[int]:
    """The times of the events the DID counts for ``pid`` (the oracle's own rules)."""
    seen = [e for e in oracle.events[pid] if e.ts <= now]
    lower = None
    if did.after_last is not None:
        prior = [e.ts for e in seen if e.event == did.after_last]
        if not prior:
            return []
        lower = max(prior)
    return sorted(e.ts for e in seen if e.event == did.event and in_window(did, e.ts, now)
                  and (did.where is None or value_test(did.where, e.props, now)) and (lower is None or e.ts > lower))


def check_why(ds: Dataset, cases: list[tuple[str, int]], shards: int, seed: int) -> None:
    note(ds.describe())
    oracle = NaiveStore(CONTRACT_SCHEMA)
    rng = random.Random(seed)
    with Engine(SCHEMA, shards=shards) as engine:
        for kind, records in ds.batches:
            if kind == "profiles":
                engine.upsert_profiles(records)
                oracle.upsert(records)
            else:
                engine.track_events(records)
                oracle.track(records)
        ids = sorted(oracle.attrs)
        for text, now in cases:
            answers: dict[str, set[str]] = {}
            root = oracle.evaluate(bind(parse(text), SCHEMA), now)
            for pid in rng.sample(ids, 4):
                result = engine.why(pid, text, now=now)
                assert (result["id"], result["now_ms"]) == (pid, now)
                assert result["tree"]["value"] == (pid in root), text
                for node in nodes(result["tree"]):
                    if node["text"] not in answers:
                        answers[node["text"]] = set(engine.ids(node["text"], now=now))
                    assert node["value"] == (pid in answers[node["text"]]), (pid, node["text"])
                    check_facts(node, oracle, pid, now)


@settings(SETTINGS, max_examples=8)
@given(ds=datasets(), cases=st.lists(st.tuples(queries(), clocks()), min_size=4, max_size=4), seed=st.integers(0, 99))
def test_why_agrees_with_count(ds: Dataset, cases: list[tuple[str, int]], seed: int) -> None:
    check_why(ds, cases, shards=1, seed=seed)


@settings(SETTINGS, max_examples=6)
@given(ds=datasets(max_events=600), cases=st.lists(st.tuples(behaviour_queries(), clocks()), min_size=4, max_size=4),
       seed=st.integers(0, 99))
def test_why_agrees_with_count_on_behaviour(ds: Dataset, cases: list[tuple[str, int]], seed: int) -> None:
    """Aggregates, sequences and buckets, with their deciding events."""
    check_why(ds, cases, shards=1, seed=seed)


@settings(SETTINGS, max_examples=1)
@given(ds=datasets(max_events=300), cases=st.lists(st.tuples(queries(), clocks()), min_size=5, max_size=5),
       seed=st.integers(0, 99))
def test_why_agrees_with_count_sharded(ds: Dataset, cases: list[tuple[str, int]], seed: int) -> None:
    check_why(ds, cases, shards=2, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 3])
@settings(SETTINGS, max_examples=25)
@given(ds=datasets(max_events=600), cases=st.lists(st.tuples(queries(), clocks()), min_size=6, max_size=6),
       seed=st.integers(0, 99))
def test_why_agrees_with_count_many(shards: int, ds: Dataset, cases: list[tuple[str, int]], seed: int) -> None:
    check_why(ds, cases, shards=shards, seed=seed)


# -- hand-written cases ---------------------------------------------------------------------------

EXAMPLE = ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
           "AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) "
           "AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)")


@pytest.fixture(scope="module", params=[1, 2])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    with Engine(SCHEMA, shards=request.param) as eng:
        eng.upsert_profiles([{"id": "u1", "country": "FR", "age": 31, "consent": {"email": True}},
                             {"id": "u2", "country": "DE", "age": 45}])
        eng.track_events([
            {"id": "u1", "event": "cart_abandoned", "ts": NOW - 2 * DAY, "cart_value": 120.5},
            {"id": "u1", "event": "cart_abandoned", "ts": NOW - DAY, "cart_value": 75.0},
            {"id": "u1", "event": "cart_abandoned", "ts": NOW - 3 * DAY, "cart_value": 20.0},
            {"id": "u1", "event": "purchase", "ts": NOW - 10 * DAY, "amount": 30.0},
            {"id": "u1", "event": "purchase", "ts": NOW - 9 * DAY, "amount": 12.5},
        ])
        eng.merge("old-u1", "u1")
        yield eng


def test_the_contract_example_explained(engine: Engine) -> None:
    result = engine.why("old-u1", EXAMPLE, now=NOW)  # an alias explains its canonical profile
    assert result["id"] == "u1"
    tree = result["tree"]
    assert (tree["kind"], tree["value"], tree["text"]) == ("and", True, (
        "CONSENTED(email) AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 1w) AND "
        "NOT DID(purchase, WITHIN 1w) AND age BETWEEN 25 AND 40 AND country IN ('BE', 'FR')"))
    children = [(c["text"], c["kind"], c["value"], c["facts"]) for c in tree["children"]]
    assert children == [
        ("country IN ('BE', 'FR')", "attribute", True, {"attribute": "country", "value": "FR"}),
        ("age BETWEEN 25 AND 40", "attribute", True, {"attribute": "age", "value": 31}),
        ("DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 1w)", "did", True,
         {"event": "cart_abandoned", "count": 2, "first_ts": NOW - 2 * DAY, "last_ts": NOW - DAY}),
        ("NOT DID(purchase, WITHIN 1w)", "not", True, {}),
        ("CONSENTED(email)", "consent", True, {"purpose": "email", "consent": True}),
    ]
    (inner,) = tree["children"][3]["children"]
    assert (inner["value"], inner["facts"]) == (False, {"event": "purchase", "count": 0, "first_ts": None,
                                                        "last_ts": None})


def test_aggregates_sequences_and_after_last(engine: Engine) -> None:
    query = ("DID(purchase, SUM(amount) > 40, AVG(amount) < 30, MIN(amount) = 12.5, MAX(amount) >= 30) "
             "OR SEQUENCE(purchase THEN cart_abandoned WHERE cart_value < 50 THEN cart_abandoned, SPAN 1w) "
             "OR DID(cart_abandoned, AFTER LAST purchase, COUNT = 3)")
    did, sequence, after = engine.why("u1", query, now=NOW)["tree"]["children"]
    assert (did["value"], did["facts"]) == (True, {"event": "purchase", "count": 2, "first_ts": NOW - 10 * DAY,
                                                   "last_ts": NOW - 9 * DAY, "SUM(amount)": 42.5,
                                                   "AVG(amount)": 21.25, "MIN(amount)": 12.5, "MAX(amount)": 30.0})
    assert (sequence["value"], sequence["facts"]) == (True, {"matched_ts": [NOW - 9 * DAY, NOW - 3 * DAY,
                                                                            NOW - 2 * DAY]})
    assert (after["value"], after["facts"]) == (True, {"event": "cart_abandoned", "after_ts": NOW - 9 * DAY,
                                                       "count": 3, "first_ts": NOW - 3 * DAY, "last_ts": NOW - DAY})
    tree = engine.why("u2", "SEQUENCE(purchase THEN cart_abandoned) OR DID(purchase, AVG(amount) > 1)", now=NOW)["tree"]
    assert [(c["value"], c["facts"]) for c in tree["children"]] == [
        (False, {"matched_ts": None}),
        (False, {"event": "purchase", "count": 0, "first_ts": None, "last_ts": None, "AVG(amount)": None})]


def test_without_events_the_tree_has_truths_only(engine: Engine) -> None:
    tree = engine.why("u1", "DID(purchase) AND BUCKET(7) < 10000 AND SAMPLE(50, 3) AND vip IS NULL",
                      now=NOW, events=False)["tree"]
    assert [(c["kind"], c["value"], c["facts"]) for c in tree["children"]] == [
        ("did", True, {}),
        ("bucket", True, {"seed": 7, "bucket": bucket("u1", 7)}),
        ("sample", bucket("u1", 3) < 5000, {"seed": 3, "bucket": bucket("u1", 3), "below": 5000}),
        ("attribute", True, {"attribute": "vip", "value": None}),
    ]


def test_segments_and_all(engine: Engine) -> None:
    engine.create_segment("fr", "country = 'FR'")
    try:
        tree = engine.why("u1", "SEGMENT('fr') OR ALL", now=NOW)["tree"]
        assert [(c["kind"], c["value"], c["facts"]) for c in tree["children"]] == [
            ("segment", True, {"segment": "fr"}), ("all", True, {})]
    finally:
        engine.delete_segment("fr")


def test_unknown_profile_and_bad_query(engine: Engine) -> None:
    with pytest.raises(ProfileNotFound) as caught:
        engine.why("nobody", "ALL", now=NOW)
    assert str(caught.value) == "unknown profile 'nobody'"
    with pytest.raises(QueryError) as caught:
        engine.why("u1", "age = 'x'", now=NOW)
    assert str(caught.value) == "type mismatch: attribute 'age' is int, got a string at column 7 near \"'x'\""
