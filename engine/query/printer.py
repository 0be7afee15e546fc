"""Canonical query text: ``parse(to_text(node)) == node`` for every parsed node.

Keywords are upper-case, names are quoted only when they are not plain identifiers or when
they collide with a keyword, operands of ``AND``/``OR`` are flattened and sorted by their text,
and parentheses appear only where precedence needs them (``OR`` inside ``AND``, ``AND``/``OR``
under ``NOT``). Equal segments therefore print the same text.

>>> from engine.query.parser import parse
>>> to_text(parse("vip = true and (country = 'FR' or \\"count\\" > 2) and age >= 30"))
'("count" > 2 OR country = \\'FR\\') AND age >= 30 AND vip = TRUE'
>>> to_text(parse("did(purchase, within 168h, count >= 1) or signup_at > now - 30m"))
'DID(purchase, WITHIN 1w) OR signup_at > NOW - 30m'
"""
from __future__ import annotations

from typing import Any, Callable

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
    SeqStep,
    Value,
)
from engine.query.tokens import DURATION_UNITS, is_identifier

#: Texts of already printed nodes, by ``id``.
Texts = dict[int, str]

#: Units from largest to smallest, for the shortest exact duration text.
_UNITS_DESC = sorted(DURATION_UNITS.items(), key=lambda kv: -kv[1])


def to_text(node: Node) -> str:
    """The canonical text of a query AST (iterative: any depth prints)."""
    texts: dict[int, str] = {}
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, ready = stack.pop()
        if id(current) in texts:
            continue
        children = _children(current)
        if ready or not children:
            printer = _PRINTERS.get(type(current))
            if printer is None:
                raise TypeError(f"cannot print {type(current).__name__}")
            texts[id(current)] = printer(current, texts)
        else:
            stack.append((current, True))
            stack.extend((child, False) for child in children if id(child) not in texts)
    return texts[id(node)]


def _children(node: Node) -> tuple[Node, ...]:
    """The sub-queries printed inside ``node``."""
    if isinstance(node, (And, Or)):
        return tuple(_flat(node))
    if isinstance(node, Not):
        return (node.item,)
    if isinstance(node, (Did, SeqStep)) and node.where is not None:
        return (node.where,)
    if isinstance(node, Sequence):
        return node.steps
    return ()


def format_name(name: str) -> str:
    """A name as written in a query: bare if a non-keyword identifier, else double-quoted."""
    return name if is_identifier(name) else '"' + name.replace('"', '""') + '"'


def format_string(text: str) -> str:
    """A single-quoted string literal with ``''`` escaping."""
    return "'" + text.replace("'", "''") + "'"


def format_duration(ms: int) -> str:
    """Milliseconds as the largest exact unit (``604800000`` -> ``1w``)."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0 or ms % 1000:
        raise ValueError(f"{ms!r} ms is not expressible as a duration")
    for unit, size in _UNITS_DESC:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: seconds divide every multiple of 1000")


def format_literal(value: Value) -> str:
    """A literal value as written in a query."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, Now):
        if value.offset_ms == 0:
            return "NOW"
        sign = "-" if value.offset_ms < 0 else "+"
        return f"NOW {sign} {format_duration(abs(value.offset_ms))}"
    raise ValueError(f"not a query literal: {value!r}")


def _flat(node: And | Or) -> list[Node]:
    """The operands of an And/Or with nested ones of the same class spliced in."""
    items: list[Node] = []
    pending = list(reversed(node.items))
    while pending:
        item = pending.pop()
        if type(item) is type(node):
            pending.extend(reversed(item.items))  # type: ignore[attr-defined]
        else:
            items.append(item)
    return items


def _operand(node: Node, parent: type, texts: Texts) -> str:
    """Text of an operand, parenthesised when it binds looser than ``parent``."""
    text = texts[id(node)]
    needs = isinstance(node, Or) if parent is And else isinstance(node, (And, Or)) if parent is Not else False
    return f"({text})" if needs and len(_flat(node)) > 1 else text  # type: ignore[arg-type]


def _and(node: And, texts: Texts) -> str:
    items = _flat(node)
    return " AND ".join(sorted(_operand(i, And, texts) for i in items)) if items else "ALL"


def _or(node: Or, texts: Texts) -> str:
    items = _flat(node)
    return " OR ".join(sorted(_operand(i, Or, texts) for i in items)) if items else "NOT ALL"


def _not(node: Not, texts: Texts) -> str:
    return "NOT " + _operand(node.item, Not, texts)


def _compare(node: Compare) -> str:
    return f"{format_name(node.name)} {node.op} {format_literal(node.value)}"


def _literal_list(values: tuple[Value, ...]) -> str:
    if not values:
        raise ValueError("an empty value list cannot be printed")
    return "(" + ", ".join(format_literal(v) for v in values) + ")"


def _in(node: In) -> str:
    neg = "NOT " if node.negated else ""
    return f"{format_name(node.name)} {neg}IN {_literal_list(node.values)}"


def _between(node: Between) -> str:
    neg = "NOT " if node.negated else ""
    lo, hi = format_literal(node.lo), format_literal(node.hi)
    return f"{format_name(node.name)} {neg}BETWEEN {lo} AND {hi}"


def _is_null(node: IsNull) -> str:
    return f"{format_name(node.name)} IS {'NOT ' if node.negated else ''}NULL"


def _has(node: Has) -> str:
    if node.mode == "one" and len(node.values) == 1:
        return f"{format_name(node.name)} HAS {format_literal(node.values[0])}"
    if node.mode not in ("any", "all"):
        raise ValueError(f"bad HAS mode {node.mode!r}")
    return f"{format_name(node.name)} HAS {node.mode.upper()} {_literal_list(node.values)}"


def _did(node: Did, texts: Texts) -> str:
    head = format_name(node.event)
    if node.where is not None:
        head += " WHERE " + texts[id(node.where)]
    parts = [head]
    implicit = (">=", 0) if node.aggregates else (">=", 1)
    if (node.count_op, node.count_n) != implicit:
        parts.append(f"COUNT {node.count_op} {node.count_n}")
    parts.extend(sorted(_aggregate(a) for a in node.aggregates))
    parts.extend(_time_options(node))
    if node.after_last is not None:
        parts.append("AFTER LAST " + format_name(node.after_last))
    return "DID(" + ", ".join(parts) + ")"


def _aggregate(node: Aggregate) -> str:
    return f"{node.func}({format_name(node.prop)}) {node.op} {format_literal(node.value)}"


def _step(node: SeqStep, texts: Texts) -> str:
    head = format_name(node.event)
    return head + " WHERE " + texts[id(node.where)] if node.where is not None else head


def _sequence(node: Sequence, texts: Texts) -> str:
    parts = [" THEN ".join(texts[id(step)] for step in node.steps)]
    if node.span_ms is not None:
        parts.append("SPAN " + format_duration(node.span_ms))
    parts.extend(_time_options(node))
    return "SEQUENCE(" + ", ".join(parts) + ")"


def _time_options(node: Did | Sequence) -> list[str]:
    """The WITHIN, SINCE and BEFORE options of a DID or SEQUENCE, in that order."""
    parts = []
    if node.within_ms is not None:
        parts.append("WITHIN " + format_duration(node.within_ms))
    if node.since is not None:
        parts.append("SINCE " + format_literal(node.since))
    if node.before is not None:
        parts.append("BEFORE " + format_literal(node.before))
    return parts


def _bucket(node: Bucket) -> str:
    head = f"BUCKET({node.seed})"
    neg = "NOT " if node.negated else ""
    if node.op == "IN":
        return f"{head} {neg}IN ({', '.join(str(v) for v in node.values)})"
    if node.op == "BETWEEN":
        return f"{head} {neg}BETWEEN {node.values[0]} AND {node.values[1]}"
    return f"{head} {node.op} {node.values[0]}"


def _sample(node: Sample) -> str:
    text = format_literal(node.percent)
    return f"SAMPLE({text}, {node.seed})" if node.seed else f"SAMPLE({text})"


def _leaf(printer: Callable[[Any], str]) -> Callable[[Any, Texts], str]:
    return lambda node, texts: printer(node)


_PRINTERS: dict[type, Callable[[Any, Texts], str]] = {
    All: _leaf(lambda node: "ALL"),
    And: _and,
    Or: _or,
    Not: _not,
    Compare: _leaf(_compare),
    In: _leaf(_in),
    Between: _leaf(_between),
    IsNull: _leaf(_is_null),
    Has: _leaf(_has),
    Did: _did,
    Consented: _leaf(lambda node: f"CONSENTED({format_name(node.purpose)})"),
    SegmentRef: _leaf(lambda node: f"SEGMENT({format_string(node.name)})"),
    Sample: _leaf(_sample),
    SeqStep: _step,
    Sequence: _sequence,
    Bucket: _leaf(_bucket),
}
