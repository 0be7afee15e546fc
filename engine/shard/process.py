"""Shards in worker processes: ProcessShard handles and the parallel fan-out.

Each worker is a fresh interpreter (``python -m engine.shard.worker``: the spawn model, but
without multiprocessing's re-import of the coordinator's ``__main__``, which would pull gRPC
into the worker) connected by a socket pair carrying length-prefixed msgpack frames.

Concurrency: each handle has a lock held from sending a request to reading its reply, so a
worker has at most one request in flight and neither side can block the other on a full
socket. A fan-out hands each shard's request to that shard's dispatch thread (one per handle)
and waits for every answer: each worker goes on to the next queued request as soon as it has
answered, whatever the other shards are doing. (Taking the locks in shard order and reading
replies in order, as before, chained the shards: a query holding shard 0 while it waited for
shard 1 left shard 0 idle, and two workers gave 0.69x the throughput of one in-process shard.)
Requests are queued under one lock for all shards, so every shard sees concurrent fan-outs in
the same order.

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
from concurrent.futures import Future, ThreadPoolExecutor
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
        self._dispatch: ThreadPoolExecutor | None = None
        self._queued = 0  # requests submitted to the dispatch thread and not finished (see fanout)
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
        if self._dispatch is not None:
            self._dispatch.shutdown(wait=True, cancel_futures=True)
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
        return self.request(messages.encode_body(method, args), method)

    def request(self, body: bytes, method: str) -> Any:
        """Send an encoded request and return its answer (one request in flight per worker)."""
        with self.lock:
            return self.receive(self.send(body, method))

    def submit(self, body: bytes, method: str) -> Future:
        """``request(body, method)`` on this shard's dispatch thread (requests run in submission order)."""
        if self._dispatch is None:
            self._dispatch = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard-{self.shard_id}")
        self._queued += 1
        return self._dispatch.submit(self._dispatched, body, method)

    def _dispatched(self, body: bytes, method: str) -> Any:
        try:
            return self.request(body, method)
        finally:
            with _submit_lock:
                self._queued -= 1

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

    A shard with nothing queued and its lock free gets the request straight from this thread
    (no hand-off: an idle engine answers as fast as with one thread); any other gets it through
    its dispatch thread. Requests are sent or queued in one step for all shards (see the module
    docstring); if any shard fails, the first failure in shard order is raised once all have
    answered.
    """
    results: list[Any] = [None] * len(shards)
    bodies: dict[int, bytes] = {}
    direct: deque[tuple[int, ProcessShard, int]] = deque()
    jobs: list[tuple[int, Future]] = []
    errors: list[tuple[int, BaseException]] = []
    try:
        with _submit_lock:
            for index, (shard, args) in enumerate(zip(shards, args_per_shard)):
                if args is None:
                    continue
                body = bodies.get(id(args))
                if body is None:
                    body = bodies[id(args)] = messages.encode_body(method, args)
                if shard._queued == 0 and shard.lock.acquire(blocking=False):
                    try:
                        direct.append((index, shard, shard.send(body, method)))
                    except BaseException:
                        shard.lock.release()
                        raise
                else:
                    jobs.append((index, shard.submit(body, method)))
        while direct:
            index, shard, request_id = direct[0]
            try:
                results[index] = shard.receive(request_id)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every shard answered
                errors.append((index, exc))
            finally:
                direct.popleft()
                shard.lock.release()
    finally:
        for _, shard, _ in direct:  # a send failed: the replies of the others are read before their next request
            shard.lock.release()
    for index, job in jobs:
        try:
            results[index] = job.result()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every shard answered
            errors.append((index, exc))
    if errors:
        raise min(errors, key=lambda pair: pair[0])[1]
    return results


#: Held while a fan-out queues its requests, so concurrent fan-outs reach every shard in the same order.
_submit_lock = threading.Lock()


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
