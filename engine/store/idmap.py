"""External id <-> row map of one shard, without a Python object per profile.

Ids are stored as UTF-8 bytes in one growable buffer with uint32 offsets (int64 once the buffer
passes 4 GiB); an open-addressing table of tagged row numbers (see ``IdMap``) keyed by the ids'
table hash gives lookups; numba kernels probe and insert whole batches. Nothing else is kept per
row: about 4 (offset) + len(id) + 5-7.5 (table) bytes per profile.

>>> m = IdMap()
>>> m.lookup_or_insert(["a", "b", "a"])[0].tolist()
[0, 1, 0]
>>> m.lookup(["b", "zz"]).tolist(), m.id_of(1)
([1, -1], 'b')
>>> m.lookup_one("b"), m.lookup_one("zz")
(1, -1)
"""
from __future__ import annotations

import ctypes
import sys
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Sequence

import numba
import numpy as np
from pyroaring import BitMap

from .growable import GrowableArray
from .prefetch import prefetch
from .idhash import buffer_word_hash, id_hashes, pack_ids, packed_hashes, table_hashes, word_hash  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter


@numba.njit(cache=True)
def _subset(buf, offsets, picks):
    """The packed ids ``picks`` of a packed buffer."""
    new_offsets = np.zeros(len(picks) + 1, dtype=np.int64)
    for j in range(len(picks)):
        new_offsets[j + 1] = new_offsets[j] + offsets[picks[j] + 1] - offsets[picks[j]]
    new_buf = np.empty(new_offsets[-1], dtype=np.uint8)
    for j in range(len(picks)):
        start = offsets[picks[j]]
        at = new_offsets[j]
        for k in range(offsets[picks[j] + 1] - start):
            new_buf[at + k] = buf[start + k]
    return new_buf, new_offsets


#: Where a CPython list keeps the pointer to its item array (its last two fields: ob_item, allocated).
_OB_ITEM = list.__basicsize__ - 2 * ctypes.sizeof(ctypes.c_void_p)
_POINTER_BYTES = ctypes.sizeof(ctypes.c_void_p)


def object_addresses(items: list) -> np.ndarray | None:
    """The addresses of the objects in ``items`` (uint64), read from the list without touching them.

    Equal addresses mean the same object, so a batch whose repeated ids share their string object
    (as the columnar loaders and the generator produce) is deduplicated without hashing a string.
    None where this is not CPython (or not a plain list).
    """
    if type(items) is not list or sys.implementation.name != "cpython" or not items:
        return None
    pointer = ctypes.c_void_p.from_address(id(items) + _OB_ITEM).value
    if not pointer:
        return None
    # one copy of the item pointers (string_at: no ctypes array type per batch length to cache)
    addresses = np.frombuffer(ctypes.string_at(pointer, _POINTER_BYTES * len(items)),
                              dtype=np.uint64 if _POINTER_BYTES == 8 else np.uint32).astype(np.uint64, copy=False)
    if int(addresses[0]) != id(items[0]) or int(addresses[-1]) != id(items[-1]):  # pragma: no cover - layout guard
        return None
    return addresses


@numba.njit(cache=True)
def dedupe_keys(keys):
    """(positions of the first occurrence of each distinct non-zero key, in order; each key's distinct index).

    An open-addressing table of (key, index) pairs side by side (one cache line per probe), kept
    at most half full.
    """
    n = len(keys)
    bits = 10
    while (1 << bits) < 2 * min(n, 1 << 20):
        bits += 1
    table = np.zeros(2 << bits, dtype=np.uint64)  # slot s: key at 2s (0 = empty), distinct index at 2s + 1
    first = np.empty(n, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    count = 0
    golden = np.uint64(0x9E3779B97F4A7C15)
    for i in range(n):
        key = keys[i]
        mask = (1 << bits) - 1
        slot = np.int64((key * golden) >> np.uint64(64 - bits))
        while True:
            at = table[2 * slot]
            if at == key:
                inverse[i] = np.int64(table[2 * slot + 1])
                break
            if at == 0:
                first[count] = i
                table[2 * slot] = key
                table[2 * slot + 1] = np.uint64(count)
                inverse[i] = count
                count += 1
                if 2 * count > (1 << bits):  # keep the load <= 1/2: double and rehash
                    bits += 1
                    table = np.zeros(2 << bits, dtype=np.uint64)
                    for d in range(count):
                        k = keys[first[d]]
                        s = np.int64((k * golden) >> np.uint64(64 - bits))
                        while table[2 * s] != 0:
                            s = (s + 1) & ((1 << bits) - 1)
                        table[2 * s] = k
                        table[2 * s + 1] = np.uint64(d)
                break
            slot = (slot + 1) & mask
    return first[:count], inverse


@numba.njit(inline="always")
def _home(h, capacity):
    """The home slot of hash ``h``: its high 32 bits scaled to the table (any capacity below 2**32)."""
    return np.int64(((h >> np.uint64(32)) * np.uint64(capacity)) >> np.uint64(32))


#: How many probes ahead a kernel prefetches the home slot (a read of a large table stalls otherwise).
PREFETCH_AHEAD = 16


@numba.njit(cache=True)
def _probe(table, row_bits, offsets, buf, nrows, q_hash, q_off, q_buf, out, insert, limit):
    """Find (and with ``insert``, add while the map has fewer than ``limit`` rows) each query id in order.

    Returns (the new row count, how many queries were answered: all, unless an insert met ``limit``).
    """
    capacity = len(table)
    n = len(q_hash)
    tag_bits = table.itemsize * 8 - row_bits
    row_mask = np.uint64((1 << row_bits) - 1)
    tag_mask = np.uint64((1 << tag_bits) - 1)
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            prefetch(table, _home(q_hash[i + PREFETCH_AHEAD], capacity))
        h = q_hash[i]
        slot = _home(h, capacity)
        tag = (h & tag_mask) << np.uint64(row_bits)
        qs = np.int64(q_off[i])
        qlen = np.int64(q_off[i + 1]) - qs
        found = -1
        while True:
            entry = np.uint64(table[slot])
            if entry == 0:
                break
            if entry & ~row_mask == tag and entry & row_mask != row_mask:
                row = np.int64(entry & row_mask) - 1
                start = np.int64(offsets[row])
                if np.int64(offsets[row + 1]) - start == qlen:
                    same = True
                    for k in range(qlen):
                        if buf[start + k] != q_buf[qs + k]:
                            same = False
                            break
                    if same:
                        found = row
                        break
            slot += 1
            if slot == capacity:
                slot = 0
        if found < 0 and insert:
            if nrows >= limit:
                return nrows, i
            found = nrows
            start = np.int64(offsets[found])
            for k in range(qlen):
                buf[start + k] = q_buf[qs + k]
            offsets[found + 1] = start + qlen
            table[slot] = tag | np.uint64(found + 1)
            nrows += 1
        out[i] = found
    return nrows, n


#: Rows a table rebuild hashes at a time before entering them (two small buffers, not two per row).
FILL_BLOCK = 1 << 16


@numba.njit(cache=True)
def _fill(table, row_bits, offsets, buf, size, skip):
    """Enter rows ``0 .. size - 1`` (their ids distinct), except those ``skip`` marks (an empty ``skip``:
    none), into an empty ``table``, their hashes computed from their bytes: a block of rows is hashed
    first, then entered, each insert prefetching the home slot of one further on."""
    capacity = len(table)
    tag_bits = table.itemsize * 8 - row_bits
    tag_mask = np.uint64((1 << tag_bits) - 1)
    homes = np.empty(FILL_BLOCK, dtype=np.int64)
    tagged = np.empty(FILL_BLOCK, dtype=np.uint64)
    for first in range(0, size, FILL_BLOCK):
        n = 0
        for row in range(first, min(size, first + FILL_BLOCK)):
            if len(skip) and skip[row]:
                continue
            start = np.int64(offsets[row])
            h = buffer_word_hash(buf, start, np.int64(offsets[row + 1]) - start)
            homes[n] = _home(h, capacity)
            tagged[n] = ((h & tag_mask) << np.uint64(row_bits)) | np.uint64(row + 1)
            n += 1
        for i in range(n):
            if i + PREFETCH_AHEAD < n:
                prefetch(table, homes[i + PREFETCH_AHEAD])
            slot = homes[i]
            while table[slot] != 0:
                slot += 1
                if slot == capacity:
                    slot = 0
            table[slot] = tagged[i]


@numba.njit(cache=True)
def _bury(table, row_bits, offsets, buf, rows):
    """Turn the entries of ``rows`` into tombstones (all row bits set): probes pass them, nothing matches."""
    capacity = len(table)
    row_mask = np.uint64((1 << row_bits) - 1)
    for i in range(len(rows)):
        row = rows[i]
        start = np.int64(offsets[row])
        slot = _home(buffer_word_hash(buf, start, np.int64(offsets[row + 1]) - start), capacity)
        while True:
            entry = np.uint64(table[slot])
            if entry == 0:
                break
            if entry & row_mask == np.uint64(row + 1):
                table[slot] = entry | row_mask
                break
            slot += 1
            if slot == capacity:
                slot = 0


#: The largest buffer offset kept in uint32 offsets (past it, offsets are int64).
MAX_NARROW_OFFSET = 2**32 - 1

#: The most row bits a uint32 table entry holds (leaving at least 4 tag bits); larger tables are uint64.
MAX_NARROW_ROW_BITS = 28

#: The blake2b-64 hash reported for a forgotten row (no id's blake2b-64 is expected to be 0).
FORGOTTEN = np.uint64(0)


@numba.njit(cache=True)
def _census(table, row_bits):
    """(live entries, tombstones, largest row + 1 named by a live entry) of a table."""
    row_mask = np.uint64((1 << row_bits) - 1)
    live = 0
    buried = 0
    top = 0
    for slot in range(len(table)):
        entry = np.uint64(table[slot])
        if entry == 0:
            continue
        part = entry & row_mask
        if part == row_mask:
            buried += 1
        else:
            live += 1
            top = max(top, np.int64(part))
    return live, buried, top


def _new_table(capacity: int) -> tuple[np.ndarray, int]:
    """An empty table of ``capacity`` slots (zeroed pages: only the touched ones are resident) and its row bits."""
    if capacity >= 2**32:
        raise OverflowError("an id map holds fewer than 2**32 * MAX_LOAD rows")
    row_bits = capacity.bit_length()
    return np.zeros(capacity, dtype=np.uint32 if row_bits <= MAX_NARROW_ROW_BITS else np.uint64), row_bits


class IdMap:
    """Canonical external id <-> dense row number (0, 1, 2, ... in order of first sight).

    Ids are UTF-8 bytes in one buffer with uint32 offsets (int64 past 4 GiB). The probe table is
    open-addressed (linear probing, any capacity: a hash's high 32 bits scaled to it) over entries
    ``tag << row_bits | (row + 1)``: ``row_bits`` the bit length of the capacity, the tag the low bits
    of the id's 64-bit table hash (``buffer_word_hash``) that fit beside it in a uint32 (uint64 past
    ``MAX_NARROW_ROW_BITS``); 0 is empty, all row bits set a tombstone (a forgotten row). The tag
    rules out most slots without reading an id; hashes are recomputed from the ids' bytes when the
    table grows. The blake2b-64 hash that SAMPLE, BUCKET and lookalikes use is computed on demand
    (``row_hashes``, ``hashes_of``), not kept. About 4 (offset) + len(id) + 5-7.5 (table) bytes per row.
    """

    MAX_LOAD = 0.8  # live entries and tombstones over capacity
    FILL_AFTER_GROWTH = 0.75  # a table sized for one large batch starts this full
    growth = 1.5  # the least a growing table (or array) grows by
    _low_hashes: tuple[int, int, np.ndarray, np.ndarray] | None = None  # see low_hash_rows

    def __init__(self, growth: float | None = None) -> None:
        if growth is not None:
            self.growth = growth
        self.offsets = GrowableArray(np.uint32, 0, growth=growth)
        self.offsets.ensure(1)
        self.buffer = GrowableArray(np.uint8, 0, capacity=16384, growth=growth)
        self.table, self.row_bits = _new_table(1024)
        self.size = 0
        self.buried = 0  # tombstones in the table
        self.forgotten = BitMap()

    def __len__(self) -> int:
        return self.size

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also from a legacy snapshot's layout (a blake2b hash per row, an int32 table of rows)."""
        if "hashes" not in state:
            self.__dict__.update(state)
            return
        self.size = state["size"]
        self.offsets, self.buffer = state["offsets"], state["buffer"]
        self.forgotten = BitMap(np.flatnonzero(state["hashes"].view()[: self.size] == FORGOTTEN).tolist())
        self._rebuild(self._capacity_for(self.size))

    def _capacity_for(self, rows: int) -> int:
        return max(1024, int(rows / self.FILL_AFTER_GROWTH) + 1)

    def _rebuild(self, capacity: int) -> None:
        """A new table of ``capacity`` slots holding every row not forgotten (no tombstones)."""
        self.table, self.row_bits = _new_table(capacity)
        skip = np.zeros(self.size if self.forgotten else 0, dtype=np.bool_)
        if self.forgotten:
            skip[np.frombuffer(self.forgotten.to_array(), dtype=np.uint32)] = True
        _fill(self.table, self.row_bits, self.offsets.data, self.buffer.data, self.size, skip)
        self.buried = 0

    def _grow_table(self, rows: int) -> None:
        """A larger table (rebuilt) if ``rows`` more ids would fill this one past ``MAX_LOAD``."""
        needed = self.size + rows
        if needed + self.buried > self.MAX_LOAD * len(self.table):
            self._rebuild(max(self._capacity_for(needed), int(len(self.table) * self.growth)))

    def _insert_limit(self) -> int:
        """The row count up to which ids are inserted without growing the table."""
        return int(self.MAX_LOAD * len(self.table)) - self.buried

    def _reserve_arrays(self, rows: int, nbytes: int) -> None:
        """Room in the offsets and the id bytes for ``rows`` more ids of ``nbytes`` bytes (both zero-filled
        when they grow: the reserved pages no id is written to stay unresident)."""
        needed = self.size + rows
        self.offsets.ensure(needed + 1)
        used = int(self.offsets.data[self.size])
        if used + nbytes > MAX_NARROW_OFFSET and self.offsets.data.dtype != np.int64:
            self.offsets.data = self.offsets.data.astype(np.int64)
        self.buffer.ensure(used + nbytes)
        # logical sizes follow the row count, not the reservation
        self.offsets.size = self.size + 1
        self.buffer.size = used

    def lookup_or_insert(self, ids: Sequence[str], repeats: bool = False) -> tuple[np.ndarray, int]:
        """Rows of ``ids`` (int64), inserting unknown ones; also returns the row count before.

        ``repeats``: the ids likely repeat (event batches): hash each distinct id once.
        """
        if repeats and len(ids) > 4096:
            # event batches repeat ids: hash each distinct id once
            addresses = object_addresses(ids) if isinstance(ids, list) else None
            if addresses is not None:
                # a repeated id is usually the same string object: dedupe by address (equal strings
                # that are distinct objects stay apart here and meet in the table)
                first, inverse = dedupe_keys(addresses)
                if len(first) * 4 < len(ids) * 3:
                    picks = first.tolist()
                    distinct = [ids[picks[0]]] if len(picks) == 1 else list(itemgetter(*picks)(ids))
                    rows, before = self._lookup_or_insert(distinct)
                    return rows[inverse], before
                return self._lookup_or_insert(ids)
            seen: dict[str, int] = {}
            inverse = np.fromiter((seen.setdefault(i, len(seen)) for i in ids), dtype=np.int64, count=len(ids))
            if len(seen) * 4 < len(ids) * 3:
                rows, before = self._lookup_or_insert(list(seen))
                return rows[inverse], before
        return self._lookup_or_insert(ids)

    def _lookup_or_insert(self, ids: Sequence[str]) -> tuple[np.ndarray, int]:
        """Find or insert ``ids`` in one pass while the table has room; if it fills up, the rest are
        looked up, the table grows for the ones missing, and those are inserted."""
        q_buf, q_off = pack_ids(ids)
        q_hash = table_hashes(q_buf, q_off)
        out = np.empty(len(ids), dtype=np.int64)
        before = self.size
        self._reserve_arrays(len(ids), len(q_buf))  # as if every id were new
        size, done = _probe(self.table, self.row_bits, self.offsets.data, self.buffer.data, self.size,
                            q_hash, q_off, q_buf, out, True, self._insert_limit())
        self.size = int(size)
        if done < len(ids):
            rest_off, rest = q_off[done:], out[done:]
            _probe(self.table, self.row_bits, self.offsets.data, self.buffer.data, self.size,
                   q_hash[done:], rest_off, q_buf, rest, False, 0)
            missing = np.flatnonzero(rest < 0)
            if len(missing):
                self._grow_table(len(missing))
                m_buf, m_off = _subset(q_buf, rest_off, missing)
                inserted = np.empty(len(missing), dtype=np.int64)
                size, _ = _probe(self.table, self.row_bits, self.offsets.data, self.buffer.data, self.size,
                                 q_hash[done:][missing], m_off, m_buf, inserted, True, self._insert_limit())
                self.size = int(size)
                rest[missing] = inserted
        self.offsets.size = self.size + 1
        self.buffer.size = int(self.offsets.data[self.size])
        return out, before

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids`` (int64), -1 where unknown."""
        q_buf, q_off = pack_ids(ids)
        out = np.empty(len(ids), dtype=np.int64)
        _probe(self.table, self.row_bits, self.offsets.data, self.buffer.data, self.size,
               table_hashes(q_buf, q_off), q_off, q_buf, out, False, 0)
        return out

    def lookup_one(self, profile_id: str) -> int:
        """Row of one id, -1 if unknown (the point-lookup path: no arrays built, no kernel call)."""
        key = profile_id.encode("utf-8")
        h = word_hash(key)
        table, offsets, buf, row_bits = self.table, self.offsets.data, self.buffer.data, self.row_bits
        capacity = len(table)
        row_mask = (1 << row_bits) - 1
        tag = (h & ((1 << (table.itemsize * 8 - row_bits)) - 1)) << row_bits
        slot = ((h >> 32) * capacity) >> 32
        while True:
            entry = int(table[slot])
            if entry == 0:
                return -1
            if entry & ~row_mask == tag and entry & row_mask != row_mask:
                row = (entry & row_mask) - 1
                start, end = int(offsets[row]), int(offsets[row + 1])
                if end - start == len(key) and buf[start:end].tobytes() == key:
                    return row
            slot = slot + 1 if slot + 1 < capacity else 0

    def id_of(self, row: int) -> str:
        """The external id of ``row``."""
        offsets = self.offsets.data
        return bytes(self.buffer.data[offsets[row] : offsets[row + 1]]).decode("utf-8")

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """External ids of ``rows``, in the given order."""
        offsets = self.offsets.data
        raw = self.buffer.data
        blob = raw.tobytes() if len(rows) > 1000 else None
        if blob is None:
            return [bytes(raw[offsets[r] : offsets[r + 1]]).decode("utf-8") for r in rows]
        starts = offsets[rows].tolist()
        ends = offsets[np.asarray(rows) + 1].tolist()
        return [blob[s:e].decode("utf-8") for s, e in zip(starts, ends)]

    def packed(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of ``rows`` as one UTF-8 buffer (uint8) and ``len(rows) + 1`` offsets (int64)."""
        return _subset(self.buffer.data, self.offsets.data, np.asarray(rows, dtype=np.int64))

    def forget(self, rows: np.ndarray) -> None:
        """Make the ids of ``rows`` unknown: their table entries become tombstones and their bytes are zeroed.

        The rows keep their numbers; a later insert of a forgotten id makes a new row.
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.size):
            raise IndexError(f"no row {rows[0] if rows[0] < 0 else rows[-1]} in an id map of {self.size} rows")
        rows = rows[[row not in self.forgotten for row in rows.tolist()]] if self.forgotten else rows
        if len(rows) == 0:
            return
        offsets, buf = self.offsets.data, self.buffer.data
        _bury(self.table, self.row_bits, offsets, buf, rows)
        for row in rows.tolist():
            buf[offsets[row]:offsets[row + 1]] = 0
        self.forgotten.update(rows.tolist())
        self.buried += len(rows)
        self._low_hashes = None

    def row_hashes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The blake2b-64 hash of the id of each row in ``[start, stop)`` (uint64, computed; FORGOTTEN for
        a forgotten row)."""
        stop = self.size if stop is None else min(stop, self.size)
        if stop <= start:
            return np.empty(0, dtype=np.uint64)
        hashes = packed_hashes(self.buffer.data, self.offsets.data[start : stop + 1].astype(np.int64))
        if self.forgotten:
            gone = np.frombuffer(self.forgotten.to_array(), dtype=np.uint32).astype(np.int64)
            gone = gone[(gone >= start) & (gone < stop)]
            hashes[gone - start] = FORGOTTEN
        return hashes

    def hashes_of(self, rows: np.ndarray) -> np.ndarray:
        """The blake2b-64 hash of the id of each of ``rows`` (uint64; FORGOTTEN for a forgotten row)."""
        rows = np.asarray(rows, dtype=np.int64)
        hashes = packed_hashes(*self.packed(rows))
        if self.forgotten and len(rows):
            hashes[[row in self.forgotten for row in rows.tolist()]] = FORGOTTEN
        return hashes

    def low_hash_rows(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows ascending, their blake2b-64 hashes) of every row whose hash is below ``2**(64 - bits)``,
        ``bits`` the most that leaves at least ``4 * count`` rows expected (0: every row).

        The ``k`` rows of any set with the smallest hashes are among them whenever ``k`` of that set are.
        Cached: a later call hashes only the rows added since (a forget clears the cache).
        """
        bits = max(0, (self.size // (4 * count)).bit_length() - 1)
        cached = self._low_hashes
        if cached is None or cached[0] > bits:
            cached = (bits, 0, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64))
        known, covered, rows, hashes = cached
        parts_rows, parts_hashes = [rows], [hashes]
        if known < bits:
            keep = (hashes >> np.uint64(64 - bits)) == 0
            parts_rows, parts_hashes = [rows[keep]], [hashes[keep]]
        for start in range(covered, self.size, 1 << 20):
            chunk = self.row_hashes(start, start + (1 << 20))
            picks = np.flatnonzero((chunk >> np.uint64(64 - bits)) == 0) if bits else np.arange(len(chunk))
            parts_rows.append(picks + start)
            parts_hashes.append(chunk[picks])
        self._low_hashes = (bits, self.size, np.concatenate(parts_rows), np.concatenate(parts_hashes))
        return self._low_hashes[2], self._low_hashes[3]

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the map."""
        return self.offsets.nbytes + self.buffer.nbytes + int(self.table.nbytes)

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The map's part of a snapshot (see engine.persist.state_io)."""
        return {"size": self.size, "offsets": writer.array(self.offsets.view()),
                "buffer": writer.array(self.buffer.view()), "table": writer.array(self.table),
                "forgotten": writer.bitmap(self.forgotten)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any]) -> "IdMap":
        """A map from its part of a snapshot (also the layout with a blake2b hash per row and an int32
        table of rows: its table is rebuilt)."""
        idmap = cls.__new__(cls)
        size = idmap.size = state["size"]
        idmap.offsets = GrowableArray.adopt(reader.array(state["offsets"]), 0)
        idmap.buffer = GrowableArray.adopt(reader.array(state["buffer"]), 0)
        offsets, buffer = idmap.offsets.data, idmap.buffer.data
        if not (len(offsets) == size + 1 and offsets.dtype in (np.uint32, np.int64) and buffer.dtype == np.uint8
                and offsets[0] == 0 and offsets[-1] == len(buffer) and bool(np.all(offsets[1:] >= offsets[:-1]))):
            raise ValueError("the id map's offsets do not agree with its ids")
        if "hashes" in state:
            hashes = reader.array(state["hashes"])
            if not (hashes.dtype == np.uint64 and len(hashes) == size):
                raise ValueError("the id map's hashes do not agree with its ids")
            idmap.forgotten = BitMap(np.flatnonzero(hashes == FORGOTTEN).tolist())
            idmap._rebuild(idmap._capacity_for(size))
            return idmap
        idmap.forgotten = reader.bitmap(state["forgotten"], rows=size)
        table = idmap.table = reader.array(state["table"])
        idmap.row_bits = len(table).bit_length()
        wide = idmap.row_bits > MAX_NARROW_ROW_BITS
        if not (1024 <= len(table) < 2**32 and table.dtype == (np.uint64 if wide else np.uint32)):
            raise ValueError("the id map's table has a wrong size or type")
        live, idmap.buried, top = _census(table, idmap.row_bits)
        if not (live == size - len(idmap.forgotten) and top <= size and live + idmap.buried < len(table)):
            raise ValueError("the id map's table does not agree with its ids")
        return idmap
