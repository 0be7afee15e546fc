"""Change streams of saved segments: a hub that fans membership changes out to subscribers.

The coordinator publishes each write's changes (collected from the shards, in order) to the
hub; the hub numbers them (``seq`` increases by one per change across the engine) and appends
them to each interested subscriber's buffer. Publishing never waits for a consumer: a buffer
is bounded, and a subscriber that falls more than ``capacity`` changes behind is dropped, its
pending changes discarded; its next ``get`` raises ``WatchOverflow`` so the consumer knows to
re-read the segments and subscribe again.

Kinds: ``entered``/``exited`` (a profile joined or left a segment), and segment-level markers
with an empty id: ``created`` (its initial members are not streamed), ``replaced`` (followed by
the entered/exited changes the new definition causes) and ``deleted``.

>>> hub = ChangeHub()
>>> sub = hub.subscribe({"vip"}, capacity=10)
>>> hub.publish([["entered", "vip", ["u1", "u2"]], ["entered", "other", ["u3"]]], at=5)
>>> [(c.seq, c.kind, c.segment, c.id) for c in sub.get(timeout=0)]
[(1, 'entered', 'vip', 'u1'), (2, 'entered', 'vip', 'u2')]
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from .errors import WatchOverflow

DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True)
class Change:
    """One membership change of a saved segment."""

    seq: int
    kind: str
    segment: str
    id: str
    at_ms: int


class Subscription:
    """One subscriber's bounded buffer of changes (optionally only of some segments)."""

    def __init__(self, hub: "ChangeHub", segments: frozenset[str] | None, capacity: int):
        self.hub = hub
        self.segments = segments
        self.capacity = capacity
        self.buffer: deque[Change] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.overflowed = False

    def offer(self, changes: list[Change]) -> None:
        """Append ``changes`` (the hub calls this; never blocks)."""
        if self.segments is not None:
            changes = [c for c in changes if c.segment in self.segments]
        if not changes:
            return
        with self.ready:
            if self.closed or self.overflowed:
                return
            if len(self.buffer) + len(changes) > self.capacity:
                self.overflowed = True
                self.buffer.clear()
            else:
                self.buffer.extend(changes)
            self.ready.notify_all()

    def get(self, timeout: float | None = None, max_items: int = 1000) -> list[Change]:
        """Up to ``max_items`` buffered changes, waiting up to ``timeout`` s for the first.

        Returns [] on timeout or once closed; raises WatchOverflow if changes were dropped.
        """
        with self.ready:
            if not self.buffer and not self.closed and not self.overflowed:
                self.ready.wait(timeout)
            if self.overflowed:
                raise WatchOverflow(f"watch buffer overflow: more than {self.capacity} changes pending; "
                                    "re-read the segments and subscribe again")
            count = min(max_items, len(self.buffer))
            return [self.buffer.popleft() for _ in range(count)]

    def close(self) -> None:
        """Stop receiving; wakes a waiting ``get`` (idempotent)."""
        with self.ready:
            self.closed = True
            self.buffer.clear()
            self.ready.notify_all()
        self.hub.unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChangeHub:
    """Numbers published changes and hands them to every subscriber."""

    def __init__(self) -> None:
        self.subscribers: list[Subscription] = []
        self.seq = 0
        self.lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def subscribe(self, segments: Iterable[str] | None = None, capacity: int = DEFAULT_CAPACITY) -> Subscription:
        """A new subscription to every segment, or only to ``segments``."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        wanted = frozenset(segments) if segments else None
        subscription = Subscription(self, wanted, capacity)
        with self.lock:
            self.subscribers = [*self.subscribers, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (idempotent)."""
        with self.lock:
            self.subscribers = [s for s in self.subscribers if s is not subscription]

    def publish(self, groups: list[list], at: int) -> None:
        """Number and fan out ``[[kind, segment, [ids]], ...]`` (markers have no ids)."""
        with self.lock:
            subscribers = self.subscribers
            changes: list[Change] = []
            seq = self.seq
            for kind, segment, ids in groups:
                for profile_id in ids or [""]:
                    seq += 1
                    changes.append(Change(seq, kind, segment, profile_id, at))
            self.seq = seq
        if changes:
            for subscription in subscribers:
                subscription.offer(changes)

    def overflow_all(self) -> None:
        """Drop every subscriber's buffer (a shard lost changes it could not hold)."""
        for subscription in self.subscribers:
            with subscription.ready:
                subscription.overflowed = True
                subscription.buffer.clear()
                subscription.ready.notify_all()

    def close_all(self) -> None:
        """Close every subscription (on shutdown)."""
        for subscription in list(self.subscribers):
            subscription.close()
