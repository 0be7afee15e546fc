"""A durable engine's data directory: opening and recovery, the durable write path, snapshots.

Layout of ``data_dir``::

    LOCK            flock held by the engine that has the directory open
    schema.json     the schema (also in the layout record; read by ``segengine serve --data-dir``)
    log/            LMDB, owned by the coordinator: ``wal`` (write-ahead log), ``meta`` (layout, manifest)
    shard-<n>/      LMDB, owned by the process holding shard n: database ``chunks``, its part of
                    the current snapshot (see ``snapshot`` and ``chunk_store``)
    destinations/   LMDB, owned by the coordinator: webhook destinations and their positions
                    (``engine.destinations.store``; opened through ``Coordinator.restore_destinations``)

Opening checks the layout (schema and shard count), then every shard recovers itself in its
own process, in parallel (``recovery.recover_shard``: newest snapshot part, then its share of
the log after it), the log is cut back after its last valid record (a torn tail), the saved
segment catalog is rebuilt from the shards, and the write pipeline starts.

A snapshot pauses the applier only while the shards capture their state (copying what writes
change in place, referencing the event runs, which never change); the shards then write
their parts in the background while writes go on. The manifest (snapshot id, the log sequence
number it includes, the parts) is committed last, in the log transaction that also truncates
the log up to that sequence number, so a crash at any moment leaves either the old snapshot and
its log or the new snapshot and the shorter log.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Protocol

from ..commands import COORDINATOR_KINDS, Command, UpdateSchema
from ..concurrency import PublishLock
from ..errors import DataCorruption, DataDirMismatch, ShardError
from ..schema import Schema
from ..shard.group import ShardGroup
from . import meta, records
from .lmdb_env import DEFAULT_MAP_SIZE, LmdbEnv, close_env, open_env
from .pipeline import WritePipeline
from .recovery import log_path
from .wal import DB as WAL_DB
from .wal import LogScan, WriteAheadLog

log = logging.getLogger("segengine.persist")

#: Default automatic snapshot triggers: this long since the last one (if anything was written),
#: or this many bytes of log written since the last one.
SNAPSHOT_EVERY_S = 600.0
SNAPSHOT_LOG_BYTES = 256 << 20
#: Times a logged write is sent to the shards when workers die under it.
RESEND_ATTEMPTS = 3


class Coordinator(Protocol):
    """What a data directory needs of the engine it makes durable."""

    schema: Schema
    n_shards: int
    shards: ShardGroup
    publish: PublishLock  # held for writing by ``apply``; a snapshot's capture excludes writers

    def apply(self, command: Command, seq: int) -> Any:
        """Apply logged ``command`` (log record ``seq``) to the shards and the catalog; its result."""

    def restore_catalog(self, infos: list[dict[str, Any]]) -> None:
        """Take the saved-segment definitions of a recovered shard."""

    def adopt_schema(self, schema: Schema) -> None:
        """Take the schema the shards recovered to (it extends the engine's)."""

    def restore_destinations(self, data_dir: str, logged: Callable[[int], list[tuple[int, Command]]]) -> None:
        """Open the destinations kept under ``data_dir``; ``logged(after)``: the coordinator's commands
        logged after record ``after``."""

    def compact_destinations(self) -> dict[str, int] | None:
        """Rewrite the destinations' store without its free pages."""


class DataDir:
    """The open data directory of one engine (see the module docstring)."""

    @property
    def meta_db(self) -> Any:
        """The meta database (its handle follows a compacted environment)."""
        return self.env.db(meta.DB)

    erased_at = 0  # the last log record that erased profiles and no snapshot has compacted for yet

    def __init__(self, engine: Coordinator, path: str, snapshot_every_s: float | None = SNAPSHOT_EVERY_S,
                 snapshot_log_bytes: int | None = SNAPSHOT_LOG_BYTES, map_size: int = DEFAULT_MAP_SIZE):
        self.engine = engine
        self.path = os.path.abspath(path)
        self.snapshot_every_s = snapshot_every_s
        self.snapshot_log_bytes = snapshot_log_bytes
        self.manifest: dict[str, Any] | None = None
        self.layout_schema = ""  # the schema the layout records (canonical JSON text)
        self.recovery: dict[str, Any] = {}
        self.pipeline: WritePipeline | None = None
        self.env: LmdbEnv | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self._lock_file: Any = lock_directory(self.path)
        self._snapshot_lock = threading.Lock()
        self._stop = threading.Event()
        self._periodic: threading.Thread | None = None
        self._log_bytes_at_snapshot = 0
        self._last_snapshot_at = time.monotonic()
        self._respawns = engine.shards.respawns()
        try:
            self.env = open_env(log_path(self.path), (WAL_DB, meta.DB), map_size)
            self.wal = WriteAheadLog(self.env)
            self._open_layout()
            self._recover()
        except BaseException:
            self._release()
            raise
        if snapshot_every_s or snapshot_log_bytes:
            self._periodic = threading.Thread(target=self._snapshot_periodically, name="snapshots", daemon=True)
            self._periodic.start()

    # -- opening ----------------------------------------------------------------------------
    def _open_layout(self) -> None:
        schema, shards = self.engine.schema, self.engine.n_shards
        with self.env.read() as txn:
            layout = meta.read_layout(txn, self.meta_db, self.path)
            has_log = self.wal.first_seq(txn) or meta.latest_manifest(txn, self.meta_db, self.path)
        if layout is not None:
            meta.check_layout(layout, shards, self.path)
            meta.widest_schema(layout, schema, self.path)  # refuses a schema that neither extends the other
            self.layout_schema = layout["schema"]
            return
        if has_log:
            raise DataCorruption(f"data directory {self.path} has a log but no layout record; refusing to serve")
        self.env.write(self._store_layout(schema))

    def _recover(self) -> None:
        began = time.perf_counter()
        with self.env.read() as txn:
            self.manifest = meta.latest_manifest(txn, self.meta_db, self.path)
            after = self.manifest["wal_seq"] if self.manifest else 0
            first = self.wal.first_seq(txn)
        if first > after + 1:
            raise DataCorruption(f"data directory {self.path}: the log starts at record {first} but the snapshot "
                                 f"includes records up to {after} only; records are missing. Refusing to serve")
        shards = self.engine.shards.call_all("recover", self.path)
        ends = {info.get("log_end", 0) for info in shards}
        if len(ends) != 1:
            raise DataCorruption(f"data directory {self.path}: shards recovered to different log ends {sorted(ends)}")
        end = ends.pop()
        cut = self.wal.cut_from(end + 1)
        if cut:
            log.warning("data directory %s: cut a torn log tail after record %d (%d keys)", self.path, end, cut)
        schemas = {json.dumps(info["schema"], sort_keys=True) for info in shards if "schema" in info}
        if len(schemas) > 1:
            raise DataCorruption(f"data directory {self.path}: shards recovered to different schemas")
        if schemas:
            self.engine.adopt_schema(Schema.from_dict(json.loads(schemas.pop())))
        self.engine.restore_catalog(self.engine.shards.call_all("segment_infos")[0])
        self.engine.restore_destinations(self.path, self.coordinator_commands)
        self.recovery = {"snapshot_id": self.manifest["id"] if self.manifest else None, "log_end": end,
                         "torn_tail_cut": cut, "shards": shards, "seconds": time.perf_counter() - began}
        if end > after:  # the log may hold an erasure of an earlier run: the next snapshot compacts
            self.erased_at = end
        with self.env.read() as txn:
            interrupted = meta.compaction_pending(txn, self.meta_db)
        if interrupted:  # a crash after an erasure's snapshot, before the compaction that follows it
            self._compact_after_erasure(after)
        self.pipeline = WritePipeline(self.env, end + 1, self._apply)
        self.pipeline.bytes_logged = max(info.get("log_bytes", 0) for info in shards)

    def coordinator_commands(self, after: int) -> list[tuple[int, Command]]:
        """(seq, command) of the logged commands after record ``after`` that the coordinator alone applies
        (the log before the snapshot is gone: what the coordinator applied before it was stored then)."""
        after = max(after, self.manifest["wal_seq"] if self.manifest else 0)
        with self.env.read() as txn:
            return [(record.seq, records.decode(record.kind, record.body))
                    for record in LogScan(txn, self.env.db(WAL_DB), self.env.path, after)
                    if record.kind in COORDINATOR_KINDS]

    # -- writes -----------------------------------------------------------------------------
    def write(self, command: Command) -> Any:
        """Log ``command`` durably (group commit), have the engine apply it in log order; its result."""
        return self.submit(command).wait()

    def submit(self, command: Command) -> Any:
        """Queue ``command`` for the log; the ticket's ``wait()`` returns its result once durable and applied."""
        return self.pipeline.submit(command.kind, command, records.encode(command))

    def _apply(self, kind: str, command: Command, seq: int) -> Any:
        result = self.engine.apply(command, seq)
        if isinstance(command, UpdateSchema):
            self.pipeline.run_in_log(self._store_layout(self.engine.schema))
        return result

    @property
    def schema_unlogged(self) -> bool:
        """True if the engine's schema extends the one the layout records (opened with added names)."""
        return self.layout_schema != meta.schema_text(self.engine.schema)

    def _store_layout(self, schema: Schema) -> Callable[[Any], None]:
        """A log transaction that records ``schema`` in the layout (and writes schema.json)."""
        record = meta.layout_record(schema, self.engine.n_shards)
        _write_file(os.path.join(self.path, "schema.json"), json.dumps(schema.to_dict(), indent=2, sort_keys=True))
        self.layout_schema = meta.schema_text(schema)

        def put(txn: Any) -> None:
            txn.put(meta.LAYOUT_KEY, record, db=self.meta_db)

        return put

    def send(self, calls: list[tuple | None]) -> list[Any]:
        """Send the shards their ``apply_logged`` calls of a logged write; after a worker died, reload it
        and send again.

        ``apply_logged`` is idempotent per sequence number, so sending again only reaches the
        shards that did not apply the write (a respawned worker has replayed it from the log).
        """
        self._reload_respawned()
        for attempt in range(RESEND_ATTEMPTS):
            try:
                return self.engine.shards.call_each("apply_logged", calls)
            except ShardError:
                if attempt == RESEND_ATTEMPTS - 1 or not self._reload_respawned():
                    raise
        raise AssertionError("unreachable")

    def _reload_respawned(self) -> bool:
        """Recover every shard whose worker was respawned since we last looked; True if any.

        Called before every logged write and snapshot, under the applier: a worker respawned by a
        failed query comes back empty unless it recovered itself when it started (then this is a
        no-op), and must not take writes or be snapshotted before it is reloaded.
        """
        found = False
        for shard_no, respawns in enumerate(self.engine.shards.respawns()):
            if respawns != self._respawns[shard_no]:
                log.warning("shard %d was respawned; reloading it from %s", shard_no, self.path)
                only = [None] * len(self._respawns)
                only[shard_no] = (self.path,)
                self.engine.shards.call_each("recover", only)
                self._respawns[shard_no] = respawns
                found = True
        return found

    def log_bytes(self) -> int:
        """Bytes logged since the last snapshot."""
        return self.pipeline.bytes_logged - self._log_bytes_at_snapshot

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Snapshot every shard, commit the manifest and truncate the log up to it; returns a summary."""
        with self._snapshot_lock:
            began = time.perf_counter()
            snapshot_id = (self.manifest["id"] if self.manifest else 0) + 1
            shards = self.engine.shards
            with self.pipeline.paused() as seq, self.engine.publish.excluding_writers():  # reads go on
                self._reload_respawned()
                paused_at = time.perf_counter()
                logged_at = self.pipeline.bytes_logged
                fresh = self._erasure_before(seq)  # written into new stores: no free page holds an erased id
                captured = shards.call_all("snapshot_capture", self.path, snapshot_id, fresh)
            paused_s = time.perf_counter() - paused_at
            parts = self._wait_for_parts(snapshot_id)
            manifest = {"id": snapshot_id, "wal_seq": seq, "shards": len(parts), "parts": parts,
                        "created_ms": time.time_ns() // 1_000_000, "bytes": sum(p["bytes"] for p in parts)}

            def commit(txn: Any) -> int:
                meta.put_manifest(txn, self.meta_db, manifest)
                if fresh:
                    meta.mark_compaction(txn, self.meta_db, True)
                return self.wal.truncate(txn, seq)

            truncated = self.pipeline.run_in_log(commit)
            self.manifest = manifest
            self._log_bytes_at_snapshot = logged_at
            self._last_snapshot_at = time.monotonic()
            # after an erasure, the small stores are compacted first: the replaced shard files are then freed
            # (in the background) with no fsync of this call waiting behind that
            compacted = self._compact_after_erasure(seq) if fresh else None
            shards.call_all("snapshot_prune", self.path, [snapshot_id])  # a fresh store replaces the old one
            self.last_snapshot = {
                "id": snapshot_id, "wal_seq": seq, "bytes": manifest["bytes"], "paused_s": round(paused_s, 4),
                "pause_wait_s": round(paused_at - began, 4),
                "capture_ms": [c["capture_ms"] for c in captured], "write_ms": [p.get("write_ms", 0) for p in parts],
                "copied_bytes": sum(c.get("copied_bytes", 0) for c in captured),
                "copy_ms": [c.get("copy_ms", 0) for c in captured],
                "in_place": [c.get("in_place", 0) for c in captured],
                "forked": [c.get("forked", 0) for c in captured],
                "fork_ms": [c.get("fork_ms", 0) for c in captured],
                "capture_new_memory_bytes": sum(c.get("new_memory_bytes", 0) for c in captured),
                "seconds": round(time.perf_counter() - began, 4), "log_keys_truncated": truncated,
                "compacted": compacted}
            return dict(self.last_snapshot)

    def note_erasure(self, seq: int) -> None:
        """Log record ``seq`` erased profiles: the next snapshot that includes it is written into fresh
        shard stores and compacts the log's and the destinations' stores."""
        self.erased_at = max(self.erased_at, seq)

    def _erasure_before(self, seq: int) -> bool:
        """True if a log record up to ``seq`` erased profiles that no snapshot has cleared from disk yet."""
        return bool(self.erased_at) and self.erased_at <= seq

    def _compact_after_erasure(self, seq: int) -> dict[str, Any]:
        """After a snapshot that includes an erasure, written into fresh shard stores (the log records
        naming the erased ids are truncated, the old shard stores replaced): rewrite the log's store
        and the destinations' stores without their free pages."""
        began = time.perf_counter()
        log_store = self.env.compact()
        destinations = self.engine.compact_destinations()
        self.env.write(lambda txn: meta.mark_compaction(txn, self.meta_db, False))
        if self.erased_at <= seq:
            self.erased_at = 0
        return {"log": log_store, "destinations": destinations, "seconds": round(time.perf_counter() - began, 4)}

    def _wait_for_parts(self, snapshot_id: int) -> list[dict[str, int]]:
        delay = 0.002
        while True:
            parts = self.engine.shards.call_all("snapshot_status", snapshot_id)
            if all(part is not None for part in parts):
                return [dict(part) for part in parts]
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _snapshot_periodically(self) -> None:
        tick = min(1.0, self.snapshot_every_s or 1.0)
        while not self._stop.wait(tick):
            size = self.log_bytes()
            due_by_time = (self.snapshot_every_s is not None and size > 0
                           and time.monotonic() - self._last_snapshot_at >= self.snapshot_every_s)
            due_by_size = self.snapshot_log_bytes is not None and size >= self.snapshot_log_bytes
            if due_by_time or due_by_size:
                try:
                    self.snapshot()
                except Exception:  # keep serving: the log still holds every write
                    log.exception("periodic snapshot of %s failed", self.path)

    def stats(self) -> dict[str, Any]:
        """The state of the log and the snapshots."""
        return {"data_dir": self.path, "snapshot_id": self.manifest["id"] if self.manifest else None,
                "snapshot_wal_seq": self.manifest["wal_seq"] if self.manifest else 0,
                "wal_next_seq": self.pipeline.next_seq, "wal_bytes_since_snapshot": self.log_bytes(),
                "wal_commits": self.pipeline.commits, "last_snapshot": self.last_snapshot,
                "recovery_s": self.recovery.get("seconds")}

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop snapshots, finish queued writes, close the stores and release the directory."""
        self._stop.set()
        if self._periodic is not None:
            self._periodic.join()
        with self._snapshot_lock:
            if self.pipeline is not None:
                self.pipeline.close()
            self._release()

    def _release(self) -> None:
        try:
            self.engine.shards.call_all("snapshot_close", self.path)
        except Exception:  # a dead worker has nothing to close
            log.debug("closing the shards' snapshot stores failed", exc_info=True)
        if self.env is not None:
            close_env(self.env)
            self.env = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def lock_directory(path: str) -> Any:
    """Take the exclusive lock of data directory ``path`` (DataDirMismatch naming the holder's pid if taken);
    the open lock file, held until closed."""
    os.makedirs(path, exist_ok=True)
    handle = open(os.path.join(path, "LOCK"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirMismatch(f"data directory {path} is in use by another engine (pid {owner})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
