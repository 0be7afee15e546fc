"""The shard worker: one shard served over length-prefixed msgpack frames.

``ShardServer`` turns a request frame into a reply frame by calling the named public method of
its shard (any method not starting with ``_``, so methods added to LocalShard are forwarded
without changes here). The process backend runs it in a fresh interpreter
(``python -m engine.shard.worker FD``) that talks over a socket; the Ray backend runs the same
``ShardServer`` inside an actor. Neither imports gRPC or protobuf.

The process worker exits when its connection reaches EOF (the coordinator closed it or died),
and a watchdog thread ends it if the coordinator dies while it is busy.

After each reply the process worker polls its socket for the next request for a short while
(``SEGENGINE_WORKER_SPIN_US``, default 1000 microseconds; 0 turns it off), yielding the CPU
between polls, before it sleeps in ``recv``. Waking a sleeping process on another CPU costs
30-60 us on the development VM, more than a small query's work; a request that arrives
within the window is picked up in a few microseconds. An idle worker sleeps.
"""
from __future__ import annotations

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

    def handle(self, frame: bytes) -> bytes:
        """The reply frame to one request frame (errors are replies too)."""
        request_id = 0
        try:
            request_id, method, args = messages.decode_request(frame)
            result = self.dispatch(method, args)
            return messages.encode_reply(request_id, result)
        except Exception as error:  # every failure goes back to the coordinator, named
            return messages.encode_error(request_id, error)

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


def serve(fd: int) -> None:
    """Serve one shard over the connected socket ``fd`` until EOF.

    The first frame is the start message ``{"schema", "shard_id", "data_dir"}`` (msgpack); it
    is answered like a request (id 0), with this process id or the error that stopped the start.
    """
    conn = FrameChannel(socket.socket(fileno=fd))
    try:
        start = messages.unpack(conn.recv())
    except EOFError:
        return
    try:
        schema = Schema.from_dict(start["schema"])
        server = ShardServer(open_shard(schema, start["shard_id"], start.get("data_dir"), bool(start.get("respawn"))))
        conn.send(messages.encode_reply(0, os.getpid()))
    except Exception as error:
        conn.send(messages.encode_error(0, error))
        return
    ready = select.poll()
    ready.register(fd, select.POLLIN)
    while True:
        try:
            frame = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(server.handle(frame))
        if server.spin_s and not conn.buffered():
            _spin(ready, server.spin_s)


def _spin(ready: "select.poll", seconds: float) -> None:
    """Poll for the next request for up to ``seconds``, yielding the CPU between polls."""
    clock = time.perf_counter
    deadline = clock() + seconds
    while not ready.poll(0):
        if clock() > deadline:
            return
        os.sched_yield()


def main(argv: list[str]) -> None:
    """Entry point: ``python -m engine.shard.worker FD PARENT_PID``."""
    fd, parent = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the coordinator, which closes its shards
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    try:
        serve(fd)
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
