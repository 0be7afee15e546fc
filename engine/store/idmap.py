"""External id <-> row map of one shard, without a Python object per profile.

Ids are stored as UTF-8 bytes in one growable buffer with uint32 offsets (int64 once the buffer
passes 4 GiB); a row also keeps the 64-bit blake2b hash of its id (the same hash SAMPLE uses).
An open-addressing table of int32 rows keyed by that hash gives lookups; numba kernels probe and
insert whole batches. About 8 (hash) + 4 (offset) + len(id) + 6-11 (table) bytes per profile.

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
from hashlib import blake2b
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Sequence

import numba
import numpy as np

from .growable import GrowableArray

if TYPE_CHECKING:
    from ..persist.state_io import StateReader, StateWriter


def id_hashes(encoded: Sequence[bytes]) -> np.ndarray:
    """blake2b-64 (little-endian) of each encoded id, as uint64."""
    digests = b"".join([blake2b(item, digest_size=8).digest() for item in encoded])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _pack(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of ``ids`` in one buffer (uint8) and their offsets (int64, len(ids) + 1).

    All-ASCII batches (the usual case) are encoded in one piece, without a bytes object per id.
    """
    joined = "".join(ids)
    data = joined.encode("utf-8")
    if len(data) != len(joined):  # some id is not ASCII: its UTF-8 length differs from its length
        return _pack([item.encode("utf-8") for item in ids])
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
    return np.frombuffer(data, dtype=np.uint8), offsets


_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
                0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179], dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
], dtype=np.int64)


@numba.njit(inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(inline="always")
def _mix(a, b, c, d, x, y):
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@numba.njit(cache=True)
def blake2b64(buf, offsets, iv, sigma):
    """blake2b with an 8-byte digest (RFC 7693) of each ``buf[offsets[i]:offsets[i+1]]``, read little-endian."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.uint64)
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    for i in range(n):
        start = offsets[i]
        length = offsets[i + 1] - start
        for k in range(8):
            h[k] = iv[k]
        h[0] ^= np.uint64(0x01010008)  # digest length 8, no key, fanout 1, depth 1
        done = 0
        while True:
            take = min(length - done, 128)
            last = done + take == length
            for w in range(16):
                m[w] = np.uint64(0)
            for k in range(take):
                m[k >> 3] |= np.uint64(buf[start + done + k]) << np.uint64((k & 7) * 8)
            done += take
            v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
            v8, v9, v10, v11 = iv[0], iv[1], iv[2], iv[3]
            v12 = iv[4] ^ np.uint64(done)  # byte counter (ids are far below 2**64 bytes)
            v13 = iv[5]
            v14 = ~iv[6] if last else iv[6]
            v15 = iv[7]
            for r in range(12):
                s = sigma[r % 10]
                v0, v4, v8, v12 = _mix(v0, v4, v8, v12, m[s[0]], m[s[1]])
                v1, v5, v9, v13 = _mix(v1, v5, v9, v13, m[s[2]], m[s[3]])
                v2, v6, v10, v14 = _mix(v2, v6, v10, v14, m[s[4]], m[s[5]])
                v3, v7, v11, v15 = _mix(v3, v7, v11, v15, m[s[6]], m[s[7]])
                v0, v5, v10, v15 = _mix(v0, v5, v10, v15, m[s[8]], m[s[9]])
                v1, v6, v11, v12 = _mix(v1, v6, v11, v12, m[s[10]], m[s[11]])
                v2, v7, v8, v13 = _mix(v2, v7, v8, v13, m[s[12]], m[s[13]])
                v3, v4, v9, v14 = _mix(v3, v4, v9, v14, m[s[14]], m[s[15]])
            h[0] ^= v0 ^ v8
            h[1] ^= v1 ^ v9
            h[2] ^= v2 ^ v10
            h[3] ^= v3 ^ v11
            h[4] ^= v4 ^ v12
            h[5] ^= v5 ^ v13
            h[6] ^= v6 ^ v14
            h[7] ^= v7 ^ v15
            if last:
                break
        out[i] = h[0]
    return out


def packed_hashes(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """blake2b-64 (little-endian, as ``id_hashes``) of each packed id."""
    return blake2b64(buf, offsets, _IV, _SIGMA)


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


@numba.njit(cache=True)
def _probe(table, row_hash, offsets, buf, nrows, q_hash, q_off, q_buf, out, insert):
    mask = len(table) - 1
    for i in range(len(q_hash)):
        h = q_hash[i]
        slot = np.int64(h & np.uint64(mask))
        qs = q_off[i]
        qlen = q_off[i + 1] - qs
        found = -1
        while True:
            row = table[slot]
            if row < 0:
                break
            if row_hash[row] == h:
                start = offsets[row]
                if offsets[row + 1] - start == qlen:
                    same = True
                    for k in range(qlen):
                        if buf[start + k] != q_buf[qs + k]:
                            same = False
                            break
                    if same:
                        found = row
                        break
            slot = (slot + 1) & mask
        if found < 0 and insert:
            found = nrows
            row_hash[found] = h
            start = offsets[found]
            for k in range(qlen):
                buf[start + k] = q_buf[qs + k]
            offsets[found + 1] = start + qlen
            table[slot] = found
            nrows += 1
        out[i] = found
    return nrows


@numba.njit(cache=True)
def _rehash(table, row_hash, nrows):
    mask = len(table) - 1
    for row in range(nrows):
        slot = np.int64(row_hash[row] & np.uint64(mask))
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = row


#: The largest buffer offset kept in uint32 offsets (past it, offsets are int64).
MAX_NARROW_OFFSET = 2**32 - 1

#: The hash of a forgotten row (no id's blake2b-64 is expected to be 0: a 2**-64 chance per id).
FORGOTTEN = np.uint64(0)


class IdMap:
    """Canonical external id <-> dense row number (0, 1, 2, ... in order of first sight)."""

    MAX_LOAD = 0.7

    def __init__(self) -> None:
        self.hashes = GrowableArray(np.uint64, 0)
        self.offsets = GrowableArray(np.uint32, 0)
        self.offsets.ensure(1)
        self.buffer = GrowableArray(np.uint8, 0, capacity=16384)
        self.table = np.full(1024, -1, dtype=np.int32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _reserve(self, rows: int, nbytes: int) -> None:
        needed = self.size + rows
        if needed > self.MAX_LOAD * len(self.table):
            capacity = len(self.table)
            while needed > self.MAX_LOAD * capacity:
                capacity *= 2
            self.table = np.full(capacity, -1, dtype=np.int32)
            _rehash(self.table, self.hashes.data, self.size)
        self.hashes.ensure(needed)
        self.offsets.ensure(needed + 1)
        used = int(self.offsets.data[self.size])
        if used + nbytes > MAX_NARROW_OFFSET and self.offsets.data.dtype != np.int64:
            self.offsets.data = self.offsets.data.astype(np.int64)
        self.buffer.ensure(used + nbytes)
        # logical sizes follow the row count, not the reservation
        self.hashes.size = self.size
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
        q_buf, q_off = pack_ids(ids)
        q_hash = packed_hashes(q_buf, q_off)
        out = np.empty(len(ids), dtype=np.int64)
        before = self.size
        _probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
               q_hash, q_off, q_buf, out, False)
        missing = np.flatnonzero(out < 0)
        if len(missing) == 0:
            return out, before
        if len(missing) < len(ids):
            q_buf, q_off = _subset(q_buf, q_off, missing)
            q_hash = q_hash[missing]
        self._reserve(len(missing), len(q_buf))
        inserted = np.empty(len(missing), dtype=np.int64)
        self.size = int(_probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
                               q_hash, q_off, q_buf, inserted, True))
        out[missing] = inserted
        self.hashes.size = self.size
        self.offsets.size = self.size + 1
        self.buffer.size = int(self.offsets.data[self.size])
        return out, before

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids`` (int64), -1 where unknown."""
        q_buf, q_off = pack_ids(ids)
        q_hash = packed_hashes(q_buf, q_off)
        out = np.empty(len(ids), dtype=np.int64)
        _probe(self.table, self.hashes.data, self.offsets.data, self.buffer.data, self.size,
               q_hash, q_off, q_buf, out, False)
        return out

    def lookup_one(self, profile_id: str) -> int:
        """Row of one id, -1 if unknown (the point-lookup path: no arrays built, no kernel call)."""
        key = profile_id.encode("utf-8")
        h = int.from_bytes(blake2b(key, digest_size=8).digest(), "little")
        table, hashes, offsets, buf = self.table, self.hashes.data, self.offsets.data, self.buffer.data
        mask = len(table) - 1
        slot = h & mask
        while True:
            row = int(table[slot])
            if row < 0:
                return -1
            if int(hashes[row]) == h:
                start, end = int(offsets[row]), int(offsets[row + 1])
                if end - start == len(key) and buf[start:end].tobytes() == key:
                    return row
            slot = (slot + 1) & mask

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
        """Make the ids of ``rows`` unknown: their bytes are zeroed and their hash no longer matches.

        The rows keep their numbers (and their table slots, so probing chains stay whole); a later
        insert of a forgotten id makes a new row.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        offsets, buf = self.offsets.data, self.buffer.data
        for row in rows.tolist():
            buf[offsets[row]:offsets[row + 1]] = 0
        self.hashes.data[rows] = FORGOTTEN

    def row_hashes(self) -> np.ndarray:
        """The blake2b-64 hash of every row's id (uint64, no copy)."""
        return self.hashes.view()

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the map."""
        return self.hashes.nbytes + self.offsets.nbytes + self.buffer.nbytes + int(self.table.nbytes)

    def to_state(self, writer: StateWriter) -> dict[str, Any]:
        """The map's part of a snapshot (see engine.persist.state_io)."""
        return {"size": self.size, "hashes": writer.array(self.hashes.view()),
                "offsets": writer.array(self.offsets.view()), "buffer": writer.array(self.buffer.view()),
                "table": writer.array(self.table)}

    @classmethod
    def from_state(cls, reader: StateReader, state: dict[str, Any]) -> "IdMap":
        """A map from its part of a snapshot."""
        idmap = cls.__new__(cls)
        idmap.size = state["size"]
        idmap.hashes = GrowableArray.adopt(reader.array(state["hashes"]), 0)
        idmap.offsets = GrowableArray.adopt(reader.array(state["offsets"]), 0)
        idmap.buffer = GrowableArray.adopt(reader.array(state["buffer"]), 0)
        idmap.table = reader.array(state["table"])
        if not (len(idmap.hashes.data) == idmap.size == len(idmap.offsets.data) - 1
                and idmap.hashes.data.dtype == np.uint64 and idmap.offsets.data.dtype in (np.uint32, np.int64)
                and idmap.buffer.data.dtype == np.uint8 and idmap.table.dtype == np.int32
                and len(idmap.table) & (len(idmap.table) - 1) == 0 and idmap.size < len(idmap.table)
                and idmap.offsets.data[0] == 0 and idmap.offsets.data[-1] == len(idmap.buffer.data)
                and bool(np.all(idmap.offsets.data[1:] >= idmap.offsets.data[:-1]))
                and int(idmap.table.max()) < idmap.size):
            raise ValueError("the id map's arrays do not agree")
        return idmap
