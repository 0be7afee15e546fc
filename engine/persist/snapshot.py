"""Shard snapshots: a shard's frames as chunks of at most ~1 MB in the shard's own LMDB store.

Each shard has a store ``<data_dir>/shard-<n>/`` (database ``chunks``), opened by the process
that holds the shard (a worker opens it after it starts) and written only by it, so shards
write their snapshots in parallel without taking the log's write lock. Keys are
(snapshot id, chunk number): chunks 1..n hold the frames back to back, cut at ``MAX_VALUE``;
chunk 0, written last, is the index, msgpack ``[format, frame lengths, chunk CRCs]``, sealed.
A part is described to the coordinator by ``{"chunks", "bytes", "index_crc"}``, which goes in
the manifest; the snapshot is complete only once the coordinator has committed its manifest,
so chunks of an unfinished snapshot are ignored and pruned.

``start`` copies the shard's state (the only step that must not overlap a write) and writes it
from a background thread, so the shard keeps serving reads and writes meanwhile; ``status``
reports when the part is durable.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
import zlib
from typing import Any, Iterator

import msgpack
import numpy as np

from . import shard_state
from .errors import DataCorruption, DataDirMismatch
from .framing import MAX_VALUE, checksum, delete_current, pack_key, seal, unpack_key, unseal
from .lmdb_env import LmdbEnv, close_env, open_env

FORMAT = 1
DB = "chunks"
#: Commit (and fsync) after this many bytes, to bound the memory a write transaction holds.
COMMIT_BYTES = 256 << 20
#: Initial map of a shard store (it doubles when full).
STORE_MAP_SIZE = 1 << 30
#: Write pages in place (MDB_WRITEMAP)? Measured at 1M profiles: no faster, and the file becomes a sparse file
#: the size of the map, so no.
WRITEMAP = False
#: Seconds to wait for the previous owner of a shard store (an orphaned worker) to exit.
OWNER_WAIT_S = 10.0


class ChunkStore:
    """The snapshot chunks of one shard."""

    def __init__(self, path: str):
        self.path = path
        self.owner = own_directory(path)
        try:
            self.env: LmdbEnv = open_env(path, (DB,), STORE_MAP_SIZE, writemap=WRITEMAP)
        except BaseException:
            self.owner.close()
            raise
        self.db = self.env.db(DB)

    # -- writing ----------------------------------------------------------------------------
    def write(self, snapshot_id: int, frames: list[Any]) -> dict[str, int]:
        """Write ``frames`` as snapshot ``snapshot_id`` durably; returns the part description."""
        self.delete({snapshot_id})
        lengths = [memoryview(frame).nbytes for frame in frames]
        crcs: list[int] = []
        pending: list[tuple[bytes, Any]] = []
        pending_bytes = 0
        for number, body in enumerate(_chunks(frames), start=1):
            key = pack_key(snapshot_id, number)
            crcs.append(checksum(key, body))
            pending.append((key, body))
            pending_bytes += len(body)
            if pending_bytes >= COMMIT_BYTES:
                self._put(pending)
                pending, pending_bytes = [], 0
        index_key = pack_key(snapshot_id, 0)
        index = seal(index_key, msgpack.packb([FORMAT, lengths, crcs]))
        pending.append((index_key, index))
        self._put(pending)
        return {"chunks": len(crcs), "bytes": sum(lengths), "index_crc": zlib.crc32(index)}

    def _put(self, items: list[tuple[bytes, Any]]) -> None:
        def fill(txn: Any) -> None:
            for key, value in items:
                txn.put(key, value, db=self.db)

        self.env.write(fill)

    def delete(self, snapshot_ids: set[int] | None = None, keep: set[int] | None = None) -> int:
        """Delete the chunks of ``snapshot_ids`` (or of every snapshot not in ``keep``); returns keys deleted."""
        def prune(txn: Any) -> int:
            cursor = txn.cursor(db=self.db)
            deleted = 0
            more = cursor.first()
            while more:
                snapshot_id = unpack_key(cursor.key())[0]
                doomed = snapshot_id in snapshot_ids if snapshot_ids is not None else snapshot_id not in (keep or set())
                if doomed:
                    more = delete_current(cursor)
                    deleted += 1
                else:
                    more = cursor.set_range(pack_key(snapshot_id + 1, 0))
            return deleted

        return self.env.write(prune)

    # -- reading ----------------------------------------------------------------------------
    def read(self, snapshot_id: int, part: dict[str, int]) -> list[np.ndarray]:
        """The frames of snapshot ``snapshot_id``, verified against ``part`` (DataCorruption if damaged)."""
        where = f"snapshot {snapshot_id} in {self.path}"
        with self.env.read(buffers=True) as txn:
            index_key = pack_key(snapshot_id, 0)
            value = txn.get(index_key, db=self.db)
            if value is None:
                raise DataCorruption(f"{where}: its index chunk is missing; refusing to serve")
            body = unseal(index_key, value)
            if body is None or zlib.crc32(value) != part["index_crc"]:
                raise DataCorruption(f"{where}: its index chunk fails its checksum; refusing to serve")
            fmt, lengths, crcs = msgpack.unpackb(body)
            if fmt != FORMAT or len(crcs) != part["chunks"] or sum(lengths) != part["bytes"]:
                raise DataCorruption(f"{where}: its index does not match the manifest; refusing to serve")
            frames = [np.empty(length, dtype=np.uint8) for length in lengths]
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
            if not filler.full():
                raise DataCorruption(f"{where}: its chunks are shorter than the frames; refusing to serve")
        return frames

    def snapshot_ids(self) -> list[int]:
        """Ids of the snapshots with at least one chunk here."""
        ids: list[int] = []
        with self.env.read() as txn:
            cursor = txn.cursor(db=self.db)
            more = cursor.first()
            while more:
                ids.append(unpack_key(cursor.key())[0])
                more = cursor.set_range(pack_key(ids[-1] + 1, 0))
        return ids

    def close(self) -> None:
        """Release the LMDB environment and the ownership of the directory."""
        close_env(self.env)
        self.owner.close()


def own_directory(path: str, wait_s: float = OWNER_WAIT_S) -> Any:
    """An exclusive flock on ``path``/OWNER, waiting ``wait_s`` for a previous owner to exit.

    A worker whose coordinator was killed may still be writing its store for a moment; the next
    process to hold the shard waits for it instead of writing the same store at the same time.
    """
    os.makedirs(path, exist_ok=True)
    handle = open(os.path.join(path, "OWNER"), "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise DataDirMismatch(f"shard store {path} is in use by another process (pid {owner})") from None
            time.sleep(0.05)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _chunks(frames: list[Any]) -> Iterator[Any]:
    """The concatenation of ``frames`` cut into bodies of at most MAX_VALUE bytes (slices when possible)."""
    pending: list[memoryview] = []
    pending_bytes = 0
    for frame in frames:
        view = memoryview(frame).cast("B")
        start = 0
        while start < len(view):
            take = min(MAX_VALUE - pending_bytes, len(view) - start)
            piece = view[start : start + take]
            start += take
            if not pending and take == MAX_VALUE:
                yield piece
                continue
            pending.append(piece)
            pending_bytes += take
            if pending_bytes == MAX_VALUE:
                yield b"".join(pending)
                pending, pending_bytes = [], 0
    if pending:
        yield b"".join(pending)


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


# -- the shard side of the protocol (called through LocalShard methods) -------------------------
_stores: dict[str, ChunkStore] = {}
_stores_lock = threading.Lock()


def store_at(path: str) -> ChunkStore:
    """This process's chunk store at ``path`` (opened on first use, i.e. after a worker starts)."""
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = ChunkStore(path)
        return store


def close_store(path: str) -> None:
    """Close this process's chunk store at ``path`` (if open)."""
    with _stores_lock:
        store = _stores.pop(path, None)
    if store is not None:
        store.close()


class SnapshotJob:
    """The background write of one captured shard snapshot."""

    def __init__(self, store: ChunkStore, snapshot_id: int, frames: list[Any]):
        self.snapshot_id = snapshot_id
        self.part: dict[str, int] | None = None
        self.error: BaseException | None = None
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, args=(store, frames), name=f"snapshot-{snapshot_id}",
                                       daemon=True)
        self.thread.start()

    def _run(self, store: ChunkStore, frames: list[Any]) -> None:
        try:
            part = store.write(self.snapshot_id, frames)
            part["write_ms"] = int((time.perf_counter() - self.started) * 1000)
            self.part = part
        except BaseException as exc:  # reported by status()
            self.error = exc

    def status(self) -> dict[str, int] | None:
        """The part description once written; None while writing; raises the write's error."""
        if self.thread.is_alive():
            return None
        if self.error is not None:
            raise self.error
        return self.part


def start(shard: Any, path: str, snapshot_id: int) -> dict[str, int]:
    """Capture ``shard`` now and write it as snapshot ``snapshot_id`` under ``path`` in the background."""
    wait(shard)
    store = store_at(path)
    began = time.perf_counter()
    frames = shard_state.capture(shard)
    capture_ms = int((time.perf_counter() - began) * 1000)
    shard._snapshot_job = SnapshotJob(store, snapshot_id, frames)
    return {"bytes": sum(memoryview(f).nbytes for f in frames), "capture_ms": capture_ms}


def status(shard: Any, snapshot_id: int) -> dict[str, int] | None:
    """The written part of snapshot ``snapshot_id`` (None while it is being written)."""
    job: SnapshotJob | None = getattr(shard, "_snapshot_job", None)
    if job is None or job.snapshot_id != snapshot_id:
        raise RuntimeError(f"shard {shard.shard_id} is not writing snapshot {snapshot_id}")
    return job.status()


def load(shard: Any, path: str, snapshot_id: int, part: dict[str, int]) -> dict[str, int]:
    """Replace ``shard``'s data by snapshot ``snapshot_id`` and drop every other snapshot under ``path``."""
    began = time.perf_counter()
    wait(shard)
    store = store_at(path)
    frames = store.read(snapshot_id, part)
    read_ms = int((time.perf_counter() - began) * 1000)
    shard_state.restore(shard, frames)
    store.delete(keep={snapshot_id})
    return {"bytes": part["bytes"], "read_ms": read_ms, "load_ms": int((time.perf_counter() - began) * 1000)}


def prune(path: str, keep: list[int]) -> int:
    """Delete the chunks of every snapshot under ``path`` but ``keep``; returns keys deleted."""
    return store_at(path).delete(keep=set(keep))


def wait(shard: Any) -> None:
    """Wait for the shard's running snapshot write (if any) to end."""
    job: SnapshotJob | None = getattr(shard, "_snapshot_job", None)
    if job is not None:
        job.thread.join()


def finish(shard: Any, path: str) -> None:
    """Wait for a running snapshot write, then close the store at ``path`` in this process."""
    wait(shard)
    shard._snapshot_job = None
    close_store(path)
