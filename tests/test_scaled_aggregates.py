"""Aggregates of cent-valued float properties (kept as scaled int32 codes): integer sums and
residuals against ``math.fsum``, and engine answers at the literal's exact value and at window
edges against the naive evaluator, at shards 1-3."""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, Schema
from engine.exec.scaled_sums import (EXTREMES_WIDTH, GREATEST, LEAST, RESIDUAL_BITS, SUM, accumulate_residuals,
                                     accumulate_scaled, correctly_rounded_sums, counts_of, rank_table, residual_bits,
                                     values_of)
from engine.schema import CONTRACT_SCHEMA
from engine.store.runs import SCALED_NULL

try:
    from oracle import NaiveStore
    from strategies import DAY, NOW, Dataset
    from test_oracle import assert_same, load
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore
    from tests.strategies import DAY, NOW, Dataset
    from tests.test_oracle import assert_same, load

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
CODE = st.integers(min_value=-(2**31) + 1, max_value=2**31 - 1)
SMALL_CODE = st.integers(min_value=-20_000, max_value=20_000)


def row_states(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The per-row records and residual sums of ``groups`` (codes per row; SCALED_NULL is a null),
    the rows' events interleaved."""
    rows = np.array([k for k, g in enumerate(groups) for _ in g], dtype=np.int32)
    codes = np.array([c for g in groups for c in g], dtype=np.int32)
    order = np.argsort(np.arange(len(rows)) % 7, kind="stable")  # not grouped by row
    words = np.zeros(len(groups) // 64 + 1, dtype=np.uint64)
    for k in range(len(groups)):
        words[k >> 6] |= np.uint64(1) << np.uint64(k & 63)
    state = np.zeros((len(groups), EXTREMES_WIDTH), dtype=np.int64)
    residuals = np.zeros(len(groups), dtype=np.int64)
    pick = np.empty(0, np.bool_)
    accumulate_scaled(rows[order], pick, False, rank_table(words), codes[order], state, True)
    accumulate_residuals(rows[order], pick, False, np.arange(len(groups), dtype=np.int64), codes[order], residuals, 100)
    return state, residuals


def test_residual_unit_matches_the_scale() -> None:
    assert residual_bits(100) == RESIDUAL_BITS


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(groups=st.lists(st.lists(st.one_of(CODE, SMALL_CODE, st.just(SCALED_NULL)), min_size=1, max_size=12),
                       min_size=1, max_size=8))
def test_integer_sums_give_fsum_min_and_max(groups: list[list[int]]) -> None:
    """Per row: the correctly rounded sum equals math.fsum of the values c / 100; the extremes and
    the number of values are those of the non-null codes."""
    state, residuals = row_states(groups)
    sums = correctly_rounded_sums(state[:, SUM], residuals, 100)
    for k, group in enumerate(groups):
        codes = [c for c in group if c != SCALED_NULL]
        assert (counts_of(state)[k], values_of(state)[k]) == (len(group), len(codes))
        assert sums[k] == math.fsum(c / 100 for c in codes)
        if codes:
            assert (state[k, LEAST], state[k, GREATEST]) == (min(codes), max(codes))


@pytest.mark.parametrize("values", [[0.1, 0.2, -0.3], [0.1] * 10, [33.33, 33.33, 33.34], [19.99, 80.01],
                                    [21474836.47, 21474836.47, -21474836.47, 0.01], [99.99, 0.01, 0.01, -0.01],
                                    [0.07] * 100])
def test_sums_that_cents_put_on_a_tie(values: list[float]) -> None:
    """Sums whose cents land exactly on a round number, where the residuals alone decide."""
    state, residuals = row_states([[round(v * 100) for v in values]])
    assert correctly_rounded_sums(state[:, SUM], residuals, 100)[0] == math.fsum(values)


# -- the engine against the naive evaluator ---------------------------------------------------------------


ROWS = {  # cent amounts whose sums sit on or next to round literals
    "tie100": [33.33, 33.33, 33.34],
    "over100": [50.0, 50.01],
    "under100": [99.99],
    "tenths": [0.1] * 10,
    "cancel": [0.1, 0.2, -0.3],
    "avg80": [79.99, 80.01],
    "big": [21474836.47, 21474836.47, -21474836.47, 0.01],
    "nulls": [None, 100.0, None],
}


EDGE_NOW = NOW - NOW % DAY + 13 * 3_600_000 + 17  # 13:00:00.017 UTC: WITHIN 30d starts and ends inside days
EDGE_LO = EDGE_NOW - 30 * DAY + 1  # the first ms of WITHIN 30d
EDGES = [  # cart_abandoned at the window's edges (purchases hold ROWS)
    {"id": "edges", "event": "cart_abandoned", "ts": EDGE_LO, "cart_value": 60.0},
    {"id": "edges", "event": "cart_abandoned", "ts": EDGE_NOW, "cart_value": 40.0},
    {"id": "outside", "event": "cart_abandoned", "ts": EDGE_LO - 1, "cart_value": 60.0},
    {"id": "outside", "event": "cart_abandoned", "ts": EDGE_NOW, "cart_value": 40.0},
    {"id": "outside", "event": "cart_abandoned", "ts": EDGE_NOW + 1, "cart_value": 1000.0},
    {"id": "middle", "event": "cart_abandoned", "ts": EDGE_NOW - 15 * DAY, "cart_value": 100.01},
]


@pytest.fixture(scope="module", params=[1, 2, 3])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, NaiveStore]]:
    """An engine (1, 2 or 3 shards) and the oracle, both holding ROWS' purchases in the last day and EDGES."""
    events: list[dict[str, Any]] = []
    for name, values in ROWS.items():
        for i, value in enumerate(values):
            event: dict[str, Any] = {"id": name, "event": "purchase", "ts": NOW - 1000 - 37 * i}
            if value is not None:
                event["amount"] = value
            events.append(event)
    with Engine(SCHEMA, shards=request.param) as engine:
        oracle = NaiveStore(CONTRACT_SCHEMA)
        load(Dataset([], [("profiles", [{"id": "nothing"}]), ("events", events + EDGES)]), engine, oracle)
        yield engine, oracle


def test_sums_and_averages_at_and_beside_their_exact_value(pair: tuple[Engine, NaiveStore]) -> None:
    """Literals at each row's exact SUM and AVG, one ulp and one cent either side."""
    for values in ROWS.values():
        present = [v for v in values if v is not None]
        total = math.fsum(present)
        for func, exact in (("SUM", total), ("AVG", total / len(present))):
            for literal in (exact, math.nextafter(exact, math.inf), math.nextafter(exact, -math.inf),
                            exact + 0.01, exact - 0.01):
                for op in ("=", "<", ">="):
                    assert_same(pair[0], pair[1], f"DID(purchase, {func}(amount) {op} {literal!r})", NOW)


def test_round_literals(pair: tuple[Engine, NaiveStore]) -> None:
    """The exact ids at round literals (SUM 100 of 33.33 + 33.33 + 33.34 is 100.0 after rounding)."""
    engine, oracle = pair
    assert math.fsum(ROWS["tie100"]) == 100.0
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) > 100)") == ["avg80", "big", "over100"]
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) = 100)") == ["nulls", "tie100"]
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) = 1)") == ["tenths"]
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) > 0, SUM(amount) < 0.01)") == ["cancel"]
    assert assert_same(engine, oracle, "DID(purchase, AVG(amount) = 80, COUNT >= 2)") == ["avg80"]
    assert assert_same(engine, oracle, "DID(purchase, MIN(amount) = 0.1, MAX(amount) <= 0.1)") == ["tenths"]
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) = 1, MAX(amount) = 0.1)") == ["tenths"]
    assert assert_same(engine, oracle, "DID(purchase, AVG(amount) < 80.01, MIN(amount) >= 79.99)") == ["avg80"]
    assert assert_same(engine, oracle, "DID(purchase, SUM(amount) < 0.01)") == ["cancel", "edges", "middle",
                                                                                 "nothing", "outside"]
    everyone = ["edges", "middle", "nothing", "outside"] + sorted(ROWS)
    assert assert_same(engine, oracle, f"DID(purchase, SUM(amount) < {2**53 + 1})") == sorted(everyone)
    assert assert_same(engine, oracle, f"DID(purchase, SUM(amount) >= {-(10**400)})") == sorted(everyone)
    assert assert_same(engine, oracle, f"DID(purchase, AVG(amount) > {10**400})") == []


def test_window_edges_inside_a_day(pair: tuple[Engine, NaiveStore]) -> None:
    """Events at the window's first and last millisecond count, one ms outside does not, with the
    window's edges in the middle of UTC days and sums that land on the literal."""
    engine, oracle = pair
    query = "DID(cart_abandoned, SUM(cart_value) >= 100, WITHIN 30d)"
    for clock, ids in ((EDGE_NOW, ["edges", "middle"]), (EDGE_NOW - 1, ["middle"]),
                       (EDGE_NOW + 1, ["middle", "outside"])):
        assert assert_same(engine, oracle, query, clock) == ids
    assert assert_same(engine, oracle, "DID(cart_abandoned, SUM(cart_value) = 100, COUNT = 2, WITHIN 30d)",
                       EDGE_NOW) == ["edges"]
    assert assert_same(engine, oracle, "DID(cart_abandoned, AVG(cart_value) = 40, WITHIN 30d)", EDGE_NOW) == \
        ["outside"]


def test_residuals_only_of_the_near_rows() -> None:
    """Rows that share their low 16 bits with a near row pass the filter but add nothing; picked
    events only; nulls add nothing."""
    rows = np.array([5, 65541, 131077, 65541, 65541, 65541], dtype=np.int32)
    codes = np.array([10, 10, 10, 20, SCALED_NULL, 7], dtype=np.int32)
    pick = np.array([True, True, True, True, True, False])
    residuals = np.zeros(1, dtype=np.int64)
    accumulate_residuals(rows, pick, True, np.array([65541], dtype=np.int64), codes, residuals, 100)
    sums = correctly_rounded_sums(np.array([30], dtype=np.int64), residuals, 100)
    assert sums.tolist() == [math.fsum([0.1, 0.2])]
