"""The event ids of one shard (idempotent ingest): which (profile row, event id) pairs are held.

An entry is one distinct (row, event id) pair with the number of stored events that carry it
(``refs``): an event run keeps, per event, the number of its entry (int32, -1: no event id), so
the id is held exactly as long as one of its events is stored. The id's UTF-8 bytes live in one
growable buffer; an open-addressing table of int32 entry numbers (at most 70% full) is keyed by
a 64-bit hash of the id's bytes and the row, and a numba kernel probes and inserts whole batches,
comparing rows and bytes (exact: two ids never meet by a hash collision). An entry whose last
event goes (retention, erasure, a merge moving the events away) is dead: its bytes are zeroed
and it never matches again; ``EventStore`` compacts the entries when the dead ones outnumber the
live ones. About 8 (key) + 8 (offset) + 4 (row) + 4 (refs) + 6-11 (table) + 4 (the run's
column) bytes per event id plus its bytes.

>>> store = EventIdStore()
>>> keep, entries = store.admit(np.array([0, 0, 1, 0]), ["a", "a", "a", None])
>>> keep.tolist(), entries.tolist(), len(store)
([True, False, True, True], [0, -1, 1, -1], 2)
>>> store.admit(np.array([1]), ["a"])[0].tolist(), store.ids_of(np.array([1, -1]))
([False], ['a', None])
>>> store.release(np.array([1])); store.admit(np.array([1]), ["a"])[0].tolist()
[True]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numba
import numpy as np

from .growable import GrowableArray
from .idmap import pack_ids

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter

#: The longest event id, in UTF-8 bytes.
MAX_EVENT_ID_BYTES = 128
#: The key of a dead entry (no live key is 0: ``_keys`` maps 0 to 1).
DEAD = np.uint64(0)


@numba.njit(inline="always")
def _mix(h):
    """The splitmix64 finaliser."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _keys(buf, offsets, rows):
    """The table key of each (packed id, row): the id's 8-byte little-endian words folded through the
    splitmix64 finaliser with its length and row; never 0. Equal keys are checked by row and bytes, so
    this only needs to spread ids over the table (a blake2b per id cost five times as much)."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        start, end = offsets[i], offsets[i + 1]
        h = _mix(np.uint64(end - start) ^ ((np.uint64(rows[i]) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)))
        j = start
        while j < end:
            word = np.uint64(0)
            for k in range(min(8, end - j)):
                word |= np.uint64(buf[j + k]) << np.uint64(8 * k)
            h = _mix(h ^ word)
            j += 8
        out[i] = h if h != 0 else np.uint64(1)
    return out


@numba.njit(cache=True)
def _probe(table, keys, rows, offsets, buf, size, q_key, q_row, q_off, q_buf, out, inserted, insert):
    """Per query, its live entry (or, with ``insert``, a new one); returns the new entry count."""
    mask = len(table) - 1
    for i in range(len(q_key)):
        k = q_key[i]
        slot = np.int64(k & np.uint64(mask))
        qs = q_off[i]
        qlen = q_off[i + 1] - qs
        found = -1
        while True:
            entry = table[slot]
            if entry < 0:
                break
            if keys[entry] == k and rows[entry] == q_row[i]:
                start = offsets[entry]
                if offsets[entry + 1] - start == qlen:
                    same = True
                    for j in range(qlen):
                        if buf[start + j] != q_buf[qs + j]:
                            same = False
                            break
                    if same:
                        found = entry
                        break
            slot = (slot + 1) & mask
        if found < 0 and insert:
            found = size
            keys[found] = k
            rows[found] = q_row[i]
            start = offsets[found]
            for j in range(qlen):
                buf[start + j] = q_buf[qs + j]
            offsets[found + 1] = start + qlen
            table[slot] = found
            inserted[i] = True
            size += 1
        out[i] = found
    return size


@numba.njit(cache=True)
def _rehash(table, keys, size):
    mask = len(table) - 1
    for entry in range(size):
        slot = np.int64(keys[entry] & np.uint64(mask))
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = entry


class EventIdStore:
    """(profile row, event id) -> entry number, with the number of stored events holding each entry."""

    MAX_LOAD = 0.7

    def __init__(self) -> None:
        self.keys = GrowableArray(np.uint64, 0)
        self.rows = GrowableArray(np.int32, -1)
        self.refs = GrowableArray(np.int32, 0)
        self.offsets = GrowableArray(np.int64, 0)
        self.offsets.ensure(1)
        self.buffer = GrowableArray(np.uint8, 0, capacity=16384)
        self.table = np.full(1024, -1, dtype=np.int32)
        self.size = 0  # entries, dead ones included
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def _reserve(self, entries: int, nbytes: int) -> None:
        needed = self.size + entries
        if needed > self.MAX_LOAD * len(self.table):
            capacity = len(self.table)
            while needed > self.MAX_LOAD * capacity:
                capacity *= 2
            self.table = np.full(capacity, -1, dtype=np.int32)
            _rehash(self.table, self.keys.data, self.size)
        used = int(self.offsets.data[self.size])
        for array, size in ((self.keys, needed), (self.rows, needed), (self.refs, needed),
                            (self.offsets, needed + 1), (self.buffer, used + nbytes)):
            array.ensure(size)

    def _sync_sizes(self) -> None:
        """Logical sizes follow the entry count, not the reservation."""
        self.keys.size = self.rows.size = self.refs.size = self.size
        self.offsets.size = self.size + 1
        self.buffer.size = int(self.offsets.data[self.size])

    def _query(self, rows: np.ndarray, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        q_buf, q_off = pack_ids(ids)
        q_row = np.asarray(rows, dtype=np.int32)
        return _keys(q_buf, q_off, q_row), q_row, q_off, q_buf

    def _find(self, rows: np.ndarray, ids: Sequence[str], insert: bool) -> tuple[np.ndarray, np.ndarray]:
        """(entry of each (row, id), whether this call inserted it)."""
        q_key, q_row, q_off, q_buf = self._query(rows, ids)
        out = np.empty(len(ids), dtype=np.int64)
        inserted = np.zeros(len(ids), dtype=bool)
        if insert:
            self._reserve(len(ids), len(q_buf))
        self.size = int(_probe(self.table, self.keys.data, self.rows.data, self.offsets.data, self.buffer.data,
                               self.size, q_key, q_row, q_off, q_buf, out, inserted, insert))
        self._sync_sizes()
        return out, inserted

    def admit(self, rows: np.ndarray, event_ids: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Which of the events (their rows and ids, None = no id) to store: not those whose (row, id) is
        held, nor a repeat of an earlier one of the batch. Returns (keep mask, entry of each kept event
        with an id, -1 for the others); the kept ids are held from now on."""
        n = len(event_ids)
        keep = np.ones(n, dtype=bool)
        entries = np.full(n, -1, dtype=np.int32)
        with_id = [i for i, value in enumerate(event_ids) if value is not None]
        if not with_id:
            return keep, entries
        picks = np.array(with_id, dtype=np.int64)
        found, inserted = self._find(np.asarray(rows)[picks], [event_ids[i] for i in with_id], True)
        keep[picks[~inserted]] = False
        entries[picks[inserted]] = found[inserted]
        self.refs.data[found[inserted]] = 1
        self.live += int(inserted.sum())
        return keep, entries

    def acquire(self, rows: np.ndarray, event_ids: Sequence[str | None]) -> np.ndarray:
        """Hold the id of every event (a merge's moved events: none is dropped); their entries (-1: no id)."""
        entries = np.full(len(event_ids), -1, dtype=np.int32)
        with_id = [i for i, value in enumerate(event_ids) if value is not None]
        if not with_id:
            return entries
        picks = np.array(with_id, dtype=np.int64)
        found, inserted = self._find(np.asarray(rows)[picks], [event_ids[i] for i in with_id], True)
        np.add.at(self.refs.data, found, 1)
        self.live += int(inserted.sum())
        entries[picks] = found
        return entries

    def lookup(self, rows: np.ndarray, event_ids: Sequence[str]) -> np.ndarray:
        """The live entry of each (row, id), -1 where it is not held."""
        if not event_ids:
            return np.zeros(0, dtype=np.int64)
        return self._find(rows, event_ids, False)[0]

    def release(self, entries: np.ndarray) -> None:
        """Events holding ``entries`` (repeats count; -1 ignored) are gone: an entry without events dies
        (its bytes zeroed, never matched again)."""
        entries = np.asarray(entries)
        entries = entries[entries >= 0]
        if len(entries) == 0:
            return
        numbers, counts = np.unique(entries, return_counts=True)
        refs = self.refs.data
        refs[numbers] -= counts.astype(np.int32)
        dead = numbers[refs[numbers] <= 0]
        if len(dead) == 0:
            return
        refs[dead] = 0
        offsets, buf = self.offsets.data, self.buffer.data
        for entry in dead.tolist():
            buf[offsets[entry]:offsets[entry + 1]] = 0
        self.keys.data[dead] = DEAD
        self.rows.data[dead] = -1
        self.live -= len(dead)

    def ids_of(self, entries: np.ndarray) -> list[str | None]:
        """The event id of each entry (None for -1)."""
        offsets, buf = self.offsets.data, self.buffer.data
        return [None if e < 0 else bytes(buf[offsets[e]:offsets[e + 1]]).decode("utf-8")
                for e in np.asarray(entries).tolist()]

    @property
    def dead(self) -> int:
        """Entries whose events are all gone (reclaimed by ``compacted``)."""
        return self.size - self.live

    def compacted(self) -> tuple["EventIdStore", np.ndarray]:
        """A store of the live entries only, and the new number of each old entry (-1: dead)."""
        alive = np.flatnonzero(self.keys.view() != DEAD)
        mapping = np.full(self.size, -1, dtype=np.int32)
        mapping[alive] = np.arange(len(alive), dtype=np.int32)
        store = EventIdStore()
        offsets = self.offsets.data
        starts, ends = offsets[alive], offsets[alive + 1]
        lengths = ends - starts
        new_offsets = np.zeros(len(alive) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        n = len(alive)
        store._reserve(n, int(new_offsets[-1]))
        store.keys.data[:n] = self.keys.data[alive]
        store.rows.data[:n] = self.rows.data[alive]
        store.refs.data[:n] = self.refs.data[alive]
        store.offsets.data[:n + 1] = new_offsets
        store.buffer.data[:len(gather)] = self.buffer.data[gather]
        store.size = store.live = n
        _rehash(store.table, store.keys.data, n)
        store._sync_sizes()
        return store, mapping

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return (self.keys.nbytes + self.rows.nbytes + self.refs.nbytes + self.offsets.nbytes + self.buffer.nbytes
                + int(self.table.nbytes))

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The event ids' part of a snapshot."""
        return {"size": self.size, "live": self.live, "keys": writer.array(self.keys.view()),
                "rows": writer.array(self.rows.view()), "refs": writer.array(self.refs.view()),
                "offsets": writer.array(self.offsets.view()), "buffer": writer.array(self.buffer.view()),
                "table": writer.array(self.table)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any], rows: int) -> "EventIdStore":
        """The event ids of a shard of ``rows`` profiles from their part of a snapshot."""
        store = cls.__new__(cls)
        store.size, store.live = int(state["size"]), int(state["live"])
        store.keys = GrowableArray.adopt(reader.array(state["keys"]), 0)
        store.rows = GrowableArray.adopt(reader.array(state["rows"]), -1)
        store.refs = GrowableArray.adopt(reader.array(state["refs"]), 0)
        store.offsets = GrowableArray.adopt(reader.array(state["offsets"]), 0)
        store.buffer = GrowableArray.adopt(reader.array(state["buffer"]), 0)
        store.table = reader.array(state["table"])
        keys, entry_rows, refs, offsets = store.keys.data, store.rows.data, store.refs.data, store.offsets.data
        alive = keys != DEAD
        if not (keys.dtype == np.uint64 and entry_rows.dtype == np.int32 and refs.dtype == np.int32
                and offsets.dtype == np.int64 and store.buffer.data.dtype == np.uint8
                and store.table.dtype == np.int32
                and len(keys) == len(entry_rows) == len(refs) == store.size == len(offsets) - 1
                and len(store.table) & (len(store.table) - 1) == 0 and store.size < len(store.table)
                and int(alive.sum()) == store.live and bool(np.all(refs[alive] > 0))
                and bool(np.all((entry_rows[alive] >= 0) & (entry_rows[alive] < rows)))
                and offsets[0] == 0 and offsets[-1] == len(store.buffer.data)
                and bool(np.all(offsets[1:] >= offsets[:-1]))
                and (store.size == 0 or int(store.table.max()) < store.size)):
            raise ValueError("the event id arrays do not agree")
        return store
