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

import operator
from hashlib import blake2b
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from engine.query.ast import (
    All,
    And,
    Between,
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


def sampled(profile_id: str, percent: float, seed: int) -> bool:
    """``SAMPLE(percent, seed)`` membership of one id, exactly as the contract states it."""
    h = int.from_bytes(blake2b(profile_id.encode("utf-8"), digest_size=8).digest(), "little")
    return splitmix64(h ^ seed) % 10000 < round(percent * 100)


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
                return CMP[node.count_op](0, node.count_n)
            lower = max(prior)
        count = 0
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
        return CMP[node.count_op](count, node.count_n)


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
