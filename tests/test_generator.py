"""The synthetic data generator: shapes, determinism, null rates, funnels and the time window."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from engine.columns import CategoryColumn, TagsColumn, ValueColumn
from engine.schema import Schema
from loaders.generator import DAY_MS, DEMO_SCHEMA, EVENT_WINDOW_DAYS, generate
from loaders.writer import dataset_records

NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z


@pytest.fixture(scope="module")
def ds():
    return generate(profiles=20_000, events=100_000, seed=7, now_ms=NOW)


def by_type(ds):
    return {batch.event: batch for batch in ds.events}


def test_demo_schema_adds_add_to_cart_to_the_contract_schema():
    schema = Schema.from_dict(DEMO_SCHEMA)
    assert schema.events["add_to_cart"].properties == {"category": "category", "cart_value": "float"}
    assert list(schema.events) == ["page_view", "cart_abandoned", "purchase", "add_to_cart"]
    assert list(schema.attributes) == ["country", "age", "cart_value", "vip", "interests", "signup_at"]


def test_shapes_and_exact_event_count(ds):
    assert len(ds.profiles) == 20_000
    assert ds.now_ms == NOW
    assert ds.schema == DEMO_SCHEMA
    assert [b.event for b in ds.events] == ["page_view", "add_to_cart", "cart_abandoned", "purchase"]
    assert sum(len(b) for b in ds.events) == 100_000
    for batch in ds.events:
        assert len(batch.ts) == len(batch.ids)
        assert batch.ts.dtype == np.int64
        for col in batch.props.values():
            rows = len(col.codes) if isinstance(col, CategoryColumn) else len(col.values)
            assert rows == len(batch)
    types = by_type(ds)
    assert len(types["cart_abandoned"]) + len(types["purchase"]) == len(types["add_to_cart"]) == 10_000
    assert set(types["add_to_cart"].props) == {"category", "cart_value"}
    assert set(types["purchase"].props) == {"amount", "category"}


@pytest.mark.parametrize("profiles,events", [(1, 0), (1, 1), (3, 7), (5, 10), (50, 1234), (0, 0)])
def test_exact_counts_for_small_sizes(profiles, events):
    small = generate(profiles, events, seed=1, now_ms=NOW)
    assert len(small.profiles) == profiles
    assert sum(len(b) for b in small.events) == events


def test_events_need_profiles():
    with pytest.raises(ValueError):
        generate(0, 10)


def test_ids_are_stable_unique_and_cover_event_owners(ds):
    assert ds.profiles.ids[:3] == ["u00000000", "u00000001", "u00000002"]
    assert len(set(ds.profiles.ids)) == len(ds.profiles)
    known = set(ds.profiles.ids)
    assert all(set(batch.ids) <= known for batch in ds.events)


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(500, 3000, seed=3, now_ms=NOW), generate(500, 3000, seed=3, now_ms=NOW)
    c = generate(500, 3000, seed=4, now_ms=NOW)
    records = lambda d: [list(part) for part in dataset_records(d)]  # noqa: E731
    assert records(a) == records(b)
    assert records(a) != records(c)


def null_fraction(col) -> float:
    if isinstance(col, CategoryColumn):
        return float(np.mean(col.codes < 0))
    return float(np.mean(~col.valid))


@pytest.mark.parametrize(
    "name,low,high",
    [("country", 0.003, 0.02), ("age", 0.02, 0.04), ("cart_value", 0.04, 0.06), ("vip", 0.012, 0.028),
     ("interests", 0.04, 0.06), ("signup_at", 0.005, 0.015)],
)
def test_profile_null_fractions(ds, name, low, high):
    assert low <= null_fraction(ds.profiles.columns[name]) <= high


def test_profile_value_ranges(ds):
    cols = ds.profiles.columns
    age = cols["age"]
    assert age.values[age.valid].min() >= 18 and age.values[age.valid].max() <= 90
    assert 34 <= np.median(age.values[age.valid]) <= 42
    vip = cols["vip"]
    assert 0.03 <= vip.values[vip.valid].mean() <= 0.07
    signup = cols["signup_at"]
    assert signup.values[signup.valid].max() <= NOW
    assert signup.values[signup.valid].min() > NOW - 3 * 366 * DAY_MS
    country = cols["country"]
    shares = np.bincount(country.codes[country.codes >= 0], minlength=len(country.labels)) / len(country.codes)
    assert len(country.labels) == 30 and country.labels[:4] == ["FR", "DE", "GB", "US"]
    assert shares[0] > 0.1 and shares[0] > shares[10] * 5  # Zipf head
    rates = {purpose: flags.mean() for purpose, flags in ds.profiles.consents.items()}
    assert list(rates) == ["email", "sms", "push", "ads"]
    assert rates["email"] > rates["push"] > rates["ads"] > rates["sms"]


def test_interest_tags(ds):
    tags = ds.profiles.columns["interests"]
    assert isinstance(tags, TagsColumn) and len(tags.labels) == 20
    counts = np.diff(tags.offsets)
    assert counts.max() <= 4
    assert np.all(counts[~tags.valid] == 0)
    empty_lists = np.mean(tags.valid & (counts == 0))
    assert 0.1 <= empty_lists <= 0.2
    for i in range(200):  # no repeated tag within a profile
        row = tags.values[tags.offsets[i] : tags.offsets[i + 1]]
        assert len(set(row.tolist())) == len(row)


def test_event_times_in_window_and_more_recent_activity(ds):
    start = NOW - EVENT_WINDOW_DAYS * DAY_MS
    for batch in ds.events:
        assert batch.ts.max() <= NOW
        assert batch.ts.min() > start
    views = by_type(ds)["page_view"].ts
    assert np.sum(views > NOW - 30 * DAY_MS) > np.sum(views <= start + 30 * DAY_MS)
    assert not np.all(np.diff(views) >= 0)  # not sorted by time


def test_property_nulls_are_a_few_percent(ds):
    for batch in ds.events:
        for name, col in batch.props.items():
            assert 0.005 <= null_fraction(col) <= 0.06, (batch.event, name)
    amounts = by_type(ds)["purchase"].props["amount"]
    assert amounts.values[amounts.valid].min() > 0


def test_activity_is_skewed(ds):
    events_per_profile = np.zeros(len(ds.profiles), dtype=np.int64)
    index = {pid: i for i, pid in enumerate(ds.profiles.ids)}
    for batch in ds.events:
        np.add.at(events_per_profile, [index[pid] for pid in batch.ids], 1)
    assert 0.33 <= np.mean(events_per_profile == 0) <= 0.7  # a third never act, more by chance
    top = np.sort(events_per_profile)[::-1]
    assert top[: len(top) // 100].sum() > 0.1 * top.sum()  # the top 1% make over 10% of the events


def test_every_outcome_follows_its_own_cart(ds):
    """Each cart_abandoned/purchase is matched to an earlier add_to_cart of the same profile."""
    types = by_type(ds)
    timeline: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for pid, ts in zip(types["add_to_cart"].ids, types["add_to_cart"].ts.tolist()):
        timeline[pid].append((ts, 1))  # at equal times an outcome sorts first: strictly later needed
    for name in ("cart_abandoned", "purchase"):
        for pid, ts in zip(types[name].ids, types[name].ts.tolist()):
            timeline[pid].append((ts, -1))
    for pid, steps in timeline.items():
        open_carts = 0
        for _, step in sorted(steps):
            open_carts += step
            assert open_carts >= 0, pid
        assert open_carts == 0, pid


def test_outcomes_carry_the_cart_category_distribution(ds):
    types = by_type(ds)
    carts = types["add_to_cart"].props["category"]
    purchases = types["purchase"].props["category"]
    assert purchases.labels == carts.labels
    top = np.bincount(carts.codes[carts.codes >= 0]).argmax()
    assert np.bincount(purchases.codes[purchases.codes >= 0]).argmax() == top


def test_records_validate_against_the_schema(ds):
    schema = Schema.from_dict(ds.schema)
    profiles, events = dataset_records(generate(300, 2000, seed=2, now_ms=NOW))
    for n, record in enumerate(profiles):
        schema.validate_profile(record, n)
    for n, record in enumerate(events):
        schema.validate_event(record, n)


def test_value_columns_have_the_documented_dtypes(ds):
    cols = ds.profiles.columns
    assert isinstance(cols["age"], ValueColumn) and cols["age"].values.dtype == np.int64
    assert cols["cart_value"].values.dtype == np.float64
    assert cols["vip"].values.dtype == np.bool_
    assert cols["signup_at"].values.dtype == np.int64
    assert cols["country"].codes.dtype == np.int32
