"""A snapshot part written by a child process forked at the capture (the way Redis's BGSAVE works).

``fork()`` gives the child a copy-on-write image of the shard's memory as it is at that instant,
so the child's view cannot change while it serialises the bitmaps and writes the part into the
shard's LMDB store, and the serving process copies nothing: the capture pause is the ``fork()``
itself (the kernel copies the page tables: measured on this project's VM, 27-38 ms for a 6 GB
process) instead of copying the arrays and serialising every bitmap under the pause. The work
the child does holds the child's own GIL, not the serving process's, and runs at a lower OS
priority (``WRITER_NICE``), so calls served meanwhile neither wait for the GIL nor, where a core
is free, for the CPU. The memory the snapshot costs is the pages the serving process changes
while the child writes (each is copied once, on its first write), not a copy of the state.

The child runs only this module's ``_write_part``: it never touches the parent's locks, sockets
or LMDB handles (the parent releases its handle on the shard store before forking; the child
forgets the inherited registry of handles and opens its own), disables the cyclic garbage
collector (no finaliser of an object inherited from the parent runs in the child), restores the
default handlers of SIGINT and SIGTERM, and leaves with ``os._exit``. A thread in the child
watches its parent: if the parent dies (a killed worker), the child exits at once, and with it
its inherited hold on the shard directory's ``OWNER`` lock. The part description, or the error,
goes back to the parent as msgpack over a pipe, which a thread of the parent reads.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

import msgpack

from . import lmdb_env, shard_state
from .chunk_store import FORMAT, ChunkStore, write_fresh
from .shard_persistence import PartJob

if TYPE_CHECKING:
    from ..shard.local import LocalShard

#: How often (s) the child checks that its parent is alive.
PARENT_CHECK_S = 0.05


class SnapshotWriteFailed(RuntimeError):
    """The child writing a snapshot part failed (its message names the cause)."""


class ForkedSnapshotJob(PartJob):
    """The background write of one shard snapshot by a forked child."""

    def __init__(self, store: Any, snapshot_id: int, shard: LocalShard, nice: int, fresh: bool = False):
        super().__init__(snapshot_id)
        store.release_chunks()  # the child opens the store with its own handle
        read_end, write_end = os.pipe()
        parent = os.getpid()
        forking = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            _write_part(shard, store.fresh_path if fresh else store.path, snapshot_id, write_end, parent, nice, fresh)
        self.fork_ms = (time.perf_counter() - forking) * 1000  # the kernel's copy of the page tables
        os.close(write_end)
        self.pid = pid
        self.thread: threading.Thread | None = threading.Thread(
            target=self._wait, args=(read_end,), name=f"snapshot-{snapshot_id}-child", daemon=True)
        self.thread.start()

    def _wait(self, read_end: int) -> None:
        """Read the child's reply, reap it, then report (the read and the wait release the GIL)."""
        try:
            with os.fdopen(read_end, "rb") as replies:
                reply = replies.read()
            _, status = os.waitpid(self.pid, 0)
            outcome = msgpack.unpackb(reply, raw=False) if reply else None
            if isinstance(outcome, dict):
                self.nice = outcome.get("nice")
            if isinstance(outcome, dict) and "part" in outcome:
                self.part = outcome["part"]
                self.part["write_ms"] = int((time.perf_counter() - self.started) * 1000)
            elif isinstance(outcome, dict) and "error" in outcome:
                self.error = (OSError(outcome["errno"], outcome["error"]) if outcome.get("errno")
                              else SnapshotWriteFailed(outcome["error"]))
            else:
                self.error = SnapshotWriteFailed(f"the process writing snapshot {self.snapshot_id} ended without "
                                                 f"a reply (wait status {status})")
        except BaseException as exc:  # reported by status()
            self.error = exc
        finally:
            self.done.set()


def _write_part(shard: LocalShard, path: str, snapshot_id: int, out: int, parent: int, nice: int,
                fresh: bool) -> NoReturn:
    """In the forked child: serialise ``shard`` and write it as snapshot ``snapshot_id`` into the store
    at ``path`` (``fresh``: a new one, ``write_fresh``), send the part description (or the error) on
    ``out``, and exit."""
    code = 1
    try:
        gc.disable()
        lmdb_env.forget_inherited()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
        if nice:
            os.nice(nice)
        try:
            began = time.perf_counter()
            captured = shard_state.capture(shard, copy=False)  # the memory is this process's own: nothing changes it
            serialised = time.perf_counter()
            if fresh:
                part = write_fresh(path, snapshot_id, captured.frames, FORMAT)
            else:
                store = ChunkStore(path)
                part = store.write(snapshot_id, captured.frames, FORMAT)
                store.close()
            part["serialise_ms"] = int((serialised - began) * 1000)
            reply: dict[str, Any] = {"part": part}
            code = 0
        except BaseException as exc:
            errno = getattr(exc, "errno", None)
            reply = {"error": exc.strerror if errno and exc.strerror else f"{type(exc).__name__}: {exc}",
                     "errno": errno}
        reply["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        data = memoryview(msgpack.packb(reply))
        while data:
            data = data[os.write(out, data):]
    finally:
        os._exit(code)


def _exit_with_parent(parent: int) -> None:
    """Exit the child as soon as its parent is gone (it is then adopted: its parent id changes)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)
