"""A shard's snapshot parts as checksummed chunks in the shard's LMDB store.

The store is ``<data_dir>/shard-<n>/`` (``data.mdb``, database ``chunks``), opened with
``writemap`` by the process that owns the shard; the snapshot after an erasure is written into a
new store, ``<data_dir>/shard-<n>/fresh/`` (``write_fresh``), which then replaces it
(engine/persist/snapshot.py). Keys are (snapshot id, chunk number), big-endian
(``framing.pack_key``), so a snapshot's chunks are consecutive and in order:

- chunks 1..n: the frames of the captured part (``state_io``) back to back, cut into values
  of at most ``framing.MAX_VALUE`` bytes (256 LMDB pages exactly); the CRC-32 of each chunk is
  taken over its key and its bytes, so a flipped byte, a cut value or a value under another key
  is found;
- chunk 0, the **index**, sealed (``framing.seal``): msgpack ``[format, frame lengths, chunk CRCs]``.

A piece of a frame of at least a chunk's size starts a new chunk (the chunk before it may then be
short), so every full chunk is a slice of the captured memory, put without an intermediate copy.
The concatenation of chunks 1..n is the concatenation of the frames, which is all a reader needs.
The index names the part's format: 4 (``state_io``), or 1 and 3 (pickles, read by ``migrate``
only; format 1 cut every chunk full).

**Writing** (``write``) is one write transaction: for each chunk, its CRC, then
``put(append=True)`` straight from the captured memory (LMDB copies it into the map: with
``writemap`` that is the only copy), then the index, then the commit (msync of the map, then the
meta page). The snapshot is complete only once the coordinator commits its manifest, so an
uncommitted one is just deleted later. **Deleting** (``delete``) frees the chunks' pages; LMDB
reuses a freed page only once a transaction *after* the freeing one has committed (the one
before it must stay readable), so a small second transaction follows every deletion: the next
snapshot then writes into the pages of the one before last, which are in the page cache, and the
file stays at two snapshots' worth. **Reading** (``read``) is one read transaction: every
chunk's CRC is verified on LMDB's memory, then the chunk is copied into a fresh array per frame.
A large frame gets an anonymous mapping of its own, populated as it is made (``MAP_POPULATE``),
without asking for transparent huge pages. Measured on this project's VM, whose freed memory
goes back to its host, in a fresh process: filling 650 MB so takes 0.25-0.28 s, faulted in page
by page 0.45-0.55 s, with huge pages (``np.empty`` asks for them from 4 MiB on; compacting memory
for them is what costs) 0.35-1.8 s; reading a 650 MB part 0.41-0.44 s against 2.0-3.1 s.

With ``writemap`` a write into a hole of the (sparse) data file that finds the disk full would be
a SIGBUS, not an error: before a write, disk blocks are reserved for the snapshot past the last
used page (``fallocate``; ENOSPC fails the snapshot cleanly), and what the write did not use is
given back after it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import shutil
import threading
from typing import Any, Iterator

import msgpack
import numpy as np

from .errors import DataCorruption
from .framing import MAX_VALUE, checksum, crc32, delete_current, pack_key, seal, unpack_key, unseal
from .lmdb_env import DEFAULT_MAP_SIZE, LmdbEnv, close_env, open_env, sync_directory
from .state_io import FORMAT as STATE_FORMAT

FORMAT = STATE_FORMAT
#: The subdirectory of a shard's directory that a snapshot after an erasure is written into.
FRESH_DIR = "fresh"
#: Formats of parts holding pickles (read by ``migrate`` only); a part without a format is format 1.
LEGACY_FORMAT = 1
LEGACY_FORMATS = (LEGACY_FORMAT, 3)
DB = "chunks"
#: Largest chunk (a full chunk fills 256 LMDB pages of 4 KiB).
CHUNK_BYTES = MAX_VALUE
#: Map reserved for a shard store up front (address space; the data file is sparse), doubled when full.
MAP_SIZE = DEFAULT_MAP_SIZE
#: Reserve disk blocks before writing a snapshot (see the module docstring)?
RESERVE = True
#: Frames of at least this many bytes are read into a populated mapping of their own (see the docstring).
OWN_MAPPING_BYTES = 1 << 20
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: Key written and deleted again to commit a transaction after a deletion (no snapshot has id 0).
_ADVANCE_KEY = pack_key(0, 0)


class ChunkStore:
    """The snapshot chunks of one shard directory (this process owns the directory)."""

    @property
    def db(self) -> Any:
        """The chunks database (its handle follows a compacted environment)."""
        return self.env.db(DB)

    def __init__(self, path: str, map_size: int = MAP_SIZE):
        self.path = path
        self.env: LmdbEnv = open_env(path, (DB,), map_size, writemap=True)
        self._stage = memoryview(bytearray(CHUNK_BYTES))  # joins small pieces into one chunk
        self._lock = threading.Lock()  # one writer or deleter at a time (the reserve is outside LMDB)

    # -- writing ----------------------------------------------------------------------------
    def write(self, snapshot_id: int, frames: list[list[Any]], fmt: int = FORMAT) -> dict[str, int]:
        """Write ``frames`` (each a list of bytes-like pieces) as snapshot ``snapshot_id`` of format ``fmt``
        durably; returns the part description ``{"format", "chunks", "bytes", "index_crc"}``."""
        lengths = [sum(memoryview(piece).nbytes for piece in pieces) for pieces in frames]
        index_key = pack_key(snapshot_id, 0)

        def fill(txn: Any) -> tuple[list[int], bytes]:
            cursor = txn.cursor(db=self.db)
            more = cursor.set_range(index_key)  # leftovers of an attempt never committed: appends go last
            while more:
                more = delete_current(cursor)
            crcs: list[int] = []
            for number, body in enumerate(self._chunks(frames), start=1):
                key = pack_key(snapshot_id, number)
                crcs.append(checksum(key, body))
                if not txn.put(key, body, db=self.db, append=True):
                    raise RuntimeError(f"{self.path}: chunk {number} of snapshot {snapshot_id} is out of key order")
            index = seal(index_key, msgpack.packb([fmt, lengths, crcs]))
            txn.put(index_key, index, db=self.db)
            return crcs, index

        with self._lock:
            reserved = self._reserve(sum(lengths)) if RESERVE else None
            try:
                crcs, index = self.env.write(fill)
            finally:
                if reserved is not None:
                    self._give_back(reserved)
        return {"format": fmt, "chunks": len(crcs), "bytes": sum(lengths), "index_crc": crc32(index)}

    def _chunks(self, frames: list[list[Any]]) -> Iterator[memoryview]:
        """The frames back to back in chunks of at most CHUNK_BYTES: a piece of at least a chunk's size
        starts a chunk and its full chunks are slices of it; the rest is joined in a staging buffer
        (reused: a chunk is valid until the next one is asked for)."""
        stage, staged = self._stage, 0
        for pieces in frames:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                at = 0
                if len(view) >= CHUNK_BYTES:
                    if staged:
                        yield stage[:staged]
                        staged = 0
                    while len(view) - at >= CHUNK_BYTES:
                        yield view[at : at + CHUNK_BYTES]
                        at += CHUNK_BYTES
                while at < len(view):
                    take = min(CHUNK_BYTES - staged, len(view) - at)
                    stage[staged : staged + take] = view[at : at + take]
                    staged += take
                    at += take
                    if staged == CHUNK_BYTES:
                        yield stage
                        staged = 0
        if staged:
            yield stage[:staged]

    def _reserve(self, nbytes: int) -> tuple[int, int] | None:
        """Allocate disk blocks for ``nbytes`` (and LMDB's pages around them) past the last used page;
        the reserved range, or None where the file system cannot (then nothing is reserved)."""
        start = self.env.used_bytes()
        length = -(-(nbytes + nbytes // 16 + (4 << 20)) // 4096) * 4096
        try:
            _fallocate(os.path.join(self.path, "data.mdb"), _KEEP_SIZE, start, length)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no room on disk for a snapshot of {nbytes} bytes in {self.path}") from exc
            return None
        return start, start + length

    def _give_back(self, reserved: tuple[int, int]) -> None:
        """Free the reserved blocks past the (new) last used page (best effort)."""
        start = max(self.env.used_bytes(), reserved[0])
        if start < reserved[1]:
            try:
                _fallocate(os.path.join(self.path, "data.mdb"), _KEEP_SIZE | _PUNCH_HOLE, start, reserved[1] - start)
            except OSError:
                pass

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, keep: set[int]) -> int:
        """Delete the chunks of every snapshot not in ``keep``; returns the keys deleted."""
        def prune(txn: Any) -> int:
            cursor = txn.cursor(db=self.db)
            deleted = 0
            more = cursor.first()
            while more:
                snapshot_id = unpack_key(cursor.key())[0]
                if snapshot_id in keep:
                    more = cursor.set_range(pack_key(snapshot_id + 1, 0))
                else:
                    more = delete_current(cursor)
                    deleted += 1
            return deleted

        def advance(txn: Any) -> None:
            txn.put(_ADVANCE_KEY, b"", db=self.db)
            txn.delete(_ADVANCE_KEY, db=self.db)

        with self._lock:
            deleted = self.env.write(prune)
            if deleted:
                self.env.write(advance)  # so the next write may reuse the pages just freed
        return deleted

    # -- reading ----------------------------------------------------------------------------
    def read(self, snapshot_id: int, part: dict[str, Any]) -> list[np.ndarray]:
        """The frames of snapshot ``snapshot_id`` (fresh arrays), verified against ``part``
        (DataCorruption naming the store and the chunk if anything is damaged or missing)."""
        where = f"snapshot {snapshot_id} in {self.path}"
        fmt = part.get("format", LEGACY_FORMAT)
        with self.env.read(buffers=True) as txn:
            index_key = pack_key(snapshot_id, 0)
            value = txn.get(index_key, db=self.db)
            if value is None:
                raise DataCorruption(f"{where}: its index (chunk 0) is missing; refusing to serve")
            body = unseal(index_key, value)
            if body is None or crc32(value) != part["index_crc"]:
                raise DataCorruption(f"{where}: its index (chunk 0) fails its checksum; refusing to serve")
            written, lengths, crcs = msgpack.unpackb(body)
            if written != fmt or len(crcs) != part["chunks"] or sum(lengths) != part["bytes"]:
                raise DataCorruption(f"{where}: its index does not match the manifest; refusing to serve")
            frames = [_fresh(length) for length in lengths]
            filler = _Filler(frames)
            cursor = txn.cursor(db=self.db)
            more = cursor.set_key(pack_key(snapshot_id, 1)) if crcs else False
            for number, crc in enumerate(crcs, start=1):
                key = pack_key(snapshot_id, number)
                if not more or bytes(cursor.key()) != key:
                    raise DataCorruption(f"{where}: chunk {number} of {len(crcs)} is missing; refusing to serve")
                value = cursor.value()
                if checksum(key, value) != crc:
                    raise DataCorruption(f"{where}: chunk {number} of {len(crcs)} fails its checksum; "
                                         f"refusing to serve")
                if not filler.add(value):
                    raise DataCorruption(f"{where}: chunk {number} is longer than the frames; refusing to serve")
                more = cursor.next()
            if more and unpack_key(cursor.key())[0] == snapshot_id:
                raise DataCorruption(f"{where}: it has chunks past its last one ({len(crcs)}); refusing to serve")
            if not filler.full():
                raise DataCorruption(f"{where}: its chunks are shorter than the frames; refusing to serve")
        return frames

    def snapshot_ids(self) -> list[int]:
        """Ids of the snapshots with at least one chunk here (complete or not committed)."""
        ids: list[int] = []
        with self.env.read() as txn:
            cursor = txn.cursor(db=self.db)
            more = cursor.first()
            while more:
                ids.append(unpack_key(cursor.key())[0])
                more = cursor.set_range(pack_key(ids[-1] + 1, 0))
        return ids

    def close(self) -> None:
        """Release this process's handle on the store."""
        close_env(self.env)


def write_fresh(path: str, snapshot_id: int, frames: list[list[Any]], fmt: int = FORMAT) -> dict[str, int]:
    """Write ``frames`` as snapshot ``snapshot_id`` into a new store at ``path`` (deleted first if
    there), durably: the store's commit, then its directory entries (``sync_directory``)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    store = ChunkStore(path)
    try:
        part = store.write(snapshot_id, frames, fmt)
    finally:
        store.close()
    sync_directory(path)
    sync_directory(os.path.dirname(path.rstrip(os.sep)))
    return part


def _fresh(length: int) -> np.ndarray:
    """A writable uint8 array of ``length`` bytes for a frame read back (see the module docstring)."""
    if length < OWN_MAPPING_BYTES:
        return np.empty(length, dtype=np.uint8)
    region = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return np.frombuffer(region, dtype=np.uint8)  # unmapped with the last array that refers to it


class _Filler:
    """Copies consecutive chunk bodies into consecutive frames."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames = frames
        self.frame = 0
        self.offset = 0

    def add(self, value: Any) -> bool:
        source = np.frombuffer(value, dtype=np.uint8)
        position = 0
        while position < len(source):
            while self.frame < len(self.frames) and self.offset == len(self.frames[self.frame]):
                self.frame, self.offset = self.frame + 1, 0
            if self.frame == len(self.frames):
                return False
            target = self.frames[self.frame]
            take = min(len(target) - self.offset, len(source) - position)
            target[self.offset : self.offset + take] = source[position : position + take]
            self.offset += take
            position += take
        return True

    def full(self) -> bool:
        while self.frame < len(self.frames) and self.offset == len(self.frames[self.frame]):
            self.frame, self.offset = self.frame + 1, 0
        return self.frame == len(self.frames)


# -- fallocate(2) (os.posix_fallocate would emulate it by writing zeros where unsupported) ----------
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE
_PUNCH_HOLE = 0x02  # FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate_call = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate_call is not None:
    _fallocate_call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(name: str, mode: int, offset: int, length: int) -> None:
    """``fallocate(fd, mode, offset, length)`` on the file ``name`` (OSError on failure)."""
    if _fallocate_call is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
    try:
        if _fallocate_call(fd, mode, offset, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
