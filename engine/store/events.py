"""The event store of one shard: per event type, time-ordered runs plus day bitmaps.

Events of a type are partitioned into epochs of 2**32 ms (~49.7 days); within an epoch they
live in a few runs, each sorted by time (a log-structured merge: a new batch becomes a run,
neighbouring runs of similar size are merged), so a time window is found by binary search in
every run. Timestamps are stored as uint32 offsets from the epoch start, profile rows as
int32, category properties as int8 codes (int16 past 127 labels, int32 past 32767), floats as
int32 hundredths while every value of the type round-trips exactly (else float64 with NaN as
null): 9 bytes for an event with one category property, 13 with a money amount too. Runs are
never changed once written (a merge or a wider dtype makes new arrays), so readers and
snapshots may hold their arrays (a run and its value codes: ``engine.store.runs``).

Per type the store also keeps a Roaring bitmap of the rows that had such an event per UTC day,
the rows that ever had one, (once AFTER LAST asks for it) each row's latest timestamp, and (once a
SEQUENCE reads a run) the run's events grouped by row (``engine.store.row_index``), kept within a
byte budget that all types of a shard share (``engine.store.row_index_cache``).
Bitmaps per 5-minute slot (which a presence query needs inside the two partial days at the
edges of its window) are built on demand for a day and kept for at most ``SLOT_CACHE_DAYS`` days
per type, then maintained by later appends like the day bitmaps.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from pyroaring import BitMap

from ..columns import CategoryColumn, Column, ValueColumn
from ..schema import EventDef
from .bitmaps import to_bitmap
from .count_levels import WHOLE_TYPE, CountLevels
from .levels_build import LevelBuilds
from .event_ids import EventIdStore
from .property_bitmaps import BINNED_KINDS, PropertyBitmaps, bin_keys
from .append_log import AppendLog
from .append_plan import AppendPlan, add_rows, or_into, slot_rows, with_run
from .runs import (EPOCH_BITS, FLOAT_SCALE, NO_TIME, SCALED_NULL, Run, code_dtype, decode_scaled, encode_scaled,
                   time_order)
from .latest_times import LatestTimes
from .type_levels import TypeLevels
from .type_state import TypeState
from .row_index import RowIndex
from .row_index_cache import RowIndexCache
from .window_sums import WindowSumsCache

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: Presence buckets inside a day (built on demand for the days where window edges fall).
SLOT_MS = 300_000
#: Days per event type whose slot bitmaps are kept.
SLOT_CACHE_DAYS = 8
#: A partial-day window with at most this many events is scanned instead of building the day's slots.
SLOT_BUILD_MIN_EVENTS = 8192
#: Dead event id entries tolerated before ``EventStore.release_event_ids`` compacts (beyond the live count).
COMPACT_MIN_DEAD = 1 << 16
#: Held while a query builds a structure on demand (slot bitmaps, latest times), so queries in
#: several threads build each once and see it only when whole.
_BUILD_LOCK = threading.Lock()


class EventTypeStore(TypeLevels, TypeState):
    """All events of one type in one shard."""

    def __init__(self, definition: EventDef):
        self.definition = definition
        self.epochs: dict[int, list[Run]] = {}
        self.days: dict[int, BitMap] = {}  # UTC day -> rows with such an event that day
        self.slots: dict[int, BitMap] = {}  # 5-minute slot (ts // SLOT_MS) -> rows, for the days in slot_days only
        self.slot_days: dict[int, None] = {}  # days whose slots are in ``slots``, least recently used first
        self.ever = BitMap()
        self.last_ts: LatestTimes | None = None  # per row, its latest time: built by the first AFTER LAST
        self.max_ts = NO_TIME
        self.count = 0
        self.labels: dict[str, list[str]] = {p: [] for p, t in definition.properties.items() if t == "category"}
        self.code_of: dict[str, dict[str, int]] = {p: {} for p in self.labels}
        # float property -> FLOAT_SCALE while its values are kept as scaled int32 (0: float64 with NaN)
        self.scaled: dict[str, int] = {p: FLOAT_SCALE for p, t in definition.properties.items() if t == "float"}
        # property -> its kept bin bitmaps: built on the first query that can use them, then kept by every write
        self.prop_bitmaps: dict[str, PropertyBitmaps] = {}
        # levels 2.. of the per-row counts (engine.store.count_levels): built on first use, then kept
        self.count_levels: CountLevels | None = None
        self.level_builds = LevelBuilds(self)  # count levels being built in the background
        # per-row sums of scaled float properties over moving windows: built by the first DID SUM/AVG, kept by writes
        self.window_sums = WindowSumsCache()
        # the kept row indexes of the runs: the EventStore holding this type shares its cache with every type
        self.row_indexes = RowIndexCache(self)
        self.generation = 0
        self.appends = AppendLog()  # the last appends' rows per day, by generation (kept unions catch up)
        # rows whose events were deleted by marking (a merge's departures): their events stay in the runs
        # until compacted (engine.store.event_rows), and no bitmap above holds these rows
        self.dead = BitMap()
        self.dead_events = 0

    def __getstate__(self) -> dict:
        """The state to pickle (snapshots): the slot bitmaps are a query cache, rebuilt on demand."""
        state = dict(self.__dict__)
        state["slots"], state["slot_days"] = {}, {}
        state["prop_bitmaps"] = {}
        state["count_levels"] = None
        del state["level_builds"]
        state["window_sums"] = WindowSumsCache()
        del state["row_indexes"]
        state.pop("appends", None)
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore a pickled store; stores pickled before slot caching and scaled floats get their defaults."""
        state.pop("hours", None)  # eager hour bitmaps of older versions
        state.pop("hour_days", None)
        if "slot_days" not in state:
            state["slots"], state["slot_days"] = {}, {}
        state.setdefault("scaled", {})
        state.setdefault("prop_bitmaps", {})
        state.setdefault("count_levels", None)
        state.setdefault("dead", BitMap())
        state.setdefault("dead_events", 0)
        state["window_sums"] = WindowSumsCache()
        self.__dict__.update(state)
        self.level_builds = LevelBuilds(self)
        self.row_indexes = RowIndexCache(self)
        self.appends = AppendLog()

    def adopt(self, definition: EventDef) -> None:
        """Take a definition of this type that adds properties: the events held so far have them null."""
        added = [prop for prop in definition.properties if prop not in self.definition.properties]
        self.definition = definition
        for prop in added:
            if definition.properties[prop] == "category":
                self.labels[prop], self.code_of[prop] = [], {}
            elif definition.properties[prop] == "float":
                self.scaled[prop] = FLOAT_SCALE
        for run in self.runs if added else ():
            props, valid = self._columns(len(run), {})
            run.props.update({prop: props[prop] for prop in added})
            run.valid.update({prop: valid[prop] for prop in added if prop in valid})

    def float_values(self, prop: str, values: np.ndarray) -> np.ndarray:
        """The float64 values (NaN = null) of float property ``prop`` as stored in a run."""
        scale = self.scaled.get(prop, 0)
        return decode_scaled(values, scale) if scale else values

    def _floats(self, prop: str, size: int, column: Column | None) -> np.ndarray:
        """A float property column as stored: scaled int32 while every value round-trips, else float64."""
        scale = self.scaled.get(prop, 0)
        if column is None:
            return np.full(size, SCALED_NULL, np.int32) if scale else np.full(size, np.nan)
        assert isinstance(column, ValueColumn)
        values = np.asarray(column.values, dtype=np.float64)
        valid = np.asarray(column.valid, dtype=bool)
        if scale:
            codes = encode_scaled(values, valid, scale)
            if codes is not None:
                return codes
            with self.level_builds.lock:  # a build reading the old codes would bin them wrongly
                self.level_builds.invalidate()
                for run in self.runs:  # new float64 arrays: the runs' old arrays are unchanged
                    run.props[prop] = decode_scaled(run.props[prop], scale)
                self.scaled[prop] = 0
        return np.where(valid, values, np.nan)

    def __len__(self) -> int:
        return self.count

    def row_bound(self) -> int:
        """One past the highest row that any run holds an event of (rows deleted by marking included)."""
        return max(int(self.ever.max()) + 1 if self.ever else 0, int(self.dead.max()) + 1 if self.dead else 0)

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
        dtype = code_dtype(len(labels))
        for run in self.runs:
            if np.dtype(run.props[prop].dtype).itemsize < np.dtype(dtype).itemsize:
                run.props[prop] = run.props[prop].astype(dtype)  # a new array: the old one is unchanged
        mapping = np.array([code_of[label] for label in column.labels] + [-1], dtype=dtype)
        return mapping[np.where(np.asarray(column.codes) < 0, len(column.labels), column.codes)]

    def _columns(self, size: int, columns: dict[str, Column]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        props: dict[str, np.ndarray] = {}
        valid: dict[str, np.ndarray] = {}
        for prop, kind in self.definition.properties.items():
            column = columns.get(prop)
            if kind == "category":
                dtype = code_dtype(len(self.labels[prop]))
                props[prop] = self._codes(prop, column) if column is not None else np.full(size, -1, dtype)
            elif kind == "float":
                props[prop] = self._floats(prop, size, column)
            elif kind == "bool":
                props[prop] = np.full(size, -1, np.int8) if column is None else \
                    np.where(column.valid, np.asarray(column.values).astype(np.int8), np.int8(-1)).astype(np.int8)
            else:
                # copies: a run must not share memory with the caller's batch
                props[prop] = np.zeros(size, np.int64) if column is None else np.array(column.values, np.int64)
                valid[prop] = np.zeros(size, bool) if column is None else np.array(column.valid, bool)
        return props, valid

    def append(self, rows: np.ndarray, ts: np.ndarray, columns: dict[str, Column],
               eids: np.ndarray | None = None) -> None:
        """Add events (rows, int64 epoch-ms timestamps, property columns; absent property = null; ``eids``:
        their event id entries, -1 for none, or None when no event has an id)."""
        plan = self.plan_append(rows, ts, columns, eids, may_change=True)
        if plan is not None:
            self.commit_append(plan)

    def plan_append(self, rows: np.ndarray, ts: np.ndarray, columns: dict[str, Column],
                    eids: np.ndarray | None = None, may_change: bool = False) -> AppendPlan | None:
        """Everything ``append`` computes before it changes what readers see: the sorted events, their
        runs (merged into their epochs' runs as new lists), day and slot bitmaps.

        Without ``may_change`` the store is only read, and None comes back when the events need a
        change first (a category label or a float that the store does not encode yet): the caller
        then appends them at commit time. None also for no events.
        """
        if len(rows) == 0:
            return None
        if not may_change and not self._encodes(columns):
            return None
        ts = np.asarray(ts, dtype=np.int64)
        rows = np.array(rows, dtype=np.int32)  # a copy: a run must not share memory with the caller's batch
        if eids is not None:
            eids = np.array(eids, dtype=np.int32)
            if not bool((eids >= 0).any()):
                eids = None
        props, valid = self._columns(len(rows), columns)
        if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            order = time_order(ts)
            ts, rows = ts[order], rows[order]
            props = {k: v[order] for k, v in props.items()}
            valid = {k: v[order] for k, v in valid.items()}
            eids = None if eids is None else eids[order]
        first, last = int(ts[0]) >> EPOCH_BITS, int(ts[-1]) >> EPOCH_BITS
        cuts = np.searchsorted(ts, np.arange(first + 1, last + 1, dtype=np.int64) << EPOCH_BITS).tolist()
        epochs: dict[int, tuple[list[Run] | None, list[Run], Run]] = {}
        for epoch, start, stop in zip(range(first, last + 1), [0, *cuts], [*cuts, len(ts)]):
            if stop > start:
                base = epoch << EPOCH_BITS
                run = Run(base, (ts[start:stop] - base).astype(np.uint32), rows[start:stop],
                          {k: v[start:stop] for k, v in props.items()},
                          {k: v[start:stop] for k, v in valid.items()},
                          None if eids is None else eids[start:stop])
                known = self.epochs.get(epoch)
                epochs[epoch] = (known, with_run(known or [], run), run)
        days, slots, slot_days = self._day_bitmaps(rows, ts)
        added = list(days.values())
        ever = BitMap.union(*added) if len(added) > 1 else added[0]
        plan = AppendPlan(rows, ts, props, valid, epochs, days, slots, slot_days, ever)
        self._plan_levels(plan)
        return plan

    def commit_append(self, plan: AppendPlan) -> None:
        """Make the events of ``plan`` (made against this store as it is now) visible."""
        with self.level_builds.lock:  # a count-level build sees the commit whole
            self.level_builds.appended(plan.rows)
            self._commit_append(plan)

    def _commit_append(self, plan: AppendPlan) -> None:
        for epoch, (known, runs, run) in plan.epochs.items():
            # the runs merged at plan time, unless the epoch's runs changed since (then merge again)
            self.epochs[epoch] = runs if self.epochs.get(epoch) is known else with_run(self.epochs.get(epoch, []), run)
        rows, ts = plan.rows, plan.ts
        days = ts // DAY_MS
        if self.count_levels is not None:  # before the day bitmaps grow: the levels add to them as they were
            planned = plan.levels.get(None)
            if planned is not None and planned[0] is self.count_levels:
                self.count_levels.apply(planned[1])
            else:  # installed since the plan was made
                self.count_levels.add(np.zeros(len(rows), np.int64), days, rows, {WHOLE_TYPE: self.days},
                                      {WHOLE_TYPE: self.ever})
        # in place: no reader reads during a commit (copies of the kept bitmaps would cost their size)
        for day, part in plan.days.items():
            or_into(self.days, day, part)
            if day in self.slot_days:
                if day in plan.slot_days:
                    for slot, slot_part in plan.slots.get(day, {}).items():
                        add_rows(self.slots, slot, slot_part)
                else:  # a query started keeping this day's slots after the plan was made
                    start, stop = np.searchsorted(ts, [day * DAY_MS, (day + 1) * DAY_MS]).tolist()
                    self._index_slots(rows[start:stop], ts[start:stop])
        self.ever |= plan.ever
        if self.last_ts is not None:
            self.last_ts.add(rows, ts)
        self.max_ts = max(self.max_ts, int(ts[-1]))
        for prop, kept in self.prop_bitmaps.items():
            keys = plan.bins.get(prop)
            if keys is None:  # a query built the property's bins since the plan was made
                keys = self.bin_keys(prop, plan.props[prop], plan.valid.get(prop))
            if kept.levels is not None:  # likewise before the bins' day bitmaps grow
                planned = plan.levels.get(prop)
                if planned is not None and planned[0] is kept.levels:
                    kept.levels.apply(planned[1])
                else:
                    kept.levels.add(keys, days, rows, kept.days, kept.ever)
            kept.add(keys, rows, ts)
        self.window_sums.appended(self.generation, rows, ts, plan.props, self.scaled)
        self.appends.appended(self.generation, plan.days, plan.slots, plan.slot_days)
        self.count += len(rows)
        self.generation += 1

    def dropped_rows(self, rows: np.ndarray) -> None:
        """Every event of ``rows`` (ascending int64) has left the store (deleted, or deleted by marking
        and out of its bitmaps): the kept window sums and the append log follow, the generation steps."""
        self.window_sums.dropped(self.generation, rows)
        self.appends.dropped(self.generation, to_bitmap(rows))
        self.generation += 1

    def _encodes(self, columns: dict[str, Column]) -> bool:
        """True if the store encodes ``columns`` as it is: every category label known, every float
        property's values representable in its present encoding."""
        for prop, column in columns.items():
            kind = self.definition.properties.get(prop)
            if kind == "category":
                assert isinstance(column, CategoryColumn)
                code_of = self.code_of[prop]
                if any(label not in code_of for label in column.labels):
                    return False
            elif kind == "float" and self.scaled.get(prop, 0):
                assert isinstance(column, ValueColumn)
                values = np.asarray(column.values, dtype=np.float64)
                if encode_scaled(values, np.asarray(column.valid, dtype=bool), self.scaled[prop]) is None:
                    return False
        return True

    def _day_bitmaps(self, rows: np.ndarray, ts: np.ndarray) -> tuple[dict[int, BitMap], dict[int, dict[int, Any]],
                                                                      frozenset[int]]:
        """For events sorted by time: their rows per UTC day, per slot of the days whose slots are kept
        now, and those days."""
        first, last = int(ts[0]) // DAY_MS, int(ts[-1]) // DAY_MS
        cuts = np.searchsorted(ts, np.arange(first, last + 2, dtype=np.int64) * DAY_MS).tolist()
        with _BUILD_LOCK:  # the slot days as one query's ensure_slots left them
            slot_days = frozenset(self.slot_days)
        days: dict[int, BitMap] = {}
        slots: dict[int, dict[int, Any]] = {}
        for day, start, stop in zip(range(first, last + 1), cuts, cuts[1:]):
            if stop > start:
                days[day] = to_bitmap(rows[start:stop])
                if day in slot_days:
                    slots[day] = slot_rows(rows[start:stop], ts[start:stop], SLOT_MS)
        return days, slots, slot_days

    def _index_slots(self, rows: np.ndarray, ts: np.ndarray) -> None:
        """Add events (sorted by time, of days in ``slot_days``) to the slot bitmaps."""
        for slot, part in slot_rows(rows, ts, SLOT_MS).items():
            add_rows(self.slots, slot, part)

    def has_slots(self, day: int) -> bool:
        """True if the slot bitmaps of UTC ``day`` are kept."""
        return day in self.slot_days

    def ensure_slots(self, day: int) -> dict[int, BitMap]:
        """Build (or mark recently used) the slot bitmaps of UTC ``day``; keeps at most SLOT_CACHE_DAYS days.

        Returns the slot dict that holds the day. Queries in several threads may call this at once:
        changes go to a new dict (copy on write, under ``_BUILD_LOCK``), so a dict once returned
        keeps its days even when a later call evicts them.
        """
        with _BUILD_LOCK:
            slots, days = self.slots, self.slot_days
            if day in days:
                if next(reversed(days)) != day:
                    days = dict(days)
                    del days[day]
                    days[day] = None  # most recently used last
                    self.slot_days = days
                return slots
            slots, days = dict(slots), dict(days)
            per_day = DAY_MS // SLOT_MS
            while len(days) >= SLOT_CACHE_DAYS:
                old = next(iter(days))
                del days[old]
                for slot in range(old * per_day, (old + 1) * per_day):
                    slots.pop(slot, None)
            self._build_slots(day, slots)
            days[day] = None
            self.slots, self.slot_days = slots, days
            return slots

    def _build_slots(self, day: int, slots: dict[int, BitMap]) -> None:
        """Put the slot bitmaps of UTC ``day`` into ``slots``."""
        per_slot: dict[int, list[np.ndarray]] = {}
        for part in self.window(day * DAY_MS, (day + 1) * DAY_MS - 1):
            base_slot, skew = divmod(part.base, SLOT_MS)
            # slot base_slot + k starts at offset k * SLOT_MS - skew from part.base
            first = (int(part.ts[0]) + skew) // SLOT_MS
            last = (int(part.ts[-1]) + skew) // SLOT_MS
            edges = np.arange(first, last + 2, dtype=np.int64) * SLOT_MS - skew
            cuts = np.searchsorted(part.ts, edges).tolist()
            for k, start, stop in zip(range(first, last + 1), cuts, cuts[1:]):
                if stop > start:
                    per_slot.setdefault(base_slot + k, []).append(part.rows[start:stop])
        for slot, parts in per_slot.items():
            bitmap = to_bitmap(np.concatenate(parts) if len(parts) > 1 else parts[0])
            slots[slot] = bitmap - self.dead if self.dead else bitmap

    def bin_keys(self, prop: str, values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """The bins (``engine.store.property_bitmaps``) of stored values of property ``prop``."""
        kind = self.definition.properties[prop]
        return bin_keys(kind, values, valid, self.scaled.get(prop, 0) if kind == "float" else 0)

    def property_bitmaps(self, prop: str) -> PropertyBitmaps | None:
        """The kept bin bitmaps of ``prop`` (built from the events on first use), or None if its kind has no bins."""
        kept = self.prop_bitmaps.get(prop)
        if kept is not None:
            return kept
        kind = self.definition.properties[prop]
        if kind not in BINNED_KINDS:
            return None
        with _BUILD_LOCK:  # built once and published whole (a new dict)
            kept = self.prop_bitmaps.get(prop)
            if kept is None:
                kept = self.build_property_bitmaps(prop)
                self.prop_bitmaps = {**self.prop_bitmaps, prop: kept}
        return kept

    def build_property_bitmaps(self, prop: str) -> PropertyBitmaps:
        """The bin bitmaps of ``prop`` computed from every stored event."""
        kept = PropertyBitmaps(prop, self.definition.properties[prop])
        runs = self.runs
        if runs:
            keys = np.concatenate([self.bin_keys(prop, run.props[prop], run.valid.get(prop)) for run in runs])
            rows = np.concatenate([run.rows for run in runs])
            ts = np.concatenate([run.absolute_ts() for run in runs])
            if self.dead:
                alive = ~self.dead_mask()[rows]
                keys, rows, ts = keys[alive], rows[alive], ts[alive]
            kept.add(keys, rows, ts)
        return kept

    def row_index(self, run: Run) -> RowIndex:
        """The events of ``run`` (one of this store's runs, not a slice) grouped by row: built on first use
        and kept on the run while the shard's budget allows (``engine.store.row_index_cache``; a run never
        changes, and a merge or removal makes new runs without one)."""
        return self.row_indexes.get(run)

    def dead_mask(self) -> np.ndarray:
        """A byte per row up to ``row_bound()``: True for the rows deleted by marking."""
        mask = np.zeros(self.row_bound(), dtype=bool)
        mask[np.frombuffer(self.dead.to_array(), dtype=np.uint32)] = True
        return mask

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

    def latest_before(self, now: int, size: int) -> LatestTimes:
        """Per row, the latest timestamp of this type with ts <= now (none: NO_TIME), for rows below
        ``size`` at least: kept (built on first use) when ``now`` is past every event, else computed."""
        if self.max_ts <= now:
            with _BUILD_LOCK:  # built once and published whole: concurrent queries never see it half-built
                latest = self.last_ts
                if latest is None:
                    latest = LatestTimes(max(size, self.row_bound()))
                    for run in self.runs:
                        latest.add(run.rows, run.absolute_ts())
                    if self.dead:
                        latest.clear(np.frombuffer(self.dead.to_array(), dtype=np.uint32).astype(np.int64))
                    self.last_ts = latest
                return latest
        latest = LatestTimes(max(size, self.row_bound()))
        for part in self.window(NO_TIME, now):
            latest.add(part.rows, part.absolute_ts())
        return latest

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by the runs and day bitmaps."""
        total = sum(r.ts.nbytes + r.rows.nbytes + sum(v.nbytes for v in r.props.values())
                    + sum(v.nbytes for v in r.valid.values()) + (0 if r.eids is None else r.eids.nbytes)
                    for r in self.runs)
        return total + sum(len(b.serialize()) for b in [*self.days.values(), *self.slots.values()]) \
            + sum(kept.nbytes() for kept in self.prop_bitmaps.values()) + self.window_sums.nbytes \
            + (self.count_levels.nbytes() if self.count_levels is not None else 0) \
            + sum(run.row_index.nbytes for run in self.runs if run.row_index is not None)


class EventStore:
    """Every event type of one shard, and the event ids its events carry."""

    def __init__(self, events: dict[str, EventDef]):
        self.types: dict[str, EventTypeStore] = {name: EventTypeStore(d) for name, d in events.items()}
        self.event_ids = EventIdStore()
        self.locator: Any = None  # per-row event lookup (engine.store.event_locator), built on first use
        self._share_row_indexes()

    def _share_row_indexes(self) -> None:
        """One row-index budget for every type, in proportion to the events of the whole store."""
        self.row_indexes = RowIndexCache(self)
        for typed in self.types.values():
            typed.row_indexes = self.row_indexes

    def __getstate__(self) -> dict:
        """The state to pickle: the event locator is an index, built again on demand."""
        state = dict(self.__dict__)
        state.pop("locator", None)
        state.pop("row_indexes", None)
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore a pickled store (the legacy snapshot formats hold no event ids)."""
        state.setdefault("event_ids", EventIdStore())
        state["locator"] = None
        self.__dict__.update(state)
        self._share_row_indexes()

    def release_event_ids(self, entries: np.ndarray) -> None:
        """Events with these event id entries were deleted (see ``EventIdStore.release``); compacts the
        entries once the dead ones outnumber the live ones (every run's column renumbered)."""
        self.event_ids.release(entries)
        ids = self.event_ids
        if ids.dead <= max(ids.live, COMPACT_MIN_DEAD):
            return
        self.event_ids, mapping = ids.compacted()
        for store in self.types.values():
            for run in store.runs:
                if run.eids is not None:  # a new array: runs are never changed in place
                    run.eids = np.where(run.eids >= 0, mapping[np.maximum(run.eids, 0)], -1).astype(np.int32)

    def adopt(self, events: dict[str, EventDef]) -> None:
        """Take event definitions that add types or properties (see ``EventTypeStore.adopt``)."""
        for name, definition in events.items():
            store = self.types.get(name)
            if store is None:
                self.types[name] = EventTypeStore(definition)
                self.types[name].row_indexes = self.row_indexes
            else:
                store.adopt(definition)

    def __len__(self) -> int:
        return sum(len(t) for t in self.types.values())

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The events' part of a snapshot, by event type."""
        return {name: store.to_state(writer) for name, store in self.types.items()}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], events: dict[str, EventDef],
                   rows: int, event_ids: dict[str, Any] | None = None) -> "EventStore":
        """The events of ``events`` from their part of a snapshot (every type must be there) and the
        event ids' part (``event_ids``; None: the part holds none)."""
        if set(state) != set(events):
            raise ValueError("the stored event types are not the schema's")
        store = cls.__new__(cls)
        store.locator = None
        store.types = {name: EventTypeStore.from_state(reader, state[name], definition, rows)
                       for name, definition in events.items()}
        store.event_ids = EventIdStore() if event_ids is None else EventIdStore.from_state(reader, event_ids, rows)
        store._share_row_indexes()
        held = np.zeros(store.event_ids.size, dtype=np.int64)
        for typed in store.types.values():
            for run in typed.runs:
                if run.eids is not None:
                    used = run.eids[run.eids >= 0]
                    if len(used) and int(used.max()) >= store.event_ids.size:
                        raise ValueError(f"a run of {typed.definition.name} names an event id the part does not hold")
                    held += np.bincount(used, minlength=store.event_ids.size)
        if not np.array_equal(held, store.event_ids.refs.view()):
            raise ValueError("the event ids' counts do not match the runs")
        return store
