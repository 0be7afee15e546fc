"""Format-1 snapshots: a shard's frames as LMDB values of at most ~1 MB (database ``chunks``).

Data directories written before format 2 (``engine.persist.snapshot``) hold their snapshots
here; ``ShardStore`` reads them through ``ChunkStore`` and drops the store once a format-2
snapshot replaces it. Keys are (snapshot id, chunk number): chunks 1..n hold the frames back to
back, cut at ``MAX_VALUE``; chunk 0, written last, is the index, msgpack ``[format, frame
lengths, chunk CRCs]``, sealed.
"""
from __future__ import annotations

from typing import Any, Iterator

import msgpack
import numpy as np

from .errors import DataCorruption
from .framing import MAX_VALUE, checksum, crc32, delete_current, pack_key, seal, unpack_key, unseal
from .lmdb_env import LmdbEnv, open_env

LEGACY_FORMAT = 1
DB = "chunks"
#: Commit (and fsync) after this many bytes, to bound the memory a write transaction holds.
COMMIT_BYTES = 256 << 20
#: Initial map of a format-1 store (it doubles when full).
STORE_MAP_SIZE = 1 << 30


class ChunkStore:
    """The format-1 snapshot chunks of one shard (read for older data directories; ``write`` kept for tests)."""

    def __init__(self, path: str):
        self.path = path
        self.env: LmdbEnv = open_env(path, (DB,), STORE_MAP_SIZE)
        self.db = self.env.db(DB)

    def write(self, snapshot_id: int, frames: list[Any]) -> dict[str, int]:
        """Write ``frames`` (one buffer each) as format-1 snapshot ``snapshot_id``; returns the part description."""
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
        index = seal(index_key, msgpack.packb([LEGACY_FORMAT, lengths, crcs]))
        pending.append((index_key, index))
        self._put(pending)
        return {"chunks": len(crcs), "bytes": sum(lengths), "index_crc": crc32(index)}

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

    def read(self, snapshot_id: int, part: dict[str, int]) -> list[np.ndarray]:
        """The frames of snapshot ``snapshot_id``, verified against ``part`` (DataCorruption if damaged)."""
        where = f"snapshot {snapshot_id} in {self.path}"
        with self.env.read(buffers=True) as txn:
            index_key = pack_key(snapshot_id, 0)
            value = txn.get(index_key, db=self.db)
            if value is None:
                raise DataCorruption(f"{where}: its index chunk is missing; refusing to serve")
            body = unseal(index_key, value)
            if body is None or crc32(value) != part["index_crc"]:
                raise DataCorruption(f"{where}: its index chunk fails its checksum; refusing to serve")
            fmt, lengths, crcs = msgpack.unpackb(body)
            if fmt != LEGACY_FORMAT or len(crcs) != part["chunks"] or sum(lengths) != part["bytes"]:
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
