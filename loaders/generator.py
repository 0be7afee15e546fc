"""Synthetic e-commerce data: profiles and event funnels as columnar batches, fully vectorised.

Profiles have Zipf-skewed countries, realistic ages, lognormal cart values, VIP flags, interest
tags, signup times and consents, each with a few percent nulls. Events cover the 90 days before
``now_ms`` (more activity recently and in the evening), are spread over profiles with a heavy
skew (a third of the profiles never act), and follow funnels: page views, some of which lead to an
``add_to_cart``, and every cart ends, later and for the same profile, in exactly one
``cart_abandoned`` or ``purchase`` carrying the cart's category and value.

>>> ds = generate(profiles=100, events=1000, seed=1, now_ms=1_800_000_000_000)
>>> len(ds.profiles), sum(len(batch) for batch in ds.events)
(100, 1000)
>>> [batch.event for batch in ds.events]
['page_view', 'add_to_cart', 'cart_abandoned', 'purchase']
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from engine.columns import CategoryColumn, EventBatch, ProfileBatch, TagsColumn, ValueColumn
from engine.schema import CONTRACT_SCHEMA

from . import planted
from .planted import PlantedGroup

#: The contract schema plus an ``add_to_cart`` event: the schema of every generated dataset.
DEMO_SCHEMA: dict = copy.deepcopy(CONTRACT_SCHEMA)
DEMO_SCHEMA["events"]["add_to_cart"] = {"properties": {"category": "category", "cart_value": "float"}}

COUNTRIES = [
    "FR", "DE", "GB", "US", "ES", "IT", "NL", "BE", "PL", "SE", "CH", "AT", "PT", "IE", "DK",
    "NO", "FI", "CZ", "GR", "RO", "HU", "CA", "AU", "BR", "MX", "JP", "IN", "ZA", "SG", "LU",
]
INTERESTS = [
    "shoes", "tech", "books", "travel", "fashion", "sports", "music", "gaming", "beauty", "home",
    "garden", "food", "fitness", "outdoors", "photography", "movies", "pets", "kids", "cars", "art",
]
CATEGORIES = [
    "electronics", "apparel", "shoes", "books", "home", "beauty", "sports", "toys", "grocery",
    "garden", "jewelry", "health", "automotive", "pet_supplies", "office",
]
#: Share of profiles granting each consent purpose.
CONSENT_RATES = {"email": 0.62, "sms": 0.18, "push": 0.35, "ads": 0.27}

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
EVENT_WINDOW_DAYS = 90
SIGNUP_WINDOW_MS = 3 * 365 * DAY_MS
CART_SHARE = 0.1  # add_to_cart events per event; as many outcomes again, page views the rest
PURCHASE_RATE = 0.3  # share of carts that end in a purchase (the others are abandoned)
# Relative activity per UTC hour of the day: quiet nights, an evening peak.
HOURLY_ACTIVITY = np.array(
    [2, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 9, 10, 9, 8, 8, 9, 10, 12, 14, 15, 13, 9, 5], dtype=np.float64
)


@dataclass
class Dataset:
    """A generated dataset: its schema (JSON form), clock, profiles and one event batch per type."""

    schema: dict
    now_ms: int
    profiles: ProfileBatch
    events: list[EventBatch]
    planted: list[str] = field(default_factory=list)  # the ids of the planted group (see loaders.planted)


def generate(profiles: int, events: int, seed: int = 0, now_ms: int | None = None,
             plant: PlantedGroup | None = None) -> Dataset:
    """Generate ``profiles`` profiles and exactly ``events`` events ending at ``now_ms``.

    ``now_ms`` defaults to the wall clock; the same seed and ``now_ms`` give the same dataset.
    ``plant``: also plant a hidden group (``loaders.planted``; it adds events, so the total exceeds
    ``events``); without it the dataset is unchanged.
    """
    if profiles < 0 or events < 0:
        raise ValueError("profiles and events must be >= 0")
    if events and not profiles:
        raise ValueError("events need at least one profile")
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    rng = np.random.default_rng(seed)
    batch, activity = _profiles(rng, profiles, now)
    dataset = Dataset(copy.deepcopy(DEMO_SCHEMA), now, batch, _events(rng, batch.ids, activity, events, now))
    if plant is not None:
        dataset.planted = planted.plant(dataset.profiles, dataset.events, plant, seed, now)
    return dataset


# -- sampling helpers -------------------------------------------------------------------------


def zipf_weights(k: int, exponent: float = 1.1) -> np.ndarray:
    """Normalised Zipf weights for ``k`` ranks (rank 1 heaviest)."""
    weights = 1.0 / np.arange(1, k + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def sample_codes(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """``n`` int32 codes drawn with probabilities ``weights``, quantised to a lookup table.

    The table has 2**16 slots (2**20 for more than 64 weights), so a draw costs one gather.
    """
    size = 1 << (16 if len(weights) <= 64 else 20)
    cdf = np.cumsum(weights / weights.sum())
    table = np.searchsorted(cdf, (np.arange(size) + 0.5) / size).astype(np.int32)
    np.minimum(table, len(weights) - 1, out=table)
    return table[rng.integers(0, size, n, dtype=np.uint32)]


def _nulls(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """A validity mask: True except for about ``rate`` of the rows."""
    return rng.random(n, dtype=np.float32) >= rate


def _lognormal_money(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """Positive amounts in cents precision, lognormally distributed around ``median``."""
    return np.round(rng.lognormal(np.log(median), sigma, n), 2)


def _category(codes: np.ndarray, valid: np.ndarray, labels: list[str]) -> CategoryColumn:
    return CategoryColumn(np.where(valid, codes, -1).astype(np.int32), list(labels))


def _values(values: np.ndarray, valid: np.ndarray) -> ValueColumn:
    return ValueColumn(np.where(valid, values, np.zeros((), values.dtype)), valid)


# -- profiles ---------------------------------------------------------------------------------


def make_ids(n: int) -> list[str]:
    """Stable, unique, sortable profile ids ``u00000000``, ``u00000001``, ..."""
    return [f"u{i:08d}" for i in range(n)]


def _profiles(rng: np.random.Generator, n: int, now: int) -> tuple[ProfileBatch, np.ndarray]:
    """The profile batch and each profile's relative activity (0 = never acts)."""
    country = sample_codes(rng, zipf_weights(len(COUNTRIES)), n)
    age = rng.normal(38.0, 13.0, n)
    age = np.where(age < 18.0, 36.0 - age, age)  # reflect the young tail instead of piling it on 18
    age = np.clip(np.rint(age), 18, 90).astype(np.int64)
    vip = rng.random(n, dtype=np.float32) < 0.05
    signup = now - (SIGNUP_WINDOW_MS * rng.random(n) ** 1.5).astype(np.int64)  # growth: recent heavier
    columns = {
        "country": _category(country, _nulls(rng, n, 0.01), COUNTRIES),
        "age": _values(age, _nulls(rng, n, 0.03)),
        "cart_value": _values(_lognormal_money(rng, n, 60.0, 0.9), _nulls(rng, n, 0.05)),
        "vip": _values(vip, _nulls(rng, n, 0.02)),
        "interests": _interests(rng, n),
        "signup_at": _values(signup, _nulls(rng, n, 0.01)),
    }
    consents = {purpose: rng.random(n, dtype=np.float32) < rate for purpose, rate in CONSENT_RATES.items()}
    # Heavy-tailed activity; a third of the profiles never act, VIPs act three times as much.
    activity = (rng.pareto(1.3, n) + 0.05) * (rng.random(n, dtype=np.float32) >= 0.35) * np.where(vip, 3.0, 1.0)
    if n and not activity.any():
        activity[:] = 1.0
    return ProfileBatch(make_ids(n), columns, consents), activity


def _interests(rng: np.random.Generator, n: int) -> TagsColumn:
    """0-4 distinct skewed interest tags per profile; about 5% null, the rest some empty lists."""
    valid = _nulls(rng, n, 0.05)
    wanted = sample_codes(rng, np.array([0.15, 0.3, 0.3, 0.15, 0.1]), n)
    wanted[~valid] = 0
    draws = sample_codes(rng, zipf_weights(len(INTERESTS), 0.8), 4 * n).reshape(n, 4)
    draws[np.arange(4)[None, :] >= wanted[:, None]] = len(INTERESTS)  # sentinel sorts last
    draws.sort(axis=1)
    keep = draws < len(INTERESTS)
    keep[:, 1:] &= draws[:, 1:] != draws[:, :-1]  # drop repeated draws of one tag
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return TagsColumn(offsets, draws[keep].astype(np.int32), list(INTERESTS), valid)


# -- events -----------------------------------------------------------------------------------


def event_times(rng: np.random.Generator, n: int, now: int) -> np.ndarray:
    """``n`` epoch-ms times in ``(now - 90d, now]``: more recent days and evening hours weigh more."""
    days_back = np.arange(EVENT_WINDOW_DAYS)
    day_weights = np.exp(-days_back / 45.0)  # activity grows towards now
    slot = sample_codes(rng, (day_weights[:, None] * HOURLY_ACTIVITY[None, :]).ravel(), n).astype(np.int64)
    today = now - now % DAY_MS
    ts = today - (slot // 24) * DAY_MS + (slot % 24) * HOUR_MS + rng.integers(0, HOUR_MS, n)
    ts[ts > now] -= DAY_MS  # today's hours that have not happened yet: the same hour yesterday
    return ts


def _delays(rng: np.random.Generator, n: int, median_ms: float, sigma: float, cap_ms: int) -> np.ndarray:
    """Positive lognormal delays in ms, at least one second and at most ``cap_ms``."""
    delays = rng.lognormal(np.log(median_ms), sigma, n).astype(np.int64)
    return np.clip(delays, SECOND_MS, cap_ms)


def _assign(rng: np.random.Generator, activity: np.ndarray, n: int, shuffle: bool = True) -> np.ndarray:
    """``n`` profile indexes drawn by activity, in random order (else grouped by profile)."""
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    counts = rng.multinomial(n, activity / activity.sum())
    owners = np.repeat(np.arange(len(activity), dtype=np.int32), counts)
    if shuffle:
        rng.shuffle(owners)
    return owners


def _events(rng: np.random.Generator, ids: list[str], activity: np.ndarray, total: int, now: int) -> list[EventBatch]:
    """Exactly ``total`` events: page views, carts, and one outcome per cart (see the module doc)."""
    carts = int(round(total * CART_SHARE))
    views = total - 2 * carts
    id_table = np.array(ids, dtype=object)
    category_weights = zipf_weights(len(CATEGORIES), 0.9)

    # Carts: owner, time, category and value; each ends in one outcome for the same owner.
    cart_owner = _assign(rng, activity, carts)
    cart_ts = event_times(rng, carts, now)
    cart_cat = sample_codes(rng, category_weights, carts)
    cart_cat_ok = _nulls(rng, carts, 0.02)
    cart_value = _lognormal_money(rng, carts, 60.0, 0.9)
    cart_value_ok = _nulls(rng, carts, 0.03)
    bought = rng.random(carts, dtype=np.float32) < PURCHASE_RATE
    delay = np.where(
        bought,
        _delays(rng, carts, 8 * MINUTE_MS, 1.0, 6 * HOUR_MS),
        _delays(rng, carts, 3 * HOUR_MS, 0.8, 2 * DAY_MS),
    )
    late = cart_ts + delay > now  # outcome would be in the future: move the whole funnel back
    cart_ts[late] -= cart_ts[late] + delay[late] - now + rng.integers(0, HOUR_MS, int(late.sum()))
    outcome_ts = cart_ts + delay

    # Page views: one before each cart (same owner and category), the rest spread by activity.
    tied = min(carts, views)
    view_owner = np.concatenate([cart_owner[:tied], _assign(rng, activity, views - tied, shuffle=False)])
    view_ts = np.concatenate([
        np.maximum(cart_ts[:tied] - _delays(rng, tied, 2 * MINUTE_MS, 1.0, HOUR_MS), now - EVENT_WINDOW_DAYS * DAY_MS + 1),
        event_times(rng, views - tied, now),
    ])
    view_cat = np.concatenate([cart_cat[:tied], sample_codes(rng, category_weights, views - tied)])
    view_cat_ok = np.concatenate([cart_cat_ok[:tied], _nulls(rng, views - tied, 0.02)])
    order = rng.permutation(views)  # scatter the tied views among the others

    batches = [
        EventBatch(
            "page_view",
            id_table[view_owner[order]].tolist(),
            view_ts[order],
            {"category": _category(view_cat[order], view_cat_ok[order], CATEGORIES)},
        ),
        EventBatch(
            "add_to_cart",
            id_table[cart_owner].tolist(),
            cart_ts,
            {
                "category": _category(cart_cat, cart_cat_ok, CATEGORIES),
                "cart_value": _values(cart_value, cart_value_ok),
            },
        ),
    ]
    abandoned = ~bought
    batches.append(EventBatch(
        "cart_abandoned",
        id_table[cart_owner[abandoned]].tolist(),
        outcome_ts[abandoned],
        {
            "cart_value": _values(cart_value[abandoned], cart_value_ok[abandoned] & _nulls(rng, int(abandoned.sum()), 0.01)),
            "category": _category(cart_cat[abandoned], cart_cat_ok[abandoned], CATEGORIES),
        },
    ))
    discount = np.where(rng.random(int(bought.sum()), dtype=np.float32) < 0.1, 0.9, 1.0)  # 10% use a coupon
    batches.append(EventBatch(
        "purchase",
        id_table[cart_owner[bought]].tolist(),
        outcome_ts[bought],
        {
            "amount": _values(np.round(cart_value[bought] * discount, 2), cart_value_ok[bought] & _nulls(rng, int(bought.sum()), 0.01)),
            "category": _category(cart_cat[bought], cart_cat_ok[bought], CATEGORIES),
        },
    ))
    return batches
