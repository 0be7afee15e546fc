"""The planner: bound AST -> rewrite rules -> plan steps.

>>> from engine.query.ast import And, Not, Compare
>>> plan(And((Compare("a", "=", 1), Not(Compare("b", "=", 2)))))
Intersect(items=(Pred(node=Compare(name='a', op='=', value=1)),), exclude=(Pred(node=Compare(name='b', op='=', value=2)),))
"""
from __future__ import annotations

from ..query.ast import All, And, Node, Not, Or
from .rules import RULES
from .steps import Intersect, Pred, Step, Union, Universe


def plan(node: Node) -> Step:
    """Rewrite ``node`` with every rule, then lower it to plan steps."""
    for rule in RULES:
        node = rule(node)
    return lower(node)


def lower(node: Node) -> Step:
    """Translate a rewritten AST into steps; NOT under AND becomes an and-not."""
    if isinstance(node, All):
        return Universe()
    if isinstance(node, Not):
        return Intersect((Universe(),), (lower(node.item),))
    if isinstance(node, Or):
        return Union(tuple(sorted((lower(c) for c in node.items), key=repr)))
    if isinstance(node, And):
        positives = tuple(sorted((lower(c) for c in node.items if not isinstance(c, Not)), key=repr))
        negatives = tuple(sorted((lower(c.item) for c in node.items if isinstance(c, Not)), key=repr))
        return Intersect(positives or (Universe(),), negatives)
    return Pred(node)
