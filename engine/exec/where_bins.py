"""Which bins of an event property satisfy a WHERE: the plan of a DID presence from kept bin bitmaps.

A row had an event passing ``A OR B`` exactly when it had one passing ``A`` or one passing ``B``,
so a WHERE whose disjuncts each read one property is a union over properties. For one property,
each bin (``engine.store.property_bitmaps``) either passes as a whole, fails as a whole, or (an
open interval with a literal strictly inside it) has to be checked event by event: its *edge*.
The test of a bin mirrors ``where_mask`` exactly: null fails every comparison, ``IS NULL`` holds
for it, ``NOT`` is the complement.

>>> from engine.query import ast
>>> node = ast.Compare("v", ">", 50.0)
>>> from engine.store.property_bitmaps import bin_keys
>>> keys = [int(k) for k in bin_keys("float", np.array([50.0, 75.0, 20.0, 120.0]), None)]
>>> bin_verdicts(node, "float", None, keys)
([False, True, False, True], [])
>>> bin_verdicts(ast.Compare("v", ">", 60.0), "float", None, keys)[1]
[1]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numba
import numpy as np
from pyroaring import BitMap

from ..query import ast
from ..store.bitmaps import rows_of, to_bitmap, union_all
from ..store.events import DAY_MS, NO_TIME, EventTypeStore
from ..store.property_bitmaps import BINNED_KINDS, EDGES, NULL_BIN, bin_bounds

if TYPE_CHECKING:
    from ..store.runs import Run
    from .did import DidEvaluator, Scratch

_CMP = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_LIMIT = float(EDGES[-1])


def disjuncts(node: ast.Node) -> list[ast.Node]:
    """The items of a (nested) OR, or [node]."""
    if isinstance(node, ast.Or):
        return [leaf for item in node.items for leaf in disjuncts(item)]
    return [node]


def property_of(node: ast.Node) -> str | None:
    """The one property ``node`` reads, or None if it reads none (ALL) or several."""
    if isinstance(node, ast.All):
        return None
    if isinstance(node, (ast.And, ast.Or)):
        names = {property_of(item) for item in node.items}
        return names.pop() if len(names) == 1 else None
    if isinstance(node, ast.Not):
        return property_of(node.item)
    return getattr(node, "name", None)


def group_by_property(where: ast.Node, kinds: dict[str, str]) -> dict[str, ast.Node] | None:
    """``where`` as one node per property (their disjunction is ``where``), or None if some disjunct
    reads several properties, none, or one without bins."""
    groups: dict[str, list[ast.Node]] = {}
    for item in disjuncts(where):
        name = property_of(item)
        if name is None or kinds.get(name) not in BINNED_KINDS:
            return None
        groups.setdefault(name, []).append(item)
    return {name: items[0] if len(items) == 1 else ast.Or(tuple(items)) for name, items in groups.items()}


def _literals(node: ast.Node) -> list:
    if isinstance(node, (ast.And, ast.Or)):
        return [v for item in node.items for v in _literals(item)]
    if isinstance(node, ast.Not):
        return _literals(node.item)
    if isinstance(node, ast.Compare):
        return [node.value]
    if isinstance(node, ast.In):
        return list(node.values)
    if isinstance(node, ast.Between):
        return [node.lo, node.hi]
    return []


def _holds(node: ast.Node, value) -> bool:
    """``node`` on one value (None = null), as where_mask tests an event."""
    if isinstance(node, ast.All):
        return True
    if isinstance(node, ast.And):
        return all(_holds(item, value) for item in node.items)
    if isinstance(node, ast.Or):
        return any(_holds(item, value) for item in node.items)
    if isinstance(node, ast.Not):
        return not _holds(node.item, value)
    if isinstance(node, ast.IsNull):
        return (value is not None) if node.negated else (value is None)
    if value is None:
        return False
    if isinstance(node, ast.Compare):
        return _CMP[node.op](value, node.value)
    if isinstance(node, ast.In):
        return (value in node.values) != node.negated
    if isinstance(node, ast.Between):
        return (node.lo <= value <= node.hi) != node.negated
    raise TypeError(f"unsupported property predicate {type(node).__name__}")


def bin_verdicts(node: ast.Node, kind: str, labels: list[str] | None, keys: list[int]) -> tuple[list[bool], list[int]]:
    """(whether each bin of ``keys`` passes as a whole, the positions of the bins to check event by event)."""
    passes: list[bool] = []
    edges: list[int] = []
    literals = None
    for position, key in enumerate(keys):
        if key == NULL_BIN:
            value = None
        elif kind == "category":
            assert labels is not None
            value = labels[key]
        elif kind == "bool":
            value = key == 1
        else:
            lo, hi = bin_bounds(key)
            if lo == hi:
                value = lo
            elif not (-_LIMIT <= lo and hi <= _LIMIT):
                passes.append(False)  # beyond the outermost edges: always checked
                edges.append(position)
                continue
            else:
                if literals is None:
                    literals = [v for v in _literals(node) if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if any(lo < v < hi for v in literals):
                    passes.append(False)
                    edges.append(position)
                    continue
                value = (lo + hi) / 2  # the test is constant on the open interval
        passes.append(_holds(node, value))
    return passes, edges


@numba.njit(cache=True, nogil=True)
def set_bits(words, rows, value):
    """Set (value True) or clear the bits of ``rows`` in a bitset."""
    for i in range(len(rows)):
        row = rows[i]
        bit = np.uint64(1) << np.uint64(row & 63)
        if value:
            words[row >> 6] |= bit
        else:
            words[row >> 6] &= ~bit


@numba.njit(cache=True, nogil=True)
def member_positions(rows, member):
    """Positions of the events whose row is set in the bitset ``member`` (rows past its end are not set)."""
    out = np.empty(len(rows), dtype=np.int64)
    words = len(member)
    n = 0
    for i in range(len(rows)):
        row = np.int64(rows[i])
        if (row >> 6) < words and (member[row >> 6] >> np.uint64(row & 63)) & np.uint64(1):
            out[n] = i
            n += 1
    return out[:n]


def member_parts(buffers: Scratch, parts: list[Run], members: BitMap) -> list[Run]:
    """The events of ``parts`` whose row is in ``members``, as runs (empty ones left out)."""
    member_rows = rows_of(members)
    if len(member_rows) == 0:
        return []
    member = buffers.member_bits(int(member_rows[-1]) + 1)
    set_bits(member, member_rows, True)
    try:
        taken = [part.take(member_positions(part.rows, member)) for part in parts]
    finally:
        set_bits(member, member_rows, False)
    return [part for part in taken if len(part)]


def scan_where(evaluator: DidEvaluator, store: EventTypeStore, where: ast.Node, lo: int, hi: int, now: int,
               candidates: BitMap | None) -> BitMap:
    """Rows (of ``candidates`` when given) with an event in [lo, hi] passing ``where``, from the events."""
    from .did import where_mask  # did.py imports this module

    if lo > hi or (candidates is not None and not candidates):
        return BitMap()
    parts = store.window(lo, hi)
    if not parts:
        return BitMap()
    if candidates is not None:
        with evaluator.buffers.take() as buffers:
            parts = member_parts(buffers, parts, candidates)
    found = [part.rows[where_mask(where, part, store, now)] for part in parts if len(part)]
    rows = to_bitmap(np.concatenate(found)) if found else BitMap()
    return rows - store.dead if store.dead else rows  # rows whose events were deleted by marking


def whole_days(lo: int, hi: int) -> tuple[int | None, int | None]:
    """The first and last UTC day wholly inside [lo, hi] (None: unbounded on that side)."""
    first = None if lo == NO_TIME else -(-lo // DAY_MS)
    last = (hi + 1) // DAY_MS - 1
    return first, last


def _bin_days(store: EventTypeStore, prop: str, node: ast.Node, first: int | None, last: int | None,
              all_time: bool) -> Iterator[tuple[bool, BitMap]]:
    """(whether the bin passes whole, its bitmap) for each passing or edge bin of ``prop`` under
    ``node``: its ``ever`` bitmap over all time, else its bitmaps of the days first..last."""
    kept = store.property_bitmaps(prop)
    assert kept is not None
    keys = sorted(kept.ever)
    passes, edges = bin_verdicts(node, kept.kind, store.labels.get(prop), keys)
    for position, key in enumerate(keys):
        if not passes[position] and position not in edges:
            continue
        if all_time:
            yield passes[position], kept.ever[key]
        else:
            for day, bitmap in kept.days[key].items():
                if (first is None or day >= first) and day <= last:  # type: ignore[operator]
                    yield passes[position], bitmap


def _bin_unions(store: EventTypeStore, groups: dict[str, ast.Node], first: int | None, last: int | None,
                all_time: bool, within: BitMap | None) -> tuple[BitMap, BitMap]:
    """(rows with an event in a passing bin, rows with one in an edge bin but none in a passing bin)
    over the whole days first..last (or all time); only rows of ``within`` when given."""
    sure: list[BitMap] = []
    edge: list[BitMap] = []
    for prop, node in groups.items():
        for whole, bitmap in _bin_days(store, prop, node, first, last, all_time):
            (sure if whole else edge).append(bitmap)
    if within is not None:
        sure = [within & bitmap for bitmap in sure]
        edge = [within & bitmap for bitmap in edge]
    whole = union_all(sure)
    return whole, (union_all(edge) - whole) if edge else BitMap()


#: A found set this many times smaller than the rows with events is intersected with each bin bitmap
#: (a saved segment re-evaluated on the rows of a write) instead of using the kept whole union.
FOUND_RATIO = 16


def present_where(evaluator: DidEvaluator, node: ast.Did, store: EventTypeStore, lo: int, hi: int,
                  now: int, found: BitMap | None = None) -> BitMap | None:
    """Rows with an event of ``store``'s type in [lo, hi] that passes ``node.where``, from the kept bin
    bitmaps: unions of whole bins over whole days, and a scan of the edge bins' rows and of the
    partial days at the window's ends (exact within ``found``). None if the WHERE does not split by
    property or the window holds no whole day (the caller scans). Do not mutate the result."""
    assert node.where is not None
    groups = group_by_property(node.where, store.definition.properties)
    if groups is None:
        return None
    if lo > hi or not store.runs:
        return BitMap()
    all_time = lo == NO_TIME and hi >= store.max_ts
    first, last = whole_days(lo, hi)
    if not all_time and first is not None and first > last:
        return None
    within = found if found is not None and len(found) * FOUND_RATIO < len(store.ever) else None
    key = ("where", id(store), node.where, all_time, first, last, store.generation)
    cached = evaluator.cache.get(key) if within is None else None
    if cached is None:
        whole, candidates = _bin_unions(store, groups, first, last, all_time, within)
        if candidates:
            span_lo = lo if all_time or first is None else first * DAY_MS
            span_hi = hi if all_time else (last + 1) * DAY_MS - 1
            whole = whole | scan_where(evaluator, store, node.where, span_lo, span_hi, now, candidates)
        cached = whole
        if within is None:
            evaluator.cache.put(key, whole)
    if all_time:
        return cached
    edges = []
    if first is not None and lo < first * DAY_MS:
        edges.append(scan_where(evaluator, store, node.where, lo, first * DAY_MS - 1, now, within))
    if hi > (last + 1) * DAY_MS - 1:
        edges.append(scan_where(evaluator, store, node.where, (last + 1) * DAY_MS, hi, now, within))
    return cached | union_all(edges) if edges else cached


def conjuncts(node: ast.Node) -> list[ast.Node]:
    """The items of a (nested) AND, or [node]."""
    if isinstance(node, ast.And):
        return [leaf for item in node.items for leaf in conjuncts(item)]
    return [node]


def where_superset(evaluator: DidEvaluator, where: ast.Node, store: EventTypeStore, lo: int, hi: int) -> BitMap | None:
    """A superset of the rows with an event in [lo, hi] passing ``where``, from the kept bin bitmaps: for
    each conjunct of ``where`` that splits by property, the rows with an event in one of its passing or
    edge bins on a day that [lo, hi] touches (ever, over all time); the intersection over those
    conjuncts. An event passing ``where`` passes every conjunct, so its row is in each such union.
    None if no conjunct splits by property. Do not mutate the result."""
    if lo > hi or not store.runs:
        return BitMap()
    all_time = lo == NO_TIME and hi >= store.max_ts
    first = None if lo == NO_TIME else lo // DAY_MS
    last = hi // DAY_MS
    kinds = store.definition.properties
    unions: list[BitMap] = []
    for conjunct in conjuncts(where):
        groups = group_by_property(conjunct, kinds)
        if groups is None:
            continue
        key = ("where-superset", id(store), conjunct, all_time, first, last, store.generation)
        union = evaluator.cache.get(key)
        if union is None:
            union = union_all([bitmap for prop, node in groups.items()
                               for _, bitmap in _bin_days(store, prop, node, first, last, all_time)])
            evaluator.cache.put(key, union)
        unions.append(union)
    if not unions:
        return None
    unions.sort(key=len)
    result = unions[0]
    for union in unions[1:]:
        result = result & union
    return result
