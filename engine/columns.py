"""Columnar batches: the bulk-load format shared by the generator, the store and the baselines.

A ``ProfileBatch`` holds N profiles as arrays (a value per profile per attribute, with a
validity mask for nulls); an ``EventBatch`` holds M events of one type. Loading a batch has the
same effect as upserting the equivalent records, but without a Python object per value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CategoryColumn:
    """Category values as int32 codes into ``labels`` (-1 = null)."""

    codes: np.ndarray
    labels: list[str]


@dataclass
class TagsColumn:
    """Tag sets in CSR form: row i has ``labels[values[offsets[i]:offsets[i+1]]]``; ``valid`` False = null."""

    offsets: np.ndarray  # int64, length N + 1
    values: np.ndarray  # int32 codes into labels
    labels: list[str]
    valid: np.ndarray  # bool, length N


@dataclass
class ValueColumn:
    """int64 / float64 / bool / timestamp (int64 epoch ms) values with a validity mask."""

    values: np.ndarray
    valid: np.ndarray  # bool


Column = CategoryColumn | TagsColumn | ValueColumn


@dataclass
class ProfileBatch:
    """N profiles: ids, attribute columns (absent attribute = not given) and consent flags."""

    ids: list[str]
    columns: dict[str, Column] = field(default_factory=dict)
    consents: dict[str, np.ndarray] = field(default_factory=dict)  # purpose -> bool array

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> "ProfileBatch":
        """The profiles ``start:stop`` of this batch."""
        return ProfileBatch(
            self.ids[start:stop],
            {name: slice_column(col, start, stop) for name, col in self.columns.items()},
            {name: flags[start:stop] for name, flags in self.consents.items()},
        )

    def take(self, picks: np.ndarray) -> "ProfileBatch":
        """The profiles at positions ``picks`` (an index array) of this batch."""
        return ProfileBatch([self.ids[i] for i in picks.tolist()],
                            {name: take_column(col, picks) for name, col in self.columns.items()},
                            {name: np.asarray(flags)[picks] for name, flags in self.consents.items()})


@dataclass
class EventBatch:
    """M events of one type: profile ids, epoch-ms timestamps, property columns and, optionally, event ids
    (None where an event has none; an event whose profile already holds its event id is ignored)."""

    event: str
    ids: list[str]
    ts: np.ndarray  # int64
    props: dict[str, Column] = field(default_factory=dict)
    event_ids: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, picks: np.ndarray) -> "EventBatch":
        """The events at positions ``picks`` (an index array) of this batch."""
        positions = picks.tolist()
        return EventBatch(self.event, [self.ids[i] for i in positions], np.asarray(self.ts)[picks],
                          {name: take_column(col, picks) for name, col in self.props.items()},
                          None if self.event_ids is None else [self.event_ids[i] for i in positions])


def slice_column(col: Column, start: int, stop: int) -> Column:
    """Rows ``start:stop`` of a column."""
    if isinstance(col, CategoryColumn):
        return CategoryColumn(col.codes[start:stop], col.labels)
    if isinstance(col, TagsColumn):
        offsets = col.offsets[start : stop + 1]
        values = col.values[offsets[0] : offsets[-1]]
        return TagsColumn(offsets - offsets[0], values, col.labels, col.valid[start:stop])
    return ValueColumn(col.values[start:stop], col.valid[start:stop])


def column_value(col: Column, i: int) -> object:
    """Row ``i`` of a column as a record value (None = null); tags as a sorted tuple."""
    if isinstance(col, CategoryColumn):
        code = int(col.codes[i])
        return None if code < 0 else col.labels[code]
    if isinstance(col, TagsColumn):
        if not col.valid[i]:
            return None
        return tuple(sorted({col.labels[c] for c in col.values[col.offsets[i] : col.offsets[i + 1]]}))
    if not col.valid[i]:
        return None
    value = col.values[i]
    if col.values.dtype == np.bool_:
        return bool(value)
    if col.values.dtype.kind == "f":
        return float(value)
    return int(value)


def column_from_values(kind: str, values: list) -> Column:
    """Build a column of schema type ``kind`` from validated Python values (None = null)."""
    if kind == "category":
        labels: dict[str, int] = {}
        codes = np.fromiter((-1 if v is None else labels.setdefault(v, len(labels)) for v in values),
                            dtype=np.int32, count=len(values))
        return CategoryColumn(codes, list(labels))
    if kind == "tags":
        labels = {}
        flat: list[int] = []
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        for i, tags in enumerate(values):
            if tags:
                flat.extend(labels.setdefault(tag, len(labels)) for tag in tags)
            offsets[i + 1] = len(flat)
        valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        return TagsColumn(offsets, np.array(flat, dtype=np.int32), list(labels), valid)
    dtype = {"bool": np.bool_, "float": np.float64}.get(kind, np.int64)
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    filler = False if kind == "bool" else 0
    data = np.array([filler if v is None else v for v in values], dtype=dtype)
    return ValueColumn(data, valid)


def null_column(kind: str, size: int) -> Column:
    """A column of schema type ``kind`` holding ``size`` nulls (``column_from_values(kind, [None] * size)``)."""
    if kind == "category":
        return CategoryColumn(np.full(size, -1, dtype=np.int32), [])
    if kind == "tags":
        return TagsColumn(np.zeros(size + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), [], np.zeros(size, dtype=bool))
    dtype = {"bool": np.bool_, "float": np.float64}.get(kind, np.int64)
    return ValueColumn(np.zeros(size, dtype=dtype), np.zeros(size, dtype=bool))


def take_column(col: Column, picks: np.ndarray) -> Column:
    """The rows ``picks`` (an index array) of a column."""
    if isinstance(col, CategoryColumn):
        return CategoryColumn(np.asarray(col.codes)[picks], col.labels)
    if isinstance(col, TagsColumn):
        starts, ends = col.offsets[picks], col.offsets[picks + 1]
        lengths = ends - starts
        offsets = np.zeros(len(picks) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TagsColumn(offsets, col.values[gather], col.labels, np.asarray(col.valid)[picks])
    return ValueColumn(np.asarray(col.values)[picks], np.asarray(col.valid)[picks])
