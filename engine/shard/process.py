"""Shards in worker processes: ProcessShard handles and the parallel fan-out.

Each worker is a fresh interpreter (``python -m engine.shard.worker``: the spawn model, but
without multiprocessing's re-import of the coordinator's ``__main__``, which would pull gRPC
into the worker) connected by a socket pair carrying length-prefixed msgpack frames.

Concurrency: each handle has a lock held from sending a request to reading its reply, so a
worker has at most one request in flight and neither side can block the other on a full
socket. A fan-out takes the locks in shard order, sends every request, then reads the replies
in order, releasing each lock as soon as its reply is in: the shards work in parallel, and the
next query can start on shard 0 while shard 1 still works on this one.

Faults: a reader waits on the socket and on the worker's pidfd together, so a dead worker is
noticed at once (EOF or process exit). The request fails with ShardError naming the shard,
and a new worker is started for the shard (``open_shard`` in the worker: an in-memory shard
comes back empty; a durable one reloads from ``data_dir``).

>>> from engine.schema import Schema, CONTRACT_SCHEMA
>>> shards = start_process_shards(Schema.from_dict(CONTRACT_SCHEMA), 2)
>>> [s["shard"] for s in fanout(shards, "stats", [(), ()])]
[0, 1]
>>> shards.close()
"""
from __future__ import annotations

import atexit
import os
import select
import socket
import subprocess
import sys
import threading
import weakref
from collections import deque
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

from ..errors import ShardError
from ..schema import Schema
from . import messages
from .group import ShardGroup

#: The directory that holds the ``engine`` package, put on the workers' PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Seconds a closing worker gets to exit by itself before it is killed.
CLOSE_GRACE_S = 2.0

_live: "weakref.WeakSet[ProcessShard]" = weakref.WeakSet()


class ProcessShard:
    """A handle on one shard served by a worker process; it has the shard's methods.

    ``handle.count(step, now)`` sends ``count`` with those arguments to the worker and returns
    its answer (errors re-raised with their class); any public LocalShard method is forwarded.
    """

    def __init__(self, schema: Schema, shard_id: int, data_dir: str | None = None):
        self.schema_spec = schema.to_dict()
        self.shard_id = shard_id
        self.data_dir = data_dir
        self.lock = threading.Lock()
        self.respawns = 0
        self.closed = False
        self.next_id = 1
        self.pending: deque[int] = deque()  # request ids whose replies are still unread
        self.serving = "start"
        self._spawn()
        _live.add(self)

    # -- process lifecycle -------------------------------------------------------------------
    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.shard.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)
        try:
            self.pidfd: int | None = os.pidfd_open(self.proc.pid)
            self.poller.register(self.pidfd, select.POLLIN)
        except (AttributeError, OSError):  # no pidfd (old kernel): poll the process every second
            self.pidfd = None
        self.conn.send_bytes(messages.pack({"schema": self.schema_spec, "shard_id": self.shard_id,
                                            "data_dir": self.data_dir, "respawn": self.respawns > 0}))
        self.pending = deque([0])

    def _release_process(self, kill: bool) -> int | None:
        """Close our ends and reap the worker (killing it if ``kill`` or it overstays); its exit code."""
        self.conn.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if kill:
            self.proc.kill()
        try:
            return self.proc.wait(CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def _died(self, during: str) -> None:
        """The worker is gone: start a new one and raise ShardError naming the shard."""
        if self.closed:
            raise ShardError(f"shard {self.shard_id} is closed")
        code = self._release_process(kill=True)
        self.respawns += 1
        self._spawn()
        raise ShardError(f"shard {self.shard_id} died (exit code {code}) while serving {during}; respawned")

    def wait_started(self) -> int:
        """Wait for the worker to be ready; its process id (ShardError if it could not start)."""
        with self.lock:
            self._drain()
            return self.proc.pid

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def stop(self) -> None:
        """Ask the worker to exit (EOF); an idle worker exits at once, a busy one is killed."""
        if self.closed:
            return
        self.closed = True
        if self.lock.acquire(blocking=False):
            try:
                self.conn.close()
            finally:
                self.lock.release()
        else:
            self.proc.kill()  # wakes the reader through the pidfd; it raises "closed"

    def join(self) -> None:
        """Reap a stopped worker (killing it after CLOSE_GRACE_S)."""
        with self.lock:
            if self.proc.returncode is None or not self.conn.closed:
                self._release_process(kill=False)
        _live.discard(self)

    def close(self) -> None:
        """Stop the worker and wait for it to exit (idempotent)."""
        self.stop()
        self.join()

    # -- requests ----------------------------------------------------------------------------
    def send(self, body: bytes, method: str) -> int:
        """Send a request body (hold ``lock``); its request id."""
        if self.closed:
            raise ShardError(f"shard {self.shard_id} is closed")
        self._drain()
        request_id = self.next_id
        self.next_id += 1
        self.serving = method
        try:
            self.conn.send_bytes(messages.HEADER.pack(request_id) + body)
        except OSError:
            self._died(method)
        self.pending.append(request_id)
        return request_id

    def receive(self, request_id: int) -> Any:
        """The answer to request ``request_id`` (hold ``lock``); a shard's error is re-raised."""
        while True:
            got, ok, result = messages.decode_reply(self._read_frame())
            self.pending.popleft()
            if got == request_id:
                break
            if got == 0 and not ok:
                self._start_failed(result)
        if ok:
            return result
        raise messages.rebuild_error(result, self.shard_id)

    def call(self, method: str, *args: Any) -> Any:
        """Run ``method(*args)`` on the shard and return its answer."""
        body = messages.encode_body(method, args)
        with self.lock:
            return self.receive(self.send(body, method))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return partial(self.call, name)

    def _drain(self) -> None:
        """Read the replies nobody waits for any more (the start reply, abandoned requests)."""
        while self.pending:
            got, ok, result = messages.decode_reply(self._read_frame())
            self.pending.popleft()
            if got == 0 and not ok:
                self._start_failed(result)

    def _start_failed(self, description: list) -> None:
        error = messages.rebuild_error(description, self.shard_id)
        code = self._release_process(kill=True)
        self._spawn()
        raise ShardError(f"shard {self.shard_id} failed to start (exit code {code}): {error}")

    def _read_frame(self) -> bytes:
        conn_fd = self.conn.fileno()
        while True:
            events = self.poller.poll(None if self.pidfd is not None else 1000)
            if any(fd == conn_fd for fd, _ in events):
                try:
                    return self.conn.recv_bytes()
                except (EOFError, OSError):
                    self._died(self.serving)
            if events or self.proc.poll() is not None:
                self._died(self.serving)

    def __repr__(self) -> str:
        return f"ProcessShard({self.shard_id}, pid={self.proc.pid})"


def fanout(shards: Sequence[ProcessShard], method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
    """``method(*args)`` on every shard in parallel (None args skip a shard); answers in shard order.

    Every request is sent before any reply is read. On the first failure the other replies are
    abandoned (read and dropped before the next request to that shard) and the error is raised.
    """
    results: list[Any] = [None] * len(shards)
    bodies: dict[int, bytes] = {}
    sent: deque[tuple[int, ProcessShard, int]] = deque()
    try:
        for index, (shard, args) in enumerate(zip(shards, args_per_shard)):
            if args is None:
                continue
            body = bodies.get(id(args))
            if body is None:
                body = bodies[id(args)] = messages.encode_body(method, args)
            shard.lock.acquire()
            try:
                request_id = shard.send(body, method)
            except BaseException:
                shard.lock.release()
                raise
            sent.append((index, shard, request_id))
        while sent:
            index, shard, request_id = sent[0]
            try:
                results[index] = shard.receive(request_id)
            finally:
                sent.popleft()
                shard.lock.release()
    finally:
        for _, shard, _ in sent:
            shard.lock.release()
    return results


class ProcessShardGroup(ShardGroup):
    """Shards in worker processes, called in parallel."""

    backend = "process"

    def call_each(self, method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
        return fanout(self.shards, method, args_per_shard)

    def close(self) -> None:
        for shard in self.shards:
            shard.stop()
        for shard in self.shards:
            shard.join()


def start_process_shards(schema: Schema, n: int, data_dir: str | None = None) -> ProcessShardGroup:
    """Start ``n`` shard workers (in parallel) and wait until they are ready."""
    shards: list[ProcessShard] = []
    try:
        for shard_id in range(n):
            shards.append(ProcessShard(schema, shard_id, data_dir))
        for shard in shards:
            shard.wait_started()
    except BaseException:
        ProcessShardGroup(shards).close()
        raise
    return ProcessShardGroup(shards)


@atexit.register
def _close_all() -> None:
    """Leave no worker behind at interpreter exit."""
    shards = list(_live)
    for shard in shards:
        shard.stop()
    for shard in shards:
        shard.join()
