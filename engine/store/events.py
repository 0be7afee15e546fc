"""The event store of one shard: per event type, time-ordered runs plus day bitmaps.

Each event type keeps its events in a few runs, each sorted by timestamp (a log-structured
merge: a new batch becomes a run, neighbouring runs of similar size are merged), so a time
window is found by binary search in every run. Per type it also keeps one Roaring bitmap of
the rows that had such an event per UTC day, the rows that ever had one, and each row's
latest timestamp (for AFTER LAST).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from ..columns import CategoryColumn, Column, ValueColumn
from ..schema import EventDef
from .bitmaps import group_rows, to_bitmap
from .growable import GrowableArray

DAY_MS = 86_400_000
NO_TIME = np.iinfo(np.int64).min


@dataclass
class Run:
    """Events sorted by ``ts``: parallel arrays of timestamp, profile row and property values."""

    ts: np.ndarray
    rows: np.ndarray
    props: dict[str, np.ndarray]
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # per property: not-null mask

    def __len__(self) -> int:
        return len(self.ts)

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of events with lo <= ts <= hi."""
        return int(np.searchsorted(self.ts, lo, side="left")), int(np.searchsorted(self.ts, hi, side="right"))

    def take(self, order: np.ndarray) -> "Run":
        """This run's events reordered/subset by ``order``."""
        return Run(self.ts[order], self.rows[order], {k: v[order] for k, v in self.props.items()},
                   {k: v[order] for k, v in self.valid.items()})


def _concat(a: Run, b: Run) -> Run:
    ts = np.concatenate([a.ts, b.ts])
    order = np.argsort(ts, kind="stable")
    merged = Run(ts, np.concatenate([a.rows, b.rows]), {k: np.concatenate([a.props[k], b.props[k]]) for k in a.props},
                 {k: np.concatenate([a.valid[k], b.valid[k]]) for k in a.valid})
    return merged.take(order)


class EventTypeStore:
    """All events of one type in one shard."""

    def __init__(self, definition: EventDef):
        self.definition = definition
        self.runs: list[Run] = []
        self.days: dict[int, BitMap] = {}
        self.ever = BitMap()
        self.last_ts = GrowableArray(np.int64, NO_TIME)
        self.max_ts = NO_TIME
        self.labels: dict[str, list[str]] = {p: [] for p, t in definition.properties.items() if t == "category"}
        self.code_of: dict[str, dict[str, int]] = {p: {} for p in self.labels}
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def _codes(self, prop: str, column: CategoryColumn) -> np.ndarray:
        labels, code_of = self.labels[prop], self.code_of[prop]
        for label in column.labels:
            if label not in code_of:
                code_of[label] = len(labels)
                labels.append(label)
        mapping = np.array([code_of[label] for label in column.labels] + [-1], dtype=np.int32)
        return mapping[np.where(column.codes < 0, len(column.labels), column.codes)]

    def append(self, rows: np.ndarray, ts: np.ndarray, columns: dict[str, Column]) -> None:
        """Add events (rows, timestamps, property columns; absent property = null)."""
        if len(rows) == 0:
            return
        props: dict[str, np.ndarray] = {}
        valid: dict[str, np.ndarray] = {}
        for prop, kind in self.definition.properties.items():
            column = columns.get(prop)
            if kind == "category":
                props[prop] = self._codes(prop, column) if column is not None else np.full(len(rows), -1, np.int32)
            else:
                dtype = {"float": np.float64, "bool": np.bool_}.get(kind, np.int64)
                if column is None:
                    props[prop] = np.zeros(len(rows), dtype=dtype)
                    valid[prop] = np.zeros(len(rows), dtype=bool)
                else:
                    assert isinstance(column, ValueColumn)
                    props[prop] = np.asarray(column.values).astype(dtype)
                    valid[prop] = np.asarray(column.valid, dtype=bool)
        run = Run(np.asarray(ts, dtype=np.int64), np.asarray(rows, dtype=np.int32), props, valid)
        run = run.take(np.argsort(run.ts, kind="stable"))
        self.runs.append(run)
        while len(self.runs) >= 2 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs[-1] = _concat(self.runs[-1], last)
        self._index(run)
        self.generation += 1

    def _index(self, run: Run) -> None:
        days = run.ts // DAY_MS
        for day, members in group_rows(run.rows.astype(np.int64), days):
            bitmap = to_bitmap(members, assume_sorted=True)
            self.days.setdefault(day, BitMap()).update(bitmap)
        self.ever.update(to_bitmap(run.rows))
        self.last_ts.ensure(int(run.rows.max()) + 1)
        np.maximum.at(self.last_ts.data, run.rows, run.ts)
        self.max_ts = max(self.max_ts, int(run.ts[-1]))

    def window(self, lo: int, hi: int) -> list[Run]:
        """The events with lo <= ts <= hi, as slices (views) of each run."""
        parts = []
        for run in self.runs:
            start, stop = run.window(lo, hi)
            if stop > start:
                parts.append(Run(run.ts[start:stop], run.rows[start:stop],
                                 {k: v[start:stop] for k, v in run.props.items()},
                                 {k: v[start:stop] for k, v in run.valid.items()}))
        return parts

    def latest_before(self, now: int, size: int) -> np.ndarray:
        """Per row, the latest timestamp of this type with ts <= now (NO_TIME if none)."""
        if self.max_ts <= now:
            self.last_ts.ensure(size)
            return self.last_ts.data[:size]
        latest = np.full(size, NO_TIME, dtype=np.int64)
        for part in self.window(NO_TIME, now):
            np.maximum.at(latest, part.rows, part.ts)
        return latest

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by the runs and day bitmaps."""
        total = sum(r.ts.nbytes + r.rows.nbytes + sum(v.nbytes for v in r.props.values())
                    + sum(v.nbytes for v in r.valid.values()) for r in self.runs)
        return total + sum(len(b.serialize()) for b in self.days.values())


class EventStore:
    """Every event type of one shard."""

    def __init__(self, events: dict[str, EventDef]):
        self.types: dict[str, EventTypeStore] = {name: EventTypeStore(d) for name, d in events.items()}

    def __len__(self) -> int:
        return sum(len(t) for t in self.types.values())
