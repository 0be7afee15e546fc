"""DID(...) over one shard's event store.

Presence in a window ("had at least one / no event") is one union of whole-day bitmaps, whole
5-minute slot bitmaps inside the two partial edge days (built on demand, see
``EventTypeStore.ensure_slots``; a partial day with few events is scanned instead) and the rows
of the events in the two partial edge slots. Counts, WHERE and AFTER LAST scan only the events inside the
window (found by binary search in each time-ordered run) with a numba tally per profile row.
"""
from __future__ import annotations

import math
import operator

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap, union_all
from ..store.events import (DAY_MS, NO_TIME, SCALED_NULL, SLOT_BUILD_MIN_EVENTS, SLOT_MS, EventStore,
                             EventTypeStore, Run)

#: Presence bucket sizes, coarsest first: whole days, then whole 5-minute slots, then an exact scan.
BUCKET_LEVELS = (DAY_MS, SLOT_MS)

CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
TIME_MAX = np.iinfo(np.int64).max


#: Count conditions that mean "at least one matching event" / "no matching event".
PRESENT = frozenset({(">=", 1), (">", 0), ("!=", 0)})
ABSENT = frozenset({("=", 0), ("<", 1), ("<=", 0)})


@numba.njit(cache=True)
def gather_rows(rows, keep, use_keep, member, use_member, out, n):
    """Append to ``out`` (from position n) the rows of the kept events of member rows; returns the new n."""
    for i in range(len(rows)):
        if use_keep and not keep[i]:
            continue
        row = rows[i]
        if use_member and not member[row]:
            continue
        out[n] = row
        n += 1
    return n


@numba.njit(cache=True)
def runs_passing(rows, wanted, top):
    """The distinct values of sorted ``rows`` whose number of repeats c has wanted[min(c, top)]."""
    out = np.empty(len(rows), dtype=rows.dtype)
    n = 0
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j] == rows[i]:
            j += 1
        if wanted[min(j - i, top)]:
            out[n] = rows[i]
            n += 1
        i = j
    return out[:n]


def where_mask(node: ast.Node, part: Run, store: EventTypeStore, now: int) -> np.ndarray:
    """Boolean mask of the events of ``part`` that satisfy a WHERE property query."""
    size = len(part)
    if isinstance(node, ast.All):
        return np.ones(size, dtype=bool)
    if isinstance(node, ast.And):
        mask = where_mask(node.items[0], part, store, now)
        for item in node.items[1:]:
            mask &= where_mask(item, part, store, now)
        return mask
    if isinstance(node, ast.Or):
        mask = where_mask(node.items[0], part, store, now)
        for item in node.items[1:]:
            mask |= where_mask(item, part, store, now)
        return mask
    if isinstance(node, ast.Not):
        return ~where_mask(node.item, part, store, now)
    name = node.name  # type: ignore[attr-defined]
    values = part.props[name]
    kind = store.definition.properties[name]
    scale = store.scaled.get(name, 0) if kind == "float" else 0
    if kind == "category" or kind == "bool":
        valid = values >= 0
    elif scale:
        valid = values != SCALED_NULL
    elif kind == "float":
        valid = ~np.isnan(values)
    else:
        valid = part.valid[name]
    if isinstance(node, ast.IsNull):
        return valid.copy() if node.negated else ~valid
    if scale:
        return valid & _scaled_test(node, values, scale)
    return valid & _test(node, values, kind, store.labels.get(name), now)


def scaled_bounds(literal: float, scale: int) -> tuple[int, int]:
    """(lo, hi): the least code c with c / scale >= literal and the greatest with c / scale <= literal.

    ``c / scale`` is exactly how a scaled code decodes (one correctly rounded division) and is
    strictly increasing in c, so a comparison of decoded values is a comparison of codes.
    """
    top = 1 << 32  # beyond every int32 code
    if literal * scale >= top:
        return top, top - 1
    if literal * scale <= -top:
        return -top + 1, -top
    c = math.floor(literal * scale)
    while c / scale >= literal:
        c -= 1
    while c / scale < literal:
        c += 1
    lo = c
    while c / scale > literal:
        c -= 1
    while (c + 1) / scale <= literal:
        c += 1
    return lo, c


def _scaled_test(node: ast.Node, codes: np.ndarray, scale: int) -> np.ndarray:
    """A numeric predicate on scaled float codes (non-null ones; nulls are masked by the caller)."""
    if isinstance(node, ast.Compare):
        lo, hi = scaled_bounds(node.value, scale)
        op = node.op
        if op == ">=":
            return codes >= lo
        if op == ">":
            return codes > hi
        if op == "<":
            return codes < lo
        if op == "<=":
            return codes <= hi
        hits = (codes >= lo) & (codes <= hi) if lo <= hi else np.zeros(len(codes), dtype=bool)
        return hits if op == "=" else ~hits
    if isinstance(node, ast.In):
        wanted = [lo for lo, hi in (scaled_bounds(v, scale) for v in node.values) if lo <= hi]
        hits = np.isin(codes, np.array(wanted, dtype=np.int64))
        return ~hits if node.negated else hits
    if isinstance(node, ast.Between):
        hits = (codes >= scaled_bounds(node.lo, scale)[0]) & (codes <= scaled_bounds(node.hi, scale)[1])
        return ~hits if node.negated else hits
    raise TypeError(f"unsupported property predicate {type(node).__name__}")


def _literal(value, now: int):
    return now + value.offset_ms if isinstance(value, ast.Now) else value


def _test(node: ast.Node, values: np.ndarray, kind: str, labels: list[str] | None, now: int) -> np.ndarray:
    """The predicate on non-null values (null rows are masked out by the caller)."""
    if kind == "category":
        assert labels is not None
        lut = np.array([_category_test(node, label, now) for label in labels] + [False], dtype=bool)
        return lut[np.where(values >= 0, values, len(labels))]
    if kind == "bool":
        values = values == 1
    if isinstance(node, ast.Compare):
        return CMP[node.op](values, _literal(node.value, now))
    if isinstance(node, ast.In):
        hits = np.isin(values, [_literal(v, now) for v in node.values])
        return ~hits if node.negated else hits
    if isinstance(node, ast.Between):
        hits = (values >= _literal(node.lo, now)) & (values <= _literal(node.hi, now))
        return ~hits if node.negated else hits
    raise TypeError(f"unsupported property predicate {type(node).__name__}")


def _category_test(node: ast.Node, label: str, now: int) -> bool:
    if isinstance(node, ast.Compare):
        return CMP[node.op](label, node.value)
    if isinstance(node, ast.In):
        return (label in node.values) != node.negated
    if isinstance(node, ast.Between):
        return (node.lo <= label <= node.hi) != node.negated
    raise TypeError(f"unsupported property predicate {type(node).__name__}")


class DidEvaluator:
    """Evaluates DID predicates against one shard's events."""

    def __init__(self, events: EventStore):
        self.events = events
        self.member = np.zeros(0, dtype=bool)
        self.union_cache: dict[tuple, BitMap] = {}

    def estimate(self, node: ast.Did) -> float:
        """Rows that ever had this event type (an upper bound of the positive set)."""
        return float(len(self.events.types[node.event].ever))

    def window_of(self, node: ast.Did, now: int) -> tuple[int, int]:
        """The inclusive [lo, hi] timestamp window of a DID's time options."""
        lo, hi = NO_TIME, now
        if node.before is not None:
            hi = min(hi, _literal(node.before, now) - 1)
        if node.since is not None:
            lo = max(lo, _literal(node.since, now))
        if node.within_ms is not None:
            lo = max(lo, now - node.within_ms + 1)
        return lo, hi

    def did(self, node: ast.Did, now: int, found: BitMap | None, live: BitMap) -> BitMap:
        """The rows for which the DID predicate holds (exact within ``found``)."""
        store = self.events.types[node.event]
        lo, hi = self.window_of(node, now)
        test = CMP[node.count_op]
        at_zero = test(0, node.count_n)
        simple = node.where is None and node.after_last is None
        if simple and (node.count_op, node.count_n) in PRESENT:
            return self.present(store, lo, hi)
        if simple and (node.count_op, node.count_n) in ABSENT:
            return live - self.present(store, lo, hi)
        presence = (node.count_op, node.count_n) in PRESENT
        if presence or (node.count_op, node.count_n) in ABSENT:
            # no counting needed: the rows of the matching events
            hits = to_bitmap(self.matching_rows(node, store, lo, hi, now, int(live.max()) + 1 if live else 0))
            return hits if presence else live - hits
        size = int(live.max()) + 1 if live else 0
        # a count that holds at zero: the universe minus the counted rows whose count fails
        rows = self.counted_rows(node, store, lo, hi, now, size, found, want=not at_zero)
        if at_zero:
            return (found if found is not None else live) - to_bitmap(rows, assume_sorted=True)
        return to_bitmap(rows, assume_sorted=True)

    def present(self, store: EventTypeStore, lo: int, hi: int) -> BitMap:
        """Rows with at least one event of ``store``'s type with lo <= ts <= hi."""
        if lo > hi or not store.runs:
            return BitMap()
        if lo == NO_TIME and hi >= store.max_ts:
            return store.ever
        parts: list[BitMap] = []
        self._present_parts(store, lo, hi, 0, parts)
        if len(parts) == 1:
            return parts[0]
        return BitMap.union(*parts) if parts else BitMap()

    def _present_parts(self, store: EventTypeStore, lo: int, hi: int, level: int, parts: list[BitMap]) -> None:
        """Append to ``parts`` bitmaps whose union is the presence in [lo, hi]: whole buckets of
        ``BUCKET_LEVELS[level]``, finer levels at the edges."""
        if level == len(BUCKET_LEVELS):
            parts.append(self._scan(store, lo, hi))
            return
        size = BUCKET_LEVELS[level]
        if size == SLOT_MS:  # [lo, hi] lies inside one day: slot bitmaps, unless scanning is cheaper
            day = lo // DAY_MS
            if not store.has_slots(day) and sum(len(p) for p in store.window(lo, hi)) <= SLOT_BUILD_MIN_EVENTS:
                parts.append(self._scan(store, lo, hi))
                return
            store.ensure_slots(day)
        first, last = lo // size, hi // size
        full_lo = first if lo == first * size else first + 1
        full_hi = last if hi == (last + 1) * size - 1 else last - 1
        if full_lo > full_hi:  # no whole bucket inside: one or two partial buckets
            if first == last:
                self._present_parts(store, lo, hi, level + 1, parts)
            else:
                self._present_parts(store, lo, last * size - 1, level + 1, parts)
                self._present_parts(store, last * size, hi, level + 1, parts)
            return
        parts.append(self._buckets_union(store, size, full_lo, full_hi))
        if full_lo > first:
            self._present_parts(store, lo, full_lo * size - 1, level + 1, parts)
        if full_hi < last:
            self._present_parts(store, (full_hi + 1) * size, hi, level + 1, parts)

    @staticmethod
    def _scan(store: EventTypeStore, lo: int, hi: int) -> BitMap:
        """Rows with an event in [lo, hi], from the events themselves."""
        rows = [part.rows for part in store.window(lo, hi)]
        return to_bitmap(np.concatenate(rows) if len(rows) > 1 else rows[0]) if rows else BitMap()

    def _buckets_union(self, store: EventTypeStore, size: int, first: int, last: int) -> BitMap:
        """Union of the ``size`` buckets first..last (cached per store generation; do not mutate)."""
        key = (id(store), size, first, last, store.generation)
        cached = self.union_cache.get(key)
        if cached is None:
            buckets = store.buckets(size)
            if last - first + 1 <= len(buckets):
                bitmaps = [buckets[b] for b in range(first, last + 1) if b in buckets]
            else:
                bitmaps = [bitmap for b, bitmap in buckets.items() if first <= b <= last]
            cached = union_all(bitmaps)
            if len(self.union_cache) > 256:
                self.union_cache.pop(next(iter(self.union_cache)))
            self.union_cache[key] = cached
        return cached

    def event_masks(self, node: ast.Did, store: EventTypeStore, parts: list[Run], now: int,
                    size: int) -> list[np.ndarray | None]:
        """Per window part, the mask of events passing WHERE and AFTER LAST (None = all pass)."""
        latest = None
        if node.after_last is not None:
            latest = self.events.types[node.after_last].latest_before(now, size)
        keeps: list[np.ndarray | None] = []
        for part in parts:
            keep = None if node.where is None else where_mask(node.where, part, store, now)
            if latest is not None:
                before = latest[part.rows]
                after = (before != NO_TIME) & (part.absolute_ts() > before)
                keep = after if keep is None else keep & after
            keeps.append(keep)
        return keeps

    def matching_rows(self, node: ast.Did, store: EventTypeStore, lo: int, hi: int, now: int,
                      size: int) -> np.ndarray:
        """Profile rows of the events in [lo, hi] passing WHERE and AFTER LAST (with repeats)."""
        if lo > hi:
            return np.empty(0, dtype=np.int32)
        parts = store.window(lo, hi)
        keeps = self.event_masks(node, store, parts, now, size)
        rows = [part.rows if keep is None else part.rows[keep] for part, keep in zip(parts, keeps)]
        return np.concatenate(rows) if rows else np.empty(0, dtype=np.int32)

    def counted_rows(self, node: ast.Did, store: EventTypeStore, lo: int, hi: int, now: int, size: int,
                     found: BitMap | None, want: bool) -> np.ndarray:
        """Rows with >= 1 matching event whose count test is ``want`` (restricted to ``found`` if small)."""
        if lo > hi:
            return np.empty(0, dtype=np.int32)
        parts = store.window(lo, hi)
        total = sum(len(p) for p in parts)
        member_rows = rows_of(found) if found is not None and len(found) * 4 < total else None
        if member_rows is not None:
            if len(self.member) < size:
                self.member = np.zeros(max(size, int(len(self.member) * 1.25)), dtype=bool)
            self.member[member_rows] = True
        try:
            keeps = self.event_masks(node, store, parts, now, size)
            dummy = np.empty(0, dtype=bool)
            rows = np.empty(total, dtype=np.int32)
            n = 0
            for part, keep in zip(parts, keeps):
                n = gather_rows(part.rows, dummy if keep is None else keep, keep is not None, self.member,
                                member_rows is not None, rows, n)
        finally:
            if member_rows is not None:
                self.member[member_rows] = False
        rows = rows[:n]
        rows.sort()  # a row's events side by side: its count is the length of its run
        # the count test for counts 0..n+1 (every count above n+1 answers as n+1 does)
        test = CMP[node.count_op]
        top = min(node.count_n, n) + 1  # counts never exceed the events gathered
        wanted = np.array([test(c, node.count_n) == want for c in range(top + 1)], dtype=bool)
        return runs_passing(rows, wanted, top)
