"""The shard worker: one shard served over length-prefixed msgpack frames.

``ShardServer`` turns a request frame into a reply frame by calling the named public method of
its shard (any method not starting with ``_``, so methods added to LocalShard are forwarded
without changes here). The process backend runs it in a fresh interpreter
(``python -m engine.shard.worker PARENT_PID FDS``) that reads requests from every lane of its
group and serves them in id order (see engine/shard/process.py); the Ray backend runs the same
``ShardServer`` inside an actor. Neither imports gRPC or protobuf.

The process worker exits when its control socket reaches EOF (the coordinator closed it or
died), and a watchdog thread ends it if the coordinator dies while it is busy.

After each reply the process worker polls its sockets for the next request for a short while
(``SEGENGINE_WORKER_SPIN_US``, default 1000 microseconds; 0 turns it off), yielding the CPU
between polls, before it sleeps in ``recv``. Waking a sleeping process on another CPU costs
30-60 us on the development VM, more than a small query's work; a request that arrives
within the window is picked up in a few microseconds. An idle worker sleeps.
"""
from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from ..schema import Schema
from . import messages
from .channel import FrameChannel
from .cpu import current_cpu
from .local import LocalShard


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


#: How long a worker polls for the next request after a reply (see the module docstring).
DEFAULT_SPIN_US = 1000


class ShardServer:
    """Dispatches request frames to a shard's public methods and encodes the replies."""

    def __init__(self, shard: Any):
        self.shard = shard
        self.delay_s = 0.0  # test hook: a pause before every request (to kill a worker mid-request)
        self.spin_s = float(os.environ.get("SEGENGINE_WORKER_SPIN_US", DEFAULT_SPIN_US)) / 1e6
        self.served = 0
        self.busy_s = 0.0  # wall time spent serving requests (decoding, running, encoding)

    def handle(self, frame: bytes) -> bytes:
        """The reply frame to one request frame (errors are replies too)."""
        started = time.perf_counter()
        request_id = 0
        try:
            request_id, method, args = messages.decode_request(frame)
            result = self.dispatch(method, args)
            return messages.encode_reply(request_id, result)
        except Exception as error:  # every failure goes back to the coordinator, named
            return messages.encode_error(request_id, error)
        finally:
            self.served += 1
            self.busy_s += time.perf_counter() - started

    def dispatch(self, method: str, args: tuple) -> Any:
        """Call the shard's public ``method`` (or one of the worker's own ``_worker_*`` methods)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        if method.startswith("_worker_"):
            return getattr(self, method)(*args)
        if method.startswith("_"):
            raise AttributeError(f"{method!r} is not a public shard method")
        target = getattr(self.shard, method, None)
        if target is None or not callable(target):
            raise AttributeError(f"shards have no method {method!r}")
        return target(*args)

    # -- the worker's own methods -----------------------------------------------------------
    def _worker_pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def _worker_modules(self, prefixes: list[str]) -> list[str]:
        """The imported modules whose names start with one of ``prefixes``."""
        return sorted(name for name in sys.modules if name.startswith(tuple(prefixes)))

    def _worker_load(self) -> dict[str, float]:
        """Requests served so far, and the seconds spent serving them (a worker's utilisation)."""
        return {"served": self.served, "busy_s": self.busy_s}

    def _worker_spin(self, seconds: float) -> None:
        """How long the worker polls for the next request after a reply before it sleeps."""
        self.spin_s = float(seconds)

    def _worker_delay(self, seconds: float) -> None:
        """Test hook: pause ``seconds`` before serving every later request."""
        self.delay_s = float(seconds)


def _watch_parent(parent: int) -> None:
    """End this process soon after the coordinator dies (also when the shard is busy)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def serve(ctrl_fd: int, counter_fd: int, lane_fds: list[int]) -> None:
    """Serve one shard until the control socket ``ctrl_fd`` reaches EOF.

    The first frame on the control socket is the start message ``{"schema", "shard_id",
    "data_dir", "respawn", "first_id"}`` (msgpack), answered there with this process id or the
    error that stopped the start. Requests come on the lanes ``lane_fds`` and are served in
    id order from ``first_id`` (each reply goes back on the lane its request came on); after
    sending a reply, the worker writes its id and the CPU it ran on into the shared counter
    ``counter_fd`` (the coordinator reads the id when a worker dies, the CPU to order its reads).
    """
    ctrl = FrameChannel(socket.socket(fileno=ctrl_fd))
    replied = mmap.mmap(counter_fd, messages.REPLIED.size)
    os.close(counter_fd)
    try:
        start = messages.unpack(ctrl.recv())
    except EOFError:
        return
    try:
        schema = Schema.from_dict(start["schema"])
        server = ShardServer(open_shard(schema, start["shard_id"], start.get("data_dir"), bool(start.get("respawn"))))
        ctrl.send(messages.encode_reply(0, os.getpid()))
    except Exception as error:
        ctrl.send(messages.encode_error(0, error))
        return
    lanes = {fd: FrameChannel(socket.socket(fileno=fd)) for fd in lane_fds}
    ready = select.poll()
    for fd in [ctrl_fd, *lanes]:
        ready.register(fd, select.POLLIN)
    queued: dict[int, tuple[FrameChannel, bytes]] = {}  # requests read, by id
    expected = int(start["first_id"])
    events: list[tuple[int, int]] = []  # sockets found ready by the last spin
    while True:
        entry = queued.pop(expected, None)
        if entry is None:
            if not _read_lanes(ready, ctrl_fd, lanes, queued, expected, events or ready.poll()):
                return
            events = []
            continue
        lane, frame = entry
        reply = server.handle(frame)
        try:
            lane.send(reply)
        except OSError:
            pass  # the coordinator dropped this lane
        messages.REPLIED.pack_into(replied, 0, expected, current_cpu())
        expected += 1
        if server.spin_s and expected not in queued:
            events = _spin(ready, server.spin_s)


def _read_lanes(ready: "select.poll", ctrl_fd: int, lanes: dict[int, FrameChannel],
                queued: dict[int, tuple[FrameChannel, bytes]], expected: int, events: list[tuple[int, int]]) -> bool:
    """Read what the ready sockets hold into ``queued``; False once the control socket is closed.

    A copy of a request already served or queued (an interrupted caller sends its frame again
    when it cannot tell whether it went out) is dropped.
    """
    for fd, _ in events:
        if fd == ctrl_fd:
            return False  # nothing comes on it after the start: this is EOF
        lane = lanes[fd]
        try:
            frames = lane.drain()
        except (EOFError, OSError):  # the coordinator closed this lane (a replaced socket)
            ready.unregister(fd)
            del lanes[fd]
            lane.close()
            continue
        for frame in frames:
            (request_id,) = messages.HEADER.unpack_from(frame)
            if request_id >= expected:
                queued.setdefault(request_id, (lane, frame))
    return True


def _spin(ready: "select.poll", seconds: float) -> list[tuple[int, int]]:
    """Poll for the next request for up to ``seconds``, yielding the CPU between polls; the
    ready sockets' events, or [] if none became ready in time."""
    clock = time.perf_counter
    deadline = clock() + seconds
    while True:
        events = ready.poll(0)
        if events or clock() > deadline:
            return events
        os.sched_yield()


def main(argv: list[str]) -> None:
    """Entry point: ``python -m engine.shard.worker PARENT_PID CTRL_FD,COUNTER_FD,LANE_FD,...``."""
    parent = int(argv[0])
    ctrl_fd, counter_fd, *lane_fds = (int(fd) for fd in argv[1].split(","))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the coordinator, which closes its shards
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    try:
        serve(ctrl_fd, counter_fd, lane_fds)
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
