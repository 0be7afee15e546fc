"""Which rows can change membership of a plan when the clock moves from ``t0`` to ``t1``.

A saved segment is materialised at a clock. When the clock advances, only rows whose inputs
cross a time edge can enter or leave; re-evaluating the segment on those rows alone keeps it
exact without a full re-scan:

- ``DID(e, ...)`` counts events with ``lo(now) <= ts <= hi(now)`` where ``hi`` is ``now`` (or
  ``BEFORE t - 1``) and ``lo`` comes from ``WITHIN``/``SINCE``. Moving the clock moves an edge
  only if it depends on ``now``; the events that change status are those between the old and
  the new edge: ``(hi(t0), hi(t1)]`` enter, ``[lo(t0), lo(t1))`` leave. ``AFTER LAST f`` also
  moves for rows with an ``f`` event in ``(t0, t1]``. A ``WHERE`` that mentions ``NOW`` can
  change any event's status, so every row that ever had such an event is a candidate. Aggregate
  options read the same events as the count, so the same rows are the candidates.
- ``SEQUENCE(...)`` depends on each row's events of the steps' types inside its window alone
  (SPAN does not move with the clock): the rows with such an event between the old and the new
  edges, for every step type, are the candidates (every row with such an event when a step's
  ``WHERE`` mentions ``NOW``).
- An attribute compared with ``NOW +/- d`` changes for rows whose value lies between the
  literal's old and new value (an index range query).
- ``SEGMENT('x')`` is handled by the caller: the rows whose membership of ``x`` changed.

>>> from engine.query.ast import Did, Now, Compare
>>> from engine.plan.steps import Pred
>>> is_clocked(Pred(Compare("age", ">", 3))), is_clocked(Pred(Did("purchase", within_ms=1000)))
(False, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from pyroaring import BitMap

from .plan.steps import Intersect, Pred, Step, Union
from .query import ast
from .store.bitmaps import rows_of, to_bitmap, union_all
from .store.events import EventStore, EventTypeStore
from .store.numeric import NumericIndex

#: (attribute, lo, hi) -> rows whose value lies in [lo, hi]
AttributeRows = Callable[[str, int, int], BitMap]


def predicates(step: Step) -> Iterator[ast.Node]:
    """Every predicate node of a plan, depth first."""
    if isinstance(step, Pred):
        yield step.node
    elif isinstance(step, Intersect):
        for item in step.items + step.exclude:
            yield from predicates(item)
    elif isinstance(step, Union):
        for item in step.items:
            yield from predicates(item)


def segment_refs(step: Step) -> frozenset[str]:
    """Names of the saved segments a plan reads (``SEGMENT('name')``)."""
    return frozenset(node.name for node in predicates(step) if isinstance(node, ast.SegmentRef))


#: Predicates that read an attribute of the profile (its ``name``).
ATTRIBUTE_PREDICATES = (ast.Compare, ast.In, ast.Between, ast.IsNull, ast.Has)
#: Predicates whose answer for a live profile depends on nothing a write changes (the profile's id,
#: or a referenced segment, whose changes reach the readers through ``SavedSegments``' cascade).
FIXED_PREDICATES = (ast.All, ast.SegmentRef, ast.Sample, ast.Bucket)


@dataclass(frozen=True)
class Reads:
    """What a plan's answer for one live profile depends on: its events of these types, these
    attributes, these consent purposes (each None: anything of its kind)."""

    events: frozenset[str] | None
    attributes: frozenset[str] | None
    consents: frozenset[str] | None

    def touched_by(self, events: frozenset[str], attributes: frozenset[str] | None, consents: frozenset[str]) -> bool:
        """Whether a write that added events of ``events``, set ``attributes`` (None: any) and consent
        purposes ``consents`` on a profile may change the plan's answer for it."""
        if self.events is None or self.attributes is None or self.consents is None:
            return True
        return bool(self.events & events or self.consents & consents
                    or (self.attributes if attributes is None else self.attributes & attributes))


#: The reads of a plan with a predicate not known here: anything.
READS_ANY = Reads(None, None, None)


def reads_of(step: Step) -> Reads:
    """What a plan reads (``Reads``). ``SEGMENT`` references count as reading nothing: changes of a
    referenced segment reach the segments that read it through ``SavedSegments``' cascade."""
    events: set[str] = set()
    attributes: set[str] = set()
    consents: set[str] = set()
    for node in predicates(step):
        if isinstance(node, ast.Did):
            events.add(node.event)
            if node.after_last is not None:
                events.add(node.after_last)
        elif isinstance(node, ast.Sequence):
            events.update(step.event for step in node.steps)
        elif isinstance(node, ATTRIBUTE_PREDICATES):
            attributes.add(node.name)
        elif isinstance(node, ast.Consented):
            consents.add(node.purpose)
        elif not isinstance(node, FIXED_PREDICATES):
            return READS_ANY
    return Reads(frozenset(events), frozenset(attributes), frozenset(consents))


def mentions_now(node: ast.Node | None) -> bool:
    """True if ``node`` (or a sub-query) has a ``NOW`` literal."""
    if node is None:
        return False
    values: tuple = ()
    if isinstance(node, ast.Compare):
        values = (node.value,)
    elif isinstance(node, ast.In):
        values = node.values
    elif isinstance(node, ast.Between):
        values = (node.lo, node.hi)
    elif isinstance(node, (ast.Did, ast.Sequence)):
        values = (node.since, node.before)
    if any(isinstance(v, ast.Now) for v in values):
        return True
    return any(mentions_now(child) for child in node.children())


def is_clocked(step: Step) -> bool:
    """True if the plan's answer can change with the clock alone (any DID, or any NOW literal).

    Every DID is clocked: only events with ``ts <= now`` count, so a future-dated event starts
    counting when the clock reaches it.
    """
    return any(isinstance(node, (ast.Did, ast.Sequence)) or mentions_now(node) for node in predicates(step))


def time_candidates(step: Step, t0: int, t1: int, events: EventStore, attribute_rows: AttributeRows) -> BitMap:
    """Rows whose value of ``step`` may differ between clocks ``t0 < t1`` (SEGMENT refs excluded)."""
    parts: list[BitMap] = []
    for node in predicates(step):
        if isinstance(node, ast.Did):
            parts.extend(_did_candidates(node, t0, t1, events))
        elif isinstance(node, ast.Sequence):
            parts.extend(_sequence_candidates(node, t0, t1, events))
        elif mentions_now(node):
            parts.extend(_attribute_candidates(node, t0, t1, attribute_rows))
    return union_all(parts)


def _at(value: int | ast.Now | None, now: int) -> int | None:
    if value is None:
        return None
    return now + value.offset_ms if isinstance(value, ast.Now) else int(value)


def _window(node: ast.Did | ast.Sequence, now: int) -> tuple[int | None, int]:
    """The inclusive [lo, hi] of counted timestamps at clock ``now`` (lo None = unbounded)."""
    hi = now
    before = _at(node.before, now)
    if before is not None:
        hi = min(hi, before - 1)
    bounds = [b for b in (_at(node.since, now), None if node.within_ms is None else now - node.within_ms + 1)
              if b is not None]
    return (max(bounds) if bounds else None), hi


def _rows_between(store: EventTypeStore, lo: int, hi: int) -> list[BitMap]:
    """Rows with an event of ``store``'s type with lo <= ts <= hi."""
    if lo > hi:
        return []
    rows = [part.rows for part in store.window(lo, hi)]
    if not rows:
        return []
    found = to_bitmap(np.concatenate(rows))
    return [found - store.dead if store.dead else found]  # rows whose events were deleted by marking


def _did_candidates(node: ast.Did, t0: int, t1: int, events: EventStore) -> list[BitMap]:
    store = events.types[node.event]
    if mentions_now(node.where):
        return [store.ever]
    lo0, hi0 = _window(node, t0)
    lo1, hi1 = _window(node, t1)
    parts = _rows_between(store, hi0 + 1, hi1)  # events that started to count
    if lo0 is not None and lo1 is not None:
        parts += _rows_between(store, lo0, lo1 - 1)  # events that aged out
    if node.after_last is not None:
        parts += _rows_between(events.types[node.after_last], t0 + 1, t1)  # a newer "last" event
    return parts


def _sequence_candidates(node: ast.Sequence, t0: int, t1: int, events: EventStore) -> list[BitMap]:
    lo0, hi0 = _window(node, t0)
    lo1, hi1 = _window(node, t1)
    parts: list[BitMap] = []
    for event in dict.fromkeys(step.event for step in node.steps):
        store = events.types[event]
        if any(mentions_now(step.where) for step in node.steps if step.event == event):
            parts.append(store.ever)
            continue
        parts += _rows_between(store, hi0 + 1, hi1)  # events that started to count
        if lo0 is not None and lo1 is not None:
            parts += _rows_between(store, lo0, lo1 - 1)  # events that aged out
    return parts


def _attribute_candidates(node: ast.Node, t0: int, t1: int, attribute_rows: AttributeRows) -> list[BitMap]:
    values: tuple = ()
    if isinstance(node, ast.Compare):
        values = (node.value,)
    elif isinstance(node, ast.In):
        values = node.values
    elif isinstance(node, ast.Between):
        values = (node.lo, node.hi)
    name = node.name  # type: ignore[attr-defined]
    return [attribute_rows(name, t0 + v.offset_ms, t1 + v.offset_ms) for v in values if isinstance(v, ast.Now)]


class SortedColumn:
    """A numeric attribute's rows sorted by value, for range lookups that cost O(log n + hits).

    The sorted copy is taken lazily; rows written since (``touch``) are checked against the live
    index instead, and the copy is retaken once they are more than ``rebuild_share`` of it.

    >>> from engine.columns import ValueColumn
    >>> index = NumericIndex("timestamp")
    >>> index.assign(np.arange(4), ValueColumn(np.array([40, 10, 30, 20]), np.ones(4, bool)))
    >>> column = SortedColumn(index)
    >>> list(column.between(15, 30))
    [2, 3]
    >>> index.assign(np.array([1]), ValueColumn(np.array([25]), np.ones(1, bool))); column.touch(BitMap([1]))
    >>> list(column.between(15, 30))
    [1, 2, 3]
    """

    def __init__(self, index: NumericIndex, rebuild_share: float = 0.02):
        self.index = index
        self.rebuild_share = rebuild_share
        self.values: np.ndarray | None = None
        self.rows = np.empty(0, dtype=np.uint32)
        self.dirty = BitMap()

    def touch(self, rows: BitMap) -> None:
        """Note that ``rows`` may have new values."""
        if self.values is not None:
            self.dirty |= rows

    def between(self, lo: int, hi: int) -> BitMap:
        """Rows whose value lies in [lo, hi]."""
        if self.values is None or len(self.dirty) > max(1024, self.rebuild_share * len(self.rows)):
            rows = rows_of(self.index.notnull)
            values = self.index.column.data[rows].astype(self.index.dtype)
            order = np.argsort(values, kind="stable")
            self.values, self.rows, self.dirty = values[order], rows[order], BitMap()
        start = int(np.searchsorted(self.values, lo, side="left"))
        stop = int(np.searchsorted(self.values, hi, side="right"))
        hits = to_bitmap(self.rows[start:stop])
        if self.dirty:
            hits = (hits - self.dirty) | self.index.range(lo, hi, found=self.dirty)
        return hits
