"""Why a profile is (or is not) in a segment: the query's tree with each node's truth and what decided it.

``explain_row(shard, row, node, now, with_events)`` walks a bound query tree for one row of a
shard. A predicate's truth is the executor's own answer for that predicate restricted to the row
(its plan evaluated with the found set ``{row}``), so a node is true iff the profile is in that
node's answer; AND, OR and NOT combine their children's truths as the set algebra does. What
decided each predicate comes from the shard's data:

- an attribute comparison: the attribute's value (tags sorted, timestamps in epoch ms, None if null);
- ``CONSENTED(p)``: the consent (True, False, or None if never set);
- ``SAMPLE``/``BUCKET``: the profile's bucket for the seed;
- ``SEGMENT('s')``: nothing beyond the truth (the saved segment's membership);
- with ``with_events``: for ``DID``, the number of matching events in its window and the first and
  last of them (ts), the latest event of the ``AFTER LAST`` type, each aggregate's value; for
  ``SEQUENCE``, the timestamps of one matching chain (one event per step), or None.

Each node dict is ``{"text", "kind", "value", "facts", "children"}``; ``text`` is the node's
canonical query text (engine.query.printer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pyroaring import BitMap

from ..plan import plan
from ..query import ast
from ..query.printer import to_text
from ..retention import floor as retention_floor
from ..store.events import EventTypeStore
from .aggregate import exact_sum, property_values
from .did import where_mask
from .sample import sample_threshold, splitmix64_py

if TYPE_CHECKING:
    from ..shard.local import LocalShard

#: The kind of each predicate node (And, Or, Not and All are named after themselves).
LEAF_KINDS: dict[type, str] = {
    ast.Compare: "attribute", ast.In: "attribute", ast.Between: "attribute", ast.IsNull: "attribute",
    ast.Has: "attribute", ast.Consented: "consent", ast.Sample: "sample", ast.Bucket: "bucket",
    ast.SegmentRef: "segment", ast.Did: "did", ast.Sequence: "sequence",
}
MASK64 = (1 << 64) - 1


class RowExplainer:
    """Explains bound query trees for one row of a shard at clock ``now``."""

    def __init__(self, shard: LocalShard, row: int, now: int, with_events: bool):
        self.shard = shard
        self.row = row
        self.now = now
        self.with_events = with_events
        self.found = BitMap([row])
        self.executor = shard.executor.at(now)

    def explain(self, node: ast.Node) -> dict[str, Any]:
        """The explanation tree of ``node`` (see the module docstring)."""
        children: list[dict[str, Any]] = []
        facts: dict[str, Any] = {}
        if isinstance(node, (ast.And, ast.Or)):
            children = [self.explain(item) for item in node.items]
            truths = [child["value"] for child in children]
            value = all(truths) if isinstance(node, ast.And) else any(truths)
            kind = "and" if isinstance(node, ast.And) else "or"
        elif isinstance(node, ast.Not):
            children = [self.explain(node.item)]
            value, kind = not children[0]["value"], "not"
        elif isinstance(node, ast.All):
            value, kind = True, "all"
        else:
            kind = LEAF_KINDS[type(node)]
            value = self.row in self.executor.visit(plan(node), self.found)
            facts = getattr(self, f"facts_{kind}")(node)
        return {"text": to_text(node), "kind": kind, "value": value, "facts": facts, "children": children}

    # -- what decided a predicate -------------------------------------------------------------
    def facts_attribute(self, node: ast.Node) -> dict[str, Any]:
        name = node.name  # type: ignore[attr-defined]
        return {"attribute": name, "value": self.shard.profiles.indexes[name].value(self.row)}

    def facts_consent(self, node: ast.Consented) -> dict[str, Any]:
        store = self.shard.profiles
        given = self.row in store.consents[node.purpose] if self.row in store.consents_set[node.purpose] else None
        return {"purpose": node.purpose, "consent": given}

    def bucket(self, seed: int) -> int:
        """BUCKET(seed) of this row's canonical id."""
        row_hash = int(self.shard.profiles.idmap.hashes_of([self.row])[0])
        return splitmix64_py(row_hash ^ (seed & MASK64)) % 10000

    def facts_sample(self, node: ast.Sample) -> dict[str, Any]:
        return {"seed": node.seed, "bucket": self.bucket(node.seed), "below": sample_threshold(node.percent)}

    def facts_bucket(self, node: ast.Bucket) -> dict[str, Any]:
        return {"seed": node.seed, "bucket": self.bucket(node.seed)}

    def facts_segment(self, node: ast.SegmentRef) -> dict[str, Any]:
        return {"segment": node.name}

    def facts_did(self, node: ast.Did) -> dict[str, Any]:
        if not self.with_events:
            return {}
        events = self.shard.events.types[node.event]
        lo, hi = self.shard.did.window_of(node, self.now)
        facts: dict[str, Any] = {"event": node.event}
        if node.after_last is not None:
            after = self.latest(node.after_last)
            facts["after_ts"] = after
            if after is None:
                lo = hi + 1  # no event of that type: nothing is counted
            else:
                lo = max(lo, after + 1)
        ts, parts = self.matching(events, node.where, lo, hi)
        facts.update(count=len(ts), first_ts=int(ts[0]) if len(ts) else None,
                     last_ts=int(ts[-1]) if len(ts) else None)
        for agg in node.aggregates:
            facts[f"{agg.func}({agg.prop})"] = _aggregate(agg.func, [property_values(events, part, agg.prop)
                                                                     for part in parts])
        return facts

    def facts_sequence(self, node: ast.Sequence) -> dict[str, Any]:
        if not self.with_events:
            return {}
        lo, hi = self.shard.did.window_of(node, self.now)
        steps = []
        for step in node.steps:
            events = self.shard.events.types[step.event]
            low = max(lo, retention_floor(events.definition, self.now))
            steps.append(self.matching(events, step.where, low, hi)[0])
        return {"matched_ts": _chain(steps, node.span_ms)}

    # -- this row's events --------------------------------------------------------------------
    def matching(self, events: EventTypeStore, where: ast.Node | None, lo: int, hi: int) -> tuple[np.ndarray, list]:
        """(sorted timestamps, window parts) of this row's events of ``events``' type in [lo, hi] passing ``where``."""
        if lo > hi or self.row not in events.ever:
            return np.empty(0, dtype=np.int64), []
        parts, times = [], []
        for part in events.window(lo, hi):
            mine = part.take(np.flatnonzero(part.rows == self.row))
            if len(mine) and where is not None:
                mine = mine.take(np.flatnonzero(where_mask(where, mine, events, self.now)))
            if len(mine):
                parts.append(mine)
                times.append(mine.absolute_ts())
        ts = np.sort(np.concatenate(times)) if times else np.empty(0, dtype=np.int64)
        return ts, parts

    def latest(self, event: str) -> int | None:
        """The time of this row's latest event of type ``event`` with ts <= now (within retention)."""
        events = self.shard.events.types[event]
        ts, _ = self.matching(events, None, retention_floor(events.definition, self.now), self.now)
        return int(ts[-1]) if len(ts) else None


def _aggregate(func: str, pieces: list[tuple[np.ndarray, np.ndarray]]) -> float | int | None:
    """SUM, AVG, MIN or MAX of the non-null values (SUM of none is 0.0; the others None)."""
    values = np.concatenate([v[ok] for v, ok in pieces]) if pieces else np.empty(0)
    if func == "SUM":
        return exact_sum(values.astype(np.float64))
    if not len(values):
        return None
    if func == "AVG":
        return exact_sum(values.astype(np.float64)) / len(values)
    extreme = values.min() if func == "MIN" else values.max()
    return extreme.item()


def _chain(steps: list[np.ndarray], span_ms: int | None) -> list[int] | None:
    """Timestamps x1 < x2 < ... (one per step, from its sorted candidates) with xk - x1 <= span, or None.

    For each first event in time order, the earliest event of each next step after the previous
    one gives the earliest possible end; if no chain completes from one first event, none does
    from a later one.
    """
    for first in steps[0].tolist():
        chain, previous = [first], first
        for candidates in steps[1:]:
            k = int(np.searchsorted(candidates, previous, side="right"))
            if k == len(candidates):
                return None
            previous = int(candidates[k])
            chain.append(previous)
        if span_ms is None or previous - first <= span_ms:
            return chain
    return None


def explain_row(shard: LocalShard, row: int, node: ast.Node, now: int, with_events: bool) -> dict[str, Any]:
    """The explanation tree of the bound query ``node`` for ``row`` of ``shard`` at clock ``now``."""
    return RowExplainer(shard, row, now, with_events).explain(node)

