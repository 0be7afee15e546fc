"""The floor under a fan-out: bare Python processes against segengine's worker processes.

    python benchmarks/fanout_floor.py [--shards 2] [--calls 5000] [--rounds 3]

Runs, in turn and in one process, on the same machine:

- **bare**: the coordinator sends 40 bytes to each of ``--shards`` Python processes over a
  socket pair and waits for every echo. Each process polls for the next message for 1 ms
  after a reply (``poll(0)`` and ``sched_yield``), as segengine's workers do, then sleeps.
  No framing, no numbering, no encoding: the cost of the processes, the sockets and the
  scheduler alone;
- **segengine**: ``Engine(schema, shards=N, backend="process").count`` of a query that
  touches nothing (``country = 'nowhere'``), the fan-out overhead of the issue's figures;
- **local**: the same count on one in-process shard, for scale.

Prints the median of ``--calls`` calls per round, and segengine's time over the bare one.
The gap is what segengine's own code adds (taking a lane, numbering, msgpack, the worker's
dispatch); the bare time is what no code in Python processes can go under on this machine.
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

MESSAGE = b"x" * 40
SPIN_S = 0.001


def echo(fd: int) -> None:
    """A bare worker: echo every message on socket ``fd``, polling 1 ms after each before sleeping."""
    sock = socket.socket(fileno=fd)
    ready = select.poll()
    ready.register(fd, select.POLLIN)
    clock = time.perf_counter
    while True:
        deadline = clock() + SPIN_S
        while not ready.poll(0):
            if clock() > deadline:
                ready.poll()
                break
            os.sched_yield()
        data = sock.recv(4096)
        if not data:
            return
        sock.sendall(data)


class BareFanout:
    """A coordinator with ``n`` bare echo processes."""

    def __init__(self, n: int):
        pairs = [socket.socketpair() for _ in range(n)]
        self.procs = [subprocess.Popen([sys.executable, __file__, "--echo", str(theirs.fileno())],
                                       pass_fds=[theirs.fileno()]) for _, theirs in pairs]
        for _, theirs in pairs:
            theirs.close()
        self.socks = [ours for ours, _ in pairs]
        self.polls = []
        for sock in self.socks:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self.polls.append(poller)

    def __call__(self) -> None:
        for sock in self.socks:
            sock.sendall(MESSAGE)
        for poller, sock in zip(self.polls, self.socks):
            poller.poll()
            sock.recv(4096)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        for proc in self.procs:
            proc.wait()


def median_us(run: Callable[[], object], calls: int, warmup: int = 1000) -> float:
    """Median wall time of ``calls`` runs after ``warmup`` runs, in microseconds."""
    from bench_shards import timed  # (not at the top: a bare echo process imports nothing of ours)

    return statistics.median(timed(run, calls, warmup)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)  # run as a bare worker
    args = parser.parse_args()
    if args.echo is not None:
        echo(args.echo)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine import Engine, Schema
    from engine.schema import CONTRACT_SCHEMA

    schema = Schema.from_dict(CONTRACT_SCHEMA)
    text = "country = 'nowhere'"
    bare = BareFanout(args.shards)
    engine = Engine(schema, shards=args.shards, backend="process")
    local = Engine(schema, shards=1, backend="local")
    try:
        for target in (engine, local):
            target.upsert_profiles({"id": f"p{i}", "country": "FR"} for i in range(1000))
        now = 1_700_000_000_000
        print(f"{args.shards} shards, median of {args.calls} calls per round, microseconds")
        print(f"{'round':>5}  {'bare':>8}  {'segengine':>9}  {'ratio':>6}  {'local x1':>8}")
        for index in range(args.rounds):
            floor = median_us(bare, args.calls)
            ours = median_us(lambda: engine.count(text, now=now), args.calls)
            alone = median_us(lambda: local.count(text, now=now), args.calls)
            print(f"{index + 1:>5}  {floor:8.1f}  {ours:9.1f}  {ours / floor:6.2f}  {alone:8.1f}")
    finally:
        bare.close()
        engine.close()
        local.close()


if __name__ == "__main__":
    main()
