"""The durability state a shard owns: its log position, how it recovered, its snapshot store and job."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .snapshot import ShardStore, SnapshotJob


class PartJob:
    """The background write of one snapshot part: ``done`` once ``part`` (or ``error``) is set."""

    def __init__(self, snapshot_id: int):
        self.snapshot_id = snapshot_id
        self.part: dict[str, int] | None = None
        self.error: BaseException | None = None
        self.nice: int | None = None  # the writer's nice value, once known
        self.done = threading.Event()
        self.started = time.perf_counter()

    def status(self) -> dict[str, int] | None:
        """The part description once written; None while writing; raises the write's error."""
        if not self.done.is_set():
            return None
        if self.error is not None:
            raise self.error
        return self.part


class ShardPersistence:
    """What a ``LocalShard`` keeps for engine.persist (``shard.persistence``).

    ``applied_seq`` is the last log record the shard applied (stored in its snapshot parts);
    ``recovered_from`` and ``recovery`` say which data directory it recovered from and how;
    ``store`` is the shard's snapshot store (opened by the process that holds the shard, on first
    use) and ``job`` the background write of its latest snapshot.
    """

    def __init__(self) -> None:
        self.applied_seq = 0
        self.recovered_from: str | None = None
        self.recovery: dict[str, Any] = {}
        self.store: ShardStore | None = None
        self.job: SnapshotJob | None = None

    def store_at(self, path: str) -> ShardStore:
        """The snapshot store of the shard directory ``path`` (opened on first use)."""
        if self.store is not None and self.store.path != path:
            self.close()
        if self.store is None:
            from .snapshot import ShardStore

            self.store = ShardStore(path)
        return self.store

    def wait(self) -> None:
        """Wait for the running snapshot write (if any) to end."""
        if self.job is not None:
            self.job.done.wait()

    def close(self) -> None:
        """Wait for the running snapshot write, then release the snapshot store."""
        if self.job is not None:
            if self.job.thread is not None:
                self.job.thread.join()
            self.job = None
        if self.store is not None:
            self.store.close()
            self.store = None
