"""The durable write path: group commit to the log, then apply in sequence order.

Writer threads ``submit`` a validated batch with its encoded body and wait on the ticket. The
committer thread takes everything queued (up to ``max_group_bytes``), writes it as records
with consecutive sequence numbers in one LMDB write transaction and commits it with fsync, so
concurrent writers share one fsync. The applier thread then applies the committed batches to
the shards strictly in sequence order and completes their tickets: a write is acknowledged
only once it is durable *and* visible to queries. While the applier applies group k the committer already syncs group k+1.

``paused()`` holds the applier between two batches and yields the last applied sequence
number: what snapshots capture and what a reloaded shard replays up to. Writers keep being
committed meanwhile; only their acknowledgements wait.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import SegengineError
from ..observed import LatencyHistogram
from .lmdb_env import LmdbEnv
from .wal import DB as WAL_DB
from .wal import put_record


class LogWriteFailed(SegengineError, RuntimeError):
    """The log could not be written; the engine refuses further writes until reopened."""

    grpc_status = "UNAVAILABLE"


class Ticket:
    """One submitted write (or log maintenance operation) and its outcome."""

    __slots__ = ("kind", "payload", "body", "seq", "result", "error", "done")

    def __init__(self, kind: str | None, payload: Any, body: bytes | None):
        self.kind = kind  # None: a maintenance operation run in its own log transaction
        self.payload = payload
        self.body = body
        self.seq = 0
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def wait(self) -> Any:
        """The write's result once acknowledged; raises its error."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class WritePipeline:
    """Group-committing log writer and in-order applier of one engine."""

    @property
    def db(self) -> Any:
        """The log database (its handle follows a compacted environment)."""
        return self.env.db(WAL_DB)

    def __init__(self, env: LmdbEnv, next_seq: int, apply: Callable[[str, Any, int], Any],
                 max_group_bytes: int = 64 << 20):
        self.env = env
        self.apply = apply
        self.next_seq = next_seq
        self.applied = next_seq - 1
        self.max_group_bytes = max_group_bytes
        self.bytes_logged = 0
        self.commits = 0
        self.commit_latency = LatencyHistogram()  # seconds per group commit (fsync included)
        self.broken: BaseException | None = None
        self._queue: deque[Ticket] = deque()
        self._cond = threading.Condition()
        self._committed: deque[Ticket] = deque()
        self._apply_cond = threading.Condition()
        self._apply_lock = threading.Lock()
        self._closing = False
        self._committer_done = False
        self._committer = threading.Thread(target=self._commit_loop, name="wal-committer", daemon=True)
        self._applier = threading.Thread(target=self._apply_loop, name="wal-applier", daemon=True)
        self._committer.start()
        self._applier.start()

    # -- writers ----------------------------------------------------------------------------
    def submit(self, kind: str, payload: Any, body: bytes) -> Ticket:
        """Queue a write; ``ticket.wait()`` returns once it is durable and applied."""
        ticket = Ticket(kind, payload, body)
        with self._cond:
            if self._closing:
                raise LogWriteFailed("the engine is closed")
            if self.broken is not None:
                raise LogWriteFailed(f"the write-ahead log failed earlier ({self.broken}); reopen the engine")
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def run_in_log(self, operation: Callable[[Any], Any]) -> Any:
        """Run ``operation(txn)`` in its own durable log transaction, in order with the writes."""
        ticket = Ticket(None, operation, None)
        with self._cond:
            if self._closing:
                raise LogWriteFailed("the engine is closed")
            self._queue.append(ticket)
            self._cond.notify()
        return ticket.wait()

    @contextmanager
    def paused(self) -> Iterator[int]:
        """Hold the applier between two batches; yields the last applied sequence number."""
        with self._apply_lock:
            yield self.applied

    # -- committer --------------------------------------------------------------------------
    def _take_group(self) -> list[Ticket] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing)
            if not self._queue:
                return None
            if self._queue[0].kind is None:
                return [self._queue.popleft()]
            group: list[Ticket] = []
            size = 0
            while self._queue and self._queue[0].kind is not None and size < self.max_group_bytes:
                ticket = self._queue.popleft()
                group.append(ticket)
                size += len(ticket.body or b"")
            return group

    def _commit_loop(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                break
            if group[0].kind is None:
                self._run_operation(group[0])
                continue
            if self.broken is not None:
                for ticket in group:
                    ticket.fail(LogWriteFailed(f"the write-ahead log failed earlier ({self.broken})"))
                continue
            first = self.next_seq

            def fill(txn: Any) -> int:
                return sum(put_record(txn, self.db, first + i, t.kind, t.body) for i, t in enumerate(group))

            try:
                began = time.perf_counter()
                stored = self.env.write(fill)
                self.commit_latency.observe(time.perf_counter() - began)
            except BaseException as exc:  # the log's state is unknown: refuse further writes
                self.broken = exc
                for ticket in group:
                    ticket.fail(LogWriteFailed(f"writing the write-ahead log failed: {exc}"))
                continue
            for offset, ticket in enumerate(group):
                ticket.seq = first + offset
                ticket.body = None
            self.next_seq = first + len(group)
            self.bytes_logged += stored
            self.commits += 1
            with self._apply_cond:
                self._committed.extend(group)
                self._apply_cond.notify()
        with self._apply_cond:
            self._committer_done = True
            self._apply_cond.notify()

    def _run_operation(self, ticket: Ticket) -> None:
        try:
            ticket.result = self.env.write(ticket.payload)
            ticket.done.set()
        except BaseException as exc:
            ticket.fail(exc)

    # -- applier ----------------------------------------------------------------------------
    def _apply_loop(self) -> None:
        while True:
            with self._apply_cond:
                self._apply_cond.wait_for(lambda: self._committed or self._committer_done)
                if not self._committed:
                    return
                ticket = self._committed.popleft()
            with self._apply_lock:
                try:
                    ticket.result = self.apply(ticket.kind or "", ticket.payload, ticket.seq)
                except BaseException as exc:  # handed to the writer
                    ticket.error = exc
                self.applied = ticket.seq
            ticket.payload = None
            ticket.done.set()

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Finish every queued write, then stop both threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._committer.join()
        self._applier.join()
