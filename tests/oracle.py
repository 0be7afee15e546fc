"""A naive, row-by-row reference evaluator written straight from the contract (section 2).

It shares nothing with the engine's store, planner or executor: profiles are dicts, events a
list of tuples, and every predicate is checked one profile (or one event) at a time. Queries
come in as BOUND ASTs (``engine.query.bind(parse(text), schema)``); only the parser, binder and
``engine.timeparse.parse_ts`` are borrowed from the engine.

>>> from engine.query import bind, parse
>>> from engine.schema import CONTRACT_SCHEMA, Schema
>>> store = NaiveStore(CONTRACT_SCHEMA)
>>> store.upsert([{"id": "a", "age": 30}, {"id": "b"}])
>>> store.track([{"id": "c", "event": "purchase", "ts": 5, "amount": None}])
>>> q = bind(parse("NOT age = 30"), Schema.from_dict(CONTRACT_SCHEMA))
>>> sorted(store.evaluate(q, now=10))
['b', 'c']
"""
from __future__ import annotations

import math
import operator
from fractions import Fraction
from hashlib import blake2b
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from engine.query.ast import (
    Aggregate,
    All,
    And,
    Between,
    Bucket,
    Compare,
    Consented,
    Did,
    Has,
    In,
    IsNull,
    Node,
    Not,
    Now,
    Or,
    Sample,
    SegmentRef,
    Sequence,
)
from engine.timeparse import parse_ts

MASK64 = (1 << 64) - 1

#: Comparison operators as Python functions (Python compares int/float exactly and str by code point).
CMP: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def splitmix64(x: int) -> int:
    """The standard splitmix64 finaliser, all arithmetic mod 2**64."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def bucket(profile_id: str, seed: int) -> int:
    """``BUCKET(seed)`` of one id, exactly as the contract states it."""
    h = int.from_bytes(blake2b(profile_id.encode("utf-8"), digest_size=8).digest(), "little")
    return splitmix64(h ^ seed) % 10000


def sampled(profile_id: str, percent: float, seed: int) -> bool:
    """``SAMPLE(percent, seed)`` membership of one id, exactly as the contract states it."""
    return bucket(profile_id, seed) < round(percent * 100)


def exact_sum(values: list[float]) -> float:
    """The correctly rounded sum (``math.fsum``; an overflowing sum is an infinity of its sign)."""
    try:
        return math.fsum(values)
    except OverflowError:  # an intermediate partial overflowed: round the exact rational instead
        total = sum((Fraction(v) for v in values), Fraction(0))
        try:
            return float(total)
        except OverflowError:
            return math.copysign(math.inf, total)


def aggregate_holds(agg: Aggregate, values: list[Any]) -> bool:
    """An aggregate condition over the non-null values of the counted events (null: false)."""
    if agg.func == "SUM":
        result: Any = exact_sum([float(v) for v in values])
    elif not values:
        return False
    elif agg.func == "AVG":
        result = exact_sum([float(v) for v in values]) / len(values)
    else:
        result = min(values) if agg.func == "MIN" else max(values)
    return CMP[agg.op](result, agg.value)


class Event(NamedTuple):
    """One stored event: profile id, type, epoch ms and its non-null properties."""

    id: str
    event: str
    ts: int
    props: dict[str, Any]


def _normalise(kind: str, value: Any) -> Any:
    """A record value in comparable form (tags -> frozenset, timestamps -> epoch ms, float -> float)."""
    if value is None:
        return None
    if kind == "tags":
        return frozenset(value)
    if kind == "timestamp":
        return parse_ts(value)
    if kind == "float":
        return float(value)
    return value


class NaiveStore:
    """Profiles, consents and events kept as plain Python data; queries evaluated row by row."""

    def __init__(self, schema: Mapping[str, Any]):
        self.attr_types: dict[str, str] = {n: d["type"] for n, d in schema["attributes"].items()}
        self.event_props: dict[str, dict[str, str]] = {
            n: dict(d.get("properties") or {}) for n, d in schema["events"].items()
        }
        self.purposes: tuple[str, ...] = tuple(schema["consents"])
        self.attrs: dict[str, dict[str, Any]] = {}  # id -> non-null attribute values
        self.consents: dict[str, dict[str, bool]] = {}
        self.events: dict[str, list[Event]] = {}  # id -> its events, arrival order

    # -- writes -------------------------------------------------------------------------------
    def _ensure(self, profile_id: str) -> dict[str, Any]:
        if profile_id not in self.attrs:
            self.attrs[profile_id] = {}
            self.consents[profile_id] = {}
            self.events[profile_id] = []
        return self.attrs[profile_id]

    def upsert(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Apply profile upserts: present overwrites, null clears, absent stays, consents merge."""
        for record in records:
            attrs = self._ensure(record["id"])
            for name, value in record.items():
                if name == "id":
                    continue
                if name == "consent":
                    self.consents[record["id"]].update(value or {})
                elif value is None:
                    attrs.pop(name, None)
                else:
                    attrs[name] = _normalise(self.attr_types[name], value)

    def track(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append events (an unknown id creates an attribute-less profile)."""
        for record in records:
            self._ensure(record["id"])
            kinds = self.event_props[record["event"]]
            props = {
                k: _normalise(kinds[k], v)
                for k, v in record.items()
                if k not in ("id", "event", "ts") and v is not None
            }
            self.events[record["id"]].append(Event(record["id"], record["event"], parse_ts(record["ts"]), props))

    # -- queries ------------------------------------------------------------------------------
    def evaluate(self, node: Node, now: int) -> set[str]:
        """Ids of the live profiles selected by the bound query ``node`` at clock ``now``."""
        return {pid for pid in self.attrs if self.holds(node, pid, now)}

    def holds(self, node: Node, pid: str, now: int) -> bool:
        """Whether profile ``pid`` is in ``node`` at clock ``now``."""
        kind = type(node)
        if kind is All:
            return True
        if kind is And:
            return all(self.holds(item, pid, now) for item in node.items)  # type: ignore[attr-defined]
        if kind is Or:
            return any(self.holds(item, pid, now) for item in node.items)  # type: ignore[attr-defined]
        if kind is Not:
            return not self.holds(node.item, pid, now)  # type: ignore[attr-defined]
        if kind is Consented:
            return self.consents[pid].get(node.purpose, False)  # type: ignore[attr-defined]
        if kind is Sample:
            return sampled(pid, node.percent, node.seed)  # type: ignore[attr-defined]
        if kind is Did:
            return self._did(node, pid, now)  # type: ignore[arg-type]
        if kind is Sequence:
            return self._sequence(node, pid, now)  # type: ignore[arg-type]
        if kind is Bucket:
            return bucket_test(node, bucket(pid, node.seed))  # type: ignore[arg-type]
        if kind is SegmentRef:
            raise NotImplementedError("the oracle does not evaluate SEGMENT(...)")
        return value_test(node, self.attrs[pid], now)

    def _did(self, node: Did, pid: str, now: int) -> bool:
        """``DID(...)``: count the profile's matching events and apply the COUNT condition."""
        seen = [e for e in self.events[pid] if e.ts <= now]
        lower: int | None = None  # exclusive lower bound from AFTER LAST
        if node.after_last is not None:
            prior = [e.ts for e in seen if e.event == node.after_last]
            if not prior:
                return CMP[node.count_op](0, node.count_n) and all(aggregate_holds(a, []) for a in node.aggregates)
            lower = max(prior)
        count = 0
        counted: list[Event] = []
        for e in seen:
            if e.event != node.event:
                continue
            if node.where is not None and not value_test(node.where, e.props, now):
                continue
            if node.within_ms is not None and not now - node.within_ms < e.ts:
                continue
            if node.since is not None and not e.ts >= resolve(node.since, now):
                continue
            if node.before is not None and not e.ts < resolve(node.before, now):
                continue
            if lower is not None and not e.ts > lower:
                continue
            count += 1
            counted.append(e)
        return CMP[node.count_op](count, node.count_n) and all(
            aggregate_holds(a, [e.props[a.prop] for e in counted if a.prop in e.props]) for a in node.aggregates)

    def _sequence(self, node: Sequence, pid: str, now: int) -> bool:
        """``SEQUENCE(...)``: try every chain of events, one per step, in strictly increasing time."""
        seen = [e for e in self.events[pid] if e.ts <= now and in_window(node, e.ts, now)]
        candidates = [[e for e in seen if e.event == step.event and (step.where is None or value_test(
            step.where, e.props, now))] for step in node.steps]

        def chain(i: int, after: int, first: int) -> bool:
            if i == len(candidates):
                return True
            for e in candidates[i]:
                if e.ts > after and (node.span_ms is None or e.ts - (e.ts if i == 0 else first) <= node.span_ms):
                    if chain(i + 1, e.ts, e.ts if i == 0 else first):
                        return True
            return False

        return chain(0, -(2**63), 0)


def in_window(node: Did | Sequence, ts: int, now: int) -> bool:
    """The time options WITHIN, SINCE and BEFORE of ``node`` (``ts <= now`` is checked apart)."""
    if node.within_ms is not None and not now - node.within_ms < ts:
        return False
    if node.since is not None and not ts >= resolve(node.since, now):
        return False
    return node.before is None or ts < resolve(node.before, now)


def bucket_test(node: Bucket, value: int) -> bool:
    """A BUCKET comparison, BETWEEN or IN on the profile's bucket value."""
    if node.op == "IN":
        return (value in node.values) != node.negated
    if node.op == "BETWEEN":
        return (node.values[0] <= value <= node.values[1]) != node.negated
    return CMP[node.op](value, node.values[0])


def resolve(value: Any, now: int) -> Any:
    """A bound literal's value at clock ``now`` (``NOW ± d`` becomes epoch ms)."""
    return now + value.offset_ms if isinstance(value, Now) else value


def value_test(node: Node, row: Mapping[str, Any], now: int) -> bool:
    """Evaluate an attribute/property predicate tree over one row (absent key = null)."""
    kind = type(node)
    if kind is All:
        return True
    if kind is And:
        return all(value_test(item, row, now) for item in node.items)  # type: ignore[attr-defined]
    if kind is Or:
        return any(value_test(item, row, now) for item in node.items)  # type: ignore[attr-defined]
    if kind is Not:
        return not value_test(node.item, row, now)  # type: ignore[attr-defined]
    value = row.get(node.name)  # type: ignore[attr-defined]
    if kind is IsNull:
        return (value is None) != node.negated  # type: ignore[attr-defined]
    if value is None:
        return False  # every comparison on null is false, negated forms included
    if kind is Compare:
        return CMP[node.op](value, resolve(node.value, now))  # type: ignore[attr-defined]
    if kind is In:
        hit = any(value == resolve(v, now) for v in node.values)  # type: ignore[attr-defined]
        return hit != node.negated  # type: ignore[attr-defined]
    if kind is Between:
        lo, hi = resolve(node.lo, now), resolve(node.hi, now)  # type: ignore[attr-defined]
        return (lo <= value <= hi) != node.negated  # type: ignore[attr-defined]
    if kind is Has:
        wanted = set(node.values)  # type: ignore[attr-defined]
        if node.mode == "all":  # type: ignore[attr-defined]
            return wanted <= value
        return bool(wanted & value)
    raise TypeError(f"the oracle cannot evaluate {kind.__name__}")
