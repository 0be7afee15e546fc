"""Immutable, hashable AST of the segment query language.

Every node is a frozen dataclass. ``pos`` (1-based column of the node's first token) is
carried for error messages but excluded from equality and hashing, so two spellings of the
same segment compare equal. ``And``/``Or`` compare and hash order-independently.

>>> a = Compare("age", ">", 30)
>>> b = IsNull("country")
>>> And((a, b)) == And((b, a))
True
>>> hash(And((a, b))) == hash(And((b, a)))
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

#: Comparison operators of the language, as written.
CMP_OPS = ("=", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Now:
    """The literal ``NOW [(+|-) duration]``: the query clock plus ``offset_ms``."""

    offset_ms: int = 0


#: A literal value after parsing: str, int, float, bool, or Now (a time relative to the clock).
#: After binding against a schema, timestamp literals given as ISO strings become int epoch ms.
Value = Union[str, int, float, bool, Now]


@dataclass(frozen=True)
class Node:
    """Base of every AST node."""

    pos: int = field(default=0, compare=False, repr=False, kw_only=True)

    def children(self) -> tuple["Node", ...]:
        """Direct sub-queries of this node (declared in one place per node type)."""
        return ()


@dataclass(frozen=True)
class All(Node):
    """``ALL``: every live profile (or, inside WHERE, every event of the type)."""


@dataclass(frozen=True, eq=False)
class And(Node):
    """Conjunction; order-independent equality."""

    items: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.items

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and frozenset(self.items) == frozenset(other.items)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, frozenset(self.items)))


@dataclass(frozen=True, eq=False)
class Or(Node):
    """Disjunction; order-independent equality."""

    items: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.items

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and frozenset(self.items) == frozenset(other.items)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, frozenset(self.items)))


@dataclass(frozen=True)
class Not(Node):
    """Set complement within the universe (live profiles, or the event type's events)."""

    item: Node

    def children(self) -> tuple[Node, ...]:
        return (self.item,)


@dataclass(frozen=True)
class Compare(Node):
    """``name op value`` with op one of CMP_OPS."""

    name: str
    op: str
    value: Value


@dataclass(frozen=True)
class In(Node):
    """``name [NOT] IN (v1, v2, ...)``."""

    name: str
    values: tuple[Value, ...]
    negated: bool = False


@dataclass(frozen=True)
class Between(Node):
    """``name [NOT] BETWEEN lo AND hi`` (inclusive both ends)."""

    name: str
    lo: Value
    hi: Value
    negated: bool = False


@dataclass(frozen=True)
class IsNull(Node):
    """``name IS [NOT] NULL``."""

    name: str
    negated: bool = False


@dataclass(frozen=True)
class Has(Node):
    """``name HAS v`` (mode "one"), ``HAS ANY (...)`` (mode "any"), ``HAS ALL (...)`` (mode "all")."""

    name: str
    mode: str
    values: tuple[str, ...]


#: Aggregate functions of a DID option, as written.
AGG_FUNCS = ("SUM", "AVG", "MIN", "MAX")


@dataclass(frozen=True)
class Aggregate(Node):
    """A DID option ``func(prop) op value``: func one of AGG_FUNCS over an int or float property."""

    func: str
    prop: str
    op: str
    value: int | float


@dataclass(frozen=True)
class Did(Node):
    """``DID(event [WHERE where], options...)``.

    ``within_ms``: WITHIN duration; ``since``/``before``: SINCE/BEFORE instants (int epoch ms
    after binding, or Now); ``after_last``: the event type of AFTER LAST; ``aggregates``: the
    aggregate options (sorted after binding). The count condition defaults to ``COUNT >= 1``, or
    to ``COUNT >= 0`` (no condition) when an aggregate option is given.
    """

    event: str
    where: Node | None = None
    count_op: str = ">="
    count_n: int = 1
    within_ms: int | None = None
    since: int | Now | None = None
    before: int | Now | None = None
    after_last: str | None = None
    aggregates: tuple[Aggregate, ...] = ()

    def children(self) -> tuple[Node, ...]:
        return (self.where,) if self.where is not None else ()


@dataclass(frozen=True)
class SeqStep(Node):
    """One step of a SEQUENCE: an event type and an optional WHERE over its properties."""

    event: str
    where: Node | None = None

    def children(self) -> tuple[Node, ...]:
        return (self.where,) if self.where is not None else ()


@dataclass(frozen=True)
class Sequence(Node):
    """``SEQUENCE(step THEN step ..., options...)``: events of the steps in strictly increasing time.

    ``span_ms``: SPAN (last minus first event time at most this); ``within_ms``/``since``/``before``
    bound every step's event as in DID.
    """

    steps: tuple[SeqStep, ...]
    span_ms: int | None = None
    within_ms: int | None = None
    since: int | Now | None = None
    before: int | Now | None = None

    def children(self) -> tuple[Node, ...]:
        return tuple(step.where for step in self.steps if step.where is not None)


@dataclass(frozen=True)
class Bucket(Node):
    """``BUCKET(seed) op ...``: op one of CMP_OPS (one value), ``IN`` (values) or ``BETWEEN`` (lo, hi)."""

    seed: int
    op: str
    values: tuple[int, ...]
    negated: bool = False


@dataclass(frozen=True)
class Consented(Node):
    """``CONSENTED(purpose)``."""

    purpose: str


@dataclass(frozen=True)
class SegmentRef(Node):
    """``SEGMENT('name')``: the current members of a saved segment."""

    name: str


@dataclass(frozen=True)
class Sample(Node):
    """``SAMPLE(percent [, seed])``; percent in [0, 100]."""

    percent: float
    seed: int = 0
