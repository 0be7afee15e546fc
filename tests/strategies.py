"""Hypothesis strategies: random datasets and random query texts for CONTRACT_SCHEMA.

Datasets are built from a few hypothesis-drawn knobs (id pool size, batch counts, null rate)
and a seed fed to ``random.Random``, so a large dataset does not exhaust hypothesis's buffer.
Values come from small edge-heavy pools; timestamps cluster on ``NOW`` and on window edges
(``NOW - d`` and UTC midnights, each +-1 ms) with some in the future. Queries are drawn by
hypothesis as TEXT (so the parser is exercised) with literals taken from the same pools,
i.e. values present in the data plus absent ones.

>>> iso(0)
'1970-01-01T00:00:00.000Z'
>>> iso(0, 90)
'1970-01-01T01:30:00.000+01:30'
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from engine.schema import CONTRACT_SCHEMA

SEC, MIN, HOUR, DAY, WEEK = 1_000, 60_000, 3_600_000, 86_400_000, 604_800_000
#: The fixed query clock: 2026-11-20T10:00:00.123Z (not on a second boundary).
NOW = 1_795_168_800_123
MIDNIGHT = NOW - NOW % DAY  # 2026-11-20T00:00:00Z

#: Durations written in queries (text, ms); "0s" is an empty window.
DURATIONS: list[tuple[str, int]] = [
    ("0s", 0), ("1s", SEC), ("30m", 30 * MIN), ("12h", 12 * HOUR), ("1d", DAY), ("2d", 2 * DAY),
    ("7d", 7 * DAY), ("1w", WEEK), ("4w", 4 * WEEK), ("30d", 30 * DAY),
]
#: Instants the data and the literals cluster on: NOW - d and UTC midnights, each +-1 ms.
EDGES: list[int] = sorted(
    {NOW + delta + off for _, delta in [("", 0)] + [(t, -ms) for t, ms in DURATIONS] for off in (-1, 0, 1)}
    | {MIDNIGHT - k * DAY + off for k in range(-1, 9) for off in (-1, 0, 1)}
    | {NOW + HOUR, NOW + 3 * DAY}
)
#: UTC midnights around NOW (day-bucket boundaries inside the engine).
MIDNIGHTS: list[int] = [MIDNIGHT - k * DAY for k in range(-1, 9)]
#: Alternative query clocks (most queries use NOW); some sit on or next to a day boundary.
CLOCKS: list[int] = [NOW, NOW, NOW, NOW - 7 * DAY, MIDNIGHT, MIDNIGHT - 1, MIDNIGHT + 1, NOW - DAY + 1,
                     MIDNIGHT + DAY - 1, MIDNIGHT - DAY]

COUNTRIES = ["FR", "BE", "DE", "fr", "", "Z", "a", "é", "O'Brien", "Ω", "😀", "ẞ"]
ABSENT_COUNTRIES = ["XX", "FRA", "zz", "ÿ"]
AGES = [0, 1, 17, 18, 30, 31, 40, 65, -5, 2**53 + 1, -(2**63), 2**63 - 1]
AGE_LITERALS = AGES + [29, 99, 30.0, 30.5, -0.5, 17.999, 9007199254740992.0, 1e19, -1e19]
FLOATS = [0.0, -0.0, 0.5, 19.99, 50.0, 50.000001, 120.5, -3.25, 1e-300, 1e300, 49.99]
FLOAT_LITERALS = FLOATS + [0, 50, 120, -4, 100.0, 5e-324, 75.25]
TAGS = ["shoes", "tech", "books", "travel", "Shoes", "", "a b"]
ABSENT_TAGS = ["garden", "TECH"]
CATEGORIES = ["electronics", "apparel", "shoes", "books", "", "Électro"]
ABSENT_CATEGORIES = ["toys", "APPAREL"]
PURPOSES = list(CONTRACT_SCHEMA["consents"])
EVENT_TYPES = list(CONTRACT_SCHEMA["events"])
SAMPLE_PERCENTS = ["0", "100", "50", "12.5", "0.125", "0.375", "33.333", "99.99", "0.01", "37", "12.345", "0.005"]
SAMPLE_SEEDS = [None, "0", "1", "42", str(2**64 - 1), "123456789"]
CMP_OPS = ["=", "!=", "<", "<=", ">", ">="]


def iso(ms: int, offset_minutes: int = 0) -> str:
    """Epoch ms as ISO 8601 text with millisecond precision, in the given UTC offset."""
    tz = timezone(timedelta(minutes=offset_minutes))
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    text = moment.astimezone(tz).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def random_ts(rng: random.Random) -> int:
    """A timestamp: mostly on an edge, sometimes anywhere in the last 40 days (or just ahead)."""
    if rng.random() < 0.7:
        return rng.choice(EDGES)
    return rng.randint(NOW - 40 * DAY, NOW + DAY)


def ts_form(rng: random.Random, ms: int) -> str | int:
    """A timestamp as a record would carry it: epoch ms, ISO with Z, or ISO with an offset."""
    pick = rng.random()
    if pick < 0.4:
        return ms
    return iso(ms, 0 if pick < 0.7 else rng.choice([60, -300, 330, -720, 840]))


@dataclass
class Dataset:
    """A random dataset: an ordered list of ("profiles"|"events", records) batches."""

    ids: list[str]
    batches: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    def describe(self) -> str:
        """Compact text form (for hypothesis ``note`` on failure)."""
        return "\n".join(f"{kind}: {records!r}" for kind, records in self.batches)


def _wide_value(rng: random.Random, name: str) -> Any:
    """A value from a large range: many distinct values (range-index bins, > 63 tag labels)."""
    if name == "country":
        return f"C{rng.randint(0, 80)}"
    if name == "age":
        return rng.randint(-1000, 1000)
    if name == "cart_value":
        return round(rng.uniform(-50.0, 500.0), rng.choice([0, 2, 6]))
    if name == "interests":
        return [f"t{rng.randint(0, 99)}" for _ in range(rng.randint(0, 4))]
    return _attr_value(rng, name, 0.0)


def _attr_value(rng: random.Random, name: str, wide_rate: float) -> Any:
    if rng.random() < wide_rate:
        return _wide_value(rng, name)
    if name == "country":
        return rng.choice(COUNTRIES)
    if name == "age":
        return rng.choice(AGES) if rng.random() < 0.8 else rng.randint(-3, 70)
    if name == "cart_value":
        value = rng.choice(FLOATS)
        return int(value) if rng.random() < 0.1 and value == int(value) else value
    if name == "vip":
        return rng.random() < 0.5
    if name == "interests":
        return rng.sample(TAGS, rng.choice([0, 0, 1, 2, 3])) + ([TAGS[0]] if rng.random() < 0.1 else [])
    if name == "signup_at":
        return ts_form(rng, random_ts(rng))
    raise KeyError(name)


def profile_record(rng: random.Random, pid: str, null_rate: float, fill_rate: float,
                   wide_rate: float = 0.0) -> dict[str, Any]:
    """One upsert: each attribute absent, null or a value; sometimes a consent object."""
    record: dict[str, Any] = {"id": pid}
    for name in CONTRACT_SCHEMA["attributes"]:
        pick = rng.random()
        if pick < null_rate:
            record[name] = None
        elif pick < null_rate + fill_rate:
            record[name] = _attr_value(rng, name, wide_rate)
    pick = rng.random()
    if pick < 0.35:
        record["consent"] = {p: rng.random() < 0.5 for p in rng.sample(PURPOSES, rng.randint(0, len(PURPOSES)))}
    elif pick < 0.38:
        record["consent"] = None
    return record


def _prop_value(rng: random.Random, kind: str) -> Any:
    return rng.choice(CATEGORIES) if kind == "category" else rng.choice(FLOATS)


def event_record(rng: random.Random, pid: str, null_rate: float) -> dict[str, Any]:
    """One event with an edge-heavy timestamp and possibly null or absent properties."""
    name = rng.choice(EVENT_TYPES)
    record: dict[str, Any] = {"id": pid, "event": name, "ts": ts_form(rng, random_ts(rng))}
    for prop, kind in CONTRACT_SCHEMA["events"][name]["properties"].items():
        pick = rng.random()
        if pick < null_rate:
            record[prop] = None
        elif pick < 0.85:
            record[prop] = _prop_value(rng, kind)
    return record


@st.composite
def datasets(draw: st.DrawFn, min_ids: int = 30, max_ids: int = 80, max_events: int = 400,
             max_batches: int = 5) -> Dataset:
    """A random dataset over CONTRACT_SCHEMA (partial updates, nulls, consents, out-of-order events)."""
    n_ids = draw(st.integers(min_ids, max_ids))
    n_batches = draw(st.integers(1, max_batches))
    null_rate = draw(st.sampled_from([0.0, 0.1, 0.25]))
    n_events = draw(st.integers(0, max_events))
    wide_rate = draw(st.sampled_from([0.0, 0.0, 0.3]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    ids = [f"u{i:04d}" for i in range(n_ids)]
    for k, odd in enumerate(["é", "Ω-1", "用户", "Z", "a'b"]):
        if rng.random() < 0.5:
            ids[k] = odd
    ds = Dataset(ids)
    per_batch = max(1, n_events // n_batches)
    for b in range(n_batches):
        known = rng.sample(ids, rng.randint(len(ids) // 3, len(ids)))
        known += rng.sample(known, rng.randint(0, len(known) // 4))  # repeated ids within a batch
        fill = 0.9 if b == 0 else 0.3
        ds.batches.append(("profiles", [profile_record(rng, pid, null_rate, fill, wide_rate) for pid in known]))
        events = [event_record(rng, rng.choice(ids), null_rate) for _ in range(per_batch)]
        rng.shuffle(events)  # arrival order is not time order
        ds.batches.append(("events", events))
    return ds


# -- queries ---------------------------------------------------------------------------------


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _duration() -> st.SearchStrategy[str]:
    return st.sampled_from([text for text, _ in DURATIONS])


def _time_literal() -> st.SearchStrategy[str]:
    """A timestamp literal: ISO text, epoch ms, or NOW [+- d]."""
    edge = st.one_of(st.sampled_from(EDGES), st.sampled_from(MIDNIGHTS))
    return st.one_of(
        st.builds(lambda ms, off: _string(iso(ms, off)), edge, st.sampled_from([0, 0, 60, -300])),
        edge.map(str),
        st.just("NOW"),
        st.builds(lambda sign, d: f"NOW {sign} {d}", st.sampled_from(["-", "-", "+"]), _duration()),
    )


def _literals(kind: str) -> st.SearchStrategy[str]:
    """Literal text for an attribute or property type, from present and absent values."""
    if kind == "country":
        return st.sampled_from(COUNTRIES + ABSENT_COUNTRIES).map(_string)
    if kind == "category":
        return st.sampled_from(CATEGORIES + ABSENT_CATEGORIES).map(_string)
    if kind == "int":
        return st.sampled_from(AGE_LITERALS).map(_number)
    if kind == "float":
        return st.sampled_from(FLOAT_LITERALS).map(_number)
    if kind == "bool":
        return st.sampled_from(["TRUE", "FALSE", "true", "False"])
    if kind == "timestamp":
        return _time_literal()
    raise KeyError(kind)


def _value_preds(name: str, kind: str) -> st.SearchStrategy[str]:
    """Comparison, IN, BETWEEN and IS NULL forms on one non-tags attribute or property."""
    lit = _literals(kind)
    ops = st.sampled_from(["=", "!="] if kind == "bool" else CMP_OPS)
    forms = [
        st.builds(lambda op, v: f"{name} {op} {v}", ops, lit),
        st.builds(lambda neg, vs: f"{name} {neg}IN ({', '.join(vs)})", st.sampled_from(["", "NOT "]),
                  st.lists(lit, min_size=1, max_size=4)),
        st.builds(lambda neg: f"{name} IS {neg}NULL", st.sampled_from(["", "NOT "])),
    ]
    if kind != "bool":
        forms.append(st.builds(lambda neg, lo, hi: f"{name} {neg}BETWEEN {lo} AND {hi}",
                               st.sampled_from(["", "NOT "]), lit, lit))
    return st.one_of(forms)


def _tags_preds() -> st.SearchStrategy[str]:
    tag = st.sampled_from(TAGS + ABSENT_TAGS).map(_string)
    return st.one_of(
        st.builds(lambda t: f"interests HAS {t}", tag),
        st.builds(lambda m, ts: f"interests HAS {m} ({', '.join(ts)})", st.sampled_from(["ANY", "ALL"]),
                  st.lists(tag, min_size=1, max_size=3)),
        st.builds(lambda neg: f"interests IS {neg}NULL", st.sampled_from(["", "NOT "])),
    )


ATTR_KINDS = {"country": "country", "age": "int", "cart_value": "float", "vip": "bool", "signup_at": "timestamp"}


def attribute_preds() -> st.SearchStrategy[str]:
    """Any predicate on a profile attribute (names sometimes double-quoted)."""
    named = [
        st.sampled_from([name, f'"{name}"']).flatmap(lambda n, k=kind: _value_preds(n, k))
        for name, kind in ATTR_KINDS.items()
    ]
    return st.one_of(*named, _tags_preds())


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """AND / OR / NOT over sub-queries, parenthesised, keywords in mixed case."""
    return st.one_of(
        st.builds(lambda kw, xs: f" {kw} ".join(f"({x})" for x in xs), st.sampled_from(["AND", "and", "OR", "Or"]),
                  st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda kw, x: f"{kw} ({x})", st.sampled_from(["NOT", "not"]), children),
    )


def where_queries(event: str) -> st.SearchStrategy[str]:
    """A WHERE clause over one event type's properties."""
    props = CONTRACT_SCHEMA["events"][event]["properties"]
    leaves = st.one_of(st.just("ALL"), *[_value_preds(p, k) for p, k in props.items()])
    return st.recursive(leaves, _combine, max_leaves=4)


def _did_option() -> st.SearchStrategy[tuple[str, str]]:
    return st.one_of(
        st.builds(lambda op, n: ("COUNT", f"COUNT {op} {n}"), st.sampled_from(CMP_OPS), st.integers(0, 3)),
        st.builds(lambda d: ("WITHIN", f"WITHIN {d}"), _duration()),
        st.builds(lambda t: ("SINCE", f"SINCE {t}"), _time_literal()),
        st.builds(lambda t: ("BEFORE", f"BEFORE {t}"), _time_literal()),
        st.builds(lambda e: ("AFTER", f"AFTER LAST {e}"), st.sampled_from(EVENT_TYPES)),
    )


#: Literals aggregates are compared with: property values, sums of a few of them, absent values.
AGGREGATE_LITERALS = FLOAT_LITERALS + [69.99, 70.49, 170.5, 241.0, 100.5, 0.1, 1e300, -1e300, 2e300, 39.98]


def _aggregate_options(event: str) -> st.SearchStrategy[list[str]]:
    """Zero to two aggregate options over the event type's float properties."""
    props = [p for p, k in CONTRACT_SCHEMA["events"][event]["properties"].items() if k in ("int", "float")]
    if not props:
        return st.just([])
    option = st.builds(lambda f, p, op, v: f"{f}({p}) {op} {_number(v)}", st.sampled_from(["SUM", "AVG", "MIN", "MAX",
                                                                                         "sum"]),
                       st.sampled_from(props), st.sampled_from(CMP_OPS), st.sampled_from(AGGREGATE_LITERALS))
    return st.lists(option, max_size=2)


@st.composite
def did_preds(draw: st.DrawFn, aggregates: bool = False) -> str:
    """``DID(event [WHERE ...], options...)`` with distinct options in random order (and, with
    ``aggregates``, often aggregate options)."""
    event = draw(st.sampled_from(EVENT_TYPES))
    parts = [event]
    if draw(st.booleans()):
        parts[0] += " WHERE " + draw(where_queries(event))
    options = [text for _, text in draw(st.lists(_did_option(), max_size=4, unique_by=lambda o: o[0]))]
    if aggregates or draw(st.integers(0, 3)) == 0:
        options += draw(_aggregate_options(event))
    options = draw(st.permutations(options))
    return "DID(" + ", ".join(parts + list(options)) + ")"


@st.composite
def sequence_preds(draw: st.DrawFn) -> str:
    """``SEQUENCE(step THEN step ..., options...)``: 2-4 steps, often of one type in a row."""
    steps = []
    for _ in range(draw(st.integers(2, 4))):
        event = steps[-1][0] if steps and draw(st.integers(0, 2)) == 0 else draw(st.sampled_from(EVENT_TYPES))
        where = " WHERE " + draw(where_queries(event)) if draw(st.integers(0, 2)) == 0 else ""
        steps.append((event, where))
    options = draw(st.lists(st.one_of(
        st.builds(lambda d: ("SPAN", f"SPAN {d}"), _duration()),
        st.builds(lambda d: ("WITHIN", f"WITHIN {d}"), _duration()),
        st.builds(lambda t: ("SINCE", f"SINCE {t}"), _time_literal()),
        st.builds(lambda t: ("BEFORE", f"BEFORE {t}"), _time_literal()),
    ), max_size=3, unique_by=lambda o: o[0]))
    body = " THEN ".join(e + w for e, w in steps)
    return "SEQUENCE(" + ", ".join([body] + [text for _, text in options]) + ")"


BUCKET_SEEDS = ["0", "1", "42", str(2**64 - 1), "123456789"]
BUCKET_VALUES = [-5, -1, 0, 1, 999, 1000, 4999, 5000, 5499, 9998, 9999, 10000, 10**30]


def bucket_preds() -> st.SearchStrategy[str]:
    """``BUCKET(seed)`` comparisons, [NOT] BETWEEN and [NOT] IN, literals in and out of 0..9999."""
    value = st.sampled_from(BUCKET_VALUES).map(str)
    seed = st.sampled_from(BUCKET_SEEDS)
    neg = st.sampled_from(["", "NOT "])
    return st.one_of(
        st.builds(lambda s, op, v: f"BUCKET({s}) {op} {v}", seed, st.sampled_from(CMP_OPS), value),
        st.builds(lambda s, n, lo, hi: f"BUCKET({s}) {n}BETWEEN {lo} AND {hi}", seed, neg, value, value),
        st.builds(lambda s, n, vs: f"bucket({s}) {n}IN ({', '.join(vs)})", seed, neg, st.lists(value, min_size=1,
                                                                                              max_size=4)),
    )


def special_preds() -> st.SearchStrategy[str]:
    """ALL, CONSENTED(p) and SAMPLE(p[, seed])."""
    return st.one_of(
        st.just("ALL"),
        st.sampled_from(PURPOSES).map(lambda p: f"CONSENTED({p})"),
        st.builds(lambda p, s: f"SAMPLE({p})" if s is None else f"SAMPLE({p}, {s})",
                  st.sampled_from(SAMPLE_PERCENTS), st.sampled_from(SAMPLE_SEEDS)),
    )


def queries(max_leaves: int = 5) -> st.SearchStrategy[str]:
    """A random query text covering every predicate form, nested AND/OR/NOT."""
    leaves = st.one_of(attribute_preds(), did_preds(), special_preds(), sequence_preds(), bucket_preds())
    return st.recursive(leaves, _combine, max_leaves=max_leaves)


def behaviour_queries() -> st.SearchStrategy[str]:
    """An aggregate DID, a SEQUENCE or a BUCKET, its negation, or two of them combined."""
    leaf = st.one_of(did_preds(aggregates=True), sequence_preds(), bucket_preds())
    return st.one_of(
        leaf,
        leaf.map(lambda q: f"NOT {q}"),
        st.builds(lambda a, kw, b: f"{a} {kw} {b}", leaf, st.sampled_from(["AND", "OR"]), leaf),
    )


def did_queries() -> st.SearchStrategy[str]:
    """One DID, its negation, or two DIDs combined: DID time edges with less dilution."""
    return st.one_of(
        did_preds(),
        did_preds().map(lambda q: f"NOT {q}"),
        st.builds(lambda a, kw, b: f"{a} {kw} {b}", did_preds(), st.sampled_from(["AND", "OR"]), did_preds()),
    )


def clocks() -> st.SearchStrategy[int]:
    """A query clock: usually NOW, sometimes another edge."""
    return st.sampled_from(CLOCKS)
