"""EXPLAIN: a plan as a tree of steps, each with the rows it selected and the time it took.

``plan_tree`` gives the static tree of a plan (one node per step, children in plan order:
an intersection's operands, then its excluded operands). ``TracingExecutor`` evaluates a plan
like the ``Executor`` it extends and fills in, per node, the planner's estimate of its rows
(``estimate``, the figure that orders an intersection's operands), the rows it yielded (within the rows it
was given: an intersection hands its survivors to the next operand), the rows it was given
(``input_rows``; -1 = the whole universe) and its wall time. A step an intersection skipped
because nothing survived keeps ``visited`` false. ``merge_trees`` adds up the trees of shards.

>>> from engine.plan.steps import Intersect, Pred, Universe
>>> from engine.query.ast import Compare
>>> tree = plan_tree(Intersect((Pred(Compare("age", ">", 3)),), (Pred(Compare("vip", "=", True)),)))
>>> tree["step"], [(c["step"], c["text"]) for c in tree["children"]]
('AND', [('PRED', 'age > 3'), ('NOT', 'vip = TRUE')])
"""
from __future__ import annotations

import time
from typing import Any

from pyroaring import BitMap

from .exec.executor import Executor
from .plan.steps import Intersect, Nothing, Pred, Step, Union, Universe
from .query import to_text


def _children(step: Step) -> tuple[Step, ...]:
    if isinstance(step, Intersect):
        return step.items + step.exclude
    if isinstance(step, Union):
        return step.items
    return ()


def _label(step: Step) -> tuple[str, str]:
    if isinstance(step, Pred):
        return "PRED", to_text(step.node)
    if isinstance(step, Intersect):
        return "AND", ""
    if isinstance(step, Union):
        return "OR", ""
    if isinstance(step, Universe):
        return "ALL", "ALL"
    if isinstance(step, Nothing):
        return "NONE", ""
    return type(step).__name__.upper(), ""


def plan_tree(step: Step, negated: bool = False) -> dict[str, Any]:
    """The static explain tree of ``step`` with zeroed statistics."""
    kind, text = _label(step)
    node: dict[str, Any] = {"step": "NOT" if negated else kind, "text": text, "estimate": 0.0, "rows": 0,
                            "input_rows": -1, "ms": 0.0, "visited": False, "children": []}
    if negated and kind != "PRED":
        node["text"] = kind
    excluded = step.exclude if isinstance(step, Intersect) else ()
    for child in _children(step):
        node["children"].append(plan_tree(child, negated=any(child is e for e in excluded)))
    return node


class TracingExecutor(Executor):
    """An Executor that records, per plan step, rows yielded, rows given and time taken."""

    def trace(self, step: Step, now: int) -> dict[str, Any]:
        """Evaluate ``step`` at clock ``now``; returns its explain tree (with ``count`` at the root).

        The tree and the path being visited belong to a per-call view (``at``), so one tracer may
        serve concurrent calls.
        """
        call = self.at(now)
        call.root = plan_tree(step)
        call.path: list[tuple[Step, dict[str, Any]]] = []
        result = call.visit(step, None)
        call.root["count"] = len(result)
        return call.root

    def visit(self, step: Step, found: BitMap | None) -> BitMap:
        if not self.path:
            node = self.root
        else:
            parent_step, parent = self.path[-1]
            index = next(i for i, child in enumerate(_children(parent_step)) if child is step)
            node = parent["children"][index]
        self.path.append((step, node))
        started = time.perf_counter()
        try:
            result = getattr(self, f"visit_{type(step).__name__}")(step, found)  # Executor.visit, one frame less
        finally:
            self.path.pop()
        node["ms"] += (time.perf_counter() - started) * 1000
        node["visited"] = True
        node["estimate"] = self._rows_estimate(step)
        node["input_rows"] = -1 if found is None else len(found)
        node["rows"] = len(result) if found is None else result.intersection_cardinality(found)
        return result


def merge_trees(trees: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up explain trees of the same plan from several shards (rows, input rows, times)."""
    first = trees[0]
    merged = {key: value for key, value in first.items() if key != "children"}
    for key in ("estimate", "rows", "ms", "count"):
        if key in first:
            merged[key] = sum(t[key] for t in trees)
    given = [t["input_rows"] for t in trees if t["visited"]]
    merged["input_rows"] = -1 if not given or any(g < 0 for g in given) else sum(given)
    merged["visited"] = any(t["visited"] for t in trees)
    merged["children"] = [merge_trees([t["children"][i] for t in trees]) for i in range(len(first["children"]))]
    return merged
