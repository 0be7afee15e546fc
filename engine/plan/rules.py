"""Rewrite rules: pure functions AST -> AST, applied in order by the planner.

>>> from engine.query.ast import And, Or, Not, All, Compare, In
>>> flatten(And((All(), And((Compare("a", "=", 1), Compare("b", "=", 2))))))
And(items=(Compare(name='a', op='=', value=1), Compare(name='b', op='=', value=2)))
>>> fold_in(Or((Compare("c", "=", "FR"), In("c", ("BE",)))))
In(name='c', values=('BE', 'FR'), negated=False)
>>> simplify_not(Not(Not(Compare("a", "=", 1))))
Compare(name='a', op='=', value=1)
>>> split_buckets(Bucket(7, "!=", (0,)))
Bucket(seed=7, op='BETWEEN', values=(1, 9999), negated=False)
>>> bucket_ranges(Bucket(7, "IN", (3, 4, 9, -1), negated=True))
[(0, 2), (5, 8), (10, 9999)]
"""
from __future__ import annotations

from ..query.ast import All, And, Bucket, Compare, In, IsNull, Node, Not, Or

#: BUCKET values are 0..BUCKETS - 1.
BUCKETS = 10000


def flatten(node: Node) -> Node:
    """Flatten nested And/Or, drop ALL from And, and collapse Or containing ALL to ALL."""
    if isinstance(node, (And, Or)):
        items: list[Node] = []
        for child in (flatten(c) for c in node.items):
            if type(child) is type(node):
                items.extend(child.items)  # type: ignore[attr-defined]
            else:
                items.append(child)
        if isinstance(node, And):
            items = [c for c in items if not isinstance(c, All)] or [All()]
        elif any(isinstance(c, All) for c in items):
            return All()
        unique = list(dict.fromkeys(items))
        return unique[0] if len(unique) == 1 else type(node)(tuple(unique))
    if isinstance(node, Not):
        return Not(flatten(node.item))
    return node


def simplify_not(node: Node) -> Node:
    """NOT NOT x -> x; NOT (a IS NULL) -> a IS NOT NULL (they partition the universe)."""
    if isinstance(node, Not):
        inner = simplify_not(node.item)
        if isinstance(inner, Not):
            return inner.item
        if isinstance(inner, IsNull):
            return IsNull(inner.name, not inner.negated)
        return Not(inner)
    if isinstance(node, (And, Or)):
        return type(node)(tuple(simplify_not(c) for c in node.items))
    return node


def fold_in(node: Node) -> Node:
    """Inside an OR, fold ``a = x`` and ``a IN (...)`` on the same name into one IN."""
    if isinstance(node, Not):
        return Not(fold_in(node.item))
    if isinstance(node, And):
        return And(tuple(fold_in(c) for c in node.items))
    if not isinstance(node, Or):
        return node
    groups: dict[str, set] = {}
    rest: list[Node] = []
    for child in (fold_in(c) for c in node.items):
        if isinstance(child, Compare) and child.op == "=":
            groups.setdefault(child.name, set()).add(child.value)
        elif isinstance(child, In) and not child.negated:
            groups.setdefault(child.name, set()).update(child.values)
        else:
            rest.append(child)
    folded = [In(name, tuple(sorted(values, key=repr))) for name, values in groups.items()]
    items = folded + rest
    return items[0] if len(items) == 1 else Or(tuple(items))


def bucket_ranges(node: Bucket) -> list[tuple[int, int]]:
    """The disjoint, ascending inclusive ranges of bucket values (within 0..9999) that ``node`` selects."""
    top = BUCKETS - 1
    if node.op == "IN":
        ranges = [(v, v) for v in sorted(set(node.values))]
    elif node.op == "BETWEEN":
        ranges = [(node.values[0], node.values[1])]
    else:
        v = node.values[0]
        ranges = {"<": [(0, v - 1)], "<=": [(0, v)], ">": [(v + 1, top)], ">=": [(v, top)], "=": [(v, v)],
                  "!=": [(0, v - 1), (v + 1, top)]}[node.op]
    clipped = [(max(lo, 0), min(hi, top)) for lo, hi in ranges if max(lo, 0) <= min(hi, top)]
    merged: list[tuple[int, int]] = []
    for lo, hi in clipped:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    if not node.negated:
        return merged
    outside, start = [], 0
    for lo, hi in merged:
        if lo > start:
            outside.append((start, lo - 1))
        start = hi + 1
    return outside + ([(start, top)] if start <= top else [])


def split_buckets(node: Node) -> Node:
    """Every BUCKET predicate as ``BUCKET(s) BETWEEN lo AND hi`` per selected range (one kept bitmap
    each), ALL when it selects every bucket, an empty range when none."""
    if isinstance(node, Bucket):
        ranges = bucket_ranges(node)
        if ranges == [(0, BUCKETS - 1)]:
            return All()
        items = [Bucket(node.seed, "BETWEEN", r) for r in ranges] or [Bucket(node.seed, "BETWEEN", (1, 0))]
        return items[0] if len(items) == 1 else Or(tuple(items))
    if isinstance(node, Not):
        return Not(split_buckets(node.item))
    if isinstance(node, (And, Or)):
        return type(node)(tuple(split_buckets(c) for c in node.items))
    return node


RULES = (flatten, simplify_not, fold_in, split_buckets, flatten)
