"""pytest-benchmark suite: a few attribute and behavioural counts, bulk load and upserts, at small scale.

Run with ``python -m pytest benchmarks --benchmark-enable`` (the default ``pytest`` run only
collects tests/ and disables benchmarks). The data (200K profiles, 1M events) is generated once
per module; every benchmarked count is also checked against the NumPy baseline.
"""
from __future__ import annotations

import numpy as np
import pytest

from baselines import NumpyBaseline
from engine import Engine, Schema
from loaders.generator import COUNTRIES, INTERESTS, generate
from queries import NOW_MS, all_queries

PROFILES = 200_000
EVENTS = 1_000_000
QUERIES = {q.name: q for q in all_queries(NOW_MS)}
ATTR_QUERIES = ["fr_email", "contract_attrs", "six_predicates", "or_of_ands", "sample_email_young"]
EVENT_QUERIES = ["viewed_7d", "abandoned_twice_7d", "abandoned_no_buy_since", "contract_example",
                 "seniors_few_views_14d"]


@pytest.fixture(scope="module")
def dataset():
    return generate(PROFILES, EVENTS, seed=7, now_ms=NOW_MS)


@pytest.fixture(scope="module")
def schema(dataset):
    return Schema.from_dict(dataset.schema)


def _load(eng: Engine, dataset) -> Engine:
    eng.load_profiles(dataset.profiles)
    for batch in dataset.events:
        eng.load_events(batch)
    return eng


@pytest.fixture(scope="module")
def engine(dataset, schema):
    eng = _load(Engine(schema, shards=1), dataset)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(dataset):
    return NumpyBaseline(dataset)


@pytest.mark.parametrize("name", ATTR_QUERIES)
def test_attribute_query(benchmark, engine, reference, name):
    query = QUERIES[name]
    benchmark.group = "attribute queries"
    count = benchmark(engine.count, query.seg, NOW_MS)
    assert count == int(query.scan(reference, NOW_MS).sum())


@pytest.mark.parametrize("name", EVENT_QUERIES)
def test_behavioural_query(benchmark, engine, reference, name):
    query = QUERIES[name]
    benchmark.group = "behavioural queries"
    count = benchmark(engine.count, query.seg, NOW_MS)
    assert count == int(query.scan(reference, NOW_MS).sum())


def test_ids_of_segment(benchmark, engine, reference):
    query = QUERIES["contract_attrs"]
    benchmark.group = "ids"
    ids = benchmark(engine.ids, query.seg, NOW_MS)
    assert len(ids) == int(query.scan(reference, NOW_MS).sum()) and ids == sorted(ids)


def test_bulk_load(benchmark, dataset, schema):
    """Load every profile and event of the dataset into a fresh engine."""
    benchmark.group = "writes"
    engines: list[Engine] = []

    def setup():
        while engines:
            engines.pop().close()
        engines.append(Engine(schema, shards=1))
        return (engines[-1], dataset), {}

    eng = benchmark.pedantic(_load, setup=setup, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info["profiles"] = len(dataset.profiles)
    benchmark.extra_info["events"] = sum(len(b) for b in dataset.events)
    assert eng.count("ALL", NOW_MS) == len(dataset.profiles)
    while engines:
        engines.pop().close()


def test_upsert_10k(benchmark, engine):
    """Upsert 10,000 profile records (90% existing ids, 10% new) through the record API."""
    benchmark.group = "writes"
    rng = np.random.default_rng(11)
    rounds = iter(range(10**6))

    def setup():
        r = next(rounds)
        existing = rng.integers(0, PROFILES, 9_000)
        ids = [f"u{i:08d}" for i in existing.tolist()] + [f"new{r}-{i}" for i in range(1_000)]
        ages = rng.integers(18, 90, len(ids)).tolist()
        countries = rng.integers(0, len(COUNTRIES), len(ids)).tolist()
        emails = (rng.random(len(ids)) < 0.6).tolist()
        records = [
            {"id": pid, "age": age, "country": COUNTRIES[c], "vip": age > 80,
             "interests": [INTERESTS[(age + k) % len(INTERESTS)] for k in range(age % 4)],
             "consent": {"email": email}}
            for pid, age, c, email in zip(ids, ages, countries, emails)
        ]
        return (records,), {}

    applied = benchmark.pedantic(engine.upsert_profiles, setup=setup, rounds=5, iterations=1)
    assert applied == 10_000
