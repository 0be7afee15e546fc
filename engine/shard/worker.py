"""The shard worker: a shard behind the shard API, served over length-prefixed msgpack frames.

``ShardServer`` turns a request frame into a reply frame by calling one of the shard API's
methods (engine/shard/api.py) or one of the worker's diagnostics; any other name is refused.
The process backend runs it in a fresh interpreter (``python -m engine.shard.worker
PARENT_PID FDS``) whose ``Worker`` reads requests from every lane of its group and serves them
with a few threads in the order of engine/shard/scheduler.py: reads together, writes alone in
id order, point reads ahead of queued queries. A request whose frame is flagged ``BACKGROUND``
(sent by a background thread of the coordinator: a heavy query) runs on a thread of lower OS
priority, so where no core is free the short calls' threads run first. The Ray backend runs the same ``ShardServer``
inside an actor. Neither imports gRPC or protobuf.

The shard is built by ``open_shard``, or by the factory named ``module:function`` in the start
message (the coordinator takes it from ``SEGENGINE_SHARD_FACTORY``; tests wrap the shard that way).

The process worker exits when its control socket reaches EOF (the coordinator closed it or
died), and a watchdog thread ends it if the coordinator dies while the worker is busy.
"""
from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from ..concurrency import view_call
from ..priority import run_in_background
from ..schema import Schema
from . import api, messages
from .channel import FrameChannel
from .local import LocalShard
from .progress import Progress
from .scheduler import Scheduler

#: The environment variable that names another shard factory (``module:function``, open_shard's signature).
FACTORY_ENV = "SEGENGINE_SHARD_FACTORY"
#: Threads serving requests in a process worker (one of them reads the lanes while the others serve).
THREADS = 4
#: How much lower the OS priority of a background caller's request is (a heavy query's share).
BACKGROUND_NICE = 10
#: The worker's GIL switch interval: a point read waits at most this long for a running query to
#: let it run (Python's default is 5 ms).
SWITCH_INTERVAL_S = 0.0005
#: How long an idle worker polls its lanes for the next request before it sleeps
#: (``SEGENGINE_WORKER_SPIN_US`` overrides it; 0 turns it off). See docs/shards.md for its worth.
SPIN_S = float(os.environ.get("SEGENGINE_WORKER_SPIN_US", 1000)) / 1e6


#: Logged writes whose batches create most of a shard's long-lived objects (see ``freeze_long_lived``).
BULK_WRITES = ("load_profiles", "load_events")
#: After a bulk write of at least this many records (a second or more of work), or a recovery, the
#: worker freezes its objects.
FREEZE_RECORDS = 1_000_000


def freeze_long_lived() -> None:
    """Move the objects that survive a full collection out of the collector's reach (``gc.freeze``).

    The worker's long-lived objects (its modules, the compiled kernels loaded so far, the shard's
    stores) cost a full collection about 40 ms at 500k profiles a shard; a batch of merges or
    writes decodes thousands of containers that live through a few young collections, so a full
    one came every few batches. Frozen objects are still freed by reference counting; only
    reference cycles among them are never collected, which the long-lived state does not form.
    """
    gc.collect()
    gc.freeze()


def open_shard(schema: Schema, shard_id: int, data_dir: str | None = None, respawn: bool = False) -> LocalShard:
    """The shard factory, called when a worker starts and when it is respawned.

    ``data_dir`` is where a durable shard keeps its data: a respawned durable shard reloads
    itself from there (its snapshot, then its share of the log) before serving anything. On a
    first start the engine's data directory drives recovery once it has checked the layout.
    """
    shard = LocalShard(schema, shard_id)
    if data_dir is not None and respawn:
        shard.recover(data_dir)
    return shard


def load_factory(spec: str | None) -> Callable[..., api.ShardAPI]:
    """The shard factory named ``module:function`` (``open_shard`` if ``spec`` is empty)."""
    if not spec:
        return open_shard
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class ShardServer:
    """Dispatches request frames to the shard API (and the worker's diagnostics); encodes the replies."""

    def __init__(self, shard: api.ShardAPI):
        self.shard = shard
        self.lock = threading.Lock()  # guards the load figures
        self.served = 0
        self.busy_s = 0.0  # wall time spent serving requests (decoding, running, encoding)

    def handle(self, frame: bytes) -> bytes:
        """The reply frame to one request frame (errors are replies too)."""
        started = time.perf_counter()
        request_id = 0
        try:
            request_id, _, view = messages.request_id(frame)  # an undecodable body is answered by id too
            request_id, method, args = messages.decode_request(frame)
            with view_call(view):
                return messages.encode_reply(request_id, self.dispatch(method, args))
        except Exception as error:  # every failure goes back to the coordinator, named
            return messages.encode_error(request_id, error)
        finally:
            with self.lock:
                self.served += 1
                self.busy_s += time.perf_counter() - started

    def dispatch(self, method: str, args: tuple) -> Any:
        """Run shard API method ``method`` (or a diagnostic of api.DIAGNOSTICS) with ``args``."""
        if method in api.METHODS:
            result = getattr(self.shard, method)(*args)
            if method == "recover" or (method == "apply_logged" and args[1] in BULK_WRITES
                                       and len(args[2][0]) >= FREEZE_RECORDS):
                freeze_long_lived()
            return result
        if method in api.DIAGNOSTICS:
            return getattr(self, method)(*args)
        raise AttributeError(f"{method!r} is not a shard method")

    # -- diagnostics (api.DIAGNOSTICS) --------------------------------------------------------
    def _worker_pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def _worker_modules(self, prefixes: list[str]) -> list[str]:
        """The imported modules whose names start with one of ``prefixes``."""
        return sorted(name for name in sys.modules if name.startswith(tuple(prefixes)))

    def _worker_nice(self) -> int:
        """The nice value of the thread serving this request (lower priority for background callers)."""
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def _worker_load(self) -> dict[str, float]:
        """Requests served so far, and the seconds spent serving them (a worker's utilisation)."""
        with self.lock:
            return {"served": self.served, "busy_s": self.busy_s}


class _Lane:
    """The worker's end of one lane; replies from several threads are sent one at a time."""

    __slots__ = ("chan", "lock")

    def __init__(self, chan: FrameChannel):
        self.chan = chan
        self.lock = threading.Lock()

    def reply(self, frame: bytes) -> None:
        with self.lock:
            try:
                self.chan.send(frame)
            except OSError:
                pass  # the coordinator dropped this lane

    def close(self) -> None:
        with self.lock:
            self.chan.close()


class _Request:
    __slots__ = ("id", "lane", "frame", "background", "view")

    def __init__(self, request_id: int, lane: _Lane, frame: bytes, background: bool, view: bool):
        self.id, self.lane, self.frame, self.background, self.view = request_id, lane, frame, background, view


class Worker:
    """Serves one shard's requests from its lanes with ``threads`` threads.

    The threads take turns (leader/follower): one waits for requests on the lanes and admits
    them in id order; a thread that finds a request it may start (engine/shard/scheduler.py)
    serves it. So a request that reaches an idle worker is served by the thread that read it,
    with no hand-off and no other thread woken. While it serves, nobody reads the lanes until
    the coordinator rings the doorbell (a byte on its own socket, sent with a request to a
    worker that has other requests in flight): the doorbell thread then wakes an idle thread,
    which takes over the reading.
    """

    def __init__(self, server: ShardServer, ctrl_fd: int, doorbell_fd: int, lane_fds: list[int],
                 progress: Progress, first_id: int, threads: int = THREADS):
        self.server = server
        self.progress = progress
        self.ctrl_fd = ctrl_fd
        self.doorbell = socket.socket(fileno=doorbell_fd)
        self.lanes = {fd: _Lane(FrameChannel(socket.socket(fileno=fd))) for fd in lane_fds}
        self.ready = select.poll()
        for fd in [ctrl_fd, *self.lanes]:
            self.ready.register(fd, select.POLLIN)
        self.threads = threads
        self.cond = threading.Condition(threading.Lock())
        self.scheduler = Scheduler(max_queries=threads - 1 if api.QUERIES_OVERLAP else 1)
        self.queued: dict[int, _Request] = {}  # read, not yet admitted (an earlier id is missing)
        self.expected = first_id  # the next id to admit
        self.polling = False  # a thread is waiting on the lanes
        self.rung = False  # the doorbell rang while a thread was reading the lanes
        self.stopped = threading.Event()

    def run(self) -> None:
        """Serve until the control socket reaches EOF."""
        for n in range(self.threads):
            threading.Thread(target=self._serve, name=f"shard-worker-{n}", daemon=True).start()
        threading.Thread(target=self._answer_doorbell, name="shard-doorbell", daemon=True).start()
        self.stopped.wait()

    def _answer_doorbell(self) -> None:
        """Wake an idle thread to read the lanes each time the coordinator rings."""
        while True:
            try:
                if not self.doorbell.recv(4096):
                    return
            except OSError:
                return
            with self.cond:
                if self.polling:
                    self.rung = True  # the reader may have drained the lanes before this request came
                else:
                    self.cond.notify()

    def _serve(self) -> None:
        cond = self.cond
        cond.acquire()
        try:
            while not self.stopped.is_set():
                request = self.scheduler.take()
                if request is not None:
                    if self.scheduler.runnable() or (self.rung and not self.polling):
                        self.rung = False
                        cond.notify()  # an idle thread serves the next request, or reads the lanes
                    cond.release()
                    try:
                        self._run(request)
                    finally:
                        cond.acquire()
                    self.scheduler.finish(request)
                elif self.polling:
                    cond.wait()
                else:
                    self.polling, self.rung = True, False
                    spin = SPIN_S if self.scheduler.idle() else 0.0
                    cond.release()
                    try:
                        frames = self._read(spin)
                    finally:
                        cond.acquire()
                        self.polling = False
                    if frames is None:
                        self.stopped.set()
                        cond.notify_all()
                        return
                    self._admit(frames)
        finally:
            cond.release()

    def _run(self, request: _Request) -> None:
        self.progress.start(request.id)
        if request.background:  # a heavy call's share: at a lower priority, so short calls go first
            reply = run_in_background(lambda: self.server.handle(request.frame), BACKGROUND_NICE)
        else:
            reply = self.server.handle(request.frame)
        request.lane.reply(reply)
        self.progress.answer(request.id)

    def _read(self, spin_s: float) -> list[tuple[_Lane, bytes]] | None:
        """The frames the lanes hold once any has some (waiting for them, polling for ``spin_s``
        first); None once the control socket is closed."""
        frames: list[tuple[_Lane, bytes]] = []
        for fd, _ in (spin_s and _spin(self.ready, spin_s)) or self.ready.poll():
            if fd == self.ctrl_fd:
                return None  # nothing comes on it after the start: this is EOF
            lane = self.lanes[fd]
            try:
                frames.extend((lane, frame) for frame in lane.chan.drain())
            except (EOFError, OSError):  # the coordinator closed this lane (a replaced socket)
                self.ready.unregister(fd)
                del self.lanes[fd]
                lane.close()
        return frames

    def _admit(self, frames: list[tuple[_Lane, bytes]]) -> None:
        """Queue ``frames`` and admit the requests that are next in id order (hold ``cond``).

        A copy of a request already admitted or queued (an interrupted caller sends its frame
        again when it cannot tell whether it went out) is dropped.
        """
        for lane, frame in frames:
            request_id, background, view = messages.request_id(frame)
            if request_id >= self.expected:
                self.queued.setdefault(request_id, _Request(request_id, lane, frame, background, view))
        while self.expected in self.queued:
            request = self.queued.pop(self.expected)
            try:
                kind = api.access(messages.peek_method(request.frame))
            except Exception:  # not a request frame: served alone, its error goes back as the reply
                kind = api.Access.WRITE
            self.scheduler.admit(request, kind, request.view)
            self.expected += 1


def _spin(ready: "select.poll", seconds: float) -> list[tuple[int, int]]:
    """Poll for up to ``seconds``, giving the CPU away between polls; the ready sockets' events,
    or [] if none became ready in time."""
    clock = time.perf_counter
    deadline = clock() + seconds
    while True:
        events = ready.poll(0)
        if events or clock() > deadline:
            return events
        os.sched_yield()


def _watch_parent(parent: int) -> None:
    """End this process soon after the coordinator dies (also when the shard is busy)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def serve(ctrl_fd: int, progress_fd: int, doorbell_fd: int, lane_fds: list[int]) -> None:
    """Serve one shard until the control socket ``ctrl_fd`` reaches EOF.

    The first frame on the control socket is the start message ``{"schema", "shard_id",
    "data_dir", "respawn", "first_id", "factory"}`` (msgpack), answered there with this process
    id or the error that stopped the start. Requests come on the lanes ``lane_fds``, numbered
    from ``first_id``; each reply goes back on the lane its request came on. The worker records
    the requests it starts and answers in the shared file ``progress_fd`` (engine/shard/progress.py);
    a byte on ``doorbell_fd`` asks it to read its lanes while it serves.
    """
    ctrl = FrameChannel(socket.socket(fileno=ctrl_fd))
    progress = Progress(progress_fd)
    os.close(progress_fd)
    try:
        start = messages.unpack(ctrl.recv())
    except EOFError:
        return
    try:
        factory = load_factory(start.get("factory"))
        schema = Schema.from_dict(start["schema"])
        server = ShardServer(factory(schema, start["shard_id"], start.get("data_dir"), bool(start.get("respawn"))))
        ctrl.send(messages.encode_reply(0, os.getpid()))
    except Exception as error:
        ctrl.send(messages.encode_error(0, error))
        return
    Worker(server, ctrl_fd, doorbell_fd, lane_fds, progress, int(start["first_id"])).run()


def main(argv: list[str]) -> None:
    """Entry point: ``python -m engine.shard.worker PARENT_PID CTRL_FD,PROGRESS_FD,DOORBELL_FD,LANE_FD,...``."""
    parent = int(argv[0])
    ctrl_fd, progress_fd, doorbell_fd, *lane_fds = (int(fd) for fd in argv[1].split(","))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the coordinator, which closes its shards
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    try:
        serve(ctrl_fd, progress_fd, doorbell_fd, lane_fds)
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
