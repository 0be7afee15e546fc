"""One destination's outbox: the changes still to deliver, the batch in flight, the receiver's view.

Invariant: applying the pending changes, in order, to ``acked`` plus the batch in flight gives
the segment's current members. ``unsure`` holds the ids whose state at the receiver is not known
(the ids of every batch sent and not acknowledged: the receiver may have applied it; after a crash
also the ids of such batches sent before it, until their current state is acknowledged). So an
outbox can always be rebuilt from the members, the receiver's view and the unsure ids
(``reconcile``): after a restart, after an overflow, when it is created.

A change is a tuple ``(kind, profile id, at_ms, enqueued monotonic s, erased)``; a batch gets its
change ids (``sent + 1 ...``) when it is formed, and keeps them until acknowledged.

>>> box = Outbox(DestinationDef("d", "vip", "http://127.0.0.1:1/", "s", DeliveryOptions()))
>>> box.reconcile(["u1", "u2"], at_ms=5)
>>> box.offer_many("exited", ["u1"], 6); box.offer_many("entered", ["u3"], 6)
>>> batch = box.next_batch(); [(c.change_id, c.kind, c.profile_id) for c in batch.changes]
[(1, 'entered', 'u1'), (2, 'entered', 'u2'), (3, 'exited', 'u1'), (4, 'entered', 'u3')]
>>> box.acknowledge(batch); sorted(box.acked), box.pending_count()
(['u2', 'u3'], 0)
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import BadRequest
from .store import NullStore, StoredDestination

ENTERED, EXITED = "entered", "exited"


@dataclass(frozen=True)
class DeliveryOptions:
    """How a destination delivers: changes per request, request timeout, retry backoff (exponential,
    full jitter: a retry waits a random time up to ``min(retry_max_s, retry_base_s * 2**failures)``),
    and the most changes an outbox holds before it is rebuilt from the members instead."""

    batch_size: int = 1000
    timeout_s: float = 10.0
    retry_base_s: float = 0.5
    retry_max_s: float = 60.0
    max_pending: int = 1_000_000

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "DeliveryOptions":
        """Options from a plain dict (unknown names or values out of range: BadRequest naming them)."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise BadRequest(f"unknown destination option {unknown[0]!r} (known: "
                             f"{', '.join(sorted(cls.__dataclass_fields__))})")
        made = cls(**{name: type(getattr(cls, name))(value) for name, value in options.items()})
        limits = {"batch_size": (1, 100_000), "timeout_s": (0.001, 3600), "retry_base_s": (0.0, 3600),
                  "retry_max_s": (0.0, 86_400), "max_pending": (1, 100_000_000)}
        for name, (low, high) in limits.items():
            value = getattr(made, name)
            if not low <= value <= high:
                raise BadRequest(f"destination option {name} = {value} is out of range [{low}, {high}]")
        return made

    def to_dict(self) -> dict[str, float]:
        """The options as a plain dict (what the log record holds)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class DestinationDef:
    """A destination: the segment it follows, where it posts, the secret that signs, how it delivers."""

    name: str
    segment: str
    url: str
    secret: str
    options: DeliveryOptions
    created_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The definition as stored (secret included)."""
        return {"name": self.name, "segment": self.segment, "url": self.url, "secret": self.secret,
                "options": self.options.to_dict(), "created_ms": self.created_ms}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> "DestinationDef":
        """The definition of ``to_dict``'s form."""
        return cls(stored["name"], stored["segment"], stored["url"], stored["secret"],
                   DeliveryOptions.from_dict(stored["options"]), int(stored.get("created_ms", 0)))


@dataclass(frozen=True)
class BatchChange:
    """One change of a batch, numbered."""

    change_id: int
    kind: str
    profile_id: str
    at_ms: int
    enqueued: float
    erased: bool = False


@dataclass
class Batch:
    """The batch in flight: its changes (erasure may remove some), its body once encoded."""

    changes: list[BatchChange]
    body: bytes | None = None
    attempts: int = 0
    maybe_seen: bool = False  # some request for it may have reached the receiver
    was_unsure: set[str] = field(default_factory=set)  # its ids that were unsure before it was formed

    def encode(self, destination: str, segment: str) -> bytes:
        """The request body (JSON), encoded once per content."""
        if self.body is None:
            changes = []
            for c in self.changes:
                item = {"change_id": c.change_id, "segment": segment, "profile_id": c.profile_id, "change": c.kind,
                        "at_ms": c.at_ms}
                if c.erased:
                    item["erased"] = True
                changes.append(item)
            self.body = json.dumps({"destination": destination, "segment": segment, "changes": changes},
                                   separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return self.body


@dataclass
class Counters:
    """What Stats shows of a destination's delivery."""

    delivered: int = 0  # changes acknowledged
    batches: int = 0  # requests acknowledged
    failures: int = 0  # requests that failed (connection error, timeout, non-2xx)
    retries: int = 0  # requests that repeated a failed one
    resyncs: int = 0  # outbox rebuilt from the members (overflow)
    last_error: str = ""
    last_error_ms: int = 0
    last_delivery_ms: int = 0


class Outbox:
    """One destination's pending changes, batch in flight and acknowledged view (see the module docstring)."""

    def __init__(self, definition: DestinationDef, store: NullStore | None = None,
                 stored: StoredDestination | None = None):
        self.definition = definition
        self.store = store or NullStore()
        self.acked: set[str] = set(stored.acked) if stored else set()
        self.acked_change_id = stored.acked_change_id if stored else 0
        self.sent_change_id = stored.sent_change_id if stored else 0
        #: ids whose state at the receiver is unknown (see the module docstring)
        self.unsure: set[str] = set(stored.unsure) if stored else set()
        self.pending: deque[tuple[str, str, int, float, bool]] = deque()
        self.inflight: Batch | None = None
        self.needs_resync = False
        self.counters = Counters()
        self.failing_since = 0.0  # monotonic time of the first failure of the batch in flight
        self.cond = threading.Condition()
        self.closed = False

    @property
    def name(self) -> str:
        return self.definition.name

    # -- filling (from the engine, under its write lock) ------------------------------------
    def reconcile(self, members: Iterable[str], at_ms: int) -> None:
        """Replace the pending changes by the difference between the receiver's view and ``members``,
        plus the current state of every unsure id. No batch may be in flight."""
        now = time.monotonic()
        members = set(members)
        with self.cond:
            assert self.inflight is None, "reconcile with a batch in flight"
            exits = (self.acked - members) | (self.unsure - members)
            entries = (members - self.acked) | (self.unsure & members)
            erasures = [change for change in self.pending if change[4]]  # their ids are in no view any more
            self.pending.clear()
            self.pending.extend(erasures)
            self.pending.extend((EXITED, pid, at_ms, now, False) for pid in sorted(exits))
            self.pending.extend((ENTERED, pid, at_ms, now, False) for pid in sorted(entries))
            self.needs_resync = False
            self.cond.notify_all()

    def offer_many(self, kind: str, ids: list[str], at_ms: int) -> None:
        """Append one change per id of ``ids`` (dropped while the outbox waits to be rebuilt)."""
        with self.cond:
            if self.needs_resync:
                return
            now = time.monotonic()
            self.pending.extend((kind, pid, at_ms, now, False) for pid in ids)
            if len(self.pending) > self.definition.options.max_pending:
                self._drop_pending()
                self.needs_resync = True
            self.cond.notify_all()

    def lose(self) -> None:
        """Changes were lost upstream: rebuild from the members once the batch in flight is acknowledged."""
        with self.cond:
            self._drop_pending()
            self.needs_resync = True
            self.cond.notify_all()

    def _drop_pending(self) -> None:
        """Drop the pending changes but the erasure exits (a rebuild cannot bring those back)."""
        self.pending = deque(change for change in self.pending if change[4])

    def erase(self, ids: set[str], at_ms: int) -> list[str]:
        """Drop every pending change of ``ids``; an id the receiver may hold gets one exit (marked erased),
        whose id is never stored. Returns the ids dropped from the stored view."""
        with self.cond:
            unsure = self.unsure
            if self.inflight is not None and not self.inflight.maybe_seen:  # the receiver never saw it
                unsure = unsure - ({c.profile_id for c in self.inflight.changes} - self.inflight.was_unsure)
            told = (self.acked | unsure) & ids
            if self.inflight is not None:
                kept = [c for c in self.inflight.changes if c.profile_id not in ids]
                if len(kept) != len(self.inflight.changes):
                    self.inflight.changes = kept
                    self.inflight.body = None
            if any(change[1] in ids for change in self.pending):
                self.pending = deque(change for change in self.pending if change[1] not in ids)
            now = time.monotonic()
            self.pending.extend((EXITED, pid, at_ms, now, True) for pid in sorted(told))
            self.acked -= ids
            self.unsure -= ids
            self.store.forget(self.name, sorted(ids))
            self.cond.notify_all()
            return sorted(told)

    # -- delivering (from the delivery thread) ----------------------------------------------
    def next_batch(self, wait_s: float = 0.0) -> Batch | None:
        """The batch to send: the one in flight, or a new one of up to ``batch_size`` pending changes
        (recorded in the store before it is returned); None if nothing is pending after ``wait_s``."""
        with self.cond:
            if self.inflight is None and not self.pending and wait_s > 0 and not self.closed:
                self.cond.wait(wait_s)
            if self.closed:
                return None
            if self.inflight is not None or not self.pending or self.needs_resync:
                return self.inflight
            take = min(len(self.pending), self.definition.options.batch_size)
            first = self.sent_change_id + 1
            popleft = self.pending.popleft
            changes = []
            for offset in range(take):
                kind, pid, at_ms, enqueued, erased = popleft()
                changes.append(BatchChange(first + offset, kind, pid, at_ms, enqueued, erased))
            ids = {c.profile_id for c in changes if not c.erased}  # an erased id is never stored
            batch = Batch(changes, was_unsure=ids & self.unsure)
            try:
                self.store.sent(self.name, self.acked_change_id, first + take - 1, ids)
            except BaseException:
                self.pending.extendleft((c.kind, c.profile_id, c.at_ms, c.enqueued, c.erased) for c in reversed(changes))
                raise
            self.sent_change_id = first + take - 1
            self.unsure |= ids
            self.inflight = batch
            return batch

    def acknowledge(self, batch: Batch) -> None:
        """The receiver acknowledged ``batch``: apply it to the view (stored first)."""
        with self.cond:
            if batch is not self.inflight or self.closed:  # closed: the destination was removed or the engine stops
                return
            state: dict[str, bool] = {}
            for c in batch.changes:
                state[c.profile_id] = c.kind == ENTERED and not c.erased
            entered = [pid for pid, member in state.items() if member]
            exited = [pid for pid, member in state.items() if not member]
            last = self.sent_change_id
            self.store.acknowledged(self.name, entered, exited, last, self.sent_change_id)
            self.acked.update(entered)
            self.acked.difference_update(exited)
            self.unsure.difference_update(state)
            self.acked_change_id = last
            self.inflight = None
            self.failing_since = 0.0
            self.counters.delivered += len(batch.changes)
            self.counters.batches += 1
            self.counters.last_delivery_ms = time.time_ns() // 1_000_000
            self.cond.notify_all()

    def failed(self, batch: Batch, error: str) -> None:
        """A request for ``batch`` failed."""
        with self.cond:
            self.counters.failures += 1
            self.counters.last_error = error
            self.counters.last_error_ms = time.time_ns() // 1_000_000
            if not self.failing_since:
                self.failing_since = time.monotonic()
            batch.attempts += 1

    # -- reading ----------------------------------------------------------------------------
    def pending_count(self) -> int:
        """Changes not yet acknowledged (pending plus in flight)."""
        return len(self.pending) + (len(self.inflight.changes) if self.inflight else 0)

    def oldest_age_s(self) -> float:
        """Seconds since the oldest unacknowledged change was queued (0 if none)."""
        with self.cond:
            if self.inflight is not None and self.inflight.changes:
                oldest = self.inflight.changes[0].enqueued
            elif self.pending:
                oldest = self.pending[0][3]
            else:
                return 0.0
        return max(0.0, time.monotonic() - oldest)

    def stats(self) -> dict[str, Any]:
        """Delivery state, counters and lag (never the secret)."""
        d = self.definition
        c = self.counters
        with self.cond:
            state = "resync" if self.needs_resync else "retrying" if self.failing_since else \
                "delivering" if self.pending_count() else "idle"
            pending = self.pending_count()
        return {"name": d.name, "segment": d.segment, "url": d.url, "state": state, "pending": pending,
                "oldest_pending_age_s": round(self.oldest_age_s(), 3), "delivered": c.delivered,
                "batches": c.batches, "failures": c.failures, "retries": c.retries, "resyncs": c.resyncs,
                "last_error": c.last_error, "last_error_ms": c.last_error_ms,
                "last_delivery_ms": c.last_delivery_ms, "acked_change_id": self.acked_change_id,
                "sent_change_id": self.sent_change_id, "options": d.options.to_dict(), "created_ms": d.created_ms}
