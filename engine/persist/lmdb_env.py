"""LMDB environments: one handle per file per process, a large map set up front and grown safely.

LMDB forbids opening an environment twice in one process and a map resize while any of the
process's transactions is open, so every environment is opened through ``open_env`` (shared,
reference-counted handles) and every transaction goes through ``LmdbEnv.read`` / ``write``:
a write that fills the map is aborted, the map is doubled once no transaction of this process
is open, and the write is retried. Only the process that owns an environment writes it (the
coordinator owns the log, each shard's process its snapshot store), so a resize never races
another process. Opening clears the reader slots of dead processes (``reader_check``) and
checks that the data file is as long as its meta page says, so a cut file is refused with a
clear error instead of faulting on a missing page. With ``writemap`` LMDB extends the data file
to the map size (sparse) as it opens it, which would hide a cut file: its length is then checked
first, through a read-only handle that is closed again before the environment is opened.
"""
from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from .errors import DataCorruption

T = TypeVar("T")

#: Virtual size reserved for each environment; the file only grows with its data.
DEFAULT_MAP_SIZE = 64 << 30

_registry: dict[str, "LmdbEnv"] = {}
_registry_lock = threading.Lock()
_inherited: list[dict[str, "LmdbEnv"]] = []  # a forked child's handles from its parent (never used or closed)


class LmdbEnv:
    """A shared handle on one LMDB environment and its named databases."""

    def __init__(self, path: str, names: tuple[str, ...], map_size: int, writemap: bool = False):
        self.path = path
        self.names, self.writemap = names, writemap
        self.refs = 0
        self._cond = threading.Condition()
        self._active = 0  # open transactions of this process
        self._resizing = False
        try:
            os.makedirs(path, exist_ok=True)
            if writemap and os.path.exists(os.path.join(path, "data.mdb")):
                probe = lmdb.open(path, readonly=True, lock=False, max_dbs=max(len(names), 1))
                try:
                    _check_file_length(path, probe)
                finally:
                    probe.close()
            self.env = lmdb.open(path, map_size=map_size, max_dbs=max(len(names), 1), sync=True, metasync=True,
                                 max_readers=256, writemap=writemap)
            self.env.reader_check()
            _check_file_length(path, self.env)
            self.dbs = {name: self.env.open_db(name.encode()) for name in names}
        except lmdb.Error as exc:
            raise DataCorruption(f"cannot open the LMDB store {path}: {exc}") from exc

    def db(self, name: str) -> Any:
        """The handle of the named database."""
        return self.dbs[name]

    @contextmanager
    def _transaction_slot(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._resizing)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def read(self, buffers: bool = False) -> Iterator[Any]:
        """A read transaction (``buffers``: values are memoryviews valid inside the block)."""
        while True:
            with self._transaction_slot():
                try:
                    txn = self.env.begin(buffers=buffers)
                except lmdb.MapResizedError:  # the owner grew the map: adopt its size, then retry
                    txn = None
                if txn is not None:
                    try:
                        with txn:
                            yield txn
                        return
                    except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError) as exc:
                        raise DataCorruption(f"the LMDB store {self.path} is corrupted: {exc}") from exc
            self._resize(0)

    def write(self, fill: Callable[[Any], T]) -> T:
        """Run ``fill(txn)`` in a write transaction and commit it durably (fsync); grows the map when full."""
        while True:
            try:
                with self._transaction_slot():
                    with self.env.begin(write=True) as txn:
                        return fill(txn)
            except lmdb.MapFullError:
                self.grow()
            except lmdb.MapResizedError:
                self._resize(0)

    def grow(self) -> None:
        """Double the map size once no transaction of this process is open."""
        self._resize(self.env.info()["map_size"] * 2)

    def _resize(self, size: int) -> None:
        """``set_mapsize(size)`` (0: adopt the size another process set) with no transaction open."""
        with self._cond:
            self._cond.wait_for(lambda: not self._resizing)
            self._resizing = True
            try:
                self._cond.wait_for(lambda: self._active == 0)
                self.env.set_mapsize(size)
            finally:
                self._resizing = False
                self._cond.notify_all()

    def compact(self) -> dict[str, int]:
        """Rewrite the data file without its free pages, so the bytes of deleted records are in no file.

        Transactions of this process wait meanwhile. The compact copy (``mdb_env_copy2`` with
        ``MDB_CP_COMPACT``: live pages only, renumbered) is written beside the store, synced, then
        renamed over ``data.mdb`` and the environment reopened; a crash leaves either file whole.
        The old file is released in the background (``replace_file``). Returns the data file's
        bytes before and after.
        """
        data = os.path.join(self.path, "data.mdb")
        with self._cond:
            self._cond.wait_for(lambda: not self._resizing)
            self._resizing = True
            try:
                self._cond.wait_for(lambda: self._active == 0)
                before = os.path.getsize(data)
                map_size = self.env.info()["map_size"]
                scratch = self.path.rstrip(os.sep) + ".compact"
                shutil.rmtree(scratch, ignore_errors=True)
                os.makedirs(scratch)
                self.env.copy(scratch, compact=True)
                copied = os.path.join(scratch, "data.mdb")
                with open(copied, "rb+") as handle:
                    os.fsync(handle.fileno())
                self.env.close()
                replace_file(copied, data)
                shutil.rmtree(scratch, ignore_errors=True)
                self.env = lmdb.open(self.path, map_size=map_size, max_dbs=max(len(self.names), 1), sync=True,
                                     metasync=True, max_readers=256, writemap=self.writemap)
                self.dbs = {name: self.env.open_db(name.encode()) for name in self.names}
                return {"before": before, "after": os.path.getsize(data)}
            finally:
                self._resizing = False
                self._cond.notify_all()

    def sync(self) -> None:
        """Flush everything committed so far to disk."""
        self.env.sync(True)

    def used_bytes(self) -> int:
        """Bytes of the data file up to the end of its last committed page (with writemap, the file
        itself is as long as the map)."""
        return _used_bytes(self.env)


def sync_directory(path: str) -> None:
    """fsync the directory ``path``: the entries created or renamed in it become durable."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def replace_file(source: str, target: str) -> None:
    """Rename ``source`` over ``target``, durably (the directory synced). The replaced file leaves the
    directory with the rename; its blocks and page cache, which the kernel takes about a second per
    gigabyte to free, are freed on a background thread (``_release``)."""
    held = os.open(target, os.O_RDONLY) if os.path.exists(target) else None  # the replaced inode lives on, unnamed
    try:
        os.replace(source, target)
        sync_directory(os.path.dirname(os.path.abspath(target)))
    finally:
        if held is not None:
            _release(held)


def _release(fd: int) -> None:
    """Close ``fd``, the last reference to a file renamed over, on a thread of its own: the kernel frees
    the file's blocks and page cache as it closes, which takes long for a large file."""
    threading.Thread(target=os.close, args=(fd,), name="lmdb-release", daemon=True).start()


def _used_bytes(env: Any) -> int:
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def _check_file_length(path: str, env: Any) -> None:
    needed = _used_bytes(env)
    actual = os.path.getsize(os.path.join(path, "data.mdb"))
    if actual < needed:
        raise DataCorruption(f"the LMDB store {path} is cut short: data.mdb has {actual} bytes, "
                             f"its last committed page ends at byte {needed}")


def open_env(path: str, names: tuple[str, ...], map_size: int = DEFAULT_MAP_SIZE, writemap: bool = False) -> LmdbEnv:
    """The process's handle on the environment at ``path`` (opened on first use).

    ``writemap``: write pages straight into the map (no copy of every dirty page; the data file
    is then sized to the map, sparse). Used for snapshot stores, which write large values. A
    grown map is then a longer (sparse) file too.
    """
    key = os.path.realpath(path)
    with _registry_lock:
        handle = _registry.get(key)
        if handle is None:
            handle = _registry[key] = LmdbEnv(key, names, map_size, writemap)
        elif not set(names) <= set(handle.dbs):
            raise ValueError(f"{path} is open with databases {sorted(handle.dbs)}, not {sorted(names)}")
        handle.refs += 1
        return handle


def forget_inherited() -> None:
    """In a forked child: start a registry of its own. The parent's handles are kept referenced but never
    used (LMDB forbids using an environment across ``fork``) nor closed, and the registry's lock is new
    (another thread of the parent may have held it at the fork)."""
    global _registry, _registry_lock
    _inherited.append(_registry)
    _registry, _registry_lock = {}, threading.Lock()


def close_env(handle: LmdbEnv) -> None:
    """Release one reference; the environment closes with the last one."""
    with _registry_lock:
        handle.refs -= 1
        if handle.refs > 0:
            return
        _registry.pop(handle.path, None)
    handle.env.close()
