"""DID(...) over one shard's event store.

Presence in a window ("had at least one / no event") is one union of whole-day bitmaps, whole
5-minute slot bitmaps inside the two partial edge days (built on demand, see
``EventTypeStore.ensure_slots``; a partial day with few events is scanned instead) and the rows
of the events in the two partial edge slots. Counts, WHERE and AFTER LAST scan only the events
inside the window (found by binary search in each time-ordered run; within a found set of under a
tenth of the rows, only its rows' events: ``FOUND_SHARE``): counts up to two in
per-row bitsets (``count_upto2``), up to 255 in per-row saturating uint8 counters
(``count_upto``), larger ones by sorting the window's rows. Counts from 2 to 8 over windows with
a whole day come from kept count levels (``engine.exec.count_levels``) and AFTER LAST presence
from per-row latest times (``engine.exec.after_last``) where those apply.
"""
from __future__ import annotations

import math
import operator
import threading
from contextlib import contextmanager
from typing import Iterator

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..retention import floor as retention_floor
from ..store.bitmaps import rows_of, to_bitmap, union_all
from ..store.count_levels import CAP as LEVELS_CAP
from ..store.latest_times import time_at
from ..store.events import DAY_MS, NO_TIME, SLOT_BUILD_MIN_EVENTS, SLOT_MS, EventStore, EventTypeStore
from ..store.runs import SCALED_NULL, Run
from .after_last import present_after_last
from .aggregate import aggregate_rows, holds_at_zero
from .count_levels import rows_passing, window_levels
from .query_cache import QueryCache
from .row_counts import DEBRUIJN_INDEX, count_upto, count_upto2, emit_counts, emit_upto2, runs_passing
from .sequence import sequence_rows
from .where_bins import member_parts, present_where, set_bits, where_superset

#: Presence bucket sizes, coarsest first: whole days, then whole 5-minute slots, then an exact scan.
BUCKET_LEVELS = (DAY_MS, SLOT_MS)

CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
TIME_MAX = np.iinfo(np.int64).max
#: Counts up to this are kept in per-row uint8 counters (count_upto) when the window holds at least
#: 1/COUNTER_MIN_DENSITY events per row (reading the counters out costs a pass over every row);
#: otherwise the window's rows are sorted.
COUNTER_TOP = 255
COUNTER_MIN_DENSITY = 4
#: A found set of under 1/FOUND_SHARE of the rows has its rows' events taken out of the window before
#: a WHERE or AFTER LAST tests them (``counted_rows``); a larger one is tested with every event (at
#: 2M profiles the two cost the same near a tenth, taking out a quarter of the events cost 1.7x).
FOUND_SHARE = 10


#: Count conditions that mean "at least one matching event" / "no matching event".
PRESENT = frozenset({(">=", 1), (">", 0), ("!=", 0)})
ABSENT = frozenset({("=", 0), ("<", 1), ("<=", 0)})


@numba.njit(cache=True, nogil=True)
def gather_rows(rows, keep, use_keep, member, use_member, out, n):
    """Append to ``out`` (from position n) the rows of the kept events of member rows; returns the new n.

    ``member``: a bitset of rows (bit r of word r // 64), one bit per row so that it stays in cache.
    """
    for i in range(len(rows)):
        if use_keep and not keep[i]:
            continue
        row = rows[i]
        if use_member and not (member[row >> 6] >> np.uint64(row & 63)) & np.uint64(1):
            continue
        out[n] = row
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def after_latest(rows, ts, base, low, high, epoch0, earliest):
    """Per event, whether its row has a latest time (``LatestTimes.parts``; not NO_TIME, at least
    ``earliest``) and the event is after it."""
    out = np.empty(len(rows), dtype=np.bool_)
    for i in range(len(rows)):
        t = time_at(low, high, epoch0, rows[i])
        out[i] = t != NO_TIME and t >= earliest and base + np.int64(ts[i]) > t
    return out


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


class Scratch:
    """The reused buffers of one DID evaluation (grown on demand; the bitsets are left zeroed after each use)."""

    def __init__(self) -> None:
        self.member = np.zeros(0, dtype=np.uint64)  # a bitset of the found rows, see gather_rows
        self.levels = np.zeros(0, dtype=np.uint64)  # count bitsets, see count_upto2
        self.rows = np.empty(0, dtype=np.int32)  # kept rows, see count_upto2
        self.counts = np.zeros(0, dtype=np.uint8)  # per-row counters, see count_upto

    def member_bits(self, size: int) -> np.ndarray:
        """A zeroed bitset of at least ``size`` rows (callers clear the bits they set)."""
        if len(self.member) * 64 < size:
            self.member = np.zeros(max((size + 63) // 64, int(len(self.member) * 1.25)), dtype=np.uint64)
        return self.member

    def kept_rows(self, n: int) -> np.ndarray:
        """An int32 buffer of at least ``n`` entries (count_upto2 compacts kept rows into it)."""
        if len(self.rows) < n:
            self.rows = np.empty(max(n, int(len(self.rows) * 1.25)), dtype=np.int32)
        return self.rows

    def count_levels(self, size: int) -> np.ndarray:
        """Zeroed count bitsets for ``size`` rows (see count_upto2; emit_upto2 zeroes them again)."""
        words = 2 * ((size + 63) // 64)
        if len(self.levels) < words:
            self.levels = np.zeros(max(words, int(len(self.levels) * 1.25)), dtype=np.uint64)
        return self.levels

    def row_counters(self, size: int) -> np.ndarray:
        """Zeroed uint8 counters for at least ``size`` rows, a multiple of 8 long (see count_upto;
        emit_counts zeroes them)."""
        if len(self.counts) < size:
            self.counts = np.zeros((max(size, int(len(self.counts) * 1.25)) + 7) // 8 * 8, dtype=np.uint8)
        return self.counts


class ScratchPool:
    """A thread-safe free list of ``Scratch`` buffers: each DID evaluation checks one out, so
    concurrent queries never share buffers, and a quiet shard allocates nothing per query."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.free: list[Scratch] = []
        self.lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[Scratch]:
        """A Scratch for the block, returned to the pool afterwards (dropped if the pool is full)."""
        with self.lock:
            scratch = self.free.pop() if self.free else None
        scratch = scratch or Scratch()
        clean = False
        try:
            yield scratch
            clean = True
        finally:
            if clean:  # an evaluation that raised may leave bits set: do not reuse its buffers
                with self.lock:
                    if len(self.free) < self.keep:
                        self.free.append(scratch)


class DidEvaluator:
    """Evaluates DID predicates against one shard's events.

    Shared by concurrent queries: per-evaluation buffers come from ``buffers`` (a ScratchPool),
    and the union cache holds finished bitmaps only.
    """

    def __init__(self, events: EventStore):
        self.events = events
        self.buffers = ScratchPool()
        # unions of buckets and of a WHERE's bins, count levels of whole days and of whole windows
        # (see where_bins, count_levels), within one byte budget
        self.cache = QueryCache(events)

    def estimate(self, node: ast.Did, now: int | None = None) -> float:
        """An upper bound of the rows a DID selects: the rows that ever had such an event, and (at
        clock ``now``) the events in its window over the count a row needs. A count that holds at zero
        selects most of the universe: the rows that ever had such an event stand for it."""
        store = self.events.types[node.event]
        ever = float(len(store.ever))
        if node.aggregates and holds_at_zero(node):
            return ever * 4  # most of the universe: rows without events are in
        if now is None or CMP[node.count_op](0, node.count_n):
            return ever
        lo, hi = self.window_of(node, now)
        if lo > hi:
            return 0.0
        events = sum(len(part) for part in store.window(lo, hi))
        need = node.count_n + 1 if node.count_op == ">" else max(node.count_n, 1)
        return min(ever, events / need)

    def estimate_sequence(self, node: ast.Sequence) -> float:
        """An upper bound of the rows a SEQUENCE selects: the fewest rows that ever had a step's event."""
        return float(min(len(self.events.types[step.event].ever) for step in node.steps))

    def window_of(self, node: ast.Did | ast.Sequence, now: int) -> tuple[int, int]:
        """The inclusive [lo, hi] timestamp window of a DID's (or SEQUENCE's) time options."""
        lo, hi = NO_TIME, now
        if node.before is not None:
            hi = min(hi, _literal(node.before, now) - 1)
        if node.since is not None:
            lo = max(lo, _literal(node.since, now))
        if node.within_ms is not None:
            lo = max(lo, now - node.within_ms + 1)
        if isinstance(node, ast.Did):  # a SEQUENCE's steps take their own types' floors (engine.exec.sequence)
            lo = max(lo, retention_floor(self.events.types[node.event].definition, now))
        return lo, hi

    def did(self, node: ast.Did, now: int, found: BitMap | None, live: BitMap) -> BitMap:
        """The rows for which the DID predicate holds (exact within ``found``)."""
        store = self.events.types[node.event]
        lo, hi = self.window_of(node, now)
        if node.aggregates:
            return self.aggregated(node, store, lo, hi, now, found, live)
        test = CMP[node.count_op]
        at_zero = test(0, node.count_n)
        simple = node.where is None and node.after_last is None
        if simple and (node.count_op, node.count_n) in PRESENT:
            return self.present(store, lo, hi, found)
        if simple and (node.count_op, node.count_n) in ABSENT:
            return (found if found is not None else live) - self.present(store, lo, hi, found)
        presence = (node.count_op, node.count_n) in PRESENT or (node.count_op, node.count_n) in ABSENT
        if presence and node.where is None and node.after_last is not None:
            after = self.events.types[node.after_last]
            earliest = retention_floor(after.definition, now)
            hit = present_after_last(store, after, lo, hi, now, earliest, found)  # None: the events are scanned
            if hit is not None:
                return hit if not at_zero else (found if found is not None else live) - hit
        if presence and node.where is not None and node.after_last is None:
            hit = present_where(self, node, store, lo, hi, now, found)  # None: the WHERE is scanned
            if hit is not None:
                return hit if not at_zero else (found if found is not None else live) - hit
        need = node.count_n if node.count_op in (">=", "<") else node.count_n + 1
        if 2 <= need <= LEVELS_CAP:  # levels answer counts up to their cap (never build a list of count_n items)
            wanted = [test(c, node.count_n) for c in range(need + 1)]
            levels = window_levels(self, node, store, lo, hi, now, found, wanted)  # None: the events are counted
            if levels is not None:  # the edge days' events counted include those of dead rows
                passing = rows_passing(levels, wanted, found if found is not None else live)
                return passing - store.dead if store.dead else passing
        size = int(live.max()) + 1 if live else 0
        universe = found if found is not None else live
        if node.where is not None:
            # only rows in every kept-bin superset of the WHERE's conjuncts can count an event: the
            # others count zero, so counting is restricted to the rows in them
            superset = where_superset(self, node.where, store, lo, hi)
            if superset is not None:
                found = universe & superset
        # a count that holds at zero: the universe minus the counted rows whose count fails
        rows = self.counted_rows(node, store, lo, hi, now, size, found, want=not at_zero)
        if at_zero:
            return universe - to_bitmap(rows, assume_sorted=True)
        counted = to_bitmap(rows, assume_sorted=True)
        return counted - store.dead if store.dead else counted  # rows whose events were deleted by marking

    def aggregated(self, node: ast.Did, store: EventTypeStore, lo: int, hi: int, now: int, found: BitMap | None,
                   live: BitMap) -> BitMap:
        """A DID with aggregate options (see :mod:`engine.exec.aggregate`; exact within ``found``)."""
        parts = store.window(lo, hi) if lo <= hi else []
        size = max(int(live.max()) + 1 if live else 0, store.row_bound())
        keeps = self.event_masks(node, store, parts, now, size)
        return aggregate_rows(self, node, store, (lo, hi), parts, keeps, found, found if found is not None else live)

    def sequence(self, node: ast.Sequence, now: int, found: BitMap | None, live: BitMap) -> BitMap:
        """The rows for which a SEQUENCE holds (see :mod:`engine.exec.sequence`; exact within ``found``)."""
        window = self.window_of(node, now)
        return sequence_rows(self.events, node, now, window, found, found if found is not None else live, self.present)

    def present(self, store: EventTypeStore, lo: int, hi: int, found: BitMap | None = None) -> BitMap:
        """Rows with at least one event of ``store``'s type with lo <= ts <= hi (exact within ``found``;
        do not mutate the result)."""
        if lo > hi or not store.runs:
            return BitMap()
        if lo == NO_TIME and hi >= store.max_ts:
            return store.ever
        parts: list[BitMap] = []
        self._present_parts(store, lo, hi, 0, parts, store.days)
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return BitMap()
        if found is not None and len(found) * 4 < max(len(p) for p in parts):
            # a few rows: intersect them with each part rather than building the whole union
            return BitMap.union(*[found & p for p in parts])
        return BitMap.union(*parts)

    def _present_parts(self, store: EventTypeStore, lo: int, hi: int, level: int, parts: list[BitMap],
                       buckets: dict[int, BitMap]) -> None:
        """Append to ``parts`` bitmaps whose union is the presence in [lo, hi]: whole buckets of
        ``BUCKET_LEVELS[level]`` (``buckets``: the bitmaps of that level), finer levels at the edges."""
        if level == len(BUCKET_LEVELS):
            parts.append(self._scan(store, lo, hi))
            return
        size = BUCKET_LEVELS[level]
        if size == SLOT_MS:  # [lo, hi] lies inside one day: slot bitmaps, unless scanning is cheaper
            day = lo // DAY_MS
            if not store.has_slots(day) and sum(len(p) for p in store.window(lo, hi)) <= SLOT_BUILD_MIN_EVENTS:
                parts.append(self._scan(store, lo, hi))
                return
            buckets = store.ensure_slots(day)  # holds the day's slots even if another query evicts them
        first, last = lo // size, hi // size
        full_lo = first if lo == first * size else first + 1
        full_hi = last if hi == (last + 1) * size - 1 else last - 1
        if full_lo > full_hi:  # no whole bucket inside: one or two partial buckets
            if first == last:
                self._present_parts(store, lo, hi, level + 1, parts, buckets)
            else:
                self._present_parts(store, lo, last * size - 1, level + 1, parts, buckets)
                self._present_parts(store, last * size, hi, level + 1, parts, buckets)
            return
        parts.append(self._buckets_union(store, size, full_lo, full_hi, buckets))
        if full_lo > first:
            self._present_parts(store, lo, full_lo * size - 1, level + 1, parts, buckets)
        if full_hi < last:
            self._present_parts(store, (full_hi + 1) * size, hi, level + 1, parts, buckets)

    @staticmethod
    def _scan(store: EventTypeStore, lo: int, hi: int) -> BitMap:
        """Rows with an event in [lo, hi], from the events themselves."""
        rows = [part.rows for part in store.window(lo, hi)]
        found = to_bitmap(np.concatenate(rows) if len(rows) > 1 else rows[0]) if rows else BitMap()
        return found - store.dead if store.dead else found  # rows whose events were deleted by marking

    def _buckets_union(self, store: EventTypeStore, size: int, first: int, last: int,
                       buckets: dict[int, BitMap]) -> BitMap:
        """Union of the ``size`` buckets first..last of ``buckets`` (kept with the store generation it
        is exact at; a union a few appends behind catches up with their rows, engine.store.append_log;
        do not mutate)."""
        key = (id(store), size, first, last)
        kept = self.cache.get(key)
        if kept is not None:
            at, union = kept
            if at == store.generation:
                return union
            union = store.appends.catch_up(union, at, store.generation, size, first, last)
            if union is not None:
                self.cache.put(key, (store.generation, union))
                return union
        if last - first + 1 <= len(buckets):
            bitmaps = [buckets[b] for b in range(first, last + 1) if b in buckets]
        else:
            bitmaps = [bitmap for b, bitmap in buckets.items() if first <= b <= last]
        union = union_all(bitmaps)
        self.cache.put(key, (store.generation, union))
        return union

    def event_masks(self, node: ast.Did, store: EventTypeStore, parts: list[Run], now: int,
                    size: int) -> list[np.ndarray | None]:
        """Per window part, the mask of events passing WHERE and AFTER LAST (None = all pass)."""
        latest = None
        if node.after_last is not None:
            latest = self.events.types[node.after_last].latest_before(now, size)
            earliest = retention_floor(self.events.types[node.after_last].definition, now)
        keeps: list[np.ndarray | None] = []
        for part in parts:
            keep = None if node.where is None else where_mask(node.where, part, store, now)
            if latest is not None:
                after = after_latest(part.rows, part.ts, part.base, *latest.parts, earliest)
                keep = after if keep is None else keep & after
            keeps.append(keep)
        return keeps

    def counted_rows(self, node: ast.Did, store: EventTypeStore, lo: int, hi: int, now: int, size: int,
                     found: BitMap | None, want: bool) -> np.ndarray:
        """Rows with >= 1 matching event whose count test is ``want`` (restricted to ``found`` if small)."""
        if lo > hi:
            return np.empty(0, dtype=np.int32)
        parts = store.window(lo, hi)
        total = sum(len(p) for p in parts)
        if total == 0:
            return np.empty(0, dtype=np.int32)
        size = max(size, store.row_bound())  # every row with an event (a deleted one too)
        # the count test for counts 0..top, where every count above top answers as top does: COUNT >= n
        # and COUNT < n only need to know whether a count reaches n, the other tests n + 1
        test = CMP[node.count_op]
        need = node.count_n if node.count_op in (">=", "<") else node.count_n + 1
        top = max(1, min(need, total + 1))  # counts never exceed the events in the window
        wanted = np.array([test(c, node.count_n) == want for c in range(top + 1)], dtype=bool)
        masked = node.where is not None or node.after_last is not None
        if masked and found is not None and len(found) * FOUND_SHARE < size:
            # few found rows: take their events first, so that only those are tested and counted
            with self.buffers.take() as buffers:
                parts = member_parts(buffers, parts, found)
            keeps = self.event_masks(node, store, parts, now, size)
            kept = [part.rows if keep is None else part.rows[keep] for part, keep in zip(parts, keeps)]
            rows = np.sort(np.concatenate(kept)) if kept else np.empty(0, dtype=np.int32)
            return runs_passing(rows, wanted, top)
        if top <= 2:
            keeps = self.event_masks(node, store, parts, now, size)
            dummy = np.empty(0, dtype=bool)
            with self.buffers.take() as buffers:
                levels = buffers.count_levels(size)
                for part, keep in zip(parts, keeps):
                    scratch = buffers.kept_rows(len(part.rows)) if keep is not None else part.rows
                    count_upto2(part.rows, dummy if keep is None else keep, keep is not None, levels, scratch)
                wanted = np.append(wanted, wanted[-1]) if top == 1 else wanted  # a count of 2 answers as 1 does
                return emit_upto2(levels, wanted, DEBRUIJN_INDEX, total)
        member_rows = rows_of(found) if found is not None and len(found) * 4 < total else None
        with self.buffers.take() as buffers:
            member = buffers.member_bits(size) if member_rows is not None else buffers.member
            if member_rows is not None:
                set_bits(member, member_rows, True)
            try:
                keeps = self.event_masks(node, store, parts, now, size)
                dummy = np.empty(0, dtype=bool)
                if top <= COUNTER_TOP and total * COUNTER_MIN_DENSITY >= size:
                    counts = buffers.row_counters(size)
                    for part, keep in zip(parts, keeps):
                        count_upto(part.rows, dummy if keep is None else keep, keep is not None, member,
                                   member_rows is not None, counts, top)
                    return emit_counts(counts, wanted, total)
                rows = np.empty(total, dtype=np.int32)
                n = 0
                for part, keep in zip(parts, keeps):
                    n = gather_rows(part.rows, dummy if keep is None else keep, keep is not None, member,
                                    member_rows is not None, rows, n)
            finally:
                if member_rows is not None:
                    set_bits(member, member_rows, False)
        rows = rows[:n]
        rows.sort()  # a row's events side by side: its count is the length of its run
        return runs_passing(rows, wanted, top)
