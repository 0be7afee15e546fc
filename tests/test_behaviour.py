"""DID aggregates, SEQUENCE and BUCKET (contract section 5) against the naive evaluator, exact SUM
against ``math.fsum``, error positions, plans that cross to shards, saved segments and EXPLAIN."""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, QueryError, Schema
from engine.exec.aggregate import compare, segment_fsum
from engine.plan import plan
from engine.query import bind, parse, to_text
from engine.schema import CONTRACT_SCHEMA
from engine.shard.messages import decode_request, encode_request

try:
    from oracle import NaiveStore, bucket, exact_sum
    from strategies import DAY, NOW, Dataset, behaviour_queries, clocks, datasets
    from test_oracle import SETTINGS, assert_same, check_dataset, load
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore, bucket, exact_sum
    from tests.strategies import DAY, NOW, Dataset, behaviour_queries, clocks, datasets
    from tests.test_oracle import SETTINGS, assert_same, check_dataset, load

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
CASES = st.lists(st.tuples(behaviour_queries(), clocks()), min_size=10, max_size=10)


# -- random datasets and queries against the oracle -------------------------------------------


@settings(SETTINGS, max_examples=40)
@given(ds=datasets(max_events=600), cases=CASES)
def test_random_behaviour_queries_match_oracle(ds: Dataset, cases: list[tuple[str, int]]) -> None:
    """40 event-heavy datasets x 10 aggregate / SEQUENCE / BUCKET queries on one shard."""
    check_dataset(ds, cases, shards=1)


@pytest.mark.parametrize("shards", [2, pytest.param(3, marks=pytest.mark.slow)])
@settings(SETTINGS, max_examples=5)
@given(ds=datasets(max_events=500), cases=st.lists(st.tuples(behaviour_queries(), clocks()), min_size=16,
                                                    max_size=16))
def test_random_behaviour_queries_match_oracle_sharded(shards: int, ds: Dataset,
                                                       cases: list[tuple[str, int]]) -> None:
    """The same over worker-process shards."""
    check_dataset(ds, cases, shards=shards)


# -- exact sums ---------------------------------------------------------------------------------


ADVERSARIAL = [
    [1e100, 1.0, -1e100],
    [0.1] * 10,
    [1e16, 1.0, 1e-16],
    [2.0**53, 1.0, 1.0],
    [2.0**53, 1.0, -(2.0**-60)],
    [1.0, 2.0**-53, 2.0**-106],
    [1e308, 1e308, -1e308],
    [-0.0, -0.0],
    [5e-324, 5e-324, 1e-300],
    [0.1, 0.2, 0.3, -0.6],
    [1e300, 1e-300, -1e300, 19.99, 49.99],
]


@pytest.mark.parametrize("values", ADVERSARIAL)
def test_segment_sum_equals_fsum_on_adversarial_values(values: list[float]) -> None:
    """Each sum is the correctly rounded one, in every order of the values."""
    rng = random.Random(1)
    expected = exact_sum(values)
    for _ in range(6):
        order = values[:]
        rng.shuffle(order)
        sums, bad = segment_fsum(np.array([0], dtype=np.int64), np.array(order, dtype=np.float64))
        got = exact_sum(order) if bad[0] else float(sums[0])
        assert got == expected


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(groups=st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1,
                                  max_size=12), min_size=1, max_size=6))
def test_segment_sum_equals_fsum_on_random_floats(groups: list[list[float]]) -> None:
    """Many segments at once; each equals math.fsum (or the overflow fallback)."""
    starts = np.cumsum([0] + [len(g) for g in groups[:-1]]).astype(np.int64)
    sums, bad = segment_fsum(starts, np.array([v for g in groups for v in g], dtype=np.float64))
    for k, group in enumerate(groups):
        if not bad[k]:
            assert sums[k] == math.fsum(group)


def test_exact_comparisons_with_large_literals() -> None:
    """Floats against ints beyond 2**53 and ints against fractional floats compare as in Python."""
    values = np.array([2.0**53, 2.0**53 + 2, -1e308])
    for op in ("=", "!=", "<", "<=", ">", ">="):
        for literal in (2**53 + 1, 2**53, 10**400, -(10**400)):
            expected = [eval(f"{v!r} {op.replace('=', '==') if op == '=' else op} {literal}") for v in values.tolist()]
            assert compare(values, op, literal).tolist() == expected, (op, literal)
    ints = np.array([3, 4, -(2**63)], dtype=np.int64)
    assert compare(ints, "<", 3.5).tolist() == [True, False, True]
    assert compare(ints, "=", 4.0).tolist() == [False, True, False]
    assert compare(ints, ">", 2**70).tolist() == [False, False, False]


# -- hand-written cases: exact ids --------------------------------------------------------------


@pytest.fixture(params=[1, 2, 3])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, NaiveStore]]:
    """An empty engine (1, 2 or 3 shards) and an empty oracle."""
    with Engine(SCHEMA, shards=request.param) as engine:
        yield engine, NaiveStore(CONTRACT_SCHEMA)


def feed(pair: tuple[Engine, NaiveStore], profiles: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    load(Dataset([], [("profiles", profiles), ("events", events)]), pair[0], pair[1])


def expect(pair: tuple[Engine, NaiveStore], text: str, ids: list[str], now: int = NOW) -> None:
    assert assert_same(pair[0], pair[1], text, now) == ids


def test_sums_and_averages_at_their_exact_value(pair: tuple[Engine, NaiveStore]) -> None:
    """Literals equal to, and one ulp either side of, each profile's exact SUM and AVG: the engine's
    compensated sums leave such rows to the exact path, and every answer equals the oracle's."""
    sets = [v for v in ADVERSARIAL if max(map(abs, v)) < 1e300]
    feed(pair, [{"id": f"p{k}"} for k in range(len(sets))],
         [{"id": f"p{k}", "event": "purchase", "ts": NOW - 1000 - i, "amount": value}
          for k, values in enumerate(sets) for i, value in enumerate(values)])
    for values in sets:
        total = math.fsum(values)
        for func, exact in (("SUM", total), ("AVG", total / len(values))):
            for literal in (exact, math.nextafter(exact, math.inf), math.nextafter(exact, -math.inf)):
                for op in ("=", "<", ">="):
                    assert_same(pair[0], pair[1], f"DID(purchase, {func}(amount) {op} {literal!r})", NOW)


def test_aggregates(pair: tuple[Engine, NaiveStore]) -> None:
    """SUM of nothing is 0, AVG/MIN/MAX of nothing are null, nulls are ignored, no implicit COUNT."""
    feed(pair, [{"id": "none"}], [
        {"id": "big", "event": "purchase", "ts": NOW - DAY, "amount": 60.5},
        {"id": "big", "event": "purchase", "ts": NOW - 2 * DAY, "amount": 50},
        {"id": "big", "event": "purchase", "ts": NOW - 40 * DAY, "amount": 500},
        {"id": "nulls", "event": "purchase", "ts": NOW - DAY, "amount": None},
        {"id": "nulls", "event": "purchase", "ts": NOW - DAY},
        {"id": "small", "event": "purchase", "ts": NOW - DAY, "amount": 4.99},
        {"id": "small", "event": "purchase", "ts": NOW - DAY, "amount": None},
        {"id": "small", "event": "purchase", "ts": NOW + 1, "amount": 1000},
    ])
    expect(pair, "DID(purchase, SUM(amount) > 100, WITHIN 30d)", ["big"])
    expect(pair, "DID(purchase, SUM(amount) > 100)", ["big"])
    expect(pair, "DID(purchase, SUM(amount) < 10, WITHIN 30d)", ["none", "nulls", "small"])
    expect(pair, "DID(purchase, SUM(amount) < 10, COUNT >= 1, WITHIN 30d)", ["nulls", "small"])
    expect(pair, "DID(purchase, AVG(amount) < 10, WITHIN 30d)", ["small"])
    expect(pair, "DID(purchase, AVG(amount) = 55.25, WITHIN 30d)", ["big"])
    expect(pair, "DID(purchase, MIN(amount) >= 50, MAX(amount) <= 500)", ["big"])
    expect(pair, "DID(purchase, MAX(amount) < 100, WITHIN 30d)", ["big", "small"])
    expect(pair, "DID(purchase, COUNT = 2, SUM(amount) = 4.99)", ["small"])
    expect(pair, "NOT DID(purchase, AVG(amount) >= 0)", ["none", "nulls"])
    expect(pair, "DID(purchase WHERE amount > 55, SUM(amount) > 100)", ["big"])
    expect(pair, "DID(purchase WHERE amount > 55, SUM(amount) > 100, WITHIN 30d)", [])
    expect(pair, "DID(purchase, SUM(amount) > 100, BEFORE NOW - 30d)", ["big"])


def test_exact_sums_of_event_values(pair: tuple[Engine, NaiveStore]) -> None:
    """SUM equals math.fsum of the values, whatever the arrival order (0.1 ten times is 1.0)."""
    events = [{"id": "tenth", "event": "purchase", "ts": NOW - k, "amount": 0.1} for k in range(10)]
    events += [{"id": "wide", "event": "purchase", "ts": NOW - k, "amount": v}
               for k, v in enumerate([1e300, 19.99, -1e300, 0.01])]
    random.Random(5).shuffle(events)
    feed(pair, [], events)
    expect(pair, "DID(purchase, SUM(amount) = 1.0)", ["tenth"])
    expect(pair, f"DID(purchase, SUM(amount) = {math.fsum([19.99, 0.01])!r})", ["wide"])
    expect(pair, "DID(purchase, AVG(amount) = 0.1)", ["tenth"])


def test_sequences(pair: tuple[Engine, NaiveStore]) -> None:
    """Strict time order, equal times never follow each other, SPAN and windows to the ms."""
    base = NOW - 10 * DAY
    feed(pair, [{"id": "quiet"}], [
        {"id": "funnel", "event": "page_view", "ts": base, "category": "shoes"},
        {"id": "funnel", "event": "cart_abandoned", "ts": base + 1},
        {"id": "funnel", "event": "purchase", "ts": base + DAY},
        {"id": "tied", "event": "page_view", "ts": base},
        {"id": "tied", "event": "cart_abandoned", "ts": base},
        {"id": "tied", "event": "purchase", "ts": base + 5},
        {"id": "slow", "event": "page_view", "ts": base},
        {"id": "slow", "event": "cart_abandoned", "ts": base + DAY},
        {"id": "slow", "event": "purchase", "ts": base + DAY + 1},
        {"id": "slow", "event": "page_view", "ts": base + DAY - 1},
        {"id": "reversed", "event": "purchase", "ts": base},
        {"id": "reversed", "event": "cart_abandoned", "ts": base + 1},
        {"id": "reversed", "event": "page_view", "ts": base + 2},
        {"id": "twice", "event": "purchase", "ts": base},
        {"id": "twice", "event": "purchase", "ts": base},
        {"id": "twice", "event": "purchase", "ts": base + 3},
    ])
    funnel = "page_view THEN cart_abandoned THEN purchase"
    expect(pair, f"SEQUENCE({funnel})", ["funnel", "slow"])
    expect(pair, f"SEQUENCE({funnel}, SPAN 1d)", ["funnel", "slow"])
    expect(pair, f"SEQUENCE({funnel}, SPAN 2s)", ["slow"])
    expect(pair, "SEQUENCE(page_view WHERE category = 'shoes' THEN cart_abandoned THEN purchase, SPAN 1d)",
           ["funnel"])
    expect(pair, f"SEQUENCE({funnel}, WITHIN 10d)", ["slow"])
    expect(pair, f"SEQUENCE({funnel}, SINCE {base}, BEFORE {base + DAY})", [])
    expect(pair, f"SEQUENCE({funnel}, SINCE {base}, BEFORE {base + DAY + 1})", ["funnel"])
    expect(pair, "SEQUENCE(purchase THEN purchase)", ["twice"])
    expect(pair, "SEQUENCE(purchase THEN purchase THEN purchase)", [])
    expect(pair, "NOT SEQUENCE(page_view THEN cart_abandoned)", ["quiet", "reversed", "tied", "twice"])
    expect(pair, f"SEQUENCE({funnel})", [], now=base + DAY - 1)


def test_sequence_scanned_step_at_every_position(pair: tuple[Engine, NaiveStore]) -> None:
    """The step with the most events is scanned against intervals built from the other steps: first,
    middle and last position, WHERE on it, rows with only some steps, ties, SPAN and windows to the
    ms, same-type steps, events of one type in several runs."""
    base = NOW - 10 * DAY

    def chain(pid: str, *events: tuple[str, int]) -> list[dict[str, Any]]:
        return [{"id": pid, "event": event, "ts": base + at} for event, at in events]

    events = [
        *chain("exact", ("page_view", 0), ("cart_abandoned", 1000), ("purchase", 2000)),
        *chain("over", ("page_view", 0), ("cart_abandoned", 1000)),
        *chain("two_starts", ("cart_abandoned", 1000), ("purchase", 2001)),
        *chain("tied", ("page_view", 1000), ("cart_abandoned", 1000), ("purchase", 1500)),
        *chain("tied_end", ("page_view", 0), ("cart_abandoned", 1000), ("purchase", 1000)),
        *chain("partial", ("page_view", 0), ("purchase", 1)),
        *chain("noise", ("cart_abandoned", 5000), ("purchase", 6000)),
        *chain("noise", *[("page_view", at) for at in [*range(0, 4000, 200), *range(5200, 6000, 200)]]),
        *chain("mid", ("cart_abandoned", 0), ("page_view", 1), ("purchase", 2000)),
        *chain("mid_tie", ("cart_abandoned", 0), ("page_view", 0), ("purchase", 5)),
        *chain("mid_over", ("cart_abandoned", 0), ("page_view", 1000), ("purchase", 2001)),
        *chain("tail", ("cart_abandoned", 0), ("purchase", 1), ("page_view", 2000)),
        *chain("tail_over", ("cart_abandoned", 0), ("purchase", 1), ("page_view", 2001)),
    ]
    events[0]["category"] = "shoes"
    feed(pair, [], events + [{"id": "two_starts", "event": "page_view", "ts": base, "category": "shoes"}])
    # a later, smaller batch: a second run of each type
    feed(pair, [], [*chain("over", ("purchase", 2001)), *chain("two_starts", ("page_view", 1))])
    funnel = "page_view THEN cart_abandoned THEN purchase"
    expect(pair, f"SEQUENCE({funnel}, SPAN 2s)", ["exact", "two_starts"])
    expect(pair, "SEQUENCE(cart_abandoned THEN page_view THEN purchase, SPAN 2s)", ["mid", "noise"])
    expect(pair, "SEQUENCE(cart_abandoned THEN purchase THEN page_view, SPAN 2s)", ["tail"])
    expect(pair, "SEQUENCE(cart_abandoned THEN purchase THEN page_view)", ["tail", "tail_over"])
    expect(pair, "SEQUENCE(page_view WHERE category = 'shoes' THEN cart_abandoned THEN purchase, SPAN 2s)",
           ["exact"])
    expect(pair, f"SEQUENCE({funnel})", ["exact", "noise", "over", "two_starts"])
    expect(pair, f"SEQUENCE({funnel}, SPAN 2s, SINCE {base + 1}, BEFORE {base + 2002})", ["two_starts"])
    expect(pair, f"SEQUENCE({funnel}, SPAN 2s, SINCE {base + 1}, BEFORE {base + 2001})", [])
    expect(pair, "SEQUENCE(page_view THEN page_view THEN purchase, SPAN 2s)", ["noise"])
    expect(pair, "SEQUENCE(page_view THEN page_view)", ["noise", "two_starts"])
    expect(pair, "SEQUENCE(page_view THEN purchase, SPAN 1s)",
           ["mid_tie", "noise", "partial", "tied", "tied_end"])


def test_sequence_over_millennia_with_many_steps(pair: tuple[Engine, NaiveStore]) -> None:
    """A window of 814,453 days with 16 steps does not fit time, row rank and step bits in one int64
    key: the gathered events are grouped as separate columns, with the same answers as 3 steps."""
    base = NOW - 10 * DAY
    far = 814_453 * DAY  # 47 bits of milliseconds
    alternating = [("page_view", "cart_abandoned")[i % 2] for i in range(15)]

    def chain(pid: str, steps: int, last: int) -> list[dict[str, Any]]:
        return [{"id": pid, "event": event, "ts": base + i} for i, event in enumerate(alternating[:steps])] + [
            {"id": pid, "event": "purchase", "ts": base + last}]

    feed(pair, [], [*chain("long", 15, far), *chain("long_over", 15, far + 1), *chain("one_short", 14, far),
                    *chain("tied", 15, 14), *chain("gap", 2, far + 2)])
    now = base + far + DAY
    many = " THEN ".join([*alternating, "purchase"])
    expect(pair, f"SEQUENCE({many})", ["long", "long_over"], now=now)
    expect(pair, f"SEQUENCE({many}, SPAN 814453d)", ["long"], now=now)
    expect(pair, f"SEQUENCE({many}, SPAN 814453d, SINCE {base + 1})", [], now=now)
    funnel = "page_view THEN cart_abandoned THEN purchase"
    expect(pair, f"SEQUENCE({funnel}, SPAN 814453d)", ["long", "long_over", "one_short", "tied"], now=now)
    expect(pair, f"SEQUENCE({funnel})", ["gap", "long", "long_over", "one_short", "tied"], now=now)


def test_buckets(pair: tuple[Engine, NaiveStore]) -> None:
    """BUCKET(seed) is the SAMPLE hash; any integer literal; low > high selects nothing."""
    ids = [f"p{i}" for i in range(300)]
    feed(pair, [{"id": pid} for pid in ids], [])
    engine, _ = pair
    expect(pair, "BUCKET(42) < 10000", sorted(ids))
    expect(pair, "BUCKET(42) BETWEEN 5000 AND 10", [])
    expect(pair, "BUCKET(42) >= -7", sorted(ids))
    variant = sorted(pid for pid in ids if 1000 <= bucket(pid, 42) <= 5499)
    expect(pair, "BUCKET(42) BETWEEN 1000 AND 5499", variant)
    expect(pair, "NOT BUCKET(42) NOT BETWEEN 1000 AND 5499", variant)
    seed = 2**64 - 1
    assert engine.ids(f"BUCKET({seed}) < 1250") == engine.ids(f"SAMPLE(12.5, {seed})")
    assert engine.count("BUCKET(7) IN (1, 2, 10000)") == sum(bucket(pid, 7) in (1, 2) for pid in ids)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message", "column", "token"), [
    ("DID(purchase, SUM(category) > 1)",
     "SUM needs an int or float property, property 'category' of event 'purchase' is category", 19, "category"),
    ("DID(purchase, AVG(nope) > 1)", "unknown property 'nope' of event 'purchase'", 19, "nope"),
    ("DID(purchase, MAX(amount) > 'x')", "MAX needs a number to compare with", 29, "'x'"),
    ("SEQUENCE(purchase, SPAN 1d)", "SEQUENCE needs at least two steps: step THEN step", 18, ","),
    ("SEQUENCE(purchase THEN nope)", "unknown event type 'nope'", 24, "nope"),
    ("SEQUENCE(purchase THEN purchase, COUNT >= 1)", "expected SPAN, WITHIN, SINCE or BEFORE", 34, "COUNT"),
    ("BUCKET(42) < 12.5", "BUCKET is compared with integers", 14, "12.5"),
    ("BUCKET(-1) < 3", "BUCKET seed must be an integer in 0..2**64-1", 8, "-1"),
    (f"BUCKET({2**64}) < 3", "BUCKET seed must be an integer in 0..2**64-1", 8, str(2**64)),
    ("DID(purchase WHERE BUCKET(1) < 3)", "BUCKET is not allowed inside WHERE", 20, "BUCKET"),
    ("DID(purchase WHERE SEQUENCE(a THEN b))", "SEQUENCE is not allowed inside WHERE", 20, "SEQUENCE"),
    ("span = 3", "span is a keyword; write a name spelled like a keyword double-quoted: \"span\"", 1, "span"),
])
def test_errors_name_the_position(text: str, message: str, column: int, token: str) -> None:
    with pytest.raises(QueryError) as info:
        bind(parse(text), SCHEMA)
    assert str(info.value) == f"{message} at column {column} near {token!r}"


# -- plans: canonical text, shard messages ------------------------------------------------------


@pytest.mark.parametrize("text", [
    "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
    "country IN ('FR', 'BE') AND DID(cart_abandoned, AVG(cart_value) > 80, COUNT >= 2, WITHIN 14d)",
    "SEQUENCE(page_view WHERE category = 'shoes' THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
    "BUCKET(42) BETWEEN 1000 AND 5499 AND CONSENTED(email)",
    f"NOT BUCKET({2**64 - 1}) IN (3, 5, 4) OR DID(purchase, MIN(amount) < -0.5, COUNT >= 1)",
])
def test_plans_print_and_cross_to_shards(text: str) -> None:
    """The bound AST prints back to itself and its plan round-trips through a shard message."""
    node = bind(parse(text), SCHEMA)
    assert bind(parse(to_text(node)), SCHEMA) == node
    step = plan(node)
    assert decode_request(encode_request(3, "count", (step, NOW)))[2] == (step, NOW)


def test_bucket_plans_one_kept_range_per_bitmap() -> None:
    """A bucket predicate becomes BETWEEN ranges; every bucket is ALL, none an empty range."""
    steps = plan(bind(parse("BUCKET(1) NOT IN (0, 1, 7)"), SCHEMA))
    assert sorted(to_text(item.node) for item in steps.items) == [
        "BUCKET(1) BETWEEN 2 AND 6", "BUCKET(1) BETWEEN 8 AND 9999"]
    assert type(plan(bind(parse("BUCKET(1) <= 9999"), SCHEMA))).__name__ == "Universe"


# -- saved segments, explain ---------------------------------------------------------------------


def test_saved_behaviour_segments_follow_writes_and_the_clock() -> None:
    """Members of aggregate, SEQUENCE and BUCKET segments equal ad-hoc queries as writes land and time moves."""
    texts = {
        "spend": "DID(purchase, SUM(amount) >= 100, WITHIN 1d)",
        "cheap": "DID(purchase, SUM(amount) < 10, WITHIN 1d)",
        "funnel": "SEQUENCE(page_view THEN purchase, SPAN 1h, WITHIN 1d)",
        "variant": "BUCKET(9) BETWEEN 0 AND 4999 AND NOT SEGMENT('funnel')",
    }
    clock = [NOW]
    with Engine(SCHEMA, shards=2) as engine:
        engine.clock = lambda: clock[0]
        engine.refresh_ms = 0
        engine.upsert_profiles([{"id": f"u{i}"} for i in range(40)])
        for name, text in texts.items():
            engine.create_segment(name, text)
        rng = random.Random(3)
        for step in range(8):
            events = []
            for _ in range(30):
                kind = rng.choice(["page_view", "purchase"])
                record = {"id": f"u{rng.randrange(45)}", "event": kind, "ts": clock[0] - rng.randrange(0, 3 * 3_600_000)}
                if kind == "purchase":
                    record["amount"] = rng.choice([5.0, 49.99, 60.0, None])
                events.append(record)
            engine.track_events(events)
            clock[0] += rng.choice([1, 3_600_000, DAY // 3])
            for name, text in texts.items():
                adhoc = text.replace("SEGMENT('funnel')", f"({texts['funnel']})")
                assert engine.ids(f"SEGMENT('{name}')") == engine.ids(adhoc, now=clock[0]), (step, name)
            member = engine.ids("SEGMENT('spend')")
            if member:
                assert "spend" in engine.membership(member[0])


def test_explain_reports_estimates_and_rows() -> None:
    """EXPLAIN evaluates the new predicates and reports their rows."""
    with Engine(SCHEMA, shards=2) as engine:
        engine.track_events([{"id": "a", "event": "purchase", "ts": NOW - 5, "amount": 150.0},
                             {"id": "b", "event": "page_view", "ts": NOW - 9},
                             {"id": "b", "event": "purchase", "ts": NOW - 5, "amount": 1.0}])
        tree = engine.explain("DID(purchase, SUM(amount) > 100) OR SEQUENCE(page_view THEN purchase)", now=NOW)
        assert tree["count"] == 2
        assert sorted((c["text"], c["estimate"], c["rows"]) for c in tree["plan"]["children"]) == [
            ("DID(purchase, SUM(amount) > 100)", 2.0, 1), ("SEQUENCE(page_view THEN purchase)", 1.0, 1)]
