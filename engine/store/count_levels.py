"""Kept count levels of events: per key, the rows with at least j such events per UTC day and ever.

A key is a value bin of an event property (``engine.store.property_bitmaps``) or, for the event
type as a whole, ``WHOLE_TYPE``. Level 1 (the rows with one such event or more) is already kept
next to this structure (the type's day bitmaps and ``ever``, a bin's ``days`` and ``ever``); this
one keeps levels 2..CAP, so a row with more than CAP events sits in every level. COUNT >= k over
many days or bins is then a running sum of their levels (``engine.exec.count_levels``), never a
pass over the events. Counts only grow: a write ORs into each level the rows of its events that
newly reach it, their old counts read from the levels and their sums taken per row.

>>> levels = CountLevels()   # rows 1 and 2 had one event on day 0; then events of rows 2, 4, 4
>>> levels.add(np.zeros(3, np.int64), np.zeros(3, np.int64), np.array([2, 4, 4]),
...            {WHOLE_TYPE: {0: BitMap([1, 2])}}, {WHOLE_TYPE: BitMap([1, 2])})
>>> [sorted(level) for level in levels.days[WHOLE_TYPE][0]], [sorted(level) for level in levels.ever[WHOLE_TYPE]]
([[2, 4]], [[2, 4]])
"""
from __future__ import annotations

from typing import Iterable

import numba
import numpy as np
from pyroaring import BitMap

from .bitmaps import to_bitmap

#: The highest level kept: COUNT >= k for k <= CAP is answered from levels.
CAP = 8
#: The key of the whole event type (no property bin).
WHOLE_TYPE = 0

Levels = list[BitMap]  # levels[j - 1] = the rows whose count is >= j (nested; empty top levels left off)
#: A planned addition: (key, UTC day or None for all time, the levels 2.. to OR in).
LevelsPart = tuple[int, "int | None", Levels]


def _grown_part(old_first: BitMap | None, old_levels: Levels, batch_rows: np.ndarray, batch_levels: Levels) -> Levels:
    """The levels 2.. that the rows of a batch (its rows ``batch_rows``, their levels 2..
    ``batch_levels``) newly reach once added to the old counts (level 1 ``old_first``, then
    ``old_levels``): ORed into the old levels, they give the levels of the sum.

    With ``had[k]`` the batch's rows with k old events or more (read through a chain of
    intersections that only shrinks: the levels are nested) and ``got[a]`` those with a events
    or more in the batch, a row's sum reaches j iff it is in ``had[k] & got[j - k]`` for some k;
    it reaches j newly unless it is in ``had[j]``. Every operation is over the batch's rows, and
    a batch whose rows have one event each (``got`` = [all, all]) costs one intersection and one
    difference per level.

    >>> [sorted(b) for b in _grown_part(BitMap([1, 2]), [BitMap([2])], np.array([1, 2, 3, 3]), [BitMap([3])])]
    [[1, 3], [2]]
    """
    if old_first is None:
        return batch_levels
    batch_first = to_bitmap(batch_rows)
    held = old_first & batch_first
    if not held:
        return batch_levels  # no row of the batch was there: the batch's levels join as they are
    had = [batch_first, held]
    for level in old_levels:
        held = level & held
        if not held:
            break
        had.append(held)
    got = [batch_first, batch_first, *batch_levels]
    out: Levels = []
    for j in range(2, CAP + 1):
        # the few rows with two or more events in the batch: none before it, or k before it
        extras = [got[j]] if j < len(got) else []
        extras += [had[k] & got[j - k] for k in range(max(1, j - len(got) + 1), min(j - 1, len(had)))]
        top = had[j] if j < len(had) else None  # the rows already at level j
        if top is not None:
            newly = had[j - 1] - top  # j - 1 events before the batch, one or more in it
        elif j - 1 < len(had):
            newly = had[j - 1].copy() if extras else had[j - 1]
        else:
            newly = BitMap()
        for extra in extras:
            newly |= extra if top is None else extra - top
        if not newly and top is None:
            break  # no row reaches level j: none reaches a higher one
        out.append(newly)
    while out and not out[-1]:
        out.pop()
    return out


@numba.njit(cache=True, nogil=True)
def level_records(rows, order, starts, counter, cap):
    """For each group g (the events order[starts[g]:starts[g + 1]]), the rows that reach count j,
    2 <= j <= cap, as records (g, row, j); ``counter`` (uint8, one per row, zero) is left zeroed."""
    groups = np.empty(len(order), dtype=np.int64)
    out_rows = np.empty(len(order), dtype=np.int64)
    levels = np.empty(len(order), dtype=np.int64)
    n = 0
    for g in range(len(starts) - 1):
        for p in range(starts[g], starts[g + 1]):
            r = rows[order[p]]
            c = counter[r]
            if c < cap:
                c += 1
                counter[r] = c
                if c >= 2:
                    groups[n] = g
                    out_rows[n] = r
                    levels[n] = c
                    n += 1
        for p in range(starts[g], starts[g + 1]):
            counter[rows[order[p]]] = 0
    return groups[:n], out_rows[:n], levels[:n]


def upper_levels(rows: np.ndarray, order: np.ndarray, starts: np.ndarray, cap: int = CAP) -> dict[int, Levels]:
    """Per group g that has a row with two or more events: its levels 2..cap (see ``level_records``)."""
    if len(rows) == 0:
        return {}
    bound = int(rows.max()) + 1
    distinct = None
    if len(rows) * 16 < bound:  # a batch: count over its distinct rows, not a counter per row of the store
        distinct, inverse = np.unique(rows, return_inverse=True)
        rows, bound = inverse.reshape(-1), len(distinct)
    counter = np.zeros(bound, dtype=np.uint8)
    groups, found, levels = level_records(rows, order, starts, counter, cap)
    if len(groups) == 0:
        return {}
    if distinct is not None:
        found = distinct[found]
    by = np.lexsort((found, levels, groups))
    groups, found, levels = groups[by], found[by], levels[by]
    cuts = np.flatnonzero(np.r_[True, (groups[1:] != groups[:-1]) | (levels[1:] != levels[:-1]), True])
    out: dict[int, Levels] = {}
    for start, stop in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        out.setdefault(int(groups[start]), []).append(to_bitmap(found[start:stop], assume_sorted=True))
    return out


class CountLevels:
    """Levels 2..CAP per key: ``days[key][day]`` (counts within UTC ``day``) and ``ever[key]`` (over
    all time). Level 1 lives in the caller's bitmaps; keys and days without a count of 2 are left off."""

    def __init__(self) -> None:
        self.days: dict[int, dict[int, Levels]] = {}
        self.ever: dict[int, Levels] = {}

    def add(self, keys: np.ndarray, days: np.ndarray, rows: np.ndarray, firsts: dict[int, dict[int, BitMap]],
            ever_firsts: dict[int, BitMap]) -> None:
        """Count new events (per event: its key, UTC day and row). ``firsts[key][day]`` and
        ``ever_firsts[key]``: level 1 as it was before these events (the caller adds them to it after)."""
        self.apply(self.plan_add(keys, days, rows, firsts, ever_firsts))

    def plan_add(self, keys: np.ndarray, days: np.ndarray, rows: np.ndarray, firsts: dict[int, dict[int, BitMap]],
                 ever_firsts: dict[int, BitMap]) -> list[LevelsPart]:
        """What ``add`` ORs into the levels, worked out without changing them (an append's prepare,
        while queries read): per key and day (None: all time), the levels 2.. the new events' rows
        reach. Counts only grow, so each level is joined by the rows that reach it, and the sum is
        taken over the new events' rows only: the cost follows the batch, not the store."""
        parts: list[LevelsPart] = []
        if len(rows) == 0:
            return parts
        rows = np.asarray(rows, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        for key, key_rows, key_days in _split(keys, rows, days):
            order, starts, day_keys = _group(key_days)
            new_days = upper_levels(key_rows, order, starts)
            per_day = self.days.get(key, {})
            known_firsts = firsts.get(key, {})
            for g, day in enumerate(day_keys.tolist()):
                part = _grown_part(known_firsts.get(day), per_day.get(day, []),
                                   key_rows[order[starts[g]:starts[g + 1]]], new_days.get(g, []))
                if part:
                    parts.append((key, day, part))
            whole = upper_levels(key_rows, np.arange(len(key_rows)), np.array([0, len(key_rows)]))
            part = _grown_part(ever_firsts.get(key), self.ever.get(key, []), key_rows, whole.get(0, []))
            if part:
                parts.append((key, None, part))
        return parts

    def apply(self, parts: list[LevelsPart]) -> None:
        """OR planned parts into the levels, in place (writes commit while no query reads)."""
        for key, day, part in parts:
            levels = self.ever.setdefault(key, []) if day is None else self.days.setdefault(key, {}).setdefault(day, [])
            for j, bitmap in enumerate(part):
                if j < len(levels):
                    levels[j] |= bitmap
                else:
                    levels.append(bitmap)

    def drop(self, gone: BitMap) -> None:
        """Remove the rows ``gone`` (their events were deleted)."""
        for key in list(self.days):
            per_day = self.days[key]
            for day in list(per_day):
                kept = _minus(per_day[day], gone)
                if kept:
                    per_day[day] = kept
                else:
                    del per_day[day]
            if not per_day:
                del self.days[key]
        for key in list(self.ever):
            kept = _minus(self.ever[key], gone)
            if kept:
                self.ever[key] = kept
            else:
                del self.ever[key]

    def expire(self, edge_day: int, edge_keys: np.ndarray, edge_rows: np.ndarray, all_keys: np.ndarray,
               all_rows: np.ndarray) -> None:
        """After the events before some instant of ``edge_day`` went: drop the earlier days, recount
        ``edge_day`` from its remaining events and ``ever`` from every remaining event (keys, rows)."""
        for key in list(self.days):
            per_day = self.days[key]
            for day in [d for d in per_day if d <= edge_day]:
                del per_day[day]
        for key, key_rows, _ in _split(np.asarray(edge_keys, np.int64), np.asarray(edge_rows, np.int64), None):
            found = upper_levels(key_rows, np.arange(len(key_rows)), np.array([0, len(key_rows)]))
            if 0 in found:
                self.days.setdefault(key, {})[edge_day] = found[0]
        self.days = {key: per_day for key, per_day in self.days.items() if per_day}
        self.ever = {}
        for key, key_rows, _ in _split(np.asarray(all_keys, np.int64), np.asarray(all_rows, np.int64), None):
            found = upper_levels(key_rows, np.arange(len(key_rows)), np.array([0, len(key_rows)]))
            if 0 in found:
                self.ever[key] = found[0]

    def join(self, other: "CountLevels") -> None:
        """Add the levels of ``other``, whose rows hold no level here (rows recounted after a drop)."""
        for key, per_day in other.days.items():
            mine = self.days.setdefault(key, {})
            for day, levels in per_day.items():
                mine[day] = _union_levels(mine.get(day, []), levels)
        for key, levels in other.ever.items():
            self.ever[key] = _union_levels(self.ever.get(key, []), levels)

    def nbytes(self) -> int:
        """Serialized bytes of every level bitmap (what Roaring holds, about)."""
        return sum(len(b.serialize()) for per_day in self.days.values() for levels in per_day.values()
                   for b in levels) + sum(len(b.serialize()) for levels in self.ever.values() for b in levels)

    def same_as(self, other: "CountLevels") -> bool:
        """True if both hold the same keys, days and levels."""
        return self.ever == other.ever and self.days == other.days


def build_levels(slices: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> CountLevels:
    """The levels of a set of events given in slices (per event: key, UTC day, row), computed from
    scratch: each slice is added on top of the level 1 of the slices before it."""
    levels = CountLevels()
    firsts: dict[int, dict[int, BitMap]] = {}
    ever_firsts: dict[int, BitMap] = {}
    for keys, days, rows in slices:
        levels.add(keys, days, rows, firsts, ever_firsts)
        for key, key_rows, key_days in _split(np.asarray(keys, np.int64), np.asarray(rows, np.int64), days):
            order, starts, day_keys = _group(key_days)
            per_day = firsts.setdefault(key, {})
            for g, day in enumerate(day_keys.tolist()):
                added = to_bitmap(key_rows[order[starts[g]:starts[g + 1]]])
                if day in per_day:
                    per_day[day] |= added
                else:
                    per_day[day] = added
            ever_firsts[key] = ever_firsts[key] | to_bitmap(key_rows) if key in ever_firsts else to_bitmap(key_rows)
    return levels


def _minus(levels: Levels, gone: BitMap) -> Levels:
    """``levels`` without the rows ``gone``, changed in place (a write's commit: no query reads them
    meanwhile, and queries keep only what they derive from them); a level ``gone`` misses is left as is."""
    for level in levels:
        if level.intersect(gone):
            level.difference_update(gone)
    while levels and not levels[-1]:
        levels.pop()
    return levels


def _union_levels(a: Levels, b: Levels) -> Levels:
    """Levels of rows counted in a or b, never both (so a count is a's or b's)."""
    return [a[j] | b[j] if j < len(a) and j < len(b) else (a[j] if j < len(a) else b[j])
            for j in range(max(len(a), len(b)))]


def _split(keys: np.ndarray, rows: np.ndarray, days: np.ndarray | None):
    """[(key, its events' rows, their days)] per distinct key (events keep their order within a key)."""
    if len(keys) == 0:
        return []
    if len(keys) and bool((keys == keys[0]).all()):
        return [(int(keys[0]), rows, days)]
    order = np.argsort(keys, kind="stable")
    keys_sorted = keys[order]
    cuts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1], True])
    return [(int(keys_sorted[a]), rows[order[a:b]], None if days is None else days[order[a:b]])
            for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist())]


def _group(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order grouping the events by day, group starts, each group's day)."""
    days = np.asarray(days, dtype=np.int64)
    if len(days) > 1 and bool(np.all(days[1:] >= days[:-1])):
        order = np.arange(len(days))
        sorted_days = days
    else:
        order = np.argsort(days, kind="stable")
        sorted_days = days[order]
    cuts = np.flatnonzero(np.r_[True, sorted_days[1:] != sorted_days[:-1], True])
    return order, cuts, sorted_days[cuts[:-1]]
