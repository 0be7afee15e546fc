"""A DID with a WHERE or AFTER LAST evaluated within a small found set (only the found rows' events are
tested) against the naive oracle, and against a scan of the raw events for found sets the engine's
planner never passes (empty, rows without events, rows past the last event's row).

Events sit on the 30-day window's edges (its first millisecond and the one before it), on UTC
midnights +-1 ms and at the clock; amounts and categories are null for some events.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from pyroaring import BitMap

from engine import Engine, Schema
from engine.columns import column_from_values
from engine.exec.did import FOUND_SHARE, DidEvaluator
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA, EventDef
from engine.store.events import DAY_MS, EventStore

try:
    from oracle_identity import IdentityStore
    from strategies import DAY, HOUR, MIDNIGHT, NOW
except ImportError:  # tests/ imported as a package
    from tests.oracle_identity import IdentityStore
    from tests.strategies import DAY, HOUR, MIDNIGHT, NOW

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
PROFILES = 400
#: The first and the last millisecond of ``WITHIN 30d`` at NOW, the millisecond before, midnights +-1 ms.
EDGE_TIMES = [NOW - 30 * DAY + 1, NOW - 30 * DAY, NOW, NOW - 1] + [
    MIDNIGHT - k * DAY + d for k in (0, 1, 29, 30) for d in (-1, 0, 1)]
AMOUNTS = [100.0, 100.01, 99.99, 250.0, 5.0, None]
CATEGORIES = ["electronics", "jewelry", "books", "", None]

#: (attribute part selecting the found set, its size): a single row, a few, under and over 1/FOUND_SHARE.
FOUND = [("country = 'ZZ'", 1), ("country = 'FR' AND vip = TRUE", 4), ("country = 'FR'", 30),
         ("country = 'DE'", 160)]
DIDS = [
    "DID(purchase WHERE amount > 100 AND category IN ('electronics', 'jewelry'), WITHIN 30d)",
    "DID(purchase WHERE amount > 100 AND category IN ('electronics', 'jewelry'), WITHIN 30d, COUNT >= 2)",
    "DID(purchase WHERE amount IS NULL OR category IS NULL, WITHIN 30d, COUNT = 0)",
    "DID(purchase WHERE NOT category = 'books' AND amount <= 100, WITHIN 30d, COUNT < 3)",
    "DID(purchase WHERE amount >= 100 AND category = '', SINCE %d, BEFORE %d)" % (MIDNIGHT - 29 * DAY, NOW - 1),
    "DID(purchase, AFTER LAST cart_abandoned, WITHIN 30d)",
    "DID(purchase WHERE category = 'electronics', AFTER LAST cart_abandoned, COUNT = 0, WITHIN 30d)",
]


def profiles() -> list[dict[str, Any]]:
    """One ZZ profile, 30 FR (4 of them vip), 160 DE, the rest US."""
    out = [{"id": "p000", "country": "ZZ", "vip": True}]
    for i in range(1, PROFILES):
        country = "FR" if i <= 30 else "DE" if i <= 190 else "US"
        out.append({"id": f"p{i:03d}", "country": country, "vip": country == "FR" and i % 7 == 0})
    return out


def events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """``n`` purchases and abandoned carts out of time order, a third of them on window edges."""
    out = []
    for _ in range(n):
        kind = "purchase" if rng.random() < 0.8 else "cart_abandoned"
        ts = rng.choice(EDGE_TIMES) if rng.random() < 0.35 else NOW - rng.randint(-HOUR, 35 * DAY)
        record: dict[str, Any] = {"id": f"p{rng.randrange(PROFILES):03d}", "event": kind, "ts": ts,
                                  "category": rng.choice(CATEGORIES)}
        record["amount" if kind == "purchase" else "cart_value"] = rng.choice(AMOUNTS)
        out.append(record)
    return out


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_did_within_found_sets_matches_the_oracle(shards: int) -> None:
    rng = random.Random(22 + shards)
    oracle = IdentityStore(CONTRACT_SCHEMA)
    with Engine(SCHEMA, shards=shards) as engine:
        engine.upsert_profiles(profiles())
        oracle.upsert(profiles())
        for batch in (events(rng, 1500), events(rng, 500)):  # two batches: several runs per type
            engine.track_events(batch)
            oracle.track(batch)
        for attrs, size in FOUND:
            assert engine.count(attrs, now=NOW) == size
            for did in DIDS:
                for text in (f"{attrs} AND {did}", f"{attrs} AND NOT {did}"):
                    for now in (NOW, MIDNIGHT):
                        expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
                        assert engine.ids(text, now=now) == expected, f"{text} (now={now})"
                        assert engine.count(text, now=now) == len(expected), f"{text} (now={now})"


def test_did_within_any_found_set_matches_a_scan() -> None:
    kinds = {"amount": "float", "kind": "category"}
    store = EventStore({"act": EventDef("act", dict(kinds)), "stop": EventDef("stop", {})})
    schema = Schema.from_dict({"attributes": {}, "events": {
        "act": {"properties": dict(kinds)}, "stop": {"properties": {}}}})
    rng = np.random.default_rng(5)
    n, rows_with_events = 3000, 200
    rows = rng.integers(0, rows_with_events, n)
    ts = NOW - rng.integers(-HOUR, 40 * DAY_MS, n)
    ts[:600] = rng.choice(np.array(EDGE_TIMES), 600)
    amount = [[100.0, 100.01, 5.0, None][i] for i in rng.integers(0, 4, n)]
    kind = [["a", "b", None][i] for i in rng.integers(0, 3, n)]
    for part in np.array_split(np.arange(n), 3):  # several runs
        store.types["act"].append(rows[part], ts[part], {
            "amount": column_from_values("float", [amount[i] for i in part]),
            "kind": column_from_values("category", [kind[i] for i in part])})
    stop_rows = rng.integers(0, rows_with_events, 300)
    stop_ts = NOW - rng.integers(0, 40 * DAY_MS, 300)
    store.types["stop"].append(stop_rows, stop_ts, {})
    evaluator = DidEvaluator(store)
    universe = 1000  # rows 200.. have no events
    live = BitMap(range(universe))
    latest_stop = {int(r): int(stop_ts[stop_rows == r].max()) for r in np.unique(stop_rows)}

    def passes(i: int, text: str) -> bool:
        if "kind = 'a'" in text and kind[i] != "a":
            return False
        if "amount > 100" in text and not (amount[i] is not None and amount[i] > 100):
            return False
        if "AFTER LAST" in text and not (int(rows[i]) in latest_stop and ts[i] > latest_stop[int(rows[i])]):
            return False  # no stop at all: no event is after the last one
        return NOW - 30 * DAY_MS < ts[i] <= NOW

    founds = [BitMap(), BitMap([7]), BitMap([250, 999]), BitMap(range(0, universe, 11)),
              BitMap(range(190, 215))]
    assert all(len(found) * FOUND_SHARE < universe for found in founds)
    for text in ["DID(act WHERE amount > 100 AND kind = 'a', WITHIN 30d)",
                 "DID(act WHERE amount > 100 AND kind = 'a', WITHIN 30d, COUNT >= 2)",
                 "DID(act WHERE amount > 100, AFTER LAST stop, WITHIN 30d, COUNT = 0)"]:
        node = bind(parse(text), schema)
        counts = np.bincount(rows[[i for i in range(n) if passes(i, text)]], minlength=universe)
        need = {"COUNT >= 2": lambda c: c >= 2, "COUNT = 0": lambda c: c == 0}
        test = next((f for key, f in need.items() if key in text), lambda c: c >= 1)
        for found in founds:
            expected = [r for r in found if test(counts[r])]
            assert list(evaluator.did(node, NOW, found, live) & found) == expected, (text, list(found)[:5])
