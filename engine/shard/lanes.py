"""Lanes: a caller's own connection to every worker of a group.

A lane holds one socket per shard. A caller takes a lane from the group's pool for one call or
fan-out, writes its requests into the lane's sockets and reads its replies from them, so the
kernel wakes exactly the caller a reply is for: no thread reads on behalf of another, and no
thread wakes another. A worker serves all its lanes in one order (the request ids, see
engine/shard/process.py), so concurrent fan-outs still reach every shard in the same order.

The pool is fixed at LANES lanes (each worker is started with its ends of all of them); a
caller that finds none free waits for one. When a worker is replaced, every lane gets a fresh
socket to the new worker in ``fresh``; the lane's holder (or its next holder) swaps it in, so
no socket is ever closed while another thread waits on it.

>>> pool = LanePool(shards=2, size=2)
>>> lane = pool.take(); [len(lane.chans), len(pool.free)]
[2, 1]
>>> pool.give(lane); len(pool.free)
2
"""
from __future__ import annotations

import threading

from .channel import FrameChannel

#: Lanes per group: callers (threads) that can have calls in flight at once; more wait for a lane.
LANES = 16


class Lane:
    """One socket per shard, used by one caller at a time."""

    __slots__ = ("index", "chans", "fresh")

    def __init__(self, index: int, shards: int):
        self.index = index
        # per shard: (socket, generation of the worker at its other end); fresh: to a newer worker, not yet swapped in
        self.chans: list[tuple[FrameChannel, int] | None] = [None] * shards
        self.fresh: list[tuple[FrameChannel, int] | None] = [None] * shards

    def channel(self, shard: int, generation: int) -> FrameChannel | None:
        """The socket to worker ``generation`` of ``shard``, swapping a fresh one in (hold the shard's lock).

        None if the lane has no socket to that worker (it was replaced twice before this lane was used).
        """
        current = self.chans[shard]
        if current is not None and current[1] == generation:
            return current[0]
        fresh = self.fresh[shard]
        if fresh is None or fresh[1] != generation:
            return None
        if current is not None:
            current[0].close()  # to a dead worker: what is left in it was given up on
        self.chans[shard], self.fresh[shard] = fresh, None
        return fresh[0]

    def peek(self, shard: int, generation: int) -> FrameChannel | None:
        """The socket to worker ``generation`` of ``shard``, without swapping (hold the shard's lock)."""
        for pair in (self.chans[shard], self.fresh[shard]):
            if pair is not None and pair[1] == generation:
                return pair[0]
        return None

    def offer(self, shard: int, chan: FrameChannel, generation: int) -> None:
        """Give the lane a socket to a new worker of ``shard`` (hold the shard's lock)."""
        if self.chans[shard] is None:
            self.chans[shard] = (chan, generation)
            return
        stale = self.fresh[shard]
        if stale is not None:
            stale[0].close()
        self.fresh[shard] = (chan, generation)

    def close(self) -> None:
        for pairs in (self.chans, self.fresh):
            for i, pair in enumerate(pairs):
                if pair is not None:
                    pair[0].close()
                    pairs[i] = None


class LanePool:
    """The lanes of one shard group; ``take`` waits while all are in use."""

    def __init__(self, shards: int, size: int = LANES):
        self.lanes = [Lane(i, shards) for i in range(size)]
        self.free = list(reversed(self.lanes))  # a stack: the most recently used lane is taken first
        self.cond = threading.Condition(threading.Lock())
        self.waiting = 0  # callers waiting in take

    def take(self) -> Lane:
        """A free lane (waiting for one if all are in use)."""
        with self.cond:
            while not self.free:
                self.waiting += 1
                try:
                    self.cond.wait()
                finally:
                    self.waiting -= 1
            return self.free.pop()

    def give(self, lane: Lane) -> None:
        """Return a lane taken with ``take``."""
        with self.cond:
            self.free.append(lane)
            if self.waiting:
                self.cond.notify_all()  # a taker, or ``close`` waiting for every lane

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every lane's sockets once all lanes are back (or after ``timeout_s``)."""
        with self.cond:
            self.waiting += 1  # so that ``give`` wakes this wait
            try:
                self.cond.wait_for(lambda: len(self.free) == len(self.lanes), timeout_s)
            finally:
                self.waiting -= 1
        for lane in self.lanes:
            lane.close()
