"""An event type store's part of a snapshot (``engine.persist.state_io``): runs referenced (never
changed in place), bitmaps serialised, every array checked against the schema and the row count
when read back. ``TypeState`` is a part of ``EventTypeStore``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..schema import EventDef
from .latest_times import LatestTimes
from .runs import EPOCH_BITS, Run, code_dtype

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter
    from .events import EventTypeStore


class TypeState:
    """The snapshot methods of ``EventTypeStore`` (see the module docstring)."""

    def to_state(self: EventTypeStore, writer: StateWriter) -> dict[str, Any]:
        """The type's part of a snapshot: runs (referenced: never changed in place), day bitmaps, ``ever``,
        latest times, category labels and float scales (slot bitmaps are not stored)."""
        def run_state(run: Run) -> dict[str, Any]:
            state = {"base": run.base, "ts": writer.array(run.ts, immutable=True),
                     "rows": writer.array(run.rows, immutable=True),
                     "props": {k: writer.array(v, immutable=True) for k, v in run.props.items()},
                     "valid": {k: writer.array(v, immutable=True) for k, v in run.valid.items()}}
            if run.eids is not None:
                state["eids"] = writer.array(run.eids, immutable=True)
            return state

        return {"epochs": [[epoch, [run_state(run) for run in runs]] for epoch, runs in self.epochs.items()],
                "days": [[day, writer.bitmap(bitmap)] for day, bitmap in self.days.items()],
                "ever": writer.bitmap(self.ever),
                "last_ts": None if self.last_ts is None else writer.array(self.last_ts.to_int64()),
                "max_ts": self.max_ts, "count": self.count, "labels": self.labels, "scaled": self.scaled,
                "generation": self.generation, "dead": writer.bitmap(self.dead), "dead_events": self.dead_events}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], definition: EventDef,
                   rows: int) -> EventTypeStore:
        """The events of ``definition`` (of profiles below ``rows``) from their part of a snapshot."""
        store = cls(definition)
        if set(state["labels"]) != set(store.labels) or set(state["scaled"]) != set(store.scaled):
            raise ValueError(f"the stored properties of {definition.name} are not the schema's")
        store.labels = {prop: list(map(str, labels)) for prop, labels in state["labels"].items()}
        store.code_of = {prop: {label: code for code, label in enumerate(labels)} for prop, labels in store.labels.items()}
        store.scaled = {prop: int(scale) for prop, scale in state["scaled"].items()}
        store.epochs = {int(epoch): [store._run_from_state(reader, run, int(epoch), rows) for run in runs]
                        for epoch, runs in state["epochs"]}
        store.days = {int(day): reader.bitmap(bitmap, rows) for day, bitmap in state["days"]}
        store.ever = reader.bitmap(state["ever"], rows)
        if state["last_ts"] is not None:
            last_ts = reader.array(state["last_ts"])
            if last_ts.dtype != np.int64 or last_ts.ndim != 1 or len(last_ts) > rows:
                raise ValueError(f"the latest times of {definition.name} are not a column of at most {rows} rows")
            store.last_ts = LatestTimes.from_int64(last_ts)
        store.max_ts, store.count, store.generation = int(state["max_ts"]), int(state["count"]), int(state["generation"])
        if "dead" in state:  # parts written before deletion by marking hold none
            store.dead, store.dead_events = reader.bitmap(state["dead"], rows), int(state["dead_events"])
        return store

    def _run_from_state(self: EventTypeStore, reader: StateReader, state: dict[str, Any], epoch: int, rows: int) -> Run:
        """A run of ``epoch`` from its part of a snapshot, checked against the schema and the row count."""
        ts, run_rows = reader.array(state["ts"]), reader.array(state["rows"])
        props = {prop: reader.array(ref) for prop, ref in state["props"].items()}
        valid = {prop: reader.array(ref) for prop, ref in state["valid"].items()}
        eids = reader.array(state["eids"]) if "eids" in state else None  # runs of parts without event ids have none
        size = len(ts)
        kinds = self.definition.properties
        wanted = {prop: self._stored_dtypes(prop, kind) for prop, kind in kinds.items()}
        if int(state["base"]) != epoch << EPOCH_BITS or ts.dtype != np.uint32 or run_rows.dtype != np.int32 \
                or set(props) != set(kinds) or set(valid) != {p for p, k in kinds.items() if k in ("int", "timestamp")} \
                or any(a.shape != (size,) for a in (ts, run_rows, *props.values(), *valid.values())) \
                or any(props[p].dtype not in wanted[p] for p in props) \
                or any(v.dtype != np.bool_ for v in valid.values()) \
                or (eids is not None and (eids.dtype != np.int32 or eids.shape != (size,))) \
                or (size and (int(run_rows.min()) < 0 or int(run_rows.max()) >= rows)):
            raise ValueError(f"a run of {self.definition.name} does not match the schema or the profiles")
        return Run(epoch << EPOCH_BITS, ts, run_rows, props, valid, eids)

    def _stored_dtypes(self: EventTypeStore, prop: str, kind: str) -> tuple[np.dtype, ...]:
        """The dtypes a run may store property ``prop`` of type ``kind`` in."""
        if kind == "category":
            return (np.dtype(code_dtype(len(self.labels[prop]))),)
        if kind == "float":
            return (np.dtype(np.int32),) if self.scaled[prop] else (np.dtype(np.float64),)
        return (np.dtype(np.int8),) if kind == "bool" else (np.dtype(np.int64),)

