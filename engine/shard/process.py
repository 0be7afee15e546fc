"""Shards in worker processes: ProcessShard handles and the parallel fan-out.

Each worker is a fresh interpreter (``python -m engine.shard.worker``: the spawn model, but
without multiprocessing's re-import of the coordinator's ``__main__``, which would pull gRPC
into the worker). It is started with its ends of a control socket (the start message and its
reply; closing it tells the worker to exit), of every lane of its group (engine/shard/lanes.py),
of a doorbell socket and of a shared file in which it records the requests it starts and
answers (engine/shard/progress.py); the lanes carry length-prefixed msgpack frames.

Concurrency (the engine is called from many threads): a caller takes a lane, sends its
requests into the lane's sockets and reads its own replies from them, so the kernel wakes the
caller a reply is for and no thread hands replies to another. Requests are sent under one lock
for all shards, and each shard numbers its requests (ids 1, 2, 3, ...), so every shard sees
concurrent fan-outs in the same order. A worker admits the requests of all lanes in id order
and serves them with a few threads: reads at once, writes alone and in id order
(engine/shard/scheduler.py). A request sent to a worker that has others in flight also rings
its doorbell, so that a busy worker reads its lanes (engine/shard/worker.py).

Faults: a dead worker closes all its sockets, so every caller waiting on it sees EOF at once.
The shared file tells the coordinator which unanswered requests the worker had started. Those
fail with ShardError naming the shard, and so does the oldest unanswered request in any case (a
worker that died while idle failed nothing yet, and its shard's data may be lost); a new worker
is started (``open_shard`` in the worker: an in-memory shard comes back empty; a durable one
reloads from ``data_dir``), and the other unanswered requests, which the dead worker never
started, are sent to the new worker.

>>> from engine.schema import Schema, CONTRACT_SCHEMA
>>> shards = start_process_shards(Schema.from_dict(CONTRACT_SCHEMA), 2)
>>> [s["shard"] for s in fanout(shards, "stats", [(), ()])]
[0, 1]
>>> shards.close()
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from ..errors import ShardError
from ..concurrency import in_view_call
from ..priority import sends_background
from ..schema import Schema
from . import api, messages
from .channel import FrameChannel
from .group import ShardGroup
from .lanes import Lane, LanePool
from .progress import SIZE as PROGRESS_SIZE
from .progress import Progress
from .remote import RemoteShard
from .worker import FACTORY_ENV

#: The directory that holds the ``engine`` package, put on the workers' PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Seconds a closing worker gets to exit by itself before it is killed.
CLOSE_GRACE_S = 2.0

_live: "weakref.WeakSet[ProcessShard]" = weakref.WeakSet()


class _Request:
    """One request sent to a worker: what a re-send needs, and once answered, its outcome."""

    __slots__ = ("id", "method", "body", "lane", "generation", "outcome", "background", "view")

    def __init__(self, request_id: int, method: str, body: bytes, lane: Lane, generation: int):
        self.id = request_id
        self.method = method
        self.body = body
        self.lane = lane
        self.generation = generation  # of the worker it was sent to
        self.outcome: tuple[bool, Any] | None = None  # (ok, result or error description) or (False, exception)
        self.background = sends_background()  # the worker serves it at a lower priority
        self.view = in_view_call()  # a view read or view write (engine.concurrency)

    def frame(self) -> bytes:
        """The request frame (its id flagged if a background thread or a view call sent it)."""
        return messages.request_header(self.id, self.background, self.view) + self.body


class ProcessShard(RemoteShard):
    """A handle on one shard served by a worker process; it has the shard API's methods.

    ``handle.count(step, now)`` sends ``count`` with those arguments to the worker and returns
    its answer (errors re-raised with their class).
    """

    def __init__(self, schema: Schema, shard_id: int, pool: LanePool, data_dir: str | None = None):
        self.schema_spec = schema.to_dict()
        self.shard_id = shard_id
        self.pool = pool
        self.data_dir = data_dir
        self.factory = os.environ.get(FACTORY_ENV, "")  # the worker's shard factory (engine.shard.worker)
        self.send_lock = threading.RLock()  # held while requests are numbered and written, and while the worker is replaced
        self.lock = threading.Lock()  # guards pending, the outcomes and the lanes' sockets to this shard
        self.pending: dict[int, _Request] = {}  # sent and not yet answered, by id
        self.generation = 0  # bumped each time a worker is started
        self.respawns = 0
        self.closed = False
        self.next_id = 1
        self._spawn()
        _live.add(self)

    # -- process lifecycle -------------------------------------------------------------------
    def _spawn(self) -> None:
        """Start a worker (it serves requests from ``next_id`` on) and send it the start message."""
        ctrl, ctrl_theirs = socket.socketpair()
        bell, bell_theirs = socket.socketpair()
        pairs = [socket.socketpair() for _ in self.pool.lanes]
        progress_fd = os.memfd_create(f"segengine-shard-{self.shard_id}")
        theirs = [ctrl_theirs.fileno(), progress_fd, bell_theirs.fileno()] + [their.fileno() for _, their in pairs]
        try:
            os.ftruncate(progress_fd, PROGRESS_SIZE)
            self.progress = Progress(progress_fd)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
            self.proc = subprocess.Popen(
                # -P: the caller's working directory is not put on sys.path (its own "engine" must not win)
                [sys.executable, "-P", "-m", "engine.shard.worker", str(os.getpid()),
                 ",".join(str(fd) for fd in theirs)],
                pass_fds=theirs, stdin=subprocess.DEVNULL, env=env)
        finally:
            ctrl_theirs.close()
            bell_theirs.close()
            os.close(progress_fd)
            for _, their in pairs:
                their.close()
        self.ctrl = FrameChannel(ctrl)
        self.doorbell = bell  # a byte asks a busy worker to read its lanes (see engine.shard.worker.Worker)
        self.started = False  # the start reply has been read
        self.generation += 1
        with self.lock:
            for lane, (ours, _) in zip(self.pool.lanes, pairs):
                lane.offer(self.shard_id, FrameChannel(ours, shield_sends=True), self.generation)
        self.ctrl.send(messages.pack({"schema": self.schema_spec, "shard_id": self.shard_id,
                                      "data_dir": self.data_dir, "respawn": self.respawns > 0,
                                      "first_id": self.next_id, "factory": self.factory}))

    def _release_process(self, kill: bool) -> int | None:
        """Close the control socket and reap the worker (killing it if ``kill`` or it overstays); its exit code."""
        self.ctrl.close()
        self.doorbell.close()
        if kill:
            self.proc.kill()
        try:
            return self.proc.wait(CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def _start_reply(self, wait: bool) -> tuple[bool, Any] | None:
        """The worker's answer to the start message: (ok, pid or error); None if it has not answered."""
        try:
            frame = self.ctrl.take()
            while frame is None:
                if not self.ctrl.fill(wait=wait):
                    return None
                frame = self.ctrl.take()
        except (EOFError, OSError):
            return None
        self.started = True
        _, ok, result = messages.decode_reply(frame)
        return ok, result

    def wait_started(self) -> int:
        """Wait for the worker to be ready; its process id (ShardError if it could not start)."""
        if not self.started:
            reply = self._start_reply(wait=True)
            if reply is None or not reply[0]:
                code = self._release_process(kill=reply is None)
                reason = "it exited" if reply is None else messages.rebuild_error(reply[1], self.shard_id)
                raise ShardError(f"shard {self.shard_id} failed to start (exit code {code}): {reason}")
        return self.proc.pid

    def _replace_worker(self, generation: int) -> None:
        """The worker of ``generation`` died: fail the requests it was serving and the oldest it
        left unanswered, start a new worker and send it the others (which the dead worker never
        started)."""
        with self.send_lock:
            if self.generation != generation:
                return  # another thread replaced this worker already
            start = None if self.started else self._start_reply(wait=False)
            code = self._release_process(kill=True)
            progress = self.progress
            with self.lock:
                unanswered = [self.pending.pop(i) for i in sorted(i for i in self.pending if not progress.answered(i))]
                failed: list[_Request] = []
                behind: list[_Request] = []  # never started: sent to the new worker
                for k, request in enumerate(unanswered):
                    failing = self.closed or k == 0 or progress.started(request.id)
                    (failed if failing else behind).append(request)
                for request in failed:
                    if self.closed:
                        message = f"shard {self.shard_id} is closed"
                    elif start is not None and not start[0]:
                        error = messages.rebuild_error(start[1], self.shard_id)
                        message = f"shard {self.shard_id} failed to start (exit code {code}): {error}"
                    else:
                        message = f"shard {self.shard_id} died (exit code {code}) while serving {request.method}; respawned"
                    request.outcome = (False, ShardError(message))
            if self.closed:
                return
            self.respawns += 1
            progress.close()  # the dead worker's
            self._spawn()
            with self.lock:
                for request in behind:  # renumbered in their order, ahead of anything sent later
                    request.id, request.generation = self.next_id, self.generation
                    self.next_id += 1
                    self.pending[request.id] = request
                chans = [request.lane.peek(self.shard_id, self.generation) for request in behind]
            try:
                for request, chan in zip(behind, chans):
                    chan.send(request.frame())  # type: ignore[union-attr]
                if len(behind) > 1:
                    self._ring()
            except OSError:
                pass  # the new worker is gone too: its callers see EOF and replace it

    def _ring(self) -> None:
        """Ask the worker to read its lanes although it is serving (a hint: a full doorbell has rung)."""
        try:
            self.doorbell.send(b"\0", socket.MSG_DONTWAIT)
        except (BlockingIOError, OSError):
            pass

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def stop(self) -> None:
        """Ask the worker to exit; an idle worker exits at once, a busy one is killed."""
        if self.closed:
            return
        self.closed = True
        if self.send_lock.acquire(blocking=False):
            try:
                with self.lock:
                    idle = not self.pending
                if idle:
                    self.ctrl.close()  # the worker exits on EOF
                    return
            finally:
                self.send_lock.release()
        self.proc.kill()  # its callers see EOF; the requests in flight fail as "closed"

    def join(self) -> None:
        """Reap a stopped worker (killing it after CLOSE_GRACE_S)."""
        with self.send_lock:
            if self.proc.returncode is None or not self.ctrl.closed:
                self._release_process(kill=False)
        _live.discard(self)

    def close(self) -> None:
        """Stop the worker and wait for it to exit (idempotent)."""
        self.stop()
        self.join()

    # -- requests ----------------------------------------------------------------------------
    def send(self, lane: Lane, body: bytes, method: str) -> _Request:
        """Number a request and write it into ``lane`` (hold ``_submit_lock``); the request, for ``receive``."""
        with self.send_lock:
            if self.closed:
                raise ShardError(f"shard {self.shard_id} is closed")
            with self.lock:
                busy = bool(self.pending)  # the worker may be serving: it is not reading its lanes
                request = _Request(self.next_id, method, body, lane, self.generation)
                self.next_id += 1
                self.pending[request.id] = request
                chan = lane.channel(self.shard_id, request.generation)
            assert chan is not None, "every lane has a socket to the current worker"
            frame = request.frame()
            try:
                chan.send(frame)
                if busy:
                    self._ring()
            except OSError:  # the worker is gone (it died while idle): this request fails
                self._replace_worker(request.generation)
            except BaseException:  # interrupted: the worker must still get this number, or it waits for good
                if chan.writer is None:  # (else the frame is going out already)
                    chan.send(frame)  # a copy of a frame that did go out is dropped by the worker
                raise
        return request

    def receive(self, request: _Request) -> Any:
        """The answer to ``request``, read from its lane; a shard's error is re-raised.

        Replies to requests that earlier holders of the lane gave up on (an error in another
        shard, an interrupt) come first and are dropped.
        """
        lane, shard_id = request.lane, self.shard_id
        while request.outcome is None:
            generation = request.generation
            with self.lock:
                chan = lane.channel(shard_id, generation)  # a fresh one if the request was sent again
            try:
                if chan is None:
                    raise EOFError  # replaced twice before this caller looked: cannot happen in practice
                frame = chan.recv()  # sleeps until the worker answers (EOF if it dies)
            except (EOFError, OSError):
                self._replace_worker(generation)
                with self.lock:
                    if request.outcome is None and request.generation == generation:
                        # answered by the dead worker, but the reply was lost with its socket (see Lane.channel)
                        self.pending.pop(request.id, None)
                        request.outcome = (False, ShardError(
                            f"shard {shard_id} died (exit code {self.proc.returncode}) while serving {request.method}"))
                continue  # failed, or sent again to the new worker (read from the lane's fresh socket)
            (got,) = messages.HEADER.unpack_from(frame)
            if got != request.id:
                with self.lock:
                    self.pending.pop(got, None)
                continue
            _, ok, result = messages.decode_reply(frame)
            with self.lock:
                if request.outcome is None:  # (not failed by a replacement that raced with this read)
                    del self.pending[request.id]
                    request.outcome = (ok, result)
        ok, result = request.outcome
        if ok:
            return result
        if isinstance(result, BaseException):
            raise result
        raise messages.rebuild_error(result, shard_id)

    def call(self, method: str, *args: Any) -> Any:
        """Run shard API method (or worker diagnostic) ``method(*args)`` and return its answer."""
        return self.request(messages.encode_body(api.check(method, diagnostics=True), args), method)

    def request(self, body: bytes, method: str) -> Any:
        """Send an encoded request and return its answer."""
        lane = self.pool.take()
        try:
            with _submit_lock:
                request = self.send(lane, body, method)
            return self.receive(request)
        finally:
            self.pool.give(lane)

    def __repr__(self) -> str:
        return f"ProcessShard({self.shard_id}, pid={self.proc.pid})"


def fanout(shards: Sequence[ProcessShard], method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
    """``method(*args)`` on every shard in parallel (None args skip a shard); answers in shard order.

    The requests are sent to every shard in one step under one lock (so concurrent fan-outs
    reach every shard in the same order: writes stay ordered), then the replies are read in
    shard order. If a shard fails, its failure is raised at once (the lowest shard's among
    those read by then): the other shards' replies to this request are dropped by the lane's
    next holder.
    """
    api.check(method, diagnostics=True)
    results: list[Any] = [None] * len(shards)
    if all(args is None for args in args_per_shard):
        return results
    bodies: dict[int, bytes] = {}
    sent: list[tuple[int, ProcessShard, _Request]] = []
    errors: list[tuple[int, BaseException]] = []
    pool = shards[0].pool
    lane = pool.take()
    try:
        with _submit_lock:
            for index, (shard, args) in enumerate(zip(shards, args_per_shard)):
                if args is None:
                    continue
                body = bodies.get(id(args))
                if body is None:
                    body = bodies[id(args)] = messages.encode_body(method, args)
                try:
                    sent.append((index, shard, shard.send(lane, body, method)))
                except Exception as exc:  # noqa: BLE001 - raised below (a closed shard)
                    errors.append((index, exc))
        for index, shard, request in sent:
            if errors:
                break
            try:
                results[index] = shard.receive(request)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                errors.append((index, exc))
    finally:
        pool.give(lane)
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

    def respawns(self) -> list[int]:
        return [shard.respawns for shard in self.shards]

    def adopt_schema(self, spec: dict[str, Any]) -> None:
        for shard in self.shards:
            shard.schema_spec = spec

    def close(self) -> None:
        for shard in self.shards:
            shard.stop()
        for shard in self.shards:
            shard.join()
        if self.shards:
            self.shards[0].pool.close()


def start_process_shards(schema: Schema, n: int, data_dir: str | None = None) -> ProcessShardGroup:
    """Start ``n`` shard workers (in parallel) and wait until they are ready."""
    pool = LanePool(n)
    shards: list[ProcessShard] = []
    try:
        for shard_id in range(n):
            shards.append(ProcessShard(schema, shard_id, pool, data_dir))
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
