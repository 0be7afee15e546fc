"""The event store of one shard: per event type, time-ordered runs plus day bitmaps.

Events of a type are partitioned into epochs of 2**32 ms (~49.7 days); within an epoch they
live in a few runs, each sorted by time (a log-structured merge: a new batch becomes a run,
neighbouring runs of similar size are merged), so a time window is found by binary search in
every run. Timestamps are stored as uint32 offsets from the epoch start, profile rows as
int32, category properties as int16 codes (int32 past 32767 labels), floats with NaN as null:
about 10 bytes for an event with one category property. Per type the store also keeps a
Roaring bitmap of the rows that had such an event per UTC day, the rows that ever had one, and
(once AFTER LAST asks for it) each row's latest timestamp.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from ..columns import CategoryColumn, Column, ValueColumn
from ..schema import EventDef
from .bitmaps import group_rows, to_bitmap, union_all
from .growable import GrowableArray

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
EPOCH_BITS = 32
EPOCH_SPAN = 1 << EPOCH_BITS
NO_TIME = np.iinfo(np.int64).min


@dataclass
class Run:
    """Events sorted by time: uint32 offsets from ``base``, profile rows and property values."""

    base: int
    ts: np.ndarray  # uint32 offsets from base
    rows: np.ndarray  # int32
    props: dict[str, np.ndarray]
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # int/timestamp properties: not-null mask

    def __len__(self) -> int:
        return len(self.ts)

    def absolute_ts(self) -> np.ndarray:
        """Timestamps as int64 epoch ms."""
        return self.ts.astype(np.int64) + self.base

    def slice(self, start: int, stop: int) -> "Run":
        """Events ``start:stop`` (views)."""
        return Run(self.base, self.ts[start:stop], self.rows[start:stop],
                   {k: v[start:stop] for k, v in self.props.items()}, {k: v[start:stop] for k, v in self.valid.items()})

    def window(self, lo: int, hi: int) -> "Run | None":
        """The events with lo <= ts <= hi, or None if there are none."""
        lo_off, hi_off = max(lo - self.base, 0), min(hi - self.base, EPOCH_SPAN - 1)
        if lo_off > hi_off:
            return None
        start = int(np.searchsorted(self.ts, np.uint32(lo_off), side="left"))
        stop = int(np.searchsorted(self.ts, np.uint32(hi_off), side="right"))
        return self.slice(start, stop) if stop > start else None

    def take(self, order: np.ndarray) -> "Run":
        """This run's events reordered/subset by ``order``."""
        return Run(self.base, self.ts[order], self.rows[order], {k: v[order] for k, v in self.props.items()},
                   {k: v[order] for k, v in self.valid.items()})


def _merge(a: Run, b: Run) -> Run:
    """One sorted run from two runs of the same epoch."""
    ts = np.concatenate([a.ts, b.ts])
    order = np.argsort(ts, kind="stable")
    merged = Run(a.base, ts, np.concatenate([a.rows, b.rows]),
                 {k: np.concatenate([a.props[k], b.props[k]]) for k in a.props},
                 {k: np.concatenate([a.valid[k], b.valid[k]]) for k in a.valid})
    return merged.take(order)


class EventTypeStore:
    """All events of one type in one shard."""

    def __init__(self, definition: EventDef):
        self.definition = definition
        self.epochs: dict[int, list[Run]] = {}
        self.days: dict[int, BitMap] = {}  # UTC day -> rows with such an event that day
        self.hours: dict[int, BitMap] = {}  # UTC hour -> rows (so window edges scan at most an hour)
        self.ever = BitMap()
        self.last_ts: GrowableArray | None = None
        self.max_ts = NO_TIME
        self.count = 0
        self.labels: dict[str, list[str]] = {p: [] for p, t in definition.properties.items() if t == "category"}
        self.code_of: dict[str, dict[str, int]] = {p: {} for p in self.labels}
        self.generation = 0

    def __len__(self) -> int:
        return self.count

    @property
    def runs(self) -> list[Run]:
        """Every run, oldest epoch first."""
        return [run for epoch in sorted(self.epochs) for run in self.epochs[epoch]]

    def _codes(self, prop: str, column: CategoryColumn) -> np.ndarray:
        labels, code_of = self.labels[prop], self.code_of[prop]
        for label in column.labels:
            if label not in code_of:
                code_of[label] = len(labels)
                labels.append(label)
        dtype = np.int16 if len(labels) < 32767 else np.int32
        if dtype == np.int32:
            for run in self.runs:
                run.props[prop] = run.props[prop].astype(np.int32)
        mapping = np.array([code_of[label] for label in column.labels] + [-1], dtype=dtype)
        return mapping[np.where(np.asarray(column.codes) < 0, len(column.labels), column.codes)]

    def _columns(self, size: int, columns: dict[str, Column]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        props: dict[str, np.ndarray] = {}
        valid: dict[str, np.ndarray] = {}
        for prop, kind in self.definition.properties.items():
            column = columns.get(prop)
            if kind == "category":
                dtype = np.int16 if len(self.labels[prop]) < 32767 else np.int32
                props[prop] = self._codes(prop, column) if column is not None else np.full(size, -1, dtype)
            elif kind == "float":
                if column is None:
                    props[prop] = np.full(size, np.nan)
                else:
                    assert isinstance(column, ValueColumn)
                    props[prop] = np.where(column.valid, np.asarray(column.values, dtype=np.float64), np.nan)
            elif kind == "bool":
                props[prop] = np.full(size, -1, np.int8) if column is None else \
                    np.where(column.valid, np.asarray(column.values).astype(np.int8), np.int8(-1)).astype(np.int8)
            else:
                props[prop] = np.zeros(size, np.int64) if column is None else np.asarray(column.values, np.int64)
                valid[prop] = np.zeros(size, bool) if column is None else np.asarray(column.valid, bool)
        return props, valid

    def append(self, rows: np.ndarray, ts: np.ndarray, columns: dict[str, Column]) -> None:
        """Add events (rows, int64 epoch-ms timestamps, property columns; absent property = null)."""
        if len(rows) == 0:
            return
        ts = np.asarray(ts, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int32)
        props, valid = self._columns(len(rows), columns)
        epochs = ts >> EPOCH_BITS
        distinct = np.unique(epochs).tolist()
        for epoch in distinct:
            picks = np.flatnonzero(epochs == epoch) if len(distinct) > 1 else np.arange(len(ts))
            base = epoch << EPOCH_BITS
            part = Run(base, (ts[picks] - base).astype(np.uint32), rows[picks],
                       {k: v[picks] for k, v in props.items()}, {k: v[picks] for k, v in valid.items()})
            self._add_run(epoch, part.take(np.argsort(part.ts, kind="stable")))
        self._index(rows, ts)
        self.count += len(rows)
        self.generation += 1

    def _add_run(self, epoch: int, run: Run) -> None:
        runs = self.epochs.setdefault(epoch, [])
        runs.append(run)
        while len(runs) >= 2 and len(runs[-2]) <= 2 * len(runs[-1]):
            last = runs.pop()
            runs[-1] = _merge(runs[-1], last)

    def buckets(self, size_ms: int) -> dict[int, BitMap]:
        """The presence bitmaps at granularity ``size_ms`` (DAY_MS or HOUR_MS)."""
        return self.days if size_ms == DAY_MS else self.hours

    def _index(self, rows: np.ndarray, ts: np.ndarray) -> None:
        per_day: dict[int, list[BitMap]] = {}
        for hour, members in group_rows(rows.astype(np.int64), ts // HOUR_MS):
            bitmap = to_bitmap(members, assume_sorted=True)
            self.hours.setdefault(hour, BitMap()).update(bitmap)
            per_day.setdefault(hour * HOUR_MS // DAY_MS, []).append(bitmap)
        for day, bitmaps in per_day.items():
            self.days.setdefault(day, BitMap()).update(union_all(bitmaps))
        self.ever.update(to_bitmap(rows))
        if self.last_ts is not None:
            self.last_ts.ensure(int(rows.max()) + 1)
            np.maximum.at(self.last_ts.data, rows, ts)
        self.max_ts = max(self.max_ts, int(ts.max()))

    def window(self, lo: int, hi: int) -> list[Run]:
        """The events with lo <= ts <= hi, as slices (views) of each run."""
        if lo > hi:
            return []
        first, last = lo >> EPOCH_BITS, hi >> EPOCH_BITS
        parts = []
        for epoch in sorted(self.epochs):
            if first <= epoch <= last:
                for run in self.epochs[epoch]:
                    part = run.window(lo, hi)
                    if part is not None:
                        parts.append(part)
        return parts

    def latest_before(self, now: int, size: int) -> np.ndarray:
        """Per row, the latest timestamp of this type with ts <= now (NO_TIME if none)."""
        if self.max_ts <= now:
            if self.last_ts is None:
                self.last_ts = GrowableArray(np.int64, NO_TIME)
                self.last_ts.ensure(size)
                for run in self.runs:
                    np.maximum.at(self.last_ts.data, run.rows, run.absolute_ts())
            self.last_ts.ensure(size)
            return self.last_ts.data[:size]
        latest = np.full(size, NO_TIME, dtype=np.int64)
        for part in self.window(NO_TIME, now):
            np.maximum.at(latest, part.rows, part.absolute_ts())
        return latest

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by the runs and day bitmaps."""
        total = sum(r.ts.nbytes + r.rows.nbytes + sum(v.nbytes for v in r.props.values())
                    + sum(v.nbytes for v in r.valid.values()) for r in self.runs)
        return total + sum(len(b.serialize()) for b in [*self.days.values(), *self.hours.values()])


class EventStore:
    """Every event type of one shard."""

    def __init__(self, events: dict[str, EventDef]):
        self.types: dict[str, EventTypeStore] = {name: EventTypeStore(d) for name, d in events.items()}

    def __len__(self) -> int:
        return sum(len(t) for t in self.types.values())
