"""DID SUM/AVG from the kept per-row window sums (engine/store/window_sums.py, engine/exec/kept_sums.py)
against the naive evaluator, at shards 1-3: a clock that moves forward, back and far, window edges
inside days, sums exactly at the literal, and writes after the sums are kept (out-of-order and future
events, merges, erasure, expiry, a restart, a value that leaves the cent codes)."""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from engine import Engine, Schema
from engine.query.binder import bind
from engine.query.parser import parse
from engine.schema import CONTRACT_SCHEMA
from engine.store.bitsets import sorted_bitmap
from engine.store.runs import SCALED_NULL
from engine.store.window_sums import WindowSums, empty_entries

try:
    from oracle_retention import RetentionStore
    from strategies import DAY, NOW
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore
    from tests.strategies import DAY, NOW

HOUR = 3_600_000
CLOCK = NOW - NOW % DAY + 13 * HOUR + 17  # 13:00:00.017 UTC: window edges fall inside days
LO30 = CLOCK - 30 * DAY + 1  # the first ms of WITHIN 30d at CLOCK
SPEC: dict[str, Any] = copy.deepcopy(CONTRACT_SCHEMA)
SPEC["events"]["cart_abandoned"]["retention"] = "20d"
SCHEMA = Schema.from_dict(SPEC)

QUERIES = [
    "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
    "DID(purchase, SUM(amount) = 100, WITHIN 30d)",
    "DID(purchase, SUM(amount) < 10, WITHIN 30d)",  # holds at zero
    "DID(purchase, AVG(amount) >= 80, COUNT >= 2, WITHIN 7d)",
    "DID(purchase, AVG(amount) = 80, WITHIN 30d)",
    "DID(purchase, SUM(amount) > 20, SUM(amount) <= 100, WITHIN 30d)",  # two aggregates
    "DID(purchase, SUM(amount) != 100, COUNT != 2, WITHIN 30d)",  # a negated count
    "DID(purchase, SUM(amount) < 10, COUNT < 1, WITHIN 7d)",  # a count range that no row with events meets
    "DID(purchase, SUM(amount) >= 50)",  # all time
    "DID(purchase, SUM(amount) >= 50, SINCE NOW - 12d, BEFORE NOW - 1h)",
    "country = 'FR' AND DID(purchase, SUM(amount) >= 100, WITHIN 30d)",  # a small found set: looked up
    "DID(cart_abandoned, SUM(cart_value) >= 100, WITHIN 30d)",  # retention 20d bounds the window
]
#: Clocks in the order queried: a step of 1 ms (an event leaves at the lower edge), hours, a day,
#: back, and a jump past every window (rebuilt).
CLOCKS = [CLOCK, CLOCK + 1, CLOCK + 3 * HOUR, CLOCK - 2 * DAY, CLOCK, CLOCK + 45 * DAY]


def dataset(seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """400 profiles (5 in FR) with cent purchases over 45 days, and rows whose sums sit on 100 or
    whose events sit on the window's edges at CLOCK."""
    rng = random.Random(seed)
    profiles = [{"id": f"p{i:03d}", "country": "FR" if i % 80 == 0 else "DE"} for i in range(400)]
    events: list[dict[str, Any]] = []
    for i in range(400):
        for _ in range(rng.randint(0, 4)):
            value = rng.choice([None, 0.01, 33.33, 33.34, 50.0, 79.99, 80.01, 99.99, round(rng.uniform(0, 150), 2)])
            event = {"id": f"p{i:03d}", "event": rng.choice(["purchase", "purchase", "cart_abandoned"]),
                     "ts": CLOCK - rng.randint(0, 45 * DAY)}
            if value is not None:
                event["amount" if event["event"] == "purchase" else "cart_value"] = value
            events.append(event)
    special = {  # id: [(ts, amount)]
        "tie": [(CLOCK - DAY, 33.33), (CLOCK - 2 * DAY, 33.33), (CLOCK - 3 * DAY, 33.34)],
        "edge_in": [(LO30, 60.0), (CLOCK, 40.0)],  # 100 exactly at CLOCK; 40 at CLOCK + 1
        "edge_out": [(LO30 - 1, 60.0), (CLOCK, 40.0), (CLOCK + 1, 1000.0)],
        "cancel": [(CLOCK - 5 * DAY, 100.1), (CLOCK - 4 * DAY, -0.1)],
        "avg80": [(CLOCK - HOUR, 79.99), (CLOCK - 2 * HOUR, 80.01)],
    }
    for pid, items in special.items():
        profiles.append({"id": pid, "country": "FR"})
        events += [{"id": pid, "event": "purchase", "ts": ts, "amount": v} for ts, v in items]
    return profiles, events


def check(engine: Engine, oracle: RetentionStore, now: int) -> None:
    """Every query's ids and count at ``now`` equal the oracle's."""
    for text in QUERIES:
        expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
        assert engine.ids(text, now=now) == expected, f"{text} (now={now})"
        assert engine.count(text, now=now) == len(expected), f"{text} (now={now})"


def loaded(engine: Engine) -> RetentionStore:
    profiles, events = dataset()
    oracle = RetentionStore(SPEC)
    engine.upsert_profiles(profiles)
    oracle.upsert(profiles)
    engine.track_events(events)
    oracle.track(events)
    return oracle


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_a_moving_clock_matches_the_oracle(shards: int) -> None:
    with Engine(SCHEMA, shards=shards) as engine:
        oracle = loaded(engine)
        for now in CLOCKS:
            check(engine, oracle, now)


@pytest.mark.parametrize("shards", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_writes_after_the_sums_are_kept(shards: int) -> None:
    """Out-of-order, future and new-profile events, merges, erasure and upserts after the windows
    were built keep the answers exact."""
    with Engine(SCHEMA, shards=shards) as engine:
        oracle = loaded(engine)
        check(engine, oracle, CLOCK)
        late = [{"id": "p001", "event": "purchase", "ts": CLOCK - 20 * DAY, "amount": 100.0},  # out of order
                {"id": "tie", "event": "purchase", "ts": CLOCK - 10 * DAY, "amount": 0.01},  # leaves 100
                {"id": "p002", "event": "purchase", "ts": LO30, "amount": 150.0},  # on the lower edge
                {"id": "p003", "event": "purchase", "ts": CLOCK + 2, "amount": 500.0},  # in the future
                {"id": "newcomer", "event": "purchase", "ts": CLOCK - HOUR, "amount": 100.0},
                {"id": "p004", "event": "purchase", "ts": CLOCK - HOUR}]  # a null amount
        engine.track_events(late)
        oracle.track(late)
        check(engine, oracle, CLOCK)
        check(engine, oracle, CLOCK + 3)
        for source, target in (("edge_in", "p010"), ("avg80", "newcomer"), ("p020", "p021")):
            engine.merge(source, target)
            oracle.merge(source, target)
        check(engine, oracle, CLOCK + 3)
        assert engine.delete_profiles(["tie", "p010", "p030"]) == oracle.delete(["tie", "p010", "p030"])
        check(engine, oracle, CLOCK + 3)
        moved = [{"id": "p040", "country": "FR"}, {"id": "p000", "country": "DE"}]
        engine.upsert_profiles(moved)
        oracle.upsert(moved)
        check(engine, oracle, CLOCK + 4)


def test_expiry_and_a_restart(tmp_path: Path) -> None:
    """Expiry deletes events of a type with retention below a kept window; a restart rebuilds the sums."""
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        oracle = loaded(engine)
        check(engine, oracle, CLOCK)
        assert engine.expire(CLOCK + 2 * DAY) == oracle.expire(CLOCK + 2 * DAY)
        check(engine, oracle, CLOCK)  # an earlier clock never sees an expired event
        check(engine, oracle, CLOCK + 2 * DAY)
        more = [{"id": "p005", "event": "cart_abandoned", "ts": CLOCK + DAY, "cart_value": 99.99}]
        engine.track_events(more)
        oracle.track(more)
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        check(engine, oracle, CLOCK + 2 * DAY)


def test_a_value_without_a_cent_code_leaves_the_kept_sums() -> None:
    """A value that is not a whole number of cents turns the property to float64: the answers stay exact."""
    with Engine(SCHEMA, shards=1) as engine:
        oracle = loaded(engine)
        check(engine, oracle, CLOCK)
        odd = [{"id": "p007", "event": "purchase", "ts": CLOCK - DAY, "amount": 99.995}]
        engine.track_events(odd)
        oracle.track(odd)
        check(engine, oracle, CLOCK)


# -- the kept sums themselves ---------------------------------------------------------------------------


class _Store:
    """The part of an event store that WindowSums.move reads: ``window(lo, hi)`` of one run."""

    def __init__(self, ts: np.ndarray, rows: np.ndarray, codes: np.ndarray):
        from engine.store.runs import Run
        order = np.argsort(ts, kind="stable")
        self.run = Run(0, ts[order].astype(np.uint32), rows[order].astype(np.int32), {"x": codes[order]})
        self.generation = 0

    def window(self, lo: int, hi: int) -> list:
        part = self.run.window(lo, hi) if lo <= hi else None
        return [part] if part is not None else []


def _entries(sums: WindowSums) -> dict[int, tuple[int, int, int, int]]:
    """Row -> (events, values, C, R) of the entries with events."""
    out = {}
    for part in sums.parts():
        for row, packed, c, r in zip(part.rows.tolist(), part.counts.tolist(), part.sums.tolist(),
                                     part.residuals.tolist()):
            if packed >> 32:
                out[row] = (packed >> 32, packed & 0xFFFFFFFF, c, r)
    return out


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(events=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 40),
                                 st.one_of(st.integers(-30000, 30000), st.just(SCALED_NULL))), min_size=1, max_size=80),
       windows=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 400)), min_size=1, max_size=6),
       gone=st.lists(st.integers(0, 40), max_size=3))
def test_moved_sums_equal_built_ones(events: list[tuple[int, int, int]], windows: list[tuple[int, int]],
                                     gone: list[int]) -> None:
    """Moving a window (by subtraction and addition, with folds) gives the sums built from scratch;
    dropped rows have no entry."""
    ts, rows, codes = (np.array(col) for col in zip(*events))
    store = _Store(ts, rows, codes.astype(np.int32))
    first_lo, first_len = windows[0]
    sums = WindowSums.build(store, "x", 100, first_lo, first_lo + first_len)  # type: ignore[arg-type]
    for lo, length in windows[1:]:
        if not sums.move(store, lo, lo + length):  # type: ignore[arg-type]
            sums = WindowSums.build(store, "x", 100, lo, lo + length)  # type: ignore[arg-type]
        assert _entries(sums) == _entries(WindowSums.build(store, "x", 100, lo, lo + length))  # type: ignore[arg-type]
    dropped = np.unique(np.array(gone, dtype=np.int64))
    expected = {row: e for row, e in _entries(sums).items() if row not in set(dropped.tolist())}
    sums.drop(dropped)
    assert _entries(sums) == expected


def test_many_new_rows_fold_into_the_main_part() -> None:
    sums = WindowSums("x", 100, 0, 10, *empty_entries())
    for start in range(0, 20000, 1000):
        sums.add_events(np.arange(start, start + 1000, dtype=np.int32), np.full(1000, 50, np.int32), 1)
    assert len(sums.main) >= 16000 and len(sums) == 20000
    assert _entries(sums)[12345] == (1, 1, 50, 0)  # 0.5 is exact: no residual


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(rows=st.sets(st.integers(0, 2**31 - 1) | st.integers(0, 140_000), max_size=6000))
def test_sorted_bitmap_holds_the_rows(rows: set[int]) -> None:
    ordered = np.array(sorted(rows), dtype=np.int64)
    assert sorted_bitmap(ordered) == BitMap(ordered.tolist())
