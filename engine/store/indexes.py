"""Bitmap indexes for category, bool and tags attributes (numeric ones live in numeric.py).

Every index keeps a column (one value per row), a not-null bitmap and one bitmap per value;
``assign(rows, column)`` moves the given rows between bitmaps in one batch.

>>> idx = CategoryIndex()
>>> idx.assign(np.array([0, 1, 2]), CategoryColumn(np.array([0, 1, 0], dtype=np.int32), ["FR", "BE"]))
>>> list(idx.eq("FR")), list(idx.compare("<", "FR"))
([0, 2], [1])
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pyroaring import BitMap

from ..columns import CategoryColumn, TagsColumn, ValueColumn
from .bitmaps import group_rows, scatter_rows, to_bitmap, union_all
from .growable import GrowableArray
from .union_cache import UnionCache

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter

#: Comparison operators as functions (category strings compare by code point, as Python does).
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def _move(bitmaps: list[BitMap], rows: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
    """Move ``rows`` from the bitmap of their ``old`` code to that of their ``new`` code (-1 = none)."""
    changed = old != new
    rows, old, new = rows[changed], old[changed], new[changed]
    keep = old >= 0
    scatter_rows(bitmaps, rows[keep], old[keep], remove=True)
    keep = new >= 0
    scatter_rows(bitmaps, rows[keep], new[keep])


class _KeptUnions:
    """Mixin of the indexes with a bitmap per label: unions of value bitmaps asked for twice are kept
    (``UnionCache``, never stored in snapshots)."""

    bitmaps: list[BitMap]
    labels: list[str]
    code_of: dict[str, int]
    notnull: BitMap

    def _unions(self) -> UnionCache:
        return self.__dict__.setdefault("_kept_unions", UnionCache())

    def _union_of(self, codes: list[int]) -> BitMap:
        """The union of the value bitmaps of ``codes`` (kept from the second request on; do not mutate)."""
        if len(codes) <= 1:
            return self.bitmaps[codes[0]] if codes else BitMap()
        kept = self._unions().union(frozenset(codes), self.bitmaps)
        return kept if kept is not None else union_all([self.bitmaps[c] for c in codes])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_kept_unions", None)
        state.pop("_sorted_labels", None)
        state.pop("_mask_idents", None)
        return state

    def _read_labels(self, reader: StateReader, state: dict[str, Any], rows: int) -> None:
        """Set the labels, their codes, their bitmaps and ``notnull`` from a snapshot part."""
        self.labels = _strings(state["labels"])
        self.code_of = {label: code for code, label in enumerate(self.labels)}
        self.bitmaps = _sized(reader.bitmaps(state["bitmaps"], rows), len(self.labels))
        self.notnull = reader.bitmap(state["notnull"], rows)


#: From this many rows on, ``TagsIndex`` moves rows between tag bitmaps grouped by (old, new) tag set.
TAGS_GROUPED_MIN = 4096

#: The types a code column may have (snapshots written before narrowing hold int32).
CODE_TYPES = (np.int8, np.int16, np.int32, np.int64)


def _set_notnull(notnull: BitMap, rows: np.ndarray, valid: np.ndarray) -> None:
    if valid.any():
        notnull.update(to_bitmap(rows[valid]))
    if not valid.all():
        notnull.difference_update(to_bitmap(rows[~valid]))


class CategoryIndex(_KeptUnions):
    """A category attribute: a code per row (-1 = null) and a bitmap per label.

    Codes take the narrowest signed type that holds every label's code so far (int8 up to 127
    labels: one byte per profile for a country), widened when more labels arrive.
    """

    kind = "category"

    def __init__(self) -> None:
        self.codes = GrowableArray(np.int8, -1)
        self.labels: list[str] = []
        self.code_of: dict[str, int] = {}
        self.bitmaps: list[BitMap] = []
        self.notnull = BitMap()

    def grow(self, size: int) -> None:
        """Make rows up to ``size`` addressable."""
        self.codes.ensure(size)

    def _code(self, label: str) -> int:
        code = self.code_of.get(label)
        if code is None:
            code = self.code_of[label] = len(self.labels)
            self.labels.append(label)
            self.bitmaps.append(BitMap())
        return code

    def assign(self, rows: np.ndarray, column: CategoryColumn) -> None:
        """Set the value of each of ``rows`` (unique) to the matching entry of ``column``."""
        mapping = np.array([self._code(label) for label in column.labels] + [-1], dtype=np.int32)
        new = mapping[np.where(column.codes < 0, len(column.labels), column.codes)]
        self.codes.widen_to_hold(len(self.labels))
        old = self.codes.data[rows].astype(np.int32)
        _move(self.bitmaps, rows, old, new)
        _set_notnull(self.notnull, rows, new >= 0)
        self.codes.data[rows] = new
        self._unions().update(rows, lambda codes: np.isin(new, np.fromiter(codes, dtype=np.int32)))

    def eq(self, label: str) -> BitMap:
        """Rows whose value is ``label`` (a stored bitmap: do not mutate)."""
        code = self.code_of.get(label)
        return self.bitmaps[code] if code is not None else BitMap()

    def any_of(self, labels: tuple[str, ...]) -> BitMap:
        """Rows whose value is one of ``labels`` (may be a stored bitmap: do not mutate)."""
        return self._union_of(sorted({self.code_of[label] for label in labels if label in self.code_of}))

    def compare(self, op: str, label: str) -> BitMap:
        """Rows whose value ``op`` label holds (by Unicode code point); null rows excluded (do not mutate)."""
        return self._union_of(self._compared(op, label))

    def between(self, lo: str, hi: str) -> BitMap:
        """Rows with lo <= value <= hi (may be a stored bitmap: do not mutate)."""
        return self._union_of(self._between(lo, hi))

    def count_compare(self, op: str, label: str) -> int:
        """``len(compare(op, label))`` without the union."""
        return sum(len(self.bitmaps[c]) for c in self._compared(op, label))

    def count_between(self, lo: str, hi: str) -> int:
        """``len(between(lo, hi))`` without the union."""
        return sum(len(self.bitmaps[c]) for c in self._between(lo, hi))

    def _compared(self, op: str, label: str) -> list[int]:
        test = COMPARE[op]
        return [c for c, value in enumerate(self.labels) if test(value, label)]

    def _between(self, lo: str, hi: str) -> list[int]:
        return [c for c, value in enumerate(self.labels) if lo <= value <= hi]

    def value(self, row: int) -> str | None:
        """The value of ``row``."""
        code = int(self.codes.data[row])
        return None if code < 0 else self.labels[code]

    def values_of(self, rows: np.ndarray) -> list[str | None]:
        """The value of each of ``rows``, one gather."""
        labels = self.labels
        return [None if code < 0 else labels[code] for code in self.codes.data[rows].tolist()]

    def estimate(self, label: str) -> int:
        """Row count for ``label`` (exact)."""
        return len(self.eq(label))

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The index's part of a snapshot (kept unions are not stored)."""
        return {"codes": writer.array(self.codes.view()), "labels": self.labels,
                "bitmaps": writer.bitmaps(self.bitmaps), "notnull": writer.bitmap(self.notnull)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], rows: int) -> "CategoryIndex":
        """An index of ``rows`` rows from its part of a snapshot."""
        index = cls()
        index.codes = GrowableArray.adopt(reader.column(state["codes"], CODE_TYPES, rows), -1)
        index._read_labels(reader, state, rows)
        return index


class BoolIndex:
    """A bool attribute: int8 per row (-1 null, 0, 1) and the bitmaps of false and true."""

    kind = "bool"

    def __init__(self) -> None:
        self.column = GrowableArray(np.int8, -1)
        self.bitmaps = [BitMap(), BitMap()]
        self.notnull = BitMap()

    def grow(self, size: int) -> None:
        """Make rows up to ``size`` addressable."""
        self.column.ensure(size)

    def assign(self, rows: np.ndarray, column: ValueColumn) -> None:
        """Set the value of each of ``rows`` from ``column`` (valid False = null)."""
        new = np.where(column.valid, column.values.astype(np.int8), np.int8(-1))
        old = self.column.data[rows]
        _move(self.bitmaps, rows, old, new)
        _set_notnull(self.notnull, rows, new >= 0)
        self.column.data[rows] = new

    def eq(self, value: bool) -> BitMap:
        """Rows whose value is ``value`` (stored bitmap: do not mutate)."""
        return self.bitmaps[1 if value else 0]

    def value(self, row: int) -> bool | None:
        """The value of ``row``."""
        code = int(self.column.data[row])
        return None if code < 0 else bool(code)

    def values_of(self, rows: np.ndarray) -> list[bool | None]:
        """The value of each of ``rows``, one gather."""
        return [None if code < 0 else bool(code) for code in self.column.data[rows].tolist()]

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The index's part of a snapshot."""
        return {"column": writer.array(self.column.view()), "bitmaps": writer.bitmaps(self.bitmaps),
                "notnull": writer.bitmap(self.notnull)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], rows: int) -> "BoolIndex":
        """An index of ``rows`` rows from its part of a snapshot."""
        index = cls()
        index.column = GrowableArray.adopt(reader.column(state["column"], (np.int8,), rows), -1)
        index.bitmaps = _sized(reader.bitmaps(state["bitmaps"], rows), 2)
        index.notnull = reader.bitmap(state["notnull"], rows)
        return index


class TagsIndex(_KeptUnions):
    """A tags attribute: an interned tag-set id per row (-1 null; the narrowest signed type that
    holds every id so far) and a bitmap per tag."""

    kind = "tags"

    def __init__(self) -> None:
        self.column = GrowableArray(np.int8, -1)
        self.tagsets: list[tuple[int, ...]] = []
        self.tagset_of: dict[tuple[int, ...], int] = {}
        self.labels: list[str] = []
        self.code_of: dict[str, int] = {}
        self.bitmaps: list[BitMap] = []
        self.notnull = BitMap()

    def grow(self, size: int) -> None:
        """Make rows up to ``size`` addressable."""
        self.column.ensure(size)

    def _tag(self, label: str) -> int:
        code = self.code_of.get(label)
        if code is None:
            code = self.code_of[label] = len(self.labels)
            self.labels.append(label)
            self.bitmaps.append(BitMap())
        return code

    def _tagset(self, codes: tuple[int, ...]) -> int:
        ident = self.tagset_of.get(codes)
        if ident is None:
            ident = self.tagset_of[codes] = len(self.tagsets)
            self.tagsets.append(codes)
        return ident

    def assign(self, rows: np.ndarray, column: TagsColumn) -> None:
        """Set the tag set of each of ``rows`` from ``column`` (valid False = null)."""
        mapping = np.array([self._tag(label) for label in column.labels] + [0], dtype=np.int64)
        codes = mapping[column.values] if len(column.values) else np.empty(0, dtype=np.int64)
        value_rows = np.repeat(np.arange(len(rows)), np.diff(column.offsets))
        valid = np.asarray(column.valid, dtype=bool)
        if len(self.labels) <= 63:
            new_sets = self._intern_by_mask(len(rows), value_rows, codes, valid)
        else:
            new_sets = self._intern_by_loop(value_rows, codes, valid)
        self.column.widen_to_hold(len(self.tagsets))
        old_sets = self.column.data[rows].astype(np.int32)
        if not (old_sets >= 0).any():  # rows without tags (new rows of a bulk load): each tag just gains its rows
            given = valid[value_rows]
            for code, members in group_rows(rows[value_rows[given]], codes[given]):
                self.bitmaps[code].update(to_bitmap(members, assume_sorted=True))
        else:
            changed = old_sets != new_sets
            if changed.any():
                self._move(rows[changed], old_sets[changed], new_sets[changed])
        _set_notnull(self.notnull, rows, new_sets >= 0)
        self.column.data[rows] = new_sets
        self._unions().update(rows, lambda codes: self._sets_with_any(codes)[new_sets])

    def _sets_with_any(self, codes: frozenset[int]) -> np.ndarray:
        """Per tag-set id (and -1 = null, the last entry): does the set hold any of ``codes``?"""
        return np.array([not codes.isdisjoint(tags) for tags in self.tagsets] + [False], dtype=bool)

    def _intern_by_mask(self, n: int, value_rows: np.ndarray, codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        bits = np.zeros(n, dtype=np.uint64)
        if len(codes):
            value_bits = np.left_shift(np.uint64(1), codes.astype(np.uint64))
            starts = np.flatnonzero(np.diff(np.r_[-1, value_rows]))  # first value of each non-empty row
            bits[value_rows[starts]] = np.bitwise_or.reduceat(value_bits, starts)
        # a lookup table over every possible mask beats a sort-based unique, unless the table dwarfs the batch
        if len(self.labels) <= 20 and (1 << len(self.labels)) <= 8 * n + 4096:
            present = np.bincount(bits.astype(np.int64), minlength=1 << len(self.labels))
            unique_bits = np.flatnonzero(present).astype(np.uint64)
            slot = np.zeros(len(present), dtype=np.int64)
            slot[unique_bits.astype(np.int64)] = np.arange(len(unique_bits))
            inverse = slot[bits.astype(np.int64)]
        else:
            unique_bits, inverse = np.unique(bits, return_inverse=True)
        idents = np.array([self._ident_of_mask(mask) for mask in unique_bits.tolist()], dtype=np.int32)
        return np.where(valid, idents[inverse], np.int32(-1)).astype(np.int32)

    def _ident_of_mask(self, mask: int) -> int:
        """The tag-set id of the tags whose codes are the bits of ``mask`` (remembered per mask)."""
        memo = self.__dict__.setdefault("_mask_idents", {})
        ident = memo.get(mask)
        if ident is None:
            ident = memo[mask] = self._tagset(tuple(c for c in range(64) if (mask >> c) & 1))
        return ident

    def _intern_by_loop(self, value_rows: np.ndarray, codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        per_row: list[set[int]] = [set() for _ in range(len(valid))]
        for row, code in zip(value_rows.tolist(), codes.tolist()):
            per_row[row].add(code)
        return np.array([self._tagset(tuple(sorted(tags))) if ok else -1 for tags, ok in zip(per_row, valid)],
                        dtype=np.int32)

    def _move(self, rows: np.ndarray, old_sets: np.ndarray, new_sets: np.ndarray) -> None:
        """Move rows between tag bitmaps: removed tags lose them, added tags gain them."""
        if len(rows) < TAGS_GROUPED_MIN:  # tag sets hardly repeat in a small batch: row by row
            changes: dict[tuple[int, int], tuple[list[BitMap], list[BitMap]]] = {}
            for row, old, new in zip(rows.tolist(), old_sets.tolist(), new_sets.tolist()):
                change = changes.get((old, new))
                if change is None:
                    old_tags = set(self.tagsets[old]) if old >= 0 else set()
                    new_tags = set(self.tagsets[new]) if new >= 0 else set()
                    change = changes[(old, new)] = ([self.bitmaps[t] for t in old_tags - new_tags],
                                                     [self.bitmaps[t] for t in new_tags - old_tags])
                for bitmap in change[0]:
                    bitmap.discard(row)
                for bitmap in change[1]:
                    bitmap.add(row)
            return
        width = len(self.tagsets) + 1
        keys = (old_sets.astype(np.int64) + 1) * width + (new_sets.astype(np.int64) + 1)
        removed: dict[int, list[np.ndarray]] = {}
        added: dict[int, list[np.ndarray]] = {}
        for key, members in group_rows(rows, keys):
            old_ident, new_ident = key // width - 1, key % width - 1
            old_tags = set(self.tagsets[old_ident]) if old_ident >= 0 else set()
            new_tags = set(self.tagsets[new_ident]) if new_ident >= 0 else set()
            for tag in old_tags - new_tags:
                removed.setdefault(tag, []).append(members)
            for tag in new_tags - old_tags:
                added.setdefault(tag, []).append(members)
        for tag, parts in removed.items():
            self.bitmaps[tag].difference_update(to_bitmap(np.concatenate(parts)))
        for tag, parts in added.items():
            self.bitmaps[tag].update(to_bitmap(np.concatenate(parts)))

    def has_any(self, labels: tuple[str, ...]) -> BitMap:
        """Rows whose tag set contains any of ``labels`` (may be a stored bitmap: do not mutate)."""
        return self._union_of(sorted({self.code_of[label] for label in labels if label in self.code_of}))

    def has(self, label: str) -> BitMap:
        """Rows whose tag set contains ``label`` (stored bitmap: do not mutate)."""
        code = self.code_of.get(label)
        return self.bitmaps[code] if code is not None else BitMap()

    def sorted_labels(self, ident: int) -> list[str]:
        """The labels of tag set ``ident``, sorted (remembered: tag sets never change once interned)."""
        memo = self.__dict__.setdefault("_sorted_labels", {})
        labels = memo.get(ident)
        if labels is None:
            labels = memo[ident] = sorted(self.labels[c] for c in self.tagsets[ident])
        return labels

    def value(self, row: int) -> list[str] | None:
        """The tags of ``row``, sorted."""
        ident = int(self.column.data[row])
        return None if ident < 0 else list(self.sorted_labels(ident))

    def values_of(self, rows: np.ndarray) -> list[list[str] | None]:
        """The tags of each of ``rows``, sorted, one gather."""
        memo: dict[int, list[str]] = self.__dict__.setdefault("_sorted_labels", {})
        return [None if ident < 0 else list(memo.get(ident) or self.sorted_labels(ident))
                for ident in self.column.data[rows].tolist()]

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The index's part of a snapshot (kept unions are not stored)."""
        return {"column": writer.array(self.column.view()), "tagsets": [list(tags) for tags in self.tagsets],
                "labels": self.labels, "bitmaps": writer.bitmaps(self.bitmaps), "notnull": writer.bitmap(self.notnull)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], rows: int) -> "TagsIndex":
        """An index of ``rows`` rows from its part of a snapshot."""
        index = cls()
        index.column = GrowableArray.adopt(reader.column(state["column"], CODE_TYPES, rows), -1)
        index._read_labels(reader, state, rows)
        index.tagsets = [tuple(_codes(tags, len(index.labels))) for tags in state["tagsets"]]
        index.tagset_of = {tags: ident for ident, tags in enumerate(index.tagsets)}
        return index


def _strings(values: Any) -> list[str]:
    """``values`` if it is a list of strings (ValueError otherwise)."""
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError("expected a list of strings")
    return values


def _codes(values: Any, size: int) -> list[int]:
    """``values`` if it is a list of ints in [0, size) (ValueError otherwise)."""
    if not isinstance(values, list) or not all(type(value) is int and 0 <= value < size for value in values):
        raise ValueError(f"expected a list of codes below {size}")
    return values


def _sized(bitmaps: list[BitMap], size: int) -> list[BitMap]:
    """``bitmaps`` if there are ``size`` of them (ValueError otherwise)."""
    if len(bitmaps) != size:
        raise ValueError(f"expected {size} bitmaps, found {len(bitmaps)}")
    return bitmaps
