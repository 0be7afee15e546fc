"""Shard snapshots: each shard's part is one file in the shard's directory, mapped back on load.

Each shard has a directory ``<data_dir>/shard-<n>/``, owned (``OWNER`` flock) and written only by
the process that holds the shard, so shards write their snapshots in parallel without taking the
log's write lock. A snapshot part is the file ``snap-<id>.seg`` (format 2):

- the frames of the captured state (``shard_state``), each starting at a page boundary (zero
  padding between them), then the **index**, a value sealed under the key (id, 0): msgpack
  ``[format, chunk size, [[offset, length] per frame], [CRC per chunk]]``;
- a CRC-32 per chunk of 1 MiB of the file up to the index, each keyed by (id, chunk number
  starting at 1), so a flipped byte, a cut file or a file of another snapshot is found.

A part is described to the coordinator by ``{"format", "chunks", "bytes", "index_crc",
"file_bytes", "index_bytes"}``, which goes in the manifest; the snapshot is complete only once the
coordinator has committed its manifest, so the files of an unfinished snapshot are ignored.

**Writing** (``start``): the shard's state is captured (the only step that must not overlap a
write; see ``shard_state``: arrays that writes change are copied into a ``CaptureArena`` kept
from one snapshot to the next, event runs are referenced), then a background thread writes it
(the shard keeps serving reads and writes meanwhile) into ``spare.seg`` -- the file of an older
snapshot, or a new file -- through a staging buffer with O_DIRECT (``ShardStore.write``),
computes the chunk CRCs on the way, fdatasyncs it, renames it to ``snap-<id>.seg`` and fsyncs the
directory; only then does ``status`` report the part. A file named ``snap-<id>.seg`` is therefore
always complete (short of outside damage). The thread then reads the new file into the page
cache (``SnapshotJob``), so a restart or a respawned worker maps it from memory. ``prune`` (after
the manifest is committed) turns the previous snapshot's file into the spare, or deletes it.

**Loading** (``load``): the file is mapped copy-on-write (``MAP_PRIVATE``) rather than read:
after every chunk's checksum is verified, the restored arrays are views of the mapping, so a
restart costs no copy of the state into fresh memory (the page cache pages are shared; a page is
copied only when a write first changes it, which event runs never do). The mapping holds a
shared flock on the file for as long as any array refers to it; a file so locked (by any
process) is never recycled as the spare, only deleted (its blocks are freed when the last
mapping goes), so a mapped file's contents never change.

Format 1 (before the files: chunks of at most ~1 MB in an LMDB store ``data.mdb`` in the same
directory, database ``chunks``) is still read, so a data directory written by an older engine
opens; its store is deleted once a newer snapshot replaces it.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import threading
import time
from typing import Any

import msgpack
import numpy as np

from . import shard_state
from .arena import CaptureArena
from .errors import DataCorruption, DataDirMismatch
from .framing import checksum, crc32, pack_key, seal, unseal
from .legacy_store import LEGACY_FORMAT, ChunkStore
from .lmdb_env import close_env

FORMAT = 2
#: Checksum granularity of a snapshot file (a flipped byte is reported with its chunk number).
CHUNK_BYTES = 1 << 20
#: Frames start at multiples of this (pages: a frame maps to whole pages of its own).
FRAME_ALIGN = mmap.ALLOCATIONGRANULARITY
#: Size of each of the two staging buffers a snapshot is written through (a multiple of DIRECT_ALIGN).
STAGE_BYTES = 8 << 20
#: Block alignment of O_DIRECT writes (offsets, lengths and buffer addresses).
DIRECT_ALIGN = 4096
#: Write snapshot files with O_DIRECT (where the file system supports it)? See ``ShardStore.write``.
DIRECT_IO = True
#: Read a snapshot file back into the page cache once it is written (see ``SnapshotJob``)?
PREFETCH = True
#: Bytes per read-ahead request of that prefetch.
PREFETCH_STEP = 8 << 20
SPARE = "spare.seg"
_SNAP_NAME = re.compile(r"^snap-(\d{16})\.seg$")
#: Seconds to wait for the previous owner of a shard directory (an orphaned worker) to exit.
OWNER_WAIT_S = 10.0
_ZEROS = bytes(FRAME_ALIGN)



def snapshot_file(path: str, snapshot_id: int) -> str:
    """The file of snapshot ``snapshot_id``'s part in the shard directory ``path``."""
    return os.path.join(path, f"snap-{snapshot_id:016d}.seg")


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_exclusive(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False if any process holds a lock on the file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _open_for_writing(name: str) -> tuple[int, bool]:
    """``name`` opened for writing (created if needed), with O_DIRECT if the file system takes it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    direct = getattr(os, "O_DIRECT", 0) if DIRECT_IO else 0
    if direct:
        try:
            return os.open(name, flags | direct, 0o644), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no O_DIRECT here (tmpfs...): use the page cache
                raise
    return os.open(name, flags, 0o644), False


class _ChunkedWriter:
    """Writes bytes at consecutive offsets of a file through two staging buffers, with a CRC per chunk.

    The caller's thread copies data into one staging buffer (and checksums it) while an I/O
    thread writes the other. With ``direct`` (the file is open with O_DIRECT) every write is a
    whole number of ``DIRECT_ALIGN`` blocks from a page-aligned staging buffer (the last one zero
    padded; the caller truncates the file to its real length), so the data goes from memory the
    process already holds straight to the device, without allocating page cache pages for it.
    """

    def __init__(self, fd: int, snapshot_id: int, stages: list[np.ndarray], direct: bool):
        self.fd = fd
        self.snapshot_id = snapshot_id
        self.stages = stages
        self.stage = stages[0]
        self.direct = direct
        self.position = 0  # file offset of the next byte
        self.flushed = 0  # bytes handed to the I/O thread (the file offset of the staging buffer)
        self.staged = 0  # bytes in the staging buffer
        self.crcs: list[int] = []
        self.crc = 0
        self.fill = 0  # bytes of the current chunk seen
        self.io = _Writes()

    def add(self, data: Any, checksummed: bool = True) -> None:
        view = memoryview(data).cast("B")
        if checksummed:
            self._checksum(view)
        source = np.frombuffer(view, dtype=np.uint8)
        at = 0
        while at < len(source):
            take = min(len(self.stage) - self.staged, len(source) - at)
            self.stage[self.staged : self.staged + take] = source[at : at + take]
            self.staged += take
            at += take
            if self.staged == len(self.stage):
                self.flush()
        self.position += len(source)

    def pad_to(self, offset: int) -> None:
        while self.position < offset:
            self.add(_ZEROS[: min(len(_ZEROS), offset - self.position)])

    def _checksum(self, view: memoryview) -> None:
        at = 0
        while at < len(view):
            if self.fill == 0:
                self.crc = crc32(pack_key(self.snapshot_id, len(self.crcs) + 1))
            take = min(CHUNK_BYTES - self.fill, len(view) - at)
            self.crc = crc32(view[at : at + take], self.crc)
            self.fill += take
            at += take
            if self.fill == CHUNK_BYTES:
                self.crcs.append(self.crc)
                self.fill = 0

    def end_of_data(self) -> list[int]:
        """The CRCs of every chunk written so far (the last one may be short); later bytes are not checksummed."""
        if self.fill:
            self.crcs.append(self.crc)
            self.fill = 0
        return self.crcs

    def flush(self) -> None:
        """Hand the staging buffer to the I/O thread (a whole number of blocks when direct); switch buffers."""
        length = self.staged
        if self.direct:
            length = -(-length // DIRECT_ALIGN) * DIRECT_ALIGN
            self.stage[self.staged : length] = 0
        self.io.submit(self._write, self.stage, length, self.staged, self.flushed)
        self.flushed += self.staged
        self.staged = 0
        self.stage = self.stages[1] if self.stage is self.stages[0] else self.stages[0]

    def _write(self, stage: np.ndarray, length: int, data_length: int, at: int) -> None:
        view = memoryview(stage)[:length]
        written = 0
        while written < length:
            try:
                written += os.pwrite(self.fd, view[written:], at + written)
            except OSError as exc:
                if not self.direct or exc.errno != errno.EINVAL:
                    raise
                # the file system took O_DIRECT at open but refuses these writes: use the page cache
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
                length = data_length
                view = view[:length]

    def finish(self) -> None:
        """Write what is staged and wait for every write (raises a write's error)."""
        self.flush()
        self.io.wait_all()


class _Writes:
    """At most one write in flight on a helper thread (so one staging buffer fills while the other is written)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, function: Any, *args: Any) -> None:
        """Run ``function(*args)`` on a new helper thread once the previous write is done."""
        self.wait_all()

        def run() -> None:
            try:
                function(*args)
            except BaseException as exc:  # raised in the caller's thread by wait_all
                self.error = exc

        self.thread = threading.Thread(target=run, name="snapshot-io", daemon=True)
        self.thread.start()

    def wait_all(self) -> None:
        """Wait for the write in flight; raise its error, if any."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class ShardStore:
    """The snapshot files of one shard directory, owned by this process."""

    def __init__(self, path: str):
        self.path = path
        self.owner = own_directory(path)
        self.arena = CaptureArena()
        self._stages: list[np.ndarray] | None = None
        self._legacy: ChunkStore | None = None

    # -- writing ----------------------------------------------------------------------------
    def write(self, snapshot_id: int, frames: list[list[Any]]) -> dict[str, int]:
        """Write the captured ``frames`` as snapshot ``snapshot_id`` durably; returns the part description.

        The file is written with O_DIRECT where the file system allows it: from the process's
        own (warm) staging buffer straight to the device. Through the page cache, every page of
        a new file is memory the kernel has to find first, which on a virtual machine whose
        freed memory goes back to the host runs at a fraction of the device's speed.
        """
        if self._stages is None:  # page aligned
            self._stages = [np.frombuffer(mmap.mmap(-1, STAGE_BYTES), dtype=np.uint8) for _ in range(2)]
        fd, direct = self._open_spare()
        try:
            writer = _ChunkedWriter(fd, snapshot_id, self._stages, direct)
            table: list[list[int]] = []
            for pieces in frames:
                writer.pad_to(-(-writer.position // FRAME_ALIGN) * FRAME_ALIGN)
                start = writer.position
                for piece in pieces:
                    writer.add(piece)
                table.append([start, writer.position - start])
            data_end = writer.position
            crcs = writer.end_of_data()
            index_key = pack_key(snapshot_id, 0)
            index = seal(index_key, msgpack.packb([FORMAT, CHUNK_BYTES, table, crcs]))
            writer.add(index, checksummed=False)
            writer.finish()
            file_bytes = data_end + len(index)
            os.ftruncate(fd, file_bytes)
            os.fdatasync(fd)
            os.replace(os.path.join(self.path, SPARE), snapshot_file(self.path, snapshot_id))
        finally:
            os.close(fd)
        _fsync_directory(self.path)
        return {"format": FORMAT, "chunks": len(crcs), "bytes": sum(length for _, length in table),
                "index_crc": crc32(index), "file_bytes": file_bytes, "index_bytes": len(index)}

    def _open_spare(self) -> tuple[int, bool]:
        """An exclusively locked descriptor on the spare file (recycled if no process maps it, else
        new) and whether it is open with O_DIRECT."""
        spare = os.path.join(self.path, SPARE)
        for _ in range(2):
            fd, direct = _open_for_writing(spare)
            if _lock_exclusive(fd):
                return fd, direct
            os.close(fd)
            os.unlink(spare)  # mapped somewhere: leave that process its copy, write a new file
        raise OSError(f"cannot lock a spare snapshot file in {self.path}")

    # -- reading ----------------------------------------------------------------------------
    def read(self, snapshot_id: int, part: dict[str, Any]) -> list[Any]:
        """The frames of snapshot ``snapshot_id``, verified against ``part`` (DataCorruption if damaged).

        Format 2: writable views of a private mapping of the file; format 1: fresh arrays.
        """
        if part.get("format", LEGACY_FORMAT) == LEGACY_FORMAT:
            legacy = self.legacy()
            if legacy is None:
                raise DataCorruption(f"snapshot {snapshot_id} in {self.path}: its chunk store is missing; "
                                     f"refusing to serve")
            return legacy.read(snapshot_id, part)
        return _map_part(self.path, snapshot_id, part)

    def prefetch(self, snapshot_id: int) -> None:
        """Ask the kernel to read snapshot ``snapshot_id``'s file into the page cache (best effort)."""
        try:
            fd = os.open(snapshot_file(self.path, snapshot_id), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            _read_ahead(fd, os.fstat(fd).st_size)
        except OSError:
            pass
        finally:
            os.close(fd)

    def snapshot_ids(self) -> list[int]:
        """Ids of the snapshot files here (complete or not committed)."""
        return sorted(int(m.group(1)) for name in os.listdir(self.path) if (m := _SNAP_NAME.match(name)))

    # -- pruning ----------------------------------------------------------------------------
    def prune(self, keep: set[int]) -> int:
        """Remove every snapshot but ``keep`` (one old file becomes the spare); returns files/keys removed."""
        removed = 0
        spare = os.path.join(self.path, SPARE)
        have_spare = os.path.exists(spare)
        for snapshot_id in self.snapshot_ids():
            if snapshot_id in keep:
                continue
            name = snapshot_file(self.path, snapshot_id)
            if not have_spare and self._recyclable(name):
                os.replace(name, spare)
                have_spare = True
            else:
                os.unlink(name)
            removed += 1
        legacy = self.legacy()
        if legacy is not None:
            if keep & set(legacy.snapshot_ids()):
                removed += legacy.delete(keep=keep)
            else:
                removed += self._drop_legacy()
        return removed

    @staticmethod
    def _recyclable(name: str) -> bool:
        """True if no process maps (flocks) the file ``name``."""
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _lock_exclusive(fd)
        finally:
            os.close(fd)

    # -- format 1 ---------------------------------------------------------------------------
    def legacy(self) -> "ChunkStore | None":
        """The format-1 chunk store of this directory, if there is one."""
        if self._legacy is None and os.path.exists(os.path.join(self.path, "data.mdb")):
            self._legacy = ChunkStore(self.path)
        return self._legacy

    def _drop_legacy(self) -> int:
        """Delete the format-1 store (no snapshot in it is kept); returns 1 if there was one."""
        if self._legacy is None:
            return 0
        close_env(self._legacy.env)
        self._legacy = None
        for name in ("data.mdb", "lock.mdb"):
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
        return 1

    def close(self) -> None:
        """Release the format-1 store, the capture arena and the ownership of the directory."""
        if self._legacy is not None:
            close_env(self._legacy.env)
            self._legacy = None
        self.arena.close()
        self.owner.close()


def _read_ahead(fd: int, size: int) -> None:
    """Queue reads of the whole file into the page cache (asynchronous; best effort).

    One POSIX_FADV_WILLNEED (or MADV_WILLNEED) reads ahead at most the device's read-ahead window,
    so it is asked for window by window: measured on an uncached 650 MB file, 4x faster than
    faulting it in through the mapping with MADV_WILLNEED.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for offset in range(0, size, PREFETCH_STEP):
        advise(fd, offset, PREFETCH_STEP, os.POSIX_FADV_WILLNEED)


def _map_part(path: str, snapshot_id: int, part: dict[str, Any]) -> list[memoryview]:
    """Map and verify the file of a format-2 part; the frames as writable views of the mapping."""
    where = f"snapshot {snapshot_id} in {path}"
    name = snapshot_file(path, snapshot_id)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataCorruption(f"{where}: its file {os.path.basename(name)} is missing; refusing to serve") from None
    try:
        size = os.fstat(fd).st_size
        expected = int(part["file_bytes"])
        if size != expected:
            state = "is cut short" if size < expected else "is longer than written"
            raise DataCorruption(f"{where}: {os.path.basename(name)} {state}: it has {size} bytes, its manifest "
                                 f"says {expected}; refusing to serve")
        fcntl.flock(fd, fcntl.LOCK_SH)  # held by the mapping's own descriptor: the file is never recycled
        _read_ahead(fd, size)  # the checksums read it all: queue every read now (a no-op if cached)
        region = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    view = memoryview(region)
    try:
        index_at = size - int(part["index_bytes"])
        index_key = pack_key(snapshot_id, 0)
        value = view[index_at:] if 0 <= index_at < size else view[0:0]
        body = unseal(index_key, value) if len(value) else None
        if body is None or crc32(value) != part["index_crc"]:
            raise DataCorruption(f"{where}: its index fails its checksum; refusing to serve")
        fmt, chunk_bytes, table, crcs = msgpack.unpackb(body)
        chunks = -(-index_at // chunk_bytes) if chunk_bytes > 0 else -1
        if (fmt != FORMAT or len(crcs) != part["chunks"] or len(crcs) != chunks
                or sum(length for _, length in table) != part["bytes"]
                or any(start < 0 or length < 0 or start + length > index_at for start, length in table)):
            raise DataCorruption(f"{where}: its index does not match the manifest; refusing to serve")
        for number, crc in enumerate(crcs, start=1):
            start = (number - 1) * chunk_bytes
            if checksum(pack_key(snapshot_id, number), view[start : min(start + chunk_bytes, index_at)]) != crc:
                raise DataCorruption(f"{where}: chunk {number} of {len(crcs)} fails its checksum; refusing to serve")
        return [view[start : start + length] for start, length in table]
    except BaseException:
        try:
            view.release()
            region.close()
        except BufferError:  # a slice is still referenced: the mapping goes with it
            pass
        raise


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
_stores: dict[str, ShardStore] = {}
_stores_lock = threading.Lock()


def store_at(path: str) -> ShardStore:
    """This process's store of the shard directory ``path`` (opened on first use, i.e. after a worker starts)."""
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = ShardStore(path)
        return store


def close_store(path: str) -> None:
    """Close this process's store at ``path`` (if open)."""
    with _stores_lock:
        store = _stores.pop(path, None)
    if store is not None:
        store.close()


class SnapshotJob:
    """The background write of one captured shard snapshot.

    Once the part is durable (``done``), the thread reads the file into the page cache
    (``PREFETCH``): the write bypassed it, and a worker that is respawned or an engine that is
    restarted maps the file, which is then in memory already. Nothing waits for that but
    ``finish`` (closing the store).
    """

    def __init__(self, store: ShardStore, snapshot_id: int, captured: shard_state.Capture):
        self.snapshot_id = snapshot_id
        self.part: dict[str, int] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.perf_counter()
        self._captured: shard_state.Capture | None = captured
        self.thread = threading.Thread(target=self._run, args=(store,), name=f"snapshot-{snapshot_id}", daemon=True)
        self.thread.start()

    def _run(self, store: ShardStore) -> None:
        captured, self._captured = self._captured, None  # the frames are released once written
        assert captured is not None
        try:
            part = store.write(self.snapshot_id, captured.frames)
            part["write_ms"] = int((time.perf_counter() - self.started) * 1000)
            self.part = part
        except BaseException as exc:  # reported by status()
            self.error = exc
        finally:
            del captured
            self.done.set()
        if self.part is not None and PREFETCH:
            store.prefetch(self.snapshot_id)

    def status(self) -> dict[str, int] | None:
        """The part description once written; None while writing; raises the write's error."""
        if not self.done.is_set():
            return None
        if self.error is not None:
            raise self.error
        return self.part


def start(shard: Any, path: str, snapshot_id: int) -> dict[str, int]:
    """Capture ``shard`` now and write it as snapshot ``snapshot_id`` under ``path`` in the background."""
    wait(shard)
    store = store_at(path)
    began = time.perf_counter()
    store.arena.reset()
    captured = shard_state.capture(shard, store.arena)
    store.arena.trim()
    capture_ms = int((time.perf_counter() - began) * 1000)
    shard._snapshot_job = SnapshotJob(store, snapshot_id, captured)
    return {"bytes": captured.nbytes, "capture_ms": capture_ms, "copied_bytes": captured.copied,
            "referenced_bytes": captured.referenced, "copy_ms": int(captured.copy_s * 1000),
            "new_memory_bytes": store.arena.mapped}


def status(shard: Any, snapshot_id: int) -> dict[str, int] | None:
    """The written part of snapshot ``snapshot_id`` (None while it is being written)."""
    job: SnapshotJob | None = getattr(shard, "_snapshot_job", None)
    if job is None or job.snapshot_id != snapshot_id:
        raise RuntimeError(f"shard {shard.shard_id} is not writing snapshot {snapshot_id}")
    return job.status()


def load(shard: Any, path: str, snapshot_id: int, part: dict[str, Any]) -> dict[str, int]:
    """Replace ``shard``'s data by snapshot ``snapshot_id`` and drop every other snapshot under ``path``."""
    began = time.perf_counter()
    wait(shard)
    store = store_at(path)
    frames = store.read(snapshot_id, part)
    read_ms = int((time.perf_counter() - began) * 1000)
    shard_state.restore(shard, frames)
    del frames
    store.prune({snapshot_id})
    return {"bytes": part["bytes"], "read_ms": read_ms, "load_ms": int((time.perf_counter() - began) * 1000)}


def prune(path: str, keep: list[int]) -> int:
    """Delete every snapshot under ``path`` but ``keep`` (an old file is kept as the spare); returns files removed."""
    return store_at(path).prune(set(keep))


def wait(shard: Any) -> None:
    """Wait for the shard's running snapshot write (if any) to end."""
    job: SnapshotJob | None = getattr(shard, "_snapshot_job", None)
    if job is not None:
        job.done.wait()


def finish(shard: Any, path: str) -> None:
    """Wait for a running snapshot job (its read-back too), then close the store at ``path`` in this process."""
    job: SnapshotJob | None = getattr(shard, "_snapshot_job", None)
    if job is not None:
        job.thread.join()
    shard._snapshot_job = None
    close_store(path)
