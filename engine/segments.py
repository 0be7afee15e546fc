"""Saved segments: named queries materialised per shard and kept current on every write.

The definitions live in a ``SegmentCatalog`` (``engine.segment_catalog``).

``SavedSegments`` is one shard's materialisation: a Roaring bitmap of members per segment, plus
``MembershipBits``, a per-row bitset of the segments the row is in (so "which segments is this
profile in" is one row read, not a probe of every bitmap). It is kept exact by ``sync``:

- on a write, every segment is re-evaluated on the written rows only (``Executor.visit`` with
  the touched rows as its found set is exact within them), in dependency order, so a segment
  that reads another sees the other's new members;
- when the clock advances, each time-relative segment is re-evaluated only on the rows whose
  events or timestamp attributes crossed a time edge (see ``segment_time``); rows whose
  membership of a referenced segment changed are passed on to the segments that read it.

The materialisation has one clock, ``now``, that only moves forward: asking for an earlier
time keeps the current one. Every change of membership is recorded, in order, while change
capture is on (the coordinator turns it on while someone watches): ``take_changes`` hands them
over as plain lists ``[kind, segment, [ids]]``.

``membership`` reads the id map, the live rows and ``MembershipBits`` under ``view`` (a lock of
this object), not under the engine's publish lock alone: ``sync`` works the changes out first and
sets the per-row bits under ``view`` at its end, and a write that creates rows inserts their ids
under ``view`` (outside a view write it holds ``view`` from their insertion on). Inside
``deferring`` (a view write: engine.concurrency) the bits are not set at the end of the sync but
kept for ``publish``, which the coordinator calls on every shard at the end of the write, and the
rows the write creates stay unknown to membership until then; a merge
(``removes_rows``) also keeps the live rows of before it and the departed ids (``forget``) until
then, and a merge applied whole closes the view (``close_view``: membership waits for ``publish``).
So membership answered beside an event or merge batch's commit (a view read) sees the state before
or after it on every shard, never between.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
from pyroaring import BitMap

from .errors import ProfileNotFound, SegmentExists, SegmentNotFound, quoted
from .exec.executor import Executor
from .exec.restricted import RestrictedExecutor, latest_times
from .segment_catalog import SegmentCatalog, SegmentDef, check_segment_name
from .plan.steps import Step
from .query import ast
from .segment_time import (Reads, SortedColumn, is_clocked, mentions_now, predicates, reads_of, segment_refs,
                           time_candidates)
from .store.bitmaps import rows_of, to_bitmap, union_all
from .store.events import EventStore
from .store.numeric import NumericIndex
from .store.profiles import ProfileStore

if TYPE_CHECKING:
    from .persist.state_io import StateReader, StateWriter

#: Re-evaluate a segment over the whole universe when more than this share of rows is touched.
FULL_FRACTION = 0.25
#: Changes a shard keeps for the coordinator between two ``take_changes`` before it drops them.
MAX_PENDING_CHANGES = 1_000_000


class MembershipBits:
    """Per row, a bitset of segment slots: a 2-D uint64 array (rows x words), grown on demand.

    >>> bits = MembershipBits()
    >>> bits.set(np.array([3, 5]), 70); bits.set(np.array([3]), 1)
    >>> bits.slots_of(3), bits.slots_of(5), bits.has(4, 70)
    ([1, 70], [70], False)
    """

    def __init__(self) -> None:
        self.bits = np.zeros((0, 0), dtype=np.uint64)

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return int(self.bits.nbytes)

    def ensure(self, rows: int, slot: int) -> None:
        """Make rows ``[0, rows)`` and ``slot`` addressable."""
        have_rows, words = self.bits.shape
        want_words = max(words, slot // 64 + 1)
        if rows <= have_rows and want_words == words:
            return
        want_rows = have_rows if rows <= have_rows else max(rows, int(have_rows * 1.25) + 1024)
        grown = np.zeros((want_rows, want_words), dtype=np.uint64)
        grown[:have_rows, :words] = self.bits
        self.bits = grown

    def set(self, rows: np.ndarray, slot: int) -> None:
        """Mark ``rows`` (distinct) as members of ``slot``."""
        if len(rows):
            self.ensure(int(rows.max()) + 1, slot)
            self.bits[rows.astype(np.int64), slot >> 6] |= np.uint64(1 << (slot & 63))

    def clear(self, rows: np.ndarray, slot: int) -> None:
        """Mark ``rows`` (distinct) as not members of ``slot``."""
        if len(rows) and slot // 64 < self.bits.shape[1]:
            self.bits[rows.astype(np.int64), slot >> 6] &= np.uint64(~(1 << (slot & 63)) & (2**64 - 1))

    def has(self, row: int, slot: int) -> bool:
        """True if ``row`` is a member of ``slot``."""
        bits = self.bits
        if row >= bits.shape[0] or slot >> 6 >= bits.shape[1]:
            return False
        return bool((int(bits[row, slot >> 6]) >> (slot & 63)) & 1)

    def slots_of(self, row: int) -> list[int]:
        """The slots ``row`` is a member of, ascending."""
        bits = self.bits
        if row >= bits.shape[0]:
            return []
        slots = []
        for word_index, word in enumerate(bits[row].tolist()):
            base = word_index << 6
            while word:
                low = word & -word
                slots.append(base + low.bit_length() - 1)
                word ^= low
        return slots


#: What a pickled ``SavedSegments`` leaves out: its locks and the state of a write in progress.
_UNPICKLED = frozenset({"view", "_member_ops", "unpublished", "visible_rows", "view_live", "unforgotten", "view_open",
                        "later"})


class SavedSegments:
    """One shard's saved segments: members per segment and per row, kept current by ``sync``."""

    def __init__(self, profiles: ProfileStore, events: EventStore, executor: Executor):
        self.profiles = profiles
        self.events = events
        self.executor = executor
        self.restricted = RestrictedExecutor(executor.store, executor.events, executor.segments)
        self.restricted.samples = executor.samples
        self.sorted_columns: dict[str, SortedColumn] = {}
        self.catalog = SegmentCatalog()
        self.bitmaps: dict[str, BitMap] = {}
        # each segment's member count, kept by every change (reading len() of every bitmap after each
        # write walks all their containers: 30,000 of them for 200 segments at 10M profiles)
        self.counts: dict[str, int] = {}
        self.reads: dict[str, Reads] = {}  # what each segment's answer depends on (segment_time.reads_of)
        self.slots: dict[str, int] = {}
        self.slot_names: list[str | None] = []
        self.members = MembershipBits()
        self.view = threading.RLock()  # guards what membership reads (module docstring)
        self._member_ops: list[tuple[np.ndarray, int, bool]] | None = None  # per-row bit changes of a sync
        self.unpublished: list[tuple[np.ndarray, int, bool]] | None = None  # kept for ``publish`` (deferring)
        self.visible_rows: int | None = None  # rows from here on are unknown to membership until ``publish``
        self.view_live: BitMap | None = None  # the live rows membership sees until ``publish`` (a view write removing rows)
        self.unforgotten: list[np.ndarray] = []  # departed rows whose ids stay known until ``publish``
        self.view_open = threading.Event()  # cleared: membership waits for ``publish`` (``close_view``)
        self.view_open.set()
        self.later: list[tuple] | None = None  # the arguments of the syncs left for ``sync_later`` (deferring)
        self.now: int | None = None
        self.capture = False
        self.pending: list[tuple[str, str, np.ndarray | list[str] | None]] = []
        self.pending_size = 0
        self.lost = False

    def __getstate__(self) -> dict[str, Any]:
        """The pickled form (the legacy snapshot formats' tests write it): no lock, no sync in progress."""
        return {k: v for k, v in self.__dict__.items()
                if k not in _UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled instance (the legacy snapshot formats: their parts keep no member counts)."""
        self.__dict__.update(state)
        self.view, self._member_ops, self.unpublished, self.visible_rows = threading.RLock(), None, None, None
        self.view_live, self.unforgotten, self.view_open, self.later = None, [], threading.Event(), None
        self.view_open.set()
        if "counts" not in state:
            self.counts = {name: len(bitmap) for name, bitmap in self.bitmaps.items()}
        self.__dict__.pop("event_reads", None)  # what older pickles kept instead
        self.reads = {name: reads_of(d.step) for name, d in self.catalog.defs.items()}

    # -- definitions ------------------------------------------------------------------------
    def create(self, name: str, text: str, step: Step, now: int, replace: bool = False) -> dict[str, Any]:
        """Create (or, with ``replace``, redefine) segment ``name``; returns its info."""
        existed = name in self.catalog
        if existed and not replace:
            raise SegmentExists(f"segment {name!r} already exists")
        definition = self.catalog.prepare(name, text, step, now)
        if self.catalog.defs:
            self.sync(None, now)
        else:
            self.now = now
        members = BitMap(self.executor.evaluate(step, self.now))  # a copy: it is updated in place later
        self.catalog.put(definition)
        self.reads[name] = reads_of(step)
        if definition.clocked:
            self._prepare_refresh(step)
        if not existed:
            self.bitmaps[name] = members
            self.counts[name] = len(members)
            self.members.set(rows_of(members), self._allocate(name))
            self._record("created", name, None)
        else:
            old = self.bitmaps[name]
            self.bitmaps[name] = members
            self._record("replaced", name, None)
            delta = self._apply(name, members - old, old - members)
            self._cascade({}, {name: delta} if delta else {}, after=name)
        return self.info(name)

    def delete(self, name: str) -> None:
        """Delete segment ``name`` (SegmentInUse if another segment reads it)."""
        self.catalog.remove(name)
        members = self.bitmaps.pop(name)
        del self.counts[name]
        del self.reads[name]
        slot = self.slots.pop(name)
        self.members.clear(rows_of(members), slot)
        self.slot_names[slot] = None
        self._record("deleted", name, None)

    def _allocate(self, name: str) -> int:
        slot = next((i for i, taken in enumerate(self.slot_names) if taken is None), len(self.slot_names))
        if slot == len(self.slot_names):
            self.slot_names.append(name)
        else:
            self.slot_names[slot] = name
        self.slots[name] = slot
        return slot

    # -- reads ------------------------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Every segment's member count."""
        return dict(self.counts)

    def rows(self, name: str) -> BitMap:
        """Current members of ``name`` (the live bitmap: do not modify)."""
        try:
            return self.bitmaps[name]
        except KeyError:
            raise SegmentNotFound(f"unknown segment {quoted(name)}") from None

    def info(self, name: str) -> dict[str, Any]:
        """Plain-data description of segment ``name``, with this shard's member count."""
        d = self.catalog.get(name)
        return {"name": name, "query": d.text, "count": len(self.bitmaps[name]), "time_relative": d.clocked,
                "depends_on": sorted(d.refs), "created_ms": d.created_ms, "updated_ms": d.updated_ms,
                "as_of_ms": self.now or 0}

    def membership(self, profile_id: str, names: list[str] | None = None) -> list[str]:
        """The saved segments (sorted names) ``profile_id`` is in, among ``names`` if given."""
        self.view_open.wait()
        with self.view:
            row = self.profiles.idmap.lookup_one(profile_id)
            live = self.profiles.live if self.view_live is None else self.view_live
            if row < 0 or row not in live or (self.visible_rows is not None and row >= self.visible_rows):
                raise ProfileNotFound(f"unknown profile {profile_id!r}")
            if names:
                slots = self.slots
                for name in names:
                    if name not in slots:
                        raise SegmentNotFound(f"unknown segment {quoted(name)}")
                return sorted({name for name in names if self.members.has(row, slots[name])})
            slot_names = self.slot_names
            return sorted(slot_names[s] for s in self.members.slots_of(row))  # type: ignore[misc]

    # -- keeping current --------------------------------------------------------------------
    def sync(self, touched: np.ndarray | BitMap | None, now: int | None,
             attributes: Iterable[str] | None = None, events: Iterable[str] | None = None,
             created: BitMap | None = None, consents: Iterable[str] = (),
             departed: np.ndarray | None = None) -> None:
        """Bring every segment to clock ``max(now, self.now)`` after a write to rows ``touched``.

        ``attributes``: the attributes the write may have changed (None: any). ``events``: the
        event types it added events of (None: any profile data may have changed, so every segment
        is re-evaluated on ``touched``); given, the write changed those, ``attributes`` and the
        consent purposes ``consents`` only, so a segment that reads none of them
        (``segment_time.Reads``) is re-evaluated on ``created`` only (the profiles the write
        created). ``departed``: rows that left the profiles (a merge's sources): they exit every
        segment without any evaluation.

        In a view write that leaves its syncs for later (``deferring``), only notes the call for
        ``sync_later``.
        """
        if self.later is not None:
            self.later.append((touched, now, attributes, events, created, consents, departed))
            return
        if not self.catalog.defs:
            self.now = None  # no materialisation, no clock: the first segment starts at its own
            return
        if now is None:
            now = time.time_ns() // 1_000_000
        before = self.now
        self.now = now if before is None else max(before, now)
        seeds: dict[str, BitMap] = {}
        if before is not None and self.now > before:
            for name in self.catalog.order:
                d = self.catalog.defs[name]
                if d.clocked:
                    seeds[name] = time_candidates(d.step, before, self.now, self.events, self._attribute_rows)
        gone = to_bitmap(np.asarray(departed)) if departed is not None and len(departed) else None
        if gone is not None:
            for column in self.sorted_columns.values():
                column.touch(gone)
        if touched is not None and len(touched):
            rows = touched if isinstance(touched, BitMap) else to_bitmap(np.asarray(touched))
            changed = self.sorted_columns if attributes is None else [a for a in attributes if a in self.sorted_columns]
            for name in changed:
                self.sorted_columns[name].touch(rows)
            written = None if events is None else frozenset(events)
            set_attributes = None if attributes is None else frozenset(attributes)
            set_consents = frozenset(consents)
            for name in self.catalog.order:
                seed = rows
                if written is not None and not self.reads[name].touched_by(written, set_attributes, set_consents):
                    seed = created if created is not None else BitMap()
                if len(seed):
                    seeds[name] = seeds[name] | seed if name in seeds else seed
        if seeds or gone is not None:
            with self._members_at_end():
                if gone is not None:
                    for name in self.catalog.order:
                        exited = self.bitmaps[name] & gone
                        if exited:
                            self.bitmaps[name] -= exited
                            self._apply(name, BitMap(), exited)
                if seeds:
                    self._cascade(seeds, {})

    @contextmanager
    def _members_at_end(self) -> Iterator[None]:
        """Collect the per-row bit changes of the block and make them under ``view`` at its end (or keep
        them for ``publish`` while ``deferring``)."""
        self._member_ops = []
        try:
            yield
        finally:
            ops, self._member_ops = self._member_ops, None
            if self.unpublished is not None:
                self.unpublished.extend(ops)
            else:
                self._set_members(ops)

    def _set_members(self, ops: list[tuple[np.ndarray, int, bool]]) -> None:
        with self.view:
            for rows, slot, add in ops:
                (self.members.set if add else self.members.clear)(rows, slot)

    @contextmanager
    def deferring(self, creates_rows: bool, removes_rows: bool = False) -> Iterator[None]:
        """Leave the block's syncs for ``sync_later`` and keep their membership bit changes for
        ``publish`` (a view write); with ``creates_rows``, the rows it creates stay unknown to
        membership until ``publish`` (the block inserts their ids under ``view``); with
        ``removes_rows``, membership sees the live rows as they were, and the removed rows' ids
        (``forget``) stay known, until ``publish``."""
        if self.unpublished is None:
            self.unpublished = []
        if self.later is None and self.view_open.is_set():  # a whole-path merge (close_view) syncs as it goes
            self.later = []
        if removes_rows and self.view_live is None:
            self.view_live = self.profiles.live.copy()
        if creates_rows and self.visible_rows is None:
            with self.view:
                self.visible_rows = len(self.profiles.idmap)
        yield

    def close_view(self) -> None:
        """In a view write that cannot keep membership's view (a merge applied whole): membership waits
        for ``publish``."""
        if self.unpublished is None:
            self.unpublished = []
        self.view_open.clear()

    def forget(self, rows: np.ndarray) -> None:
        """Forget the ids of departed ``rows`` (their exits recorded first); while membership keeps the
        live rows of before a view write (``deferring``), at ``publish``."""
        if self.view_live is not None:
            self.unforgotten.append(rows)
        else:
            self._forget(rows)

    def _forget(self, rows: np.ndarray) -> None:
        if self.capture:
            self.pin_changes()  # the recorded exits keep the ids
        self.profiles.idmap.forget(rows)

    def sync_later(self) -> None:
        """The syncs ``deferring`` left, in order (a view write's sync step: engine.concurrency); their
        membership bit changes stay kept for ``publish``."""
        later, self.later = self.later, None
        for args in later or ():
            self.sync(*args)

    def publish(self) -> None:
        """Make the membership bit changes kept by ``deferring`` (after the syncs it left, if no sync
        step ran them) and show the rows it created (no-op without any)."""
        self.sync_later()
        ops, self.unpublished = self.unpublished, None
        with self.view:
            if ops:
                self._set_members(ops)
            for rows in self.unforgotten:
                self._forget(rows)
            self.unforgotten, self.visible_rows, self.view_live = [], None, None
        self.view_open.set()

    def _prepare_refresh(self, step: Step) -> None:
        """Build what refreshing ``step`` reads (sorted columns, latest event times) now, not at the first tick."""
        for node in predicates(step):
            if isinstance(node, ast.Did):
                if RestrictedExecutor.reads_latest_time(node):
                    latest_times(self.events.types[node.event], np.empty(0, dtype=np.int64), len(self.profiles.idmap))
            elif mentions_now(node) and hasattr(node, "name"):
                self._attribute_rows(node.name, 0, -1)

    def _attribute_rows(self, name: str, lo: int, hi: int) -> BitMap:
        """Rows whose attribute ``name`` lies in [lo, hi] (for time candidates)."""
        column = self.sorted_columns.get(name)
        if column is None:
            index = self.profiles.indexes[name]
            if not isinstance(index, NumericIndex):
                return BitMap()
            column = self.sorted_columns[name] = SortedColumn(index)
        return column.between(lo, hi)

    def _cascade(self, seeds: dict[str, BitMap], changed: dict[str, BitMap], after: str | None = None) -> None:
        """Re-evaluate segments in dependency order on their seed rows plus their references' changes."""
        order = self.catalog.order
        if after is not None:
            order = order[order.index(after) + 1:]
        for name in order:
            d = self.catalog.defs[name]
            parts = [changed[ref] for ref in d.refs if ref in changed]
            seed = seeds.get(name)
            if seed is not None and len(seed):
                parts.append(seed)
            if not parts:
                continue
            candidates = parts[0] if len(parts) == 1 else union_all(parts)
            delta = self._reevaluate(name, d.step, candidates)
            if delta:
                changed[name] = delta

    def _reevaluate(self, name: str, step: Step, candidates: BitMap) -> BitMap:
        """Re-evaluate ``name`` on ``candidates``; returns the rows that entered or exited."""
        old = self.bitmaps[name]
        if len(candidates) > FULL_FRACTION * len(self.profiles.live):
            new = BitMap(self.executor.evaluate(step, self.now))
            self.bitmaps[name] = new
            return self._apply(name, new - old, old - new)
        self.restricted.now = self.now  # visit() reads the executor's clock; evaluate() would set it
        # a row that left the profiles (departed, erased) is in no segment, whatever a plan answers for
        # it (a count that holds at zero includes the found rows without events)
        got = self.restricted.visit(step, candidates) & candidates & self.profiles.live
        was = old & candidates
        entered, exited = got - was, was - got
        old |= entered
        old -= exited
        return self._apply(name, entered, exited)

    def _apply(self, name: str, entered: BitMap, exited: BitMap) -> BitMap:
        """Update the per-row bits and the member count and record the changes (``entered``: rows that were
        not members, ``exited``: rows that were); returns entered | exited."""
        self.counts[name] += len(entered) - len(exited)
        slot = self.slots[name]
        for kind, rows_changed in (("exited", exited), ("entered", entered)):
            if rows_changed:
                rows = rows_of(rows_changed)
                self._member_bits(rows, slot, kind == "entered")
                self._record(kind, name, rows)
        return entered | exited

    def _member_bits(self, rows: np.ndarray, slot: int, add: bool) -> None:
        """Set (``add``) or clear the bits of ``rows`` in ``slot``: now, or at the end of a sync."""
        if self._member_ops is not None:
            self._member_ops.append((rows, slot, add))
        else:
            with self.view:
                (self.members.set if add else self.members.clear)(rows, slot)

    # -- change capture ---------------------------------------------------------------------
    def _record(self, kind: str, name: str, rows: np.ndarray | None) -> None:
        if not self.capture or self.lost:
            return
        self.pending.append((kind, name, rows))
        self.pending_size += 1 if rows is None else len(rows)
        if self.pending_size > MAX_PENDING_CHANGES:
            self.pending, self.pending_size, self.lost = [], 0, True

    def set_capture(self, on: bool) -> None:
        """Start or stop recording membership changes (stopping drops what is pending)."""
        self.capture = bool(on)
        self.pending, self.pending_size, self.lost = [], 0, False

    def _ids(self, rows: np.ndarray | list[str] | None) -> list[str]:
        if rows is None:
            return []
        return rows if isinstance(rows, list) else self.profiles.idmap.ids_of(rows)

    def pin_changes(self) -> None:
        """Name the rows of the recorded changes now (before their ids are forgotten by a merge or an erasure)."""
        self.pending = [(kind, name, None if rows is None else self._ids(rows)) for kind, name, rows in self.pending]

    def take_changes(self) -> dict[str, Any]:
        """The changes recorded since the last call: ``{"changes": [[kind, name, ids]], "lost", "at"}``."""
        changes = [[kind, name, self._ids(rows)] for kind, name, rows in self.pending]
        result = {"changes": changes, "lost": self.lost, "at": self.now or 0}
        self.pending, self.pending_size, self.lost = [], 0, False
        return result

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The saved segments' part of a snapshot: definitions (as query text) in dependency order, members
        per segment and per row, slots and clock (change capture and sorted columns are not stored)."""
        defs = [[name, d.text, d.created_ms, d.updated_ms] for name, d in
                ((name, self.catalog.defs[name]) for name in self.catalog.order)]
        return {"defs": defs, "bitmaps": {name: writer.bitmap(bitmap) for name, bitmap in self.bitmaps.items()},
                "slots": self.slots, "slot_names": self.slot_names, "members": writer.array(self.members.bits),
                "now": self.now}

    def load_state(self, reader: StateReader, state: dict[str, Any], compile_query: Callable[[str], Step]) -> None:
        """Replace the (empty) segments by their part of a snapshot; ``compile_query`` plans a definition."""
        rows = len(self.profiles.idmap)
        for name, text, created_ms, updated_ms in state["defs"]:
            step = compile_query(text)
            self.catalog.put(SegmentDef(check_segment_name(name), text, step, segment_refs(step), is_clocked(step),
                                        int(created_ms), int(updated_ms)))
        self.bitmaps.clear()  # the dict is shared (LocalShard.segments)
        self.bitmaps.update((name, reader.bitmap(bitmap, rows)) for name, bitmap in state["bitmaps"].items())
        self.counts = {name: len(bitmap) for name, bitmap in self.bitmaps.items()}
        self.reads = {name: reads_of(d.step) for name, d in self.catalog.defs.items()}
        self.slots = {name: int(slot) for name, slot in state["slots"].items()}
        self.slot_names = list(state["slot_names"])
        bits = reader.array(state["members"])
        if bits.dtype != np.uint64 or bits.ndim != 2:
            raise ValueError("the segment membership bits are not a 2-D uint64 array")
        self.members.bits = bits
        names = set(self.catalog.defs)
        if set(self.bitmaps) != names or set(self.slots) != names or \
                any(not 0 <= slot < len(self.slot_names) or self.slot_names[slot] != name
                    for name, slot in self.slots.items()):
            raise ValueError("the stored segments, their members and their slots do not agree")
        self.now = None if state["now"] is None else int(state["now"])

    @property
    def nbytes(self) -> int:
        """Approximate bytes held: the member bitmaps and the per-row bits."""
        total = self.members.nbytes
        for bitmap in self.bitmaps.values():
            stats = bitmap.get_statistics()
            total += sum(stats[k] for k in ("n_bytes_array_containers", "n_bytes_run_containers",
                                            "n_bytes_bitset_containers"))
        return total
