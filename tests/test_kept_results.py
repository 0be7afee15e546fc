"""Results kept between queries (ranges, NOT BETWEEN complements, unions of value bitmaps, samples)
stay exact while writes change, clear and add values: every query is asked after every batch of
writes, so from the second batch on it is answered from kept bitmaps the writes had to update.
Compared with the naive evaluator (tests/oracle.py), exact ids and count.
"""
from __future__ import annotations

import random

from hypothesis import given, note, settings
from hypothesis import strategies as st

from engine import Engine

try:
    from strategies import NOW, Dataset, datasets, event_record, profile_record, queries
    from test_oracle import SCHEMA, SETTINGS, assert_same
    from oracle import NaiveStore
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore
    from tests.strategies import NOW, Dataset, datasets, event_record, profile_record, queries
    from tests.test_oracle import SCHEMA, SETTINGS, assert_same

from engine.schema import CONTRACT_SCHEMA

#: Queries that read every kind of kept result, asked after every batch.
FIXED = [
    "country IN ('FR', 'BE', 'DE')",
    "country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 AND CONSENTED(email)",
    "interests HAS ANY ('shoes', 'tech', 'books') AND vip = FALSE",
    "age NOT BETWEEN 20 AND 45",
    "age NOT BETWEEN 20 AND 45 AND NOT vip = TRUE AND CONSENTED(email)",
    "cart_value > 40 AND age >= 30 AND country IN ('FR', 'DE') AND CONSENTED(sms)",
    "cart_value NOT BETWEEN 10 AND 100.5 AND interests HAS ANY ('fashion', 'shoes')",
    "country < 'F' AND cart_value <= 120",
    "country BETWEEN 'BE' AND 'FR' AND signup_at > NOW - 365d",
    "SAMPLE(40, 7) AND CONSENTED(email) AND age < 35",
    "(country = 'NL' AND age >= 50) OR (country = 'SE' AND cart_value > 200) OR interests HAS ANY ('tech', 'music')",
]


def check_repeated(ds: Dataset, extra: list[str]) -> Engine:
    """Apply ``ds`` batch by batch; after each batch ask every query twice (count and ids)."""
    oracle = NaiveStore(CONTRACT_SCHEMA)
    with Engine(SCHEMA) as engine:
        for kind, records in ds.batches:
            if kind == "profiles":
                engine.upsert_profiles(records)
                oracle.upsert(records)
            else:
                engine.track_events(records)
                oracle.track(records)
            for text in FIXED + extra:
                for _ in range(2):
                    assert_same(engine, oracle, text, NOW)
        indexes = engine.shards.shards[0].profiles.indexes
        # the kept results were really used (and so updated by the later batches)
        assert indexes["country"].__dict__["_kept_unions"].kept
        assert indexes["interests"].__dict__["_kept_unions"].kept
        if len(indexes["age"].edges):  # binned (enough non-null ages): ranges are kept too
            assert any(len(key) == 5 for key in indexes["age"].__dict__.get("_range_cache", {}))
    return engine


@settings(SETTINGS, max_examples=8)
@given(ds=datasets(min_ids=400, max_ids=800, max_events=200, max_batches=6),
       extra=st.lists(queries(), min_size=4, max_size=4))
def test_kept_results_follow_writes(ds: Dataset, extra: list[str]) -> None:
    """8 datasets large enough for binned ranges, each query asked after every write batch."""
    note(ds.describe())
    check_repeated(ds, extra)


def test_kept_results_follow_writes_binned() -> None:
    """A fixed dataset of 1,500 profiles (every range attribute binned) rewritten in 5 batches."""
    rng = random.Random(11)
    ids = [f"p{i}" for i in range(1500)]
    ds = Dataset(ids)
    for batch in range(5):
        chosen = ids if batch == 0 else rng.sample(ids, 600)
        ds.batches.append(("profiles", [profile_record(rng, pid, 0.1, 0.95 if batch == 0 else 0.5, 0.2)
                                        for pid in chosen]))
        ds.batches.append(("events", [event_record(rng, rng.choice(ids), 0.1) for _ in range(50)]))
    engine = check_repeated(ds, [])
    indexes = engine.shards.shards[0].profiles.indexes
    assert len(indexes["age"].edges) and len(indexes["cart_value"].edges)
