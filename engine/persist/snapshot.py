"""Shard snapshots: each shard writes its part into its own LMDB store, in the background.

Each shard has a directory ``<data_dir>/shard-<n>/``, owned (``OWNER`` flock) and written only by
the process that holds the shard, so shards write their snapshots in parallel without taking the
log's write lock. The directory is an LMDB store (``chunk_store``: database ``chunks``, keys
(snapshot id, chunk number), values of at most ~1 MB, a CRC-32 per chunk and a sealed index). A
part is described to the coordinator by ``{"format", "chunks", "bytes", "index_crc"}``, which goes
in the manifest; the snapshot is complete only once the coordinator has committed its manifest
(with the log position it includes), so the chunks of an unfinished snapshot are ignored, and
deleted by the next ``prune``. The shard's store and running job are in its ``ShardPersistence``.

**Writing** (``start``): the shard's state is captured (the only step that must not overlap a
write) and written into the store in one write transaction in the background (the shard keeps
serving reads and writes meanwhile); only once it is committed does ``status`` report the part.
By default (``WRITER``) the capture is a ``fork()`` and the child serialises and writes the state
of that instant (``forked_writer``); otherwise arrays that writes change are copied into a
``CaptureArena`` kept from one snapshot to the next, event runs are referenced, bitmaps are
serialised (``shard_state``), and a thread writes the copy (``SnapshotJob``). ``prune`` (after the manifest is committed) deletes the previous snapshot, whose pages
the next snapshot reuses.

**After an erasure** (``start`` with ``fresh``): the part is written into a new LMDB store,
``<data_dir>/shard-<n>/fresh/``, instead of the shard's store, whose free pages still hold the
bytes of erased profiles. Once the manifest is committed, ``prune`` promotes it: its data file is
renamed over the shard's ``data.mdb`` (``ShardStore.settle_fresh``), which replaces every page written
before, with no copy of the live snapshot. A crash between the manifest's commit and the rename
is finished by ``load``, which promotes a fresh store holding the manifest's snapshot and deletes
one that does not (an unfinished write).

**Loading** (``load``): every chunk is verified and copied into fresh arrays (one per frame),
which the shard's state is restored from (format 4, ``state_io``); the store's memory is never
referred to afterwards. A part of format 1 or 3 (pickles) is refused with ``DataDirMismatch``
naming ``segengine migrate DIR``, which converts it (``migrate``); format 2 is refused.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..priority import lower_thread_priority
from ..store.event_rows import compact as compact_events
from . import shard_state
from .arena import CaptureArena
from .chunk_store import FORMAT, FRESH_DIR, LEGACY_FORMAT, LEGACY_FORMATS, ChunkStore, write_fresh
from .errors import DataCorruption, DataDirMismatch
from .forked_writer import ForkedSnapshotJob
from .lmdb_env import replace_file
from .shard_persistence import PartJob, ShardPersistence

if TYPE_CHECKING:
    from ..shard.local import LocalShard

log = logging.getLogger("segengine")

#: Memory a capture leaves available (bytes): past it, the capture references what it would copy.
COPY_RESERVE = 2 << 30
#: Seconds to wait for the previous owner of a shard directory (an orphaned worker) to exit.
OWNER_WAIT_S = 10.0
#: How much lower the OS priority of the thread writing a snapshot part is (``SEGENGINE_SNAPSHOT_NICE``
#: overrides it; 0 keeps the serving threads' priority). See ``SnapshotJob``.
WRITER_NICE = int(os.environ.get("SEGENGINE_SNAPSHOT_NICE", 10))
#: Who writes a snapshot part: "fork" (a child process forked at the capture: ``forked_writer``) or
#: "thread" (a thread of the shard's process, from a copy made at the capture: ``SnapshotJob``);
#: ``SEGENGINE_SNAPSHOT_WRITER`` overrides it. A fork that fails (e.g. no memory to commit for it
#: under strict overcommit) falls back to the thread.
WRITER = os.environ.get("SEGENGINE_SNAPSHOT_WRITER", "fork" if hasattr(os, "fork") else "thread")


class ShardStore:
    """A shard directory owned by this process: its chunk store (opened on first use) and the
    capture memory kept between snapshots."""

    def __init__(self, path: str):
        self.path = path
        self.owner = own_directory(path)
        self.arena = CaptureArena()
        self._chunks: ChunkStore | None = None

    def chunks(self, create: bool = True) -> ChunkStore | None:
        """The chunk store (None if it does not exist and ``create`` is false)."""
        if self._chunks is None and (create or os.path.exists(os.path.join(self.path, "data.mdb"))):
            self._chunks = ChunkStore(self.path)
        return self._chunks

    def release_chunks(self) -> None:
        """Close this process's handle on the chunk store (reopened on next use)."""
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None

    @property
    def fresh_path(self) -> str:
        """The directory of the fresh store a snapshot after an erasure is written into."""
        return os.path.join(self.path, FRESH_DIR)

    def write(self, snapshot_id: int, frames: list[list[Any]], fmt: int = FORMAT,
              fresh: bool = False) -> dict[str, int]:
        """Write the captured ``frames`` as snapshot ``snapshot_id`` durably (``fresh``: into the fresh
        store, see ``write_fresh``); returns the part description."""
        if fresh:
            return write_fresh(self.fresh_path, snapshot_id, frames, fmt)
        store = self.chunks()
        assert store is not None
        return store.write(snapshot_id, frames, fmt)

    def discard_fresh(self) -> None:
        """Delete the fresh store, if any (an unfinished or uncommitted snapshot)."""
        shutil.rmtree(self.fresh_path, ignore_errors=True)

    def settle_fresh(self, keep: set[int]) -> bool:
        """Promote the fresh store if it holds one of the snapshots ``keep`` (its data file renamed over the
        shard's, whose old file is released in the background), else delete it; True if promoted."""
        fresh = os.path.join(self.fresh_path, "data.mdb")
        if not os.path.exists(fresh):
            self.discard_fresh()
            return False
        candidate = ChunkStore(self.fresh_path)
        try:
            held = set(candidate.snapshot_ids())
        finally:
            candidate.close()
        if not held & keep:
            self.discard_fresh()
            return False
        self.release_chunks()
        replace_file(fresh, os.path.join(self.path, "data.mdb"))
        self.discard_fresh()
        return True

    def read(self, snapshot_id: int, part: dict[str, Any], formats: tuple[int, ...] = (FORMAT,)) -> list[np.ndarray]:
        """The frames of snapshot ``snapshot_id`` (fresh arrays), verified against ``part``, which must be in
        one of ``formats`` (DataDirMismatch otherwise)."""
        fmt = part.get("format", LEGACY_FORMAT)
        if fmt not in formats:
            data_dir = os.path.dirname(self.path)
            if fmt in LEGACY_FORMATS:
                raise DataDirMismatch(f"snapshot {snapshot_id} in {self.path} is in format {fmt} (pickled Python "
                                      f"objects), which this engine does not load; convert the data directory once, "
                                      f"with no engine running on it: segengine migrate {data_dir}")
            raise DataDirMismatch(f"snapshot {snapshot_id} in {self.path} is in format {fmt}, which this engine "
                                  f"does not read (it reads format {FORMAT})")
        store = self.chunks(create=False)
        if store is None:
            raise DataCorruption(f"snapshot {snapshot_id} in {self.path}: its LMDB store (data.mdb) is missing; "
                                 f"refusing to serve")
        return store.read(snapshot_id, part)

    def prune(self, keep: set[int]) -> int:
        """Delete every snapshot but ``keep`` (after promoting a fresh store holding one of them); returns
        the chunks deleted."""
        self.settle_fresh(keep)
        store = self.chunks(create=False)
        return store.delete(keep) if store is not None else 0

    def close(self) -> None:
        """Release the chunk store, the capture memory and the ownership of the directory."""
        self.release_chunks()
        self.arena.close()
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


# -- the shard side of the protocol (called through LocalShard methods) -------------------------
class SnapshotJob(PartJob):
    """The background write of one captured shard snapshot (its pages stay in the page cache:
    a restarted engine or a respawned worker reads them from memory).

    The writing thread runs at a lower OS priority (``WRITER_NICE``): where no core is free, the
    kernel runs the threads serving calls first. It holds the GIL only between LMDB's and the
    CRC's C calls (microseconds per chunk of up to 1 MB, which those calls write and checksum
    with the GIL released), so a serving thread rarely waits for the GIL of the lower-priority
    thread.
    """

    def __init__(self, store: ShardStore, snapshot_id: int, captured: shard_state.Capture, fresh: bool = False):
        super().__init__(snapshot_id)
        self._captured: shard_state.Capture | None = captured
        self.fresh = fresh
        self.thread: threading.Thread | None = None
        if captured.in_place:  # frames that later writes would change: written now, before any write
            self._run(store)
            return
        self.thread = threading.Thread(target=self._run, args=(store,), name=f"snapshot-{snapshot_id}", daemon=True)
        self.thread.start()

    def _run(self, store: ShardStore) -> None:
        captured, self._captured = self._captured, None  # the frames are released once written
        assert captured is not None
        if WRITER_NICE and self.thread is not None:
            self.nice = lower_thread_priority(WRITER_NICE)
        try:
            part = store.write(self.snapshot_id, captured.frames, fresh=self.fresh)
            part["write_ms"] = int((time.perf_counter() - self.started) * 1000)
            self.part = part
        except BaseException as exc:  # reported by status()
            self.error = exc
        finally:
            del captured
            self.done.set()


def start(shard: LocalShard, path: str, snapshot_id: int, fresh: bool = False) -> dict[str, int]:
    """Capture ``shard`` now and write it as snapshot ``snapshot_id`` under ``path`` in the background
    (by a forked child, or by a thread from a copy: ``WRITER``; ``fresh``: into a new store, after an
    erasure)."""
    persistence: ShardPersistence = shard.persistence
    persistence.wait()
    store = persistence.store_at(path)
    store.discard_fresh()  # an uncommitted one
    began = time.perf_counter()
    if WRITER == "fork":
        compact_events(shard.events, force=True)  # no event deleted by marking reaches a snapshot
        try:
            job = persistence.job = ForkedSnapshotJob(store, snapshot_id, shard, WRITER_NICE, fresh)
            return {"capture_ms": int((time.perf_counter() - began) * 1000), "forked": 1,
                    "fork_ms": round(job.fork_ms, 1)}
        except OSError:
            log.warning("cannot fork a process to write snapshot %d of %s; writing it from a thread", snapshot_id,
                        path, exc_info=True)
    store.arena.reset()
    captured = shard_state.capture(shard, store.arena, budget=copy_budget(store.arena.nbytes))
    store.arena.trim()
    capture_ms = int((time.perf_counter() - began) * 1000)
    persistence.job = SnapshotJob(store, snapshot_id, captured, fresh)
    return {"bytes": captured.nbytes, "capture_ms": capture_ms, "copied_bytes": captured.copied,
            "referenced_bytes": captured.referenced, "copy_ms": int(captured.copy_s * 1000),
            "new_memory_bytes": store.arena.mapped, "in_place": int(captured.in_place)}


def copy_budget(held: int) -> int | None:
    """Bytes a capture may copy: the arena's memory (``held``) plus half the memory available beyond
    a reserve (``COPY_RESERVE``: the other half is for the bitmaps it serialises, which it cannot
    reference, and the write); None where the system does not say (no limit). The environment
    variable ``SEGENGINE_SNAPSHOT_COPY_BUDGET`` sets it in bytes instead."""
    forced = os.environ.get("SEGENGINE_SNAPSHOT_COPY_BUDGET")
    if forced is not None:
        return int(forced)
    available = memory_available()
    return None if available is None else held + max(available - COPY_RESERVE, 0) // 2


def memory_available() -> int | None:
    """The kernel's estimate of the memory available without swapping (bytes), or None."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def status(shard: LocalShard, snapshot_id: int) -> dict[str, int] | None:
    """The written part of snapshot ``snapshot_id`` (None while it is being written)."""
    job = shard.persistence.job
    if job is None or job.snapshot_id != snapshot_id:
        raise RuntimeError(f"shard {shard.shard_id} is not writing snapshot {snapshot_id}")
    return job.status()


def load(shard: LocalShard, path: str, snapshot_id: int, part: dict[str, Any]) -> dict[str, int]:
    """Replace ``shard``'s data by snapshot ``snapshot_id`` and drop every other snapshot under ``path``."""
    began = time.perf_counter()
    persistence: ShardPersistence = shard.persistence
    persistence.wait()
    store = persistence.store_at(path)
    store.settle_fresh({snapshot_id})  # a crash between the manifest's commit and the promotion
    frames = store.read(snapshot_id, part)
    read_ms = int((time.perf_counter() - began) * 1000)
    shard_state.restore(shard, frames, f"snapshot {snapshot_id} in {path}")
    del frames
    store.prune({snapshot_id})
    return {"bytes": part["bytes"], "read_ms": read_ms, "load_ms": int((time.perf_counter() - began) * 1000)}


def prune(shard: LocalShard, path: str, keep: list[int]) -> int:
    """Delete every snapshot of ``shard`` under ``path`` but ``keep``; returns the chunks deleted."""
    return shard.persistence.store_at(path).prune(set(keep))


def finish(shard: LocalShard) -> None:
    """Wait for a running snapshot job, then close the shard's snapshot store in this process."""
    shard.persistence.close()
