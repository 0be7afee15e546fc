"""Type-check a parsed query against a schema and normalise it (same node classes).

Binding resolves every name (attributes at the top level; the event type's properties inside
``DID(... WHERE ...)``; event types; consent purposes), checks each literal against the type
it is compared with, and returns a normalised AST:

- timestamp literals and ``SINCE``/``BEFORE`` given as ISO 8601 strings become int epoch ms
  (``NOW`` offsets stay ``Now``); ``SAMPLE`` percent becomes a float;
- ``IN`` / ``HAS ANY`` / ``HAS ALL`` values are deduplicated and sorted (booleans, then numbers,
  then strings, then ``NOW`` offsets); a one-value ``HAS ANY``/``HAS ALL`` becomes ``HAS``;
- nested ``And``/``Or`` are flattened, repeated operands dropped, single operands unwrapped;
- an int attribute compared with a float literal keeps the float (compared numerically).

Every violation is a QueryError naming the column of the offending token and the token.

>>> from types import SimpleNamespace as NS
>>> from engine.query.parser import parse
>>> schema = NS(attributes={"age": NS(type="int")}, events={}, consents=())
>>> bind(parse("age IN (40, 30, 40)"), schema)
In(name='age', values=(30, 40), negated=False)
>>> bind(parse("age = 'x'"), schema)
Traceback (most recent call last):
...
engine.errors.QueryError: type mismatch: attribute 'age' is int, got a string at column 7 near "'x'"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from engine.errors import QueryError
from engine.query.ast import (
    AGG_FUNCS,
    CMP_OPS,
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
    SeqStep,
    Value,
)
from engine.query.positions import column_of, replace, set_columns
from engine.query.printer import format_literal
from engine.timeparse import parse_query_ts

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: BUCKET(seed) takes values 0..BUCKET_COUNT - 1.
BUCKET_COUNT = 10000
#: The most steps a SEQUENCE may have (one bit per step in the executor).
MAX_STEPS = 64
_TAGS_ONLY = "supports only HAS, HAS ANY, HAS ALL and IS [NOT] NULL"


def bind(node: Node, schema: Any) -> Node:
    """Check ``node`` against ``schema`` (attributes, events, consents); return the normalised AST."""
    attrs = {name: a.type for name, a in schema.attributes.items()}
    return _Binder(schema).bind(node, _Scope("attribute", attrs, None))


@dataclass(frozen=True)
class _Scope:
    """What names mean here: profile attributes, or one event type's properties."""

    kind: str  # "attribute" or "property"
    types: Mapping[str, str]
    event: str | None

    def describe(self, name: str) -> str:
        if self.event is None:
            return f"{self.kind} {name!r}"
        return f"{self.kind} {name!r} of event {self.event!r}"


def _token(value: Any) -> str:
    try:
        return format_literal(value)
    except ValueError:
        return repr(value)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Now):
        return "a NOW time"
    return f"a {type(value).__name__}"


def _value_key(value: Value) -> tuple:
    """A total, type-aware sort key for literal values."""
    if isinstance(value, bool):
        return (0, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, type(value).__name__)
    if isinstance(value, str):
        return (2, value, "")
    return (3, value.offset_ms, "")  # Now


def _sorted_unique(values: tuple[Value, ...]) -> tuple[Value, ...]:
    out: list[Value] = []
    for value in sorted(values, key=_value_key):
        if not out or _value_key(out[-1])[:2] != _value_key(value)[:2]:
            out.append(value)
    return tuple(out)


def _aggregate_key(node: Aggregate) -> tuple:
    return (node.func, node.prop, node.op, _value_key(node.value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Binder:
    """One binding pass over a tree; ``bind_<NodeClass>`` per node type."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def bind(self, node: Node, scope: _Scope) -> Node:
        method = getattr(self, f"bind_{type(node).__name__}", None)
        if method is None:
            raise QueryError(f"cannot bind node {type(node).__name__}", node.pos)
        return method(node, scope)

    # -- structure -----------------------------------------------------------------------

    def bind_All(self, node: All, scope: _Scope) -> Node:
        return node

    def bind_And(self, node: And, scope: _Scope) -> Node:
        return self._bind_chain(node, scope)

    def bind_Or(self, node: Or, scope: _Scope) -> Node:
        return self._bind_chain(node, scope)

    def _bind_chain(self, node: And | Or, scope: _Scope) -> Node:
        items: list[Node] = []
        seen: set[Node] = set()
        for child in node.items:
            bound = self.bind(child, scope)
            for item in bound.items if type(bound) is type(node) else (bound,):  # type: ignore[attr-defined]
                if item not in seen:
                    seen.add(item)
                    items.append(item)
        if not items:
            raise QueryError(f"empty {type(node).__name__}", node.pos)
        return items[0] if len(items) == 1 else replace(node, items=tuple(items))

    def bind_Not(self, node: Not, scope: _Scope) -> Node:
        return replace(node, item=self.bind(node.item, scope))

    # -- attribute predicates ------------------------------------------------------------

    def _type_of(self, node: Node, name: str, scope: _Scope) -> str:
        if name not in scope.types:
            where = f" of event {scope.event!r}" if scope.event else ""
            raise QueryError(f"unknown {scope.kind} {name!r}{where}", node.pos, name)
        return scope.types[name]

    def _value(
        self, node: Node, name: str, typ: str, value: Any, scope: _Scope, key: str, index: int | None = None
    ) -> Value:
        """Check one literal against the attribute type; return its bound form."""
        col, tok = column_of(node, key, index), _token(value)
        what = scope.describe(name)
        if isinstance(value, Now):
            if typ != "timestamp":
                raise QueryError(f"type mismatch: NOW needs a timestamp, {what} is {typ}", col, tok)
            return value
        if typ in ("category", "tags") and isinstance(value, str):
            return value
        if typ == "bool" and isinstance(value, bool):
            return value
        if typ in ("int", "float") and (_is_int(value) or isinstance(value, float)):
            if typ == "int" and _is_int(value) and not INT64_MIN <= value <= INT64_MAX:
                raise QueryError(f"integer out of the 64-bit range for {what}", col, tok)
            return value
        if typ == "timestamp" and (isinstance(value, str) or _is_int(value)):
            try:
                return parse_query_ts(value)
            except ValueError as exc:
                raise QueryError(f"invalid timestamp for {what}: {exc}", col, tok) from None
        raise QueryError(f"type mismatch: {what} is {typ}, got {_describe(value)}", col, tok)

    def _check_not_tags(self, node: Node, name: str, typ: str, scope: _Scope) -> None:
        if typ == "tags":
            op = column_of(node, "op")
            raise QueryError(f"tags {scope.describe(name)} {_TAGS_ONLY}", op, _op_text(node))

    def bind_Compare(self, node: Compare, scope: _Scope) -> Node:
        typ = self._type_of(node, node.name, scope)
        self._check_not_tags(node, node.name, typ, scope)
        if node.op not in CMP_OPS or (typ == "bool" and node.op not in ("=", "!=")):
            what = scope.describe(node.name)
            message = f"operator {node.op!r} is not allowed on {typ} {what}"
            raise QueryError(message, column_of(node, "op"), node.op)
        return replace(node, value=self._value(node, node.name, typ, node.value, scope, "value"))

    def bind_In(self, node: In, scope: _Scope) -> Node:
        typ = self._type_of(node, node.name, scope)
        self._check_not_tags(node, node.name, typ, scope)
        values = self._values(node, typ, node.values, scope)
        new = replace(node, values=_sorted_unique(values))
        set_columns(new, {"values": None})  # element columns no longer line up
        return new

    def _values(self, node: In | Has, typ: str, values: tuple[Any, ...], scope: _Scope) -> tuple[Value, ...]:
        if not values:
            raise QueryError("empty value list", column_of(node, "op"), _op_text(node))
        return tuple(self._value(node, node.name, typ, v, scope, "values", i) for i, v in enumerate(values))

    def bind_Between(self, node: Between, scope: _Scope) -> Node:
        typ = self._type_of(node, node.name, scope)
        self._check_not_tags(node, node.name, typ, scope)
        if typ == "bool":
            what = scope.describe(node.name)
            raise QueryError(f"BETWEEN is not allowed on bool {what}", column_of(node, "op"), _op_text(node))
        lo = self._value(node, node.name, typ, node.lo, scope, "lo")
        hi = self._value(node, node.name, typ, node.hi, scope, "hi")
        return replace(node, lo=lo, hi=hi)

    def bind_IsNull(self, node: IsNull, scope: _Scope) -> Node:
        self._type_of(node, node.name, scope)
        return node

    def bind_Has(self, node: Has, scope: _Scope) -> Node:
        typ = self._type_of(node, node.name, scope)
        if typ != "tags":
            what = scope.describe(node.name)
            raise QueryError(f"HAS needs a tags attribute, {what} is {typ}", column_of(node, "op"), "HAS")
        if node.mode not in ("one", "any", "all") or (node.mode == "one" and len(node.values) != 1):
            raise QueryError(f"bad HAS mode {node.mode!r}", column_of(node, "op"), "HAS")
        values = _sorted_unique(self._values(node, typ, node.values, scope))
        new = replace(node, mode="one" if len(values) == 1 else node.mode, values=values)
        set_columns(new, {"values": None})
        return new

    # -- behavioural and special predicates ----------------------------------------------

    def _top_level(self, node: Node, scope: _Scope, word: str) -> None:
        if scope.event is not None:
            raise QueryError(f"{word} is not allowed inside WHERE", node.pos, word)

    def _event(self, node: Node, name: str, key: str) -> Any:
        event = self.schema.events.get(name)
        if event is None:
            raise QueryError(f"unknown event type {name!r}", column_of(node, key), name)
        return event

    def bind_Did(self, node: Did, scope: _Scope) -> Node:
        self._top_level(node, scope, "DID")
        event = self._event(node, node.event, "event")
        changes: dict[str, Any] = {}
        if node.where is not None:
            props = _Scope("property", dict(event.properties), node.event)
            changes["where"] = self.bind(node.where, props)
        if node.count_op not in CMP_OPS:
            raise QueryError(f"bad COUNT operator {node.count_op!r}", column_of(node, "COUNT"), node.count_op)
        if not _is_int(node.count_n) or not 0 <= node.count_n <= INT64_MAX:
            col = column_of(node, "count_n")
            raise QueryError("COUNT needs a non-negative integer", col, _token(node.count_n))
        if node.within_ms is not None and (not _is_int(node.within_ms) or node.within_ms < 0):
            col = column_of(node, "within_ms")
            raise QueryError("WITHIN needs a non-negative duration", col, _token(node.within_ms))
        for key in ("since", "before"):
            value = getattr(node, key)
            if value is not None:
                changes[key] = self._when(node, key, value)
        if node.after_last is not None:
            self._event(node, node.after_last, "after_last")
        if node.aggregates:
            bound = {self._aggregate(a, event, node.event) for a in node.aggregates}
            changes["aggregates"] = tuple(sorted(bound, key=_aggregate_key))
        return replace(node, **changes) if changes else node

    def _aggregate(self, node: Aggregate, event: Any, event_name: str) -> Aggregate:
        """Check an aggregate option: an int or float property, a comparison, a number."""
        if node.func not in AGG_FUNCS:
            raise QueryError(f"unknown aggregate {node.func!r}", node.pos, node.func)
        props = dict(event.properties)
        col = column_of(node, "prop")
        if node.prop not in props:
            raise QueryError(f"unknown property {node.prop!r} of event {event_name!r}", col, node.prop)
        if props[node.prop] not in ("int", "float"):
            message = (f"{node.func} needs an int or float property, property {node.prop!r} of event "
                       f"{event_name!r} is {props[node.prop]}")
            raise QueryError(message, col, node.prop)
        if node.op not in CMP_OPS:
            raise QueryError(f"bad {node.func} operator {node.op!r}", column_of(node, "op"), node.op)
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise QueryError(f"{node.func} needs a number to compare with", column_of(node, "value"), _token(value))
        return node

    def bind_Sequence(self, node: Sequence, scope: _Scope) -> Node:
        self._top_level(node, scope, "SEQUENCE")
        if len(node.steps) < 2:
            raise QueryError("SEQUENCE needs at least two steps: step THEN step", node.pos, "SEQUENCE")
        if len(node.steps) > MAX_STEPS:
            raise QueryError(f"SEQUENCE has at most {MAX_STEPS} steps", node.pos, "SEQUENCE")
        steps = []
        for step in node.steps:
            event = self._event(step, step.event, "event")
            if step.where is not None:
                props = _Scope("property", dict(event.properties), step.event)
                step = replace(step, where=self.bind(step.where, props))
            steps.append(step)
        changes: dict[str, Any] = {"steps": tuple(steps)}
        for key in ("span_ms", "within_ms"):
            value = getattr(node, key)
            if value is not None and (not _is_int(value) or value < 0):
                word = key.split("_")[0].upper()
                raise QueryError(f"{word} needs a non-negative duration", column_of(node, key), _token(value))
        for key in ("since", "before"):
            value = getattr(node, key)
            if value is not None:
                changes[key] = self._when(node, key, value)
        return replace(node, **changes)

    def bind_Bucket(self, node: Bucket, scope: _Scope) -> Node:
        self._top_level(node, scope, "BUCKET")
        if not _is_int(node.seed) or not 0 <= node.seed < 2**64:
            col = column_of(node, "seed")
            raise QueryError("BUCKET seed must be an integer in 0..2**64-1", col, _token(node.seed))
        arity = {"IN": None, "BETWEEN": 2}.get(node.op, 1)
        if node.op not in CMP_OPS + ("IN", "BETWEEN") or not node.values or (
                arity is not None and len(node.values) != arity) or (node.negated and arity == 1):
            raise QueryError(f"bad BUCKET comparison {node.op!r}", column_of(node, "op"), node.op)
        for i, value in enumerate(node.values):
            if not _is_int(value):
                col = column_of(node, "values", i)
                raise QueryError("BUCKET is compared with integers", col, _token(value))
        # buckets are 0..9999: clamping to -1..10000 keeps every comparison's answer
        values = tuple(min(max(v, -1), BUCKET_COUNT) for v in node.values)
        if node.op == "IN":
            values = tuple(sorted(set(values)))
        new = replace(node, values=values)
        set_columns(new, {"values": None})
        return new

    def _when(self, node: Did | Sequence, key: str, value: Any) -> int | Now:
        col, tok = column_of(node, key), _token(value)
        if isinstance(value, Now):
            return value
        if isinstance(value, str) or _is_int(value):
            try:
                return parse_query_ts(value)
            except ValueError as exc:
                raise QueryError(f"invalid {key.upper()} time: {exc}", col, tok) from None
        raise QueryError(f"{key.upper()} needs an ISO 8601 string, epoch milliseconds or NOW", col, tok)

    def bind_Consented(self, node: Consented, scope: _Scope) -> Node:
        self._top_level(node, scope, "CONSENTED")
        if node.purpose not in tuple(self.schema.consents):
            col = column_of(node, "purpose")
            raise QueryError(f"unknown consent purpose {node.purpose!r}", col, node.purpose)
        return node

    def bind_SegmentRef(self, node: SegmentRef, scope: _Scope) -> Node:
        self._top_level(node, scope, "SEGMENT")
        if not isinstance(node.name, str) or not node.name:
            raise QueryError("SEGMENT needs a non-empty name", column_of(node, "name"), _token(node.name))
        return node

    def bind_Sample(self, node: Sample, scope: _Scope) -> Node:
        self._top_level(node, scope, "SAMPLE")
        p = node.percent
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            col = column_of(node, "percent")
            raise QueryError("SAMPLE percent must be between 0 and 100", col, _token(p))
        if not _is_int(node.seed) or not 0 <= node.seed < 2**64:
            col = column_of(node, "seed")
            raise QueryError("SAMPLE seed must be an integer in 0..2**64-1", col, _token(node.seed))
        return replace(node, percent=float(p))


def _op_text(node: Node) -> str:
    """The keyword/operator that introduced a predicate, for error tokens."""
    if isinstance(node, Compare):
        return node.op
    if isinstance(node, In):
        return "NOT" if node.negated else "IN"
    if isinstance(node, Between):
        return "NOT" if node.negated else "BETWEEN"
    if isinstance(node, Has):
        return "HAS"
    return type(node).__name__
