"""The planner: bound AST -> rewrite rules -> plan steps.

>>> from engine.query.ast import And, Not, Compare
>>> plan(And((Compare("a", "=", 1), Not(Compare("b", "=", 2)))))
Intersect(items=(Pred(node=Compare(name='a', op='=', value=1)),), exclude=(Pred(node=Compare(name='b', op='=', value=2)),))
"""
from __future__ import annotations

from ..query.ast import All, And, Node, Not, Or
from ..query.printer import to_text
from .rules import RULES
from .steps import Intersect, Pred, Step, Union, Universe


def plan(node: Node) -> Step:
    """Rewrite ``node`` with every rule, then lower it to plan steps."""
    for rule in RULES:
        node = rule(node)
    return lower(node)


def lower(node: Node) -> Step:
    """Translate a rewritten AST into steps; NOT under AND becomes an and-not."""
    return _lower(node)[0]


def _lower(node: Node) -> tuple[Step, str]:
    """The step of ``node`` and its sort key (children are ordered by key: a canonical order)."""
    if isinstance(node, All):
        return Universe(), "U"
    if isinstance(node, Not):
        inner = _lower(node.item)
        return Intersect((Universe(),), (inner[0],)), f"I(U;{inner[1]})"
    if isinstance(node, Or):
        items = sorted((_lower(c) for c in node.items), key=_by_key)
        return Union(tuple(step for step, _ in items)), "O(" + ",".join(key for _, key in items) + ")"
    if isinstance(node, And):
        positives = sorted((_lower(c) for c in node.items if not isinstance(c, Not)), key=_by_key)
        negatives = sorted((_lower(c.item) for c in node.items if isinstance(c, Not)), key=_by_key)
        if not positives:
            positives = [(Universe(), "U")]
        key = "I(" + ",".join(k for _, k in positives) + ";" + ",".join(k for _, k in negatives) + ")"
        return Intersect(tuple(s for s, _ in positives), tuple(s for s, _ in negatives)), key
    return Pred(node), "P" + to_text(node)


def _by_key(lowered: tuple[Step, str]) -> str:
    return lowered[1]
