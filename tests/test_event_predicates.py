"""Kept bitmaps of event predicates (per property bin and day) against the naive oracle and a rebuild.

The engine builds a property's bin bitmaps on the first DID that can use them and keeps them on
every later write; so each case queries first, then writes (out of time order, merges, erasure)
and queries again. Values sit on bin edges (50, 100, 0.01, 0) and next to them, windows start and
end inside UTC days, and clocks sit on midnights.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine, Schema
from engine.columns import column_from_values
from engine.query import bind, parse
from engine.retention import expire_type
from engine.schema import CONTRACT_SCHEMA, EventDef
from engine.store.event_rows import drop_rows
from engine.store.events import DAY_MS, EventStore
from engine.store.property_bitmaps import EDGES

try:
    from oracle_identity import IdentityStore
    from strategies import CATEGORIES, DAY, HOUR, MIDNIGHT, NOW
except ImportError:  # tests/ imported as a package
    from tests.oracle_identity import IdentityStore
    from tests.strategies import CATEGORIES, DAY, HOUR, MIDNIGHT, NOW

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
#: Values on the 1-2-5 bin edges, next to them, inside bins, beyond the outermost edge, and float64-only.
VALUES = [50.0, 49.99, 50.01, 100.0, 0.01, 0.0, -0.01, 75.25, 20.0, 1e16, -3.25, 0.015, 120.5, None]
MID_DAY = MIDNIGHT - 3 * DAY + 7 * HOUR + 123

QUERIES = [
    "DID(cart_abandoned WHERE cart_value > 50)",
    "DID(cart_abandoned WHERE cart_value >= 50, WITHIN 30d)",
    "DID(cart_abandoned WHERE cart_value > 60)",
    "DID(cart_abandoned WHERE cart_value < 0.015 OR cart_value > 1e15, WITHIN 7d)",
    "DID(cart_abandoned WHERE cart_value IS NULL OR category IN ('books', 'shoes'), WITHIN 30d)",
    f"DID(purchase WHERE NOT category = 'books', SINCE {MID_DAY}, BEFORE {MID_DAY + 2 * DAY})",
    f"DID(purchase WHERE amount BETWEEN 0.01 AND 100 OR amount IS NULL, SINCE {MIDNIGHT - 5 * DAY})",
    "DID(cart_abandoned WHERE cart_value = 50 OR category = 'books', COUNT = 0, WITHIN 7d)",
    "DID(purchase WHERE amount != 20, COUNT >= 1, WITHIN 30d)",
    "DID(cart_abandoned WHERE NOT cart_value IN (50, 75.25), WITHIN 2d)",
    "DID(page_view WHERE category = 'books' OR category IS NULL)",
    "DID(page_view WHERE NOT category IS NULL, COUNT < 1, WITHIN 4w)",
    "DID(cart_abandoned WHERE cart_value > 50 AND category = 'books', WITHIN 30d)",
    # a WHERE that is an AND across properties: counted within the rows of every conjunct's bins
    "DID(cart_abandoned WHERE cart_value > 60 AND category IN ('books', 'shoes'), COUNT >= 2, WITHIN 7d)",
    "DID(purchase WHERE (amount <= 50 OR amount IS NULL) AND NOT category = 'books', COUNT = 0, WITHIN 30d)",
    f"NOT DID(page_view, WITHIN 2d) AND DID(purchase WHERE amount > 0.01 AND category = 'shoes', SINCE {MID_DAY})",
    "DID(cart_abandoned WHERE cart_value >= 50 AND category != 'books', AFTER LAST purchase)",
    "DID(cart_abandoned WHERE cart_value BETWEEN 20 AND 100 AND category IS NOT NULL AND cart_value != 75.25, COUNT < 2)",
    "DID(page_view, COUNT >= 3, WITHIN 30d)",
    "DID(page_view, COUNT < 4, WITHIN 2d)",
    "DID(cart_abandoned WHERE cart_value > 20, COUNT > 3)",
]
CLOCKS = [NOW, MIDNIGHT, MIDNIGHT - 1, MID_DAY]


def events(rng: random.Random, ids: list[str], n: int) -> list[dict[str, Any]]:
    """``n`` events in arrival order that is not time order, many on UTC midnights (+-1 ms)."""
    out = []
    for _ in range(n):
        kind = rng.choice(["page_view", "cart_abandoned", "purchase"])
        if rng.random() < 0.3:
            ts = MIDNIGHT - rng.randint(-1, 35) * DAY + rng.choice([-1, 0, 1])
        else:
            ts = NOW - rng.randint(-DAY, 40 * DAY)
        record: dict[str, Any] = {"id": rng.choice(ids), "event": kind, "ts": ts}
        if rng.random() < 0.9:
            record["category"] = rng.choice(CATEGORIES + [None])
        if kind != "page_view" and rng.random() < 0.9:
            record["cart_value" if kind == "cart_abandoned" else "amount"] = rng.choice(VALUES)
        out.append(record)
    return out


def check(engine: Engine, oracle: IdentityStore) -> None:
    for text in QUERIES:
        for now in CLOCKS:
            expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
            assert engine.ids(text, now=now) == expected, f"{text} (now={now})"
        assert engine.count(text, now=NOW) == len(oracle.evaluate(bind(parse(text), SCHEMA), NOW)), text


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_where_bitmaps_stay_exact_through_writes_merges_and_erasure(shards: int) -> None:
    rng = random.Random(shards)
    ids = [f"u{i:03d}" for i in range(60)]
    oracle = IdentityStore(CONTRACT_SCHEMA)
    with Engine(SCHEMA, shards=shards) as engine:
        for batch in (events(rng, ids, 500), events(rng, ids + ["new1", "new2"], 400)):
            engine.track_events(batch)
            oracle.track(batch)
            check(engine, oracle)  # the first round builds the bitmaps, the later one sees them kept
        engine.merge("u001", "u002")
        oracle.merge("u001", "u002")
        engine.merge_many([("u003", "u004"), ("new1", "u005")])
        oracle.merge_many([("u003", "u004"), ("new1", "u005")])
        engine.delete_profiles(["u006", "u007", "u002"])
        oracle.delete(["u006", "u007", "u002"])
        check(engine, oracle)
        batch = events(rng, ids[:20], 200)
        engine.track_events(batch)
        oracle.track(batch)
        check(engine, oracle)


# -- the kept bitmaps equal a rebuild from the events -------------------------------------------

KINDS = {"kind": "category", "amount": "float", "qty": "int", "flag": "bool"}
STORE_VALUES = {"kind": ["a", "b", "c", None], "amount": [50.0, 49.99, 0.01, 0.0, 1e16, 0.001, -2.0, None],
                "qty": [0, 1, 2, 3, 5, 100, -7, 2**60, None], "flag": [True, False, None]}


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Appends (any time order), erasures of rows and expiries at a cutoff."""
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["append", "append", "append", "drop", "expire"]))
        seed = draw(st.integers(0, 2**31))
        ops.append((op, seed))
    return ops


def apply(store: EventStore, op: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    typed = store.types["act"]
    if op == "append":
        n = int(rng.integers(1, 300))
        rows = rng.integers(0, 50, n)
        ts = NOW - rng.integers(-DAY_MS, 20 * DAY_MS, n)
        ts[: n // 4] = MIDNIGHT - rng.integers(0, 20, n // 4) * DAY_MS + rng.integers(-1, 2, n // 4)
        columns = {prop: column_from_values(kind, [STORE_VALUES[prop][int(i)] for i in
                                                   rng.integers(0, len(STORE_VALUES[prop]), n)])
                   for prop, kind in KINDS.items() if rng.random() < 0.9}
        typed.append(rows, ts, columns)
    elif op == "drop":
        drop_rows(store, np.unique(rng.integers(0, 50, int(rng.integers(1, 10)))), 50)
    else:
        expire_type(typed, int(NOW - rng.integers(0, 20 * DAY_MS)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=operations(), after=operations())
def test_kept_bin_bitmaps_equal_a_rebuild_after_random_writes(before: list, after: list) -> None:
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    for op, seed in before:
        apply(store, op, seed)
    typed = store.types["act"]
    for prop in KINDS:
        assert typed.property_bitmaps(prop) is not None
    for op, seed in after:
        apply(store, op, seed)
        for prop in KINDS:
            assert typed.prop_bitmaps[prop].same_as(typed.build_property_bitmaps(prop)), (prop, op)


def test_bins_of_edge_values() -> None:
    """A value on an edge has a bin of its own; values beside it fall in the open bins around it."""
    from engine.store.property_bitmaps import bin_bounds, bin_keys

    keys = bin_keys("float", np.array([50.0, 49.99, 50.01, 0.0, -0.0, 0.01, 1e16, np.nan]), None)
    assert [bin_bounds(int(k)) for k in keys[:7]] == [
        (50.0, 50.0), (20.0, 50.0), (50.0, 100.0), (0.0, 0.0), (0.0, 0.0), (0.01, 0.01), (5e15, float("inf"))]
    assert int(keys[7]) == -1
    ints = bin_keys("int", np.array([3, 2, 2**60]), np.array([True, True, False]))
    assert [bin_bounds(int(k)) for k in ints[:2]] == [(2.0, 5.0), (2.0, 2.0)] and int(ints[2]) == -1


@pytest.mark.parametrize("rows_in_store", [40, 100_000])  # dense windows count in uint8 counters, sparse ones sort
def test_counts_up_to_and_past_the_counter_cap(rows_in_store: int) -> None:
    """Row r has r * 7 % 300 events in the window: COUNT tests around 3, 5, 255 and 256 select exactly."""
    from pyroaring import BitMap

    from engine.exec.did import DidEvaluator

    store = EventStore({"act": EventDef("act", {})})
    per_row = {r: r * 7 % 300 for r in range(40)}
    rows = np.repeat(np.arange(40), [per_row[r] for r in range(40)])
    ts = NOW - np.random.default_rng(5).integers(0, 5 * DAY_MS, len(rows))
    store.types["act"].append(rows, ts, {})
    live = BitMap(range(rows_in_store))
    evaluator = DidEvaluator(store)
    for op, n in [(">=", 3), (">", 5), (">=", 255), (">=", 256), ("<", 256), ("=", 259), ("<=", 5)]:
        node = bind(parse(f"DID(act, COUNT {op} {n}, WITHIN 6d)"), Schema.from_dict(
            {"attributes": {}, "events": {"act": {"properties": {}}}, "consents": []}))
        got = sorted(evaluator.did(node, NOW, None, live))
        test = {">=": lambda c: c >= n, ">": lambda c: c > n, "<": lambda c: c < n, "=": lambda c: c == n,
                "<=": lambda c: c <= n}[op]
        assert got == [r for r in range(rows_in_store) if test(per_row.get(r, 0))], (op, n)


def test_kept_bin_bitmaps_survive_a_schema_change_and_float_widening() -> None:
    """Adding a property keeps the other properties' bitmaps exact; a float that stops fitting in
    scaled codes (0.001) changes how values are stored, not their bins."""
    store = EventStore({"act": EventDef("act", dict(KINDS))})
    apply(store, "append", 1)
    typed = store.types["act"]
    for prop in KINDS:
        typed.property_bitmaps(prop)
    store.adopt({"act": EventDef("act", {**KINDS, "extra": "float"})})
    typed.append(np.array([3, 4]), np.array([NOW, NOW - DAY_MS]),
                 {"amount": column_from_values("float", [0.001, 50.0]), "extra": column_from_values("float", [1.5, None])})
    assert typed.scaled["amount"] == 0
    for prop in [*KINDS, "extra"]:
        assert typed.property_bitmaps(prop).same_as(typed.build_property_bitmaps(prop)), prop
    assert sorted(typed.property_bitmaps("extra").ever) == [-1, 2 * int(np.searchsorted(EDGES, 1.5))]


PRESENCE_QUERIES = [
    "DID(page_view, WITHIN 10d)",
    "DID(cart_abandoned, WITHIN 3d) AND NOT DID(purchase, WITHIN 30d)",
    f"DID(purchase, SINCE {MIDNIGHT - 5 * DAY}, BEFORE {MIDNIGHT + DAY - 1})",
    f"DID(page_view, SINCE {MIDNIGHT - 20 * DAY + 1})",
]


def test_kept_day_unions_catch_up_with_appends_and_deletions(monkeypatch) -> None:
    """A presence DID keeps its window's union of day (and slot) bitmaps; later appends (new days,
    past days, midnights) and deletions of profiles' events (a merge's departures, an erasure) bring
    it up to date from the store's append log (engine.store.append_log), and a union more writes
    behind than the log keeps is built again: answers equal the oracle's throughout."""
    from engine.store.append_log import WRITES_KEPT, AppendLog

    caught_up: list[bool] = []
    catch_up = AppendLog.catch_up

    def spy(self, *args):
        union = catch_up(self, *args)
        caught_up.append(union is not None)
        return union

    monkeypatch.setattr(AppendLog, "catch_up", spy)
    rng = random.Random(5)
    ids = [f"u{i:03d}" for i in range(80)]
    oracle = IdentityStore(CONTRACT_SCHEMA)

    def check_presence() -> None:
        for text in PRESENCE_QUERIES:
            for now in (NOW, MIDNIGHT):
                assert engine.ids(text, now=now) == sorted(oracle.evaluate(bind(parse(text), SCHEMA), now)), text

    with Engine(SCHEMA, shards=1) as engine:
        for round_no in range(12):
            for _ in range(WRITES_KEPT + 1 if round_no == 9 else 1):
                batch = events(rng, ids, 60)
                engine.track_events(batch)
                oracle.track(batch)
            check_presence()
            if round_no == 5:
                engine.merge_many([("u001", "u002"), ("u010", "u011")])
                oracle.merge_many([("u001", "u002"), ("u010", "u011")])
                check_presence()
            if round_no == 8:
                engine.delete_profiles(["u003", "u020"])
                oracle.delete(["u003", "u020"])
                check_presence()
    assert True in caught_up and False in caught_up


AND_QUERIES = [
    "DID(purchase WHERE amount > 60 AND category = 'shoes', WITHIN 7d)",
    "DID(purchase WHERE amount > 60 AND category = 'shoes', COUNT >= 2, WITHIN 7d)",
    "DID(purchase WHERE amount >= 50 AND category IN ('shoes', 'books'), COUNT = 0, WITHIN 3d)",
    f"DID(purchase WHERE amount > 60 AND NOT category = 'books', SINCE {MID_DAY}, BEFORE {MID_DAY + 2 * DAY})",
    "DID(purchase WHERE amount > 60 AND category = 'shoes')",
]


@pytest.mark.parametrize("shards", [1, 2])
def test_an_and_across_properties_finds_events_on_the_edge_days_of_its_window(shards: int) -> None:
    """A WHERE that ANDs properties counts only the rows in each conjunct's kept bins over the days
    its window touches: rows whose only passing event sits on a window's first or last (partial)
    day, on a midnight or a millisecond from an edge, in an edge bin (60 lies inside 50-100) or on
    a bin edge (50, 100), and rows whose properties pass on different events, all as the oracle."""
    rng = random.Random(11)
    clocks = [NOW, MID_DAY + 3 * DAY]
    anchors = [MID_DAY, MID_DAY + 2 * DAY, MIDNIGHT - 2 * DAY, MIDNIGHT - 6 * DAY]
    anchors += [now - span * DAY for now in clocks for span in (0, 3, 7)]
    instants = [a + d for a in anchors for d in (-HOUR, -1, 0, 1, HOUR)]
    instants += [a - a % DAY + d for a in anchors for d in (-1, 0, 1, DAY - 1)]
    oracle = IdentityStore(CONTRACT_SCHEMA)
    batch = []
    for i in range(600):
        for _ in range(rng.choice([1, 1, 2, 3])):
            batch.append({"id": f"p{i:03d}", "event": "purchase", "ts": rng.choice(instants),
                          "amount": rng.choice([60.0, 60.5, 59.99, 100.0, 50.0, 49.99, None]),
                          "category": rng.choice(["shoes", "books", "apparel", None])})
    quiet = [{"id": f"q{i:05d}", "age": 30} for i in range(12_000)]  # so few rows pass that only theirs are counted
    with Engine(SCHEMA, shards=shards) as engine:
        engine.upsert_profiles(quiet)
        oracle.upsert(quiet)
        for part in (batch[: len(batch) // 2], batch[len(batch) // 2:]):  # queried, then kept through a write
            engine.track_events(part)
            oracle.track(part)
            for text in AND_QUERIES:
                for now in clocks:
                    expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
                    assert engine.ids(text, now=now) == expected, f"{text} (now={now})"
