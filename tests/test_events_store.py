"""Unit tests of the event store's load and query paths: id resolution of event batches, time
ordering and runs, scaled float properties, on-demand slot bitmaps, and the DID counting kernels."""
from __future__ import annotations

import pickle
from hashlib import blake2b

import numpy as np
import pytest
from pyroaring import BitMap
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.exec.did as did_module
import engine.store.events as events_module
from engine.columns import CategoryColumn, ValueColumn
from engine.exec.did import DidEvaluator, scaled_bounds
from engine.query import ast
from engine.schema import EventDef
from engine.store.events import DAY_MS, HOUR_MS, SLOT_MS, EventStore
from engine.store.runs import EPOCH_SPAN, SCALED_NULL, decode_scaled, encode_scaled, merge_order, time_order
from engine.store.idmap import IdMap, dedupe_keys, object_addresses, pack_ids, packed_hashes

try:
    from test_oracle import CASES, SETTINGS, check_dataset
    from strategies import clocks, datasets, did_queries
except ImportError:  # tests/ imported as a package
    from tests.strategies import clocks, datasets, did_queries
    from tests.test_oracle import CASES, SETTINGS, check_dataset

BASE = 1_790_000_000_000 // DAY_MS * DAY_MS
FEW = BitMap(range(0, 300, 7))


# -- id resolution ----------------------------------------------------------------------------


def test_packed_blake2b_matches_hashlib() -> None:
    rng = np.random.default_rng(5)
    alphabet = list("abcXYZ019-_é€😀")
    ids = ["", "a", "u00000001"] + ["x" * n for n in (111, 127, 128, 129, 255, 256, 257, 300, 1000)]
    ids += ["".join(rng.choice(alphabet, rng.integers(1, 90))) for _ in range(500)]
    buf, offsets = pack_ids(ids)
    assert bytes(buf) == "".join(ids).encode("utf-8")
    expected = [int.from_bytes(blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids]
    assert packed_hashes(buf, offsets).tolist() == expected


def test_object_addresses_and_dedupe() -> None:
    ids = [f"id{i}" for i in range(50)]
    batch = [ids[i] for i in np.random.default_rng(1).integers(0, 50, 5000)]
    addresses = object_addresses(batch)
    assert addresses is not None and addresses.tolist() == [id(x) for x in batch]
    assert object_addresses(tuple(batch)) is None and object_addresses([]) is None
    keys = np.random.default_rng(2).integers(1, 3000, 200_000).astype(np.uint64)  # grows the table
    first, inverse = dedupe_keys(keys)
    assert np.array_equal(keys[first][inverse], keys)
    assert first.tolist() == sorted(np.unique(keys, return_index=True)[1].tolist())


def test_event_batch_ids_resolve_like_single_lookups() -> None:
    idmap = IdMap()
    idmap.lookup_or_insert([f"u{i}" for i in range(100)])
    pool = [f"u{i}" for i in range(50, 3000)]
    picks = np.random.default_rng(3).integers(0, len(pool), 20_000)
    batch = [pool[i] for i in picks]
    batch[7] = "".join(["u", "77"])  # equal to a pooled id but another object
    batch[8] = "ünïcödé"
    rows, before = idmap.lookup_or_insert(batch, repeats=True)
    assert before == 100
    reference = IdMap()
    reference.lookup_or_insert([f"u{i}" for i in range(100)])
    expected = [int(reference.lookup_or_insert([i])[0][0]) for i in batch]  # one at a time, first-sight order
    assert rows.tolist() == expected
    assert idmap.ids_of(rows[:50]) == batch[:50]


# -- time order and runs ----------------------------------------------------------------------


def test_time_order_is_a_stable_argsort() -> None:
    rng = np.random.default_rng(4)
    for ts in (rng.integers(0, 50, 10_000), rng.integers(-(2**40), 2**40, 5000), np.array([2**62, -(2**62), 0]),
               np.array([5]), np.array([], dtype=np.int64)):
        ts = ts.astype(np.int64)
        assert np.array_equal(time_order(ts), np.argsort(ts, kind="stable"))
    a, b = np.sort(rng.integers(0, 100, 500)).astype(np.uint32), np.sort(rng.integers(0, 100, 300)).astype(np.uint32)
    assert np.array_equal(merge_order(a, b), np.argsort(np.concatenate([a, b]), kind="stable"))


def test_runs_hold_every_event_in_time_order_across_epochs_and_stay_unchanged() -> None:
    store = EventStore({"visit": EventDef("visit", {"category": "category", "value": "float", "n": "int"})})
    typed = store.types["visit"]
    rng = np.random.default_rng(6)
    start = (BASE >> 32 << 32) + EPOCH_SPAN - 3 * DAY_MS  # batches straddle an epoch boundary
    expected = []
    kept = []
    for batch in range(6):
        n = 3000
        ts = start + rng.integers(0, 6 * DAY_MS, n)
        rows = rng.integers(0, 700, n)
        cats = rng.integers(-1, 3, n)
        values = np.round(rng.uniform(0, 100, n), 2)
        typed.append(rows, ts, {"category": CategoryColumn(cats.astype(np.int32), ["a", "b", "c"]),
                                "value": ValueColumn(values, cats >= 0),
                                "n": ValueColumn(rows * 2, rows % 3 > 0)})
        expected += list(zip(ts.tolist(), rows.tolist(), [v if c >= 0 else None for v, c in zip(values, cats)]))
        for run in typed.runs:  # runs are never changed once written (snapshots may hold their arrays)
            kept.append((run.ts, run.ts.copy(), run.rows, run.rows.copy()))
    got = []
    for run in typed.runs:
        assert np.all(np.diff(run.ts.astype(np.int64)) >= 0)
        values = typed.float_values("value", run.props["value"])
        got += list(zip(run.absolute_ts().tolist(), run.rows.tolist(), [v if v == v else None for v in values]))
        assert run.props["category"].dtype == np.int8
        assert np.array_equal(run.valid["n"], run.rows % 3 > 0)
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert len(typed.epochs) == 2 and len(typed) == 6 * 3000
    for array, copy, rows, rows_copy in kept:
        assert np.array_equal(array, copy) and np.array_equal(rows, rows_copy)


def test_category_codes_widen_past_127_labels() -> None:
    store = EventStore({"visit": EventDef("visit", {"category": "category"})}).types["visit"]
    store.append(np.array([1, 2]), np.array([BASE, BASE + 1]), {"category": CategoryColumn(np.array([0, -1]), ["x"])})
    old = store.runs[0].props["category"]
    labels = [f"l{i}" for i in range(200)]
    store.append(np.array([3]), np.array([BASE + 2]), {"category": CategoryColumn(np.array([199]), labels)})
    assert old.dtype == np.int8 and old.tolist() == [0, -1]  # the old array is left as it was
    codes = np.concatenate([run.props["category"] for run in store.runs])
    assert codes.dtype == np.int16
    assert [store.labels["category"][c] if c >= 0 else None for c in codes.tolist()] == ["x", None, "l199"]


# -- scaled floats ----------------------------------------------------------------------------

LITERALS = [0, 50, -4, 50.0, 49.99, 50.004, 50.005, 50.01, 19.99, -3.25, 0.1, 1e-300, -0.0, 1e30, -1e30,
            21474836.47, -21474836.47, 21474836.48, 2**40, float("inf"), float("-inf")]


def test_scaled_floats_round_trip_bit_for_bit_or_are_refused() -> None:
    values = np.array([0.0, 0.1, 19.99, 50.0, -3.25, 21474836.46, -21474836.46, 123.45, np.nan])
    valid = ~np.isnan(values)
    codes = encode_scaled(values, valid, 100)
    assert codes is not None and codes[-1] == SCALED_NULL
    decoded = decode_scaled(codes, 100)
    assert np.array_equal(decoded[:-1].view(np.int64), values[:-1].view(np.int64)) and np.isnan(decoded[-1])
    for bad in (-0.0, 1e-300, 50.000001, 1e12, float("inf"), 0.1 + 0.2):
        assert encode_scaled(np.array([1.0, bad]), np.array([True, True]), 100) is None
    assert encode_scaled(np.array([1.0, float("nan")]), np.array([True, False]), 100) is not None


@given(st.lists(st.integers(-(2**31) + 1, 2**31 - 2), min_size=1, max_size=50),
       st.one_of(st.sampled_from(LITERALS), st.floats(-1e7, 1e7), st.integers(-(10**7), 10**7)))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_scaled_bounds_match_decoded_comparisons(codes: list[int], literal: float) -> None:
    lo, hi = scaled_bounds(literal, 100)
    for code in codes:
        value = code / 100
        assert (code >= lo) == (value >= literal) and (code <= hi) == (value <= literal)


def _where_store(values: list[float | None]) -> tuple[EventStore, np.ndarray]:
    store = EventStore({"buy": EventDef("buy", {"amount": "float"})})
    raw = np.array([0.0 if v is None else v for v in values])
    valid = np.array([v is not None for v in values])
    positions = np.arange(len(values))
    store.types["buy"].append(positions, BASE + positions, {"amount": ValueColumn(raw, valid)})
    return store, np.where(valid, raw, np.nan)


@pytest.mark.parametrize("extra", [[], [50.000001]])  # all scaled / one value forces float64
def test_where_on_scaled_and_float64_properties_matches_a_naive_check(extra: list[float]) -> None:
    rng = np.random.default_rng(7)
    values = [None if rng.random() < 0.1 else float(np.round(rng.choice([50, 49.99, 50.01, -3.25, 0, 120.5])
                                                            if rng.random() < 0.5 else rng.uniform(-100, 200), 2))
              for _ in range(400)] + extra
    store, plain = _where_store(values)
    typed = store.types["buy"]
    assert (typed.scaled["amount"] == 100) == (not extra)
    part = typed.runs[0]
    order = part.rows  # row i has its event at BASE + i: the run's order is the rows' order
    for literal in LITERALS:
        for op in ("=", "!=", "<", "<=", ">", ">="):
            node = ast.Compare("amount", op, literal)
            expected = np.array([not np.isnan(v) and did_module.CMP[op](v, literal) for v in plain[order]])
            got = did_module.where_mask(node, part, typed, BASE)
            assert np.array_equal(got, expected), (op, literal)
        node = ast.Between("amount", -3.25, literal)
        expected = np.array([not np.isnan(v) and -3.25 <= v <= literal for v in plain[order]])
        assert np.array_equal(did_module.where_mask(node, part, typed, BASE), expected)
        assert np.array_equal(did_module.where_mask(ast.Not(node), part, typed, BASE), ~expected)
    node = ast.In("amount", (50, 49.99, 50.005, 120.5), negated=True)
    expected = np.array([not np.isnan(v) and v not in (50, 49.99, 50.005, 120.5) for v in plain[order]])
    assert np.array_equal(did_module.where_mask(node, part, typed, BASE), expected)
    assert np.array_equal(did_module.where_mask(ast.IsNull("amount"), part, typed, BASE), np.isnan(plain[order]))


def test_float_property_turns_float64_keeping_earlier_runs_values() -> None:
    store, _ = _where_store([1.5, None, 2.25])
    typed = store.types["buy"]
    old = typed.runs[0].props["amount"]
    assert old.dtype == np.int32
    typed.append(np.array([9]), np.array([BASE + 10]), {"amount": ValueColumn(np.array([0.1 + 0.2]), np.array([True]))})
    assert typed.scaled["amount"] == 0 and old.dtype == np.int32  # the old run's array is unchanged
    values = np.concatenate([typed.float_values("amount", r.props["amount"]) for r in typed.runs])
    assert values.dtype == np.float64
    assert sorted(v for v in values.tolist() if v == v) == [0.1 + 0.2, 1.5, 2.25] and np.isnan(values).sum() == 1


def test_stores_pickled_by_older_versions_get_defaults() -> None:
    store, _ = _where_store([1.5])
    typed = store.types["buy"]
    state = dict(vars(typed))
    del state["slot_days"], state["slots"], state["scaled"]
    state["hours"] = {}
    typed.runs[0].props["amount"] = decode_scaled(typed.runs[0].props["amount"], 100)  # float64, as before
    restored = type(typed).__new__(type(typed))
    restored.__setstate__(state)
    assert restored.slot_days == {} and restored.scaled == {} and not hasattr(restored, "hours")
    assert restored.float_values("amount", restored.runs[0].props["amount"]).tolist() == [1.5]
    assert pickle.loads(pickle.dumps(restored)).scaled == {}


# -- presence with on-demand slots ----------------------------------------------------------------


@pytest.fixture
def eager_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build slots for every partial day (no scanning shortcut) and keep only two days of them."""
    monkeypatch.setattr(did_module, "SLOT_BUILD_MIN_EVENTS", 0)
    monkeypatch.setattr(events_module, "SLOT_CACHE_DAYS", 2)


def test_presence_with_slots_matches_a_scan_and_follows_appends(eager_slots: None) -> None:
    rng = np.random.default_rng(8)
    store = EventStore({"visit": EventDef("visit", {})})
    typed = store.types["visit"]
    evaluator = DidEvaluator(store)
    all_ts, all_rows = np.empty(0, np.int64), np.empty(0, np.int64)
    for batch in range(4):
        ts = BASE + rng.integers(-3 * DAY_MS, 3 * DAY_MS, 1500)
        ts[:100] = BASE + rng.integers(-60, 60, 100) * SLOT_MS + rng.integers(-1, 2, 100)  # on slot edges, +-1 ms
        rows = rng.integers(0, 300, len(ts))
        typed.append(rows, ts, {})
        all_ts, all_rows = np.concatenate([all_ts, ts]), np.concatenate([all_rows, rows])
        edges = [BASE + k * HOUR_MS + d * SLOT_MS + e for k in range(-70, 70, 9) for d in (0, 1, 5) for e in (-1, 0, 1)]
        for lo in edges[::5]:
            for hi in edges[2::7]:
                expected = sorted(set(all_rows[(all_ts >= lo) & (all_ts <= hi)].tolist()))
                assert list(evaluator.present(typed, lo, hi)) == expected, (batch, lo - BASE, hi - BASE)
                within = evaluator.present(typed, lo, hi, found=FEW)
                assert list(within & FEW) == [r for r in expected if r % 7 == 0]
        assert 1 <= len(typed.slot_days) <= 2
        assert set(typed.slots) <= {s for d in typed.slot_days for s in range(d * 288, d * 288 + 288)}


@settings(SETTINGS, max_examples=20)
@given(ds=datasets(max_events=600), cases=st.lists(st.tuples(did_queries(), clocks()), min_size=10, max_size=10))
def test_random_did_queries_match_oracle_with_slots_always_built(ds, cases) -> None:
    """The oracle comparison with every partial edge day answered from slot bitmaps."""
    saved = did_module.SLOT_BUILD_MIN_EVENTS, events_module.SLOT_CACHE_DAYS
    did_module.SLOT_BUILD_MIN_EVENTS, events_module.SLOT_CACHE_DAYS = 0, 2
    try:
        check_dataset(ds, cases, shards=1)
    finally:
        did_module.SLOT_BUILD_MIN_EVENTS, events_module.SLOT_CACHE_DAYS = saved


# -- counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_counted_rows_match_a_naive_count(op: str, n: int) -> None:
    rng = np.random.default_rng(9)
    store = EventStore({"buy": EventDef("buy", {"amount": "float"})})
    typed = store.types["buy"]
    rows = np.concatenate([rng.integers(0, 5000, 3000), rng.integers(0, 40, 400)])  # some rows with many events
    ts = BASE + rng.integers(0, 10 * DAY_MS, len(rows))
    amounts = np.round(rng.uniform(0, 100, len(rows)), 2)
    typed.append(rows, ts, {"amount": ValueColumn(amounts, np.ones(len(rows), bool))})
    evaluator = DidEvaluator(store)
    lo, hi = BASE + DAY_MS + 123, BASE + 8 * DAY_MS
    for where in (None, ast.Compare("amount", ">", 50)):
        node = ast.Did("buy", where=where, count_op=op, count_n=n)
        inside = (ts >= lo) & (ts <= hi) & (True if where is None else amounts > 50)
        counts = np.bincount(rows[inside], minlength=5000)
        for want in (True, False):
            got = evaluator.counted_rows(node, typed, lo, hi, BASE + 8 * DAY_MS, 5000, None, want)
            test = did_module.CMP[op]
            expected = [r for r in range(5000) if counts[r] > 0 and test(int(counts[r]), n) == want]
            assert got.tolist() == expected, (where, want)


def test_did_estimate_uses_the_window_at_a_clock() -> None:
    store = EventStore({"buy": EventDef("buy", {})})
    typed = store.types["buy"]
    typed.append(np.arange(1000) % 400, BASE - np.arange(1000) * HOUR_MS, {})  # one event an hour, 400 rows
    evaluator = DidEvaluator(store)
    within = ast.Did("buy", within_ms=10 * HOUR_MS)
    assert evaluator.estimate(within) == 400
    assert evaluator.estimate(within, BASE) == 10
    assert evaluator.estimate(ast.Did("buy", within_ms=10 * HOUR_MS, count_op=">=", count_n=2), BASE) == 5
    assert evaluator.estimate(ast.Did("buy", count_op="=", count_n=0), BASE) == 400  # holds at zero


def test_runs_do_not_share_memory_with_the_callers_batch() -> None:
    store = EventStore({"visit": EventDef("visit", {"n": "int"})}).types["visit"]
    rows, ts = np.arange(5, dtype=np.int32), BASE + np.arange(5, dtype=np.int64)  # already in time order
    values, valid = np.arange(5, dtype=np.int64), np.ones(5, dtype=bool)
    store.append(rows, ts, {"n": ValueColumn(values, valid)})
    rows[:], ts[:], values[:], valid[:] = 9, 0, 9, False
    run = store.runs[0]
    assert run.rows.tolist() == [0, 1, 2, 3, 4] and run.props["n"].tolist() == [0, 1, 2, 3, 4]
    assert run.valid["n"].all() and run.absolute_ts().tolist() == (BASE + np.arange(5)).tolist()


def test_pickled_store_leaves_the_slot_cache_out(eager_slots: None) -> None:
    store = EventStore({"visit": EventDef("visit", {})})
    typed = store.types["visit"]
    typed.append(np.arange(100), BASE + np.arange(100) * 60_000, {})
    evaluator = DidEvaluator(store)
    expected = list(evaluator.present(typed, BASE + 30 * 60_000 + 1, BASE + 70 * 60_000))
    assert typed.slot_days
    restored = pickle.loads(pickle.dumps(typed))
    assert restored.slot_days == {} and restored.slots == {} and typed.slot_days  # the live store keeps its cache
    assert list(DidEvaluator(store).present(restored, BASE + 30 * 60_000 + 1, BASE + 70 * 60_000)) == expected
