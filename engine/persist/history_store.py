"""The durable store of saved segment size histories: LMDB in ``<data_dir>/history``.

Databases (owned by the coordinator's process):

- ``series``: series id (8 bytes, big-endian) -> msgpack ``[segment name, definition stamp]``;
- ``points``: series id + (time ms + 2**63) (8 + 8 bytes, big-endian, so a series' points are one
  key range in time order) -> size (8 bytes, big-endian).

A flush thread takes the operations queued by the engine's ``SizeHistory`` (engine.segment_history)
once a second and applies them in one transaction, committed with fsync: a crash (kill -9) loses
at most the points of the last second. Opening loads every series and drops, for good, those whose
segment no longer exists or has been replaced since (a delete or a replace whose flush the crash
cut off); the engine then records each segment's size after recovery, so a size that changed in
the lost second gets its point back at the recovered clock.
"""
from __future__ import annotations

import logging
import struct
import threading
from typing import Any

import msgpack

from ..segment_history import Operation, SizeHistory, SizeSeries
from .lmdb_env import LmdbEnv, close_env, open_env

log = logging.getLogger("segengine.persist")

SERIES_DB, POINTS_DB = "series", "points"
#: Seconds between two flushes.
FLUSH_EVERY_S = 1.0
#: Map size reserved for the store (virtual; grown when full).
MAP_SIZE = 1 << 30
_ID = struct.Struct(">Q")
_POINT = struct.Struct(">QQ")
_SIZE = struct.Struct(">q")
_OFFSET = 1 << 63


def point_key(ident: int, at: int) -> bytes:
    """The key of the point at ``at`` of series ``ident``."""
    return _POINT.pack(ident, at + _OFFSET)


class HistoryStore:
    """The open history store of one engine, flushing ``history`` every ``flush_every_s`` seconds."""

    def __init__(self, path: str, history: SizeHistory, flush_every_s: float = FLUSH_EVERY_S):
        self.path = path
        self.history = history
        self.env: LmdbEnv | None = open_env(path, (SERIES_DB, POINTS_DB), MAP_SIZE)
        self.flushes = 0
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, args=(flush_every_s,),
                                        name="segment-history", daemon=True)

    def load(self, current: dict[str, str]) -> None:
        """Load the stored histories of the segments ``current`` (name -> definition stamp); drop the others."""
        assert self.env is not None
        stale: list[int] = []
        with self.env.read() as txn:
            for key, value in txn.cursor(db=self.env.db(SERIES_DB)):
                ident = _ID.unpack(key)[0]
                name, stamp = msgpack.unpackb(value)
                if current.get(name) != stamp:
                    stale.append(ident)
                    continue
                times, sizes = [], []
                cursor = txn.cursor(db=self.env.db(POINTS_DB))
                if cursor.set_range(_ID.pack(ident)):
                    for point, size in cursor:
                        owner, at = _POINT.unpack(point)
                        if owner != ident:
                            break
                        times.append(at - _OFFSET)
                        sizes.append(_SIZE.unpack(size)[0])
                self.history.adopt(name, SizeSeries(ident, stamp, times, sizes))
        if stale:
            self.env.write(lambda txn: [self._drop(txn, ident) for ident in stale])

    def start(self) -> None:
        """Start the flush thread."""
        self._thread.start()

    def flush(self) -> int:
        """Apply the queued operations in one durable transaction; how many there were."""
        with self._flush_lock:
            if self.env is None:
                return 0
            ops = self.history.take_ops()
            if ops:
                try:
                    self.env.write(lambda txn: self._apply(txn, ops))
                except BaseException:
                    self.history.requeue(ops)  # the next flush tries them again
                    raise
                self.flushes += 1
            return len(ops)

    def _apply(self, txn: Any, ops: list[Operation]) -> None:
        assert self.env is not None
        points, series = self.env.db(POINTS_DB), self.env.db(SERIES_DB)
        for op in ops:
            kind = op[0]
            if kind == "put":
                txn.put(point_key(op[1], op[2]), _SIZE.pack(op[3]), db=points)
            elif kind == "delete":
                txn.delete(point_key(op[1], op[2]), db=points)
            elif kind == "start":
                txn.put(_ID.pack(op[1]), msgpack.packb([op[2], op[3]]), db=series)
            elif kind == "drop":
                self._drop(txn, op[1])
            else:
                raise ValueError(f"unknown history operation {kind!r}")

    def _drop(self, txn: Any, ident: int) -> None:
        """Delete series ``ident`` and all its points."""
        assert self.env is not None
        txn.delete(_ID.pack(ident), db=self.env.db(SERIES_DB))
        cursor = txn.cursor(db=self.env.db(POINTS_DB))
        prefix = _ID.pack(ident)
        if cursor.set_range(prefix):
            while cursor.key()[:8] == prefix:
                if not cursor.delete():
                    break

    def _flush_periodically(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the operations stay queued; the next flush tries again
                log.exception("flushing segment size history to %s failed", self.path)

    def close(self) -> None:
        """Stop the flush thread, flush what is queued and close the store (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.flush()
        finally:
            with self._flush_lock:
                if self.env is not None:
                    close_env(self.env)
                    self.env = None
