"""Shards in worker processes: ProcessShard handles and the parallel fan-out.

Each worker is a fresh interpreter (``python -m engine.shard.worker``: the spawn model, but
without multiprocessing's re-import of the coordinator's ``__main__``, which would pull gRPC
into the worker) connected by a socket pair carrying length-prefixed msgpack frames.

Concurrency (the engine is called from many threads): requests are pipelined. A caller sends
its frame straight into the worker's socket, even while the worker serves another request, so
a worker goes from one request to the next without waiting for the coordinator; up to
PIPELINE_DEPTH small frames may be in flight per worker (far less than a socket buffer, so a
send never blocks), and a larger frame (a load batch) is sent only to a worker with nothing in
flight. Replies come back in request order. One caller at a time reads a worker's socket; it
hands each reply to the caller waiting for it (waking that caller only) and, once it has its
own, passes the reading to the caller whose reply is due next. Some caller is always reading
while replies are due, so neither side can block the other on a full socket. Requests are sent
under one lock for all shards, so every shard sees concurrent fan-outs in the same order.
(Before, a worker had one request in flight and the next waited in a dispatch thread: each
request cost the worker a wait for a thread hand-off in the coordinator.)

Faults: a reader waits on the socket and on the worker's pidfd together, so a dead worker is
noticed at once (EOF or process exit). The request it was serving fails with ShardError naming
the shard, a new worker is started for the shard (``open_shard`` in the worker: an in-memory
shard comes back empty; a durable one reloads from ``data_dir``), and the requests queued
behind the failed one, which the dead worker never started, are sent to the new worker.

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
from pathlib import Path
from typing import Any, Sequence

from ..errors import ShardError
from ..schema import Schema
from . import messages
from .channel import FrameChannel
from .group import ShardGroup

#: The directory that holds the ``engine`` package, put on the workers' PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Seconds a closing worker gets to exit by itself before it is killed.
CLOSE_GRACE_S = 2.0

_live: "weakref.WeakSet[ProcessShard]" = weakref.WeakSet()


class _Request:
    """One request sent to a worker: its frame (kept for a re-send) and, once read, its outcome."""

    __slots__ = ("id", "method", "frame", "outcome", "wake")

    def __init__(self, request_id: int, method: str, frame: bytes):
        self.id = request_id
        self.method = method
        self.frame = frame
        self.outcome: tuple[bool, Any] | None = None  # (ok, result or error description) or (False, exception)
        self.wake: threading.Lock | None = None  # held while its caller sleeps; released to wake it

    def notify(self) -> None:
        """Wake the caller waiting for this request, if any (hold the shard's ``cond``)."""
        if self.wake is not None:
            self.wake.release()
            self.wake = None


#: A worker has at most this many requests sent and not answered (pipelined), holding at most
#: PIPELINE_BYTES of frames: far less than a socket buffer, so sending them never blocks. A larger
#: frame is only sent to a worker with nothing else in flight.
PIPELINE_DEPTH = 16
PIPELINE_BYTES = 64 * 1024


class ProcessShard:
    """A handle on one shard served by a worker process; it has the shard's methods.

    ``handle.count(step, now)`` sends ``count`` with those arguments to the worker and returns
    its answer (errors re-raised with their class); any public LocalShard method is forwarded.
    """

    def __init__(self, schema: Schema, shard_id: int, data_dir: str | None = None):
        self.schema_spec = schema.to_dict()
        self.shard_id = shard_id
        self.data_dir = data_dir
        self.send_lock = threading.RLock()  # held while a frame is written, and while the worker is replaced
        self.cond = threading.Condition()  # guards pending, pending_bytes, reading and the outcomes
        self.pending: deque[_Request] = deque()  # sent, not yet answered, in the order the worker serves them
        self.pending_bytes = 0
        self.reading = False  # a thread is reading replies (the others wait for theirs)
        self.room_waiters = 0  # senders waiting for the pipeline to drain
        self.generation = 0  # bumped each time a worker is started
        self.respawns = 0
        self.closed = False
        self.next_id = 1
        self._spawn()
        _live.add(self)

    # -- process lifecycle -------------------------------------------------------------------
    def _spawn(self) -> None:
        """Start a worker and send it the start message (its reply is request 0 in ``pending``)."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                # -P: the caller's working directory is not put on sys.path (its own "engine" must not win)
                [sys.executable, "-P", "-m", "engine.shard.worker", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self.conn = FrameChannel(ours)
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)
        try:
            self.pidfd: int | None = os.pidfd_open(self.proc.pid)
            self.poller.register(self.pidfd, select.POLLIN)
        except (AttributeError, OSError):  # no pidfd (old kernel): poll the process every second
            self.pidfd = None
        self.generation += 1
        with self.cond:
            self.pending.appendleft(_Request(0, "start", b""))
        self.conn.send(messages.pack({"schema": self.schema_spec, "shard_id": self.shard_id,
                                      "data_dir": self.data_dir, "respawn": self.respawns > 0}))

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

    def _replace_worker(self, generation: int, start_error: Exception | None = None) -> None:
        """The worker of ``generation`` died (or failed to start): fail the request it was serving,
        start a new worker and re-send it the requests queued behind (which never started).

        The failed request is the oldest one in flight (the start message counts, and then the
        request after it fails too, so that a caller hears of it).
        """
        with self.send_lock:
            if self.generation != generation:
                return  # another thread replaced this worker already
            code = self._release_process(kill=True)
            with self.cond:
                failed = [self.pending.popleft()] if self.pending else []
                if failed and failed[0].id == 0 and self.pending:
                    failed.append(self.pending.popleft())
                behind = list(self.pending)
                self.pending.clear()
                self.pending_bytes = 0
                if self.closed:
                    failed += behind
                    behind = []
                for request in failed:
                    if self.closed:
                        message = f"shard {self.shard_id} is closed"
                    elif start_error is not None:
                        message = f"shard {self.shard_id} failed to start (exit code {code}): {start_error}"
                    else:
                        message = f"shard {self.shard_id} died (exit code {code}) while serving {failed[0].method}; respawned"
                    request.outcome = (False, ShardError(message))
                    request.notify()
                self.cond.notify_all()
            if self.closed:
                return
            self.respawns += 1
            self._spawn()
            with self.cond:
                self.pending.extend(behind)
                self.pending_bytes = sum(len(request.frame) for request in behind)
            try:
                for request in behind:
                    self.conn.send(request.frame)
            except OSError:
                pass  # the new worker is gone too: the reader finds out and replaces it

    def wait_started(self) -> int:
        """Wait for the worker to be ready; its process id (ShardError if it could not start)."""
        with self.cond:
            start = self.pending[0] if self.pending and self.pending[0].id == 0 else None
        if start is not None:
            self.receive(start)
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
        if self.send_lock.acquire(blocking=False):
            try:
                with self.cond:
                    idle = not self.pending and not self.reading
                if idle:
                    self.conn.close()
                    return
            finally:
                self.send_lock.release()
        self.proc.kill()  # wakes the reader through the pidfd; the requests in flight fail as "closed"

    def join(self) -> None:
        """Reap a stopped worker (killing it after CLOSE_GRACE_S)."""
        with self.cond:
            while self.reading:  # the reader notices the kill and fails what is in flight
                self.cond.wait()
        with self.send_lock:
            if self.proc.returncode is None or not self.conn.closed:
                self._release_process(kill=False)
        _live.discard(self)

    def close(self) -> None:
        """Stop the worker and wait for it to exit (idempotent)."""
        self.stop()
        self.join()

    # -- requests ----------------------------------------------------------------------------
    def send(self, body: bytes, method: str) -> _Request:
        """Send a request body (hold ``_submit_lock``); the request, for ``receive``.

        Requests are pipelined: up to PIPELINE_DEPTH small ones may wait in the worker's socket
        while it serves another. Every request sent is answered in order, and some thread is
        always reading while replies are due, so neither side can block the other.
        """
        if self.closed:
            raise ShardError(f"shard {self.shard_id} is closed")
        frame = messages.HEADER.pack(self.next_id) + body
        if self.pending and (len(self.pending) >= PIPELINE_DEPTH or self.pending_bytes + len(frame) > PIPELINE_BYTES):
            self._wait_for_room(len(frame))
        request = _Request(self.next_id, method, frame)
        self.next_id += 1
        with self.send_lock:
            if self.closed:
                raise ShardError(f"shard {self.shard_id} is closed")
            with self.cond:
                self.pending.append(request)
                self.pending_bytes += len(frame)
            generation = self.generation
            try:
                self.conn.send(frame)
            except OSError:  # the worker is gone (it died while idle): this request fails
                self._replace_worker(generation)
        return request

    def receive(self, request: _Request) -> Any:
        """The answer to ``request``; a shard's error is re-raised.

        One caller at a time reads the socket (the reader); it hands each reply to the caller
        waiting for it (waking that caller only), and once it has its own, passes the reading
        on to the caller whose reply is due next.
        """
        wake = None
        reading = False
        with self.cond:
            if request.outcome is None:
                if self.reading:
                    wake = request.wake = threading.Lock()
                    wake.acquire()
                else:
                    self.reading = reading = True
        try:
            if wake is not None:
                wake.acquire()  # released once the outcome is set, or when it is our turn to read
                wake = None
                reading = request.outcome is None
            if reading:
                try:
                    while request.outcome is None:
                        self._read_one()
                finally:
                    reading = False
                    self._pass_reading()
        except BaseException:  # interrupted (KeyboardInterrupt): nobody waits for this reply any more
            with self.cond:
                queued = request.wake is not None
                request.wake = None
            if wake is not None and not queued and request.outcome is None:
                self._pass_reading()  # woken to read just as we were interrupted: pass the reading on
            raise
        ok, result = request.outcome  # type: ignore[misc]
        if ok:
            return result
        if isinstance(result, BaseException):
            raise result
        raise messages.rebuild_error(result, self.shard_id)

    def _pass_reading(self) -> None:
        """Give the reading to the first caller still waiting for a reply, or stop reading."""
        with self.cond:
            for request in self.pending:
                if request.wake is not None and request.outcome is None:
                    request.notify()  # it wakes with no outcome: it reads now (``reading`` stays set)
                    break
            else:
                self.reading = False
            self.cond.notify_all()  # senders waiting for room, and join()

    def _wait_for_room(self, size: int) -> None:
        """Wait until a frame of ``size`` bytes may be sent (reading replies if nobody else does)."""
        with self.cond:
            while self.pending and (len(self.pending) >= PIPELINE_DEPTH
                                    or self.pending_bytes + size > PIPELINE_BYTES):
                if self.reading:
                    self.room_waiters += 1
                    self.cond.wait()
                    self.room_waiters -= 1
                    continue
                self.reading = True
                self.cond.release()
                try:
                    self._read_one()
                finally:
                    self._pass_reading()
                    self.cond.acquire()

    def _read_one(self) -> None:
        """Read one reply and give it to its request (or replace a dead worker)."""
        generation = self.generation
        frame = self._read_frame()
        if frame is None:
            self._replace_worker(generation)
            return
        got, ok, result = messages.decode_reply(frame)
        with self.cond:
            request = self.pending.popleft()
            self.pending_bytes -= len(request.frame)
            assert request.id == got, (request.id, got)
            if got == 0 and not ok:
                self.pending.appendleft(request)
            else:
                request.outcome = (ok, result)
                request.notify()
            if self.room_waiters:
                self.cond.notify_all()
        if got == 0 and not ok:
            self._replace_worker(generation, messages.rebuild_error(result, self.shard_id))

    def call(self, method: str, *args: Any) -> Any:
        """Run ``method(*args)`` on the shard and return its answer."""
        return self.request(messages.encode_body(method, args), method)

    def request(self, body: bytes, method: str) -> Any:
        """Send an encoded request and return its answer."""
        with _submit_lock:
            request = self.send(body, method)
        return self.receive(request)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return partial(self.call, name)

    def _read_frame(self) -> bytes | None:
        """The next reply frame; None if the worker died (EOF, or the process ended)."""
        conn, poller, pidfd = self.conn, self.poller, self.pidfd
        try:
            frame = conn.take()
            while frame is None:
                if not conn.fill(wait=False):  # nothing there yet: wait for the socket or the exit
                    conn_fd = conn.fileno()
                    events = poller.poll(None if pidfd is not None else 1000)
                    if not any(fd == conn_fd and mask & select.POLLIN for fd, mask in events):
                        if events or self.proc.poll() is not None:
                            return None
                        continue
                    conn.fill()
                frame = conn.take()
            return frame
        except (EOFError, OSError):
            return None

    def __repr__(self) -> str:
        return f"ProcessShard({self.shard_id}, pid={self.proc.pid})"


def fanout(shards: Sequence[ProcessShard], method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
    """``method(*args)`` on every shard in parallel (None args skip a shard); answers in shard order.

    The requests are sent to every shard in one step under one lock (so concurrent fan-outs
    reach every shard in the same order: writes stay ordered), then the replies are read in
    shard order. If a shard fails, the first failure in shard order is raised at once: the
    other shards' replies to this request are read and dropped by the next reader.
    """
    results: list[Any] = [None] * len(shards)
    bodies: dict[int, bytes] = {}
    sent: list[tuple[int, ProcessShard, _Request]] = []
    errors: list[tuple[int, BaseException]] = []
    with _submit_lock:
        for index, (shard, args) in enumerate(zip(shards, args_per_shard)):
            if args is None:
                continue
            body = bodies.get(id(args))
            if body is None:
                body = bodies[id(args)] = messages.encode_body(method, args)
            try:
                sent.append((index, shard, shard.send(body, method)))
            except Exception as exc:  # noqa: BLE001 - raised below (a closed shard)
                errors.append((index, exc))
    for index, shard, request in sent:
        if errors:
            break  # the replies left are read and dropped by the next reader of each shard
        try:
            results[index] = shard.receive(request)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append((index, exc))
    if errors:
        raise min(errors, key=lambda pair: pair[0])[1]
    return results


#: Held while requests are sent, so concurrent fan-outs reach every shard in the same order.
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
