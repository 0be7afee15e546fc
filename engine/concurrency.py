"""The engine's publish lock: readers see the state before or after a write, never half of it.

``PublishLock`` is a writer-preferring readers/writer lock. Every engine read holds it shared
for the duration of its shard calls; every write's application to the shards (with the
coordinator's catalog update and change publishing) holds it exclusively, so a write that spans
shards becomes visible to readers at once. Once a writer waits, new readers wait behind it;
readers that waited for a write all go in when it ends, before the next writer (so a stream
of writes cannot starve readers: a reader waits for at most the write running and the next).

A snapshot's capture ``pins`` the lock (``excluding_writers``): writers wait for it to end, but
a writer waiting for a pin does not hold readers back (a capture can take a second at 10M
profiles; reads go on during it).

A point read (``point=True``: one profile's membership or record, microseconds of work) may go
in while a writer waits, as long as another, longer read still holds the lock: the writer waits
for that read anyway, so a point read never waits for a running query through the write queued
behind it. Once only point reads hold the lock, new ones queue behind the writer, so a stream of
them cannot starve it: a point read waits at most for the write running (its publish step).

A view read (``view=True``: a point read of what a shard keeps consistent on its own, one profile's
saved-segment membership) may also go in while a write that says so (``writing(view_safe=True)``:
an event batch, a merge batch, a refresh of time-relative segments) is applied. Such a write runs in a ``view_call`` (its shard calls
carry the flag): each shard applies it but keeps its membership bits (and, for a merge, its live
rows and departed ids) as they were, holding the switch to the new state back (and view reads of a
shard that inserts profiles waiting) until ``publish_view``
(engine.segments, ``SavedSegments.deferring``). The writer then calls ``end_views`` (no new view
read goes in) and has every shard publish, all before it releases the lock. So a view read sees
every shard before the write or, once it ends, after it: a read that saw one shard after the
write began its publish step, and every read that starts later waits for the write's end. A read
that also uses the coordinator's state (an alias resolved before a merge's publish step, a shard
read after it) checks ``view_ends`` and is made again if a publish step began meanwhile
(``PublishLock.point_read``).

A view write's commit changes the shards' data but leaves re-evaluating the saved segments on the
rows it touched for a sync step (``SavedSegments.deferring``): once every shard has committed,
the writer calls ``open_store`` and the shards sync (``ShardGroup.send_write`` runs these steps). From then until the write ends, a store read
(``store=True``: a query that reads no saved segment, ``Engine.count`` and the like) also goes in:
it sees the data after the write, and reads nothing the sync step changes. A read of saved
segments (``SEGMENT(...)``, their sizes) still waits for the write's end.

Likewise for heavy reads: a background thread (``engine.priority``: a server's pool for the
queries known to be heavy) takes heavy read shares, as does a read that says so (``heavy=True``: a
merge batch's read of its sources, which can take long). A writer first waits for the heavy reads running to end
without holding other readers back (new heavy reads wait behind it), then queues as above, so
a point read never waits for an analyst's query through a write queued behind it.

Both modes are reentrant per thread (a read inside a read or a write, a write inside a write);
upgrading a read share to a write is refused (RuntimeError) rather than deadlocking. Waiting
is bounded by an explicit ``timeout`` or, when none is given, by the thread's current
``deadline`` (set by a server around a call), and raises ``PublishTimeout`` when it passes.

>>> lock = PublishLock()
>>> with lock.reading():
...     with lock.reading():
...         lock.readers
1
>>> with lock.writing():
...     lock.writer is not None
True
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, TypeVar

from .errors import SegengineError
from .priority import is_background_thread


T = TypeVar("T")
#: Tries of a view read that writes' publish steps overlap (``PublishLock.point_read``); the last one is a
#: plain point read.
VIEW_READ_TRIES = 3


class PublishTimeout(SegengineError):
    """The caller's deadline passed while it waited for the engine."""

    grpc_status = "DEADLINE_EXCEEDED"


class PublishLock:
    """A writer-preferring, per-thread reentrant readers/writer lock with deadlines."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.readers = 0  # threads holding a read share
        self.writer: int | None = None  # ident of the thread holding the write
        self.view_safe = False  # the write running admits view reads (see acquire_read)
        self.view_ends = 0  # view writes that began their publish step (see end_views)
        self.store_open = False  # the write running admits store reads (see open_store)
        self.writers_waiting = 0
        self.blocked = 0  # readers waiting for a write to end
        self.grants = 0  # writes ended (each admits the readers blocked meanwhile)
        self.pins = 0  # captures in progress (see excluding_writers)
        self.heavy = 0  # read shares of threads marked heavy_reads
        self.points = 0  # read shares taken as point reads (see acquire_read)
        self.points_blocked = 0  # of the blocked readers, the point reads
        self.heavy_blocked = 0  # of the blocked readers, those of heavy threads
        self.writers_pending = 0  # writers waiting for the heavy reads to end (other readers go on)
        self._local = threading.local()

    # -- per-thread state -------------------------------------------------------------------
    def _held(self) -> int:
        return getattr(self._local, "shares", 0)

    def holds_read(self) -> bool:
        """True if the current thread holds a read share (so it must not write)."""
        return self._held() > 0

    def holds_write(self) -> bool:
        """True if the current thread holds the write."""
        return self.writer == threading.get_ident()

    @property
    def pinned(self) -> bool:
        """True while a capture keeps writers out (see ``excluding_writers``)."""
        return self.pins > 0

    @contextmanager
    def deadline(self, seconds: float | None) -> Iterator[None]:
        """Bound every wait of this thread inside the block to ``seconds`` from now (None: no bound)."""
        previous = getattr(self._local, "until", None)
        self._local.until = None if seconds is None else time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.until = previous

    def _timeout(self, timeout: float | None) -> float | None:
        if timeout is not None:
            return max(timeout, 0.0)
        until = getattr(self._local, "until", None)
        return None if until is None else max(until - time.monotonic(), 0.0)

    # -- read shares ------------------------------------------------------------------------
    def acquire_read(self, timeout: float | None = None, blocking: bool = True, point: bool = False,
                     view: bool = False, store: bool = False, heavy: bool = False) -> bool:
        """Take a read share; False if the timeout passed (or, not ``blocking``, a write runs or waits).

        A ``point`` read passes a waiting writer while a longer read holds the lock; a ``view`` read
        (a point read) also goes in beside a view-safe write, a ``store`` read beside a write's sync
        step; a ``heavy`` read (as every read of a background thread) is waited for by a writer
        without holding other reads back (module docstring).
        """
        if self._held() or self.holds_write():
            self._local.shares = self._held() + 1
            return True
        heavy = heavy or is_background_thread()
        point = (point or view) and not heavy
        view = view and not heavy
        store = store and not heavy

        def free() -> bool:
            if self.writer is not None:
                return (view and self.view_safe) or (store and self.store_open)
            if heavy and self.writers_pending:
                return False
            return not self.writers_waiting or (point and self.readers > self.points)

        with self.changed:
            if free():
                self.readers += 1
                self.heavy += heavy
                self.points += point
            elif not blocking:
                return False
            else:
                epoch = self.grants
                self.blocked += 1
                self.heavy_blocked += heavy
                self.points_blocked += point
                began = time.monotonic()
                self.changed.wait_for(lambda: self.grants != epoch or free(), self._timeout(timeout))
                self._local.waited = self.waited() + time.monotonic() - began
                if self.grants == epoch:  # not admitted by a write's end (release_write counts those in)
                    self.blocked -= 1
                    self.heavy_blocked -= heavy
                    self.points_blocked -= point
                    if not free():
                        return False
                    self.readers += 1
                    self.heavy += heavy
                    self.points += point
        self._local.shares = 1
        self._local.heavy_share = heavy
        self._local.point_share = point
        return True

    def waited(self) -> float:
        """Seconds the calling thread has spent waiting for read shares (a caller tells its work from
        its waits by the difference)."""
        return getattr(self._local, "waited", 0.0)

    def release_read(self) -> None:
        """Give back a read share taken by this thread."""
        shares = self._held() - 1
        self._local.shares = shares
        if shares or self.holds_write():
            return
        with self.changed:
            self.readers -= 1
            if getattr(self._local, "point_share", False):
                self.points -= 1
            if getattr(self._local, "heavy_share", False):
                self.heavy -= 1
                if not self.heavy:
                    self.changed.notify_all()
            if not self.readers:
                self.changed.notify_all()

    def reading(self, timeout: float | None = None, point: bool = False, view: bool = False,
                store: bool = False, heavy: bool = False) -> ContextManager[None]:
        """Hold a read share for the block (PublishTimeout if it cannot be had in time); ``point``,
        ``view``, ``store``, ``heavy``: see ``acquire_read``."""
        return _holding(lambda limit: self.acquire_read(limit, point=point, view=view, store=store, heavy=heavy),
                        self.release_read, timeout)

    # -- the write --------------------------------------------------------------------------
    def acquire_write(self, timeout: float | None = None, view_safe: bool = False) -> bool:
        """Take the write (alone: no reader, no other writer but view reads if ``view_safe``); False if the
        timeout passed."""
        me = threading.get_ident()
        if self.writer == me:
            self._local.writes = getattr(self._local, "writes", 0) + 1
            return True
        if self._held():
            raise RuntimeError("a thread holding a read share of the engine cannot write")
        limit = self._timeout(timeout)
        until = None if limit is None else time.monotonic() + limit
        with self.changed:
            # first wait out captures without holding readers back, then the heavy reads (holding back
            # only new heavy ones), then queue ahead of new readers
            if not self.changed.wait_for(lambda: not self.pins, limit):
                return False
            self.writers_pending += 1
            try:
                ok = self.changed.wait_for(lambda: not self.heavy, limit)
            finally:
                self.writers_pending -= 1
            if not ok:
                self.changed.notify_all()  # heavy readers held back by this writer may go on
                return False
            self.writers_waiting += 1
            try:
                left = None if until is None else max(until - time.monotonic(), 0.0)
                ok = self.changed.wait_for(lambda: self.writer is None and not self.readers and not self.pins, left)
            finally:
                self.writers_waiting -= 1
            if not ok:
                self.changed.notify_all()  # readers held back by this writer may go on
                return False
            self.writer = me
            self.view_safe = view_safe
            if view_safe:
                self.changed.notify_all()  # view reads that waited for this writer may go on
        self._local.writes = 1
        return True

    def release_write(self) -> None:
        """Give back the write taken by this thread."""
        self._local.writes -= 1
        if self._local.writes:
            return
        with self.changed:
            self.writer = None
            self.view_safe = self.store_open = False
            self.readers += self.blocked  # the readers that waited go in before the next writer
            self.heavy += self.heavy_blocked
            self.points += self.points_blocked
            self.blocked = self.heavy_blocked = self.points_blocked = 0
            self.grants += 1
            self.changed.notify_all()

    def open_store(self) -> None:
        """Admit store reads beside the running write: its shards have committed their data and go on
        to sync their saved segments (module docstring)."""
        with self.changed:
            self.store_open = True
            self.changed.notify_all()

    def end_views(self) -> None:
        """Admit no more view reads beside the running write (its publish step begins; ``view_ends``
        counts them: a view read that began before and ends after one may have read a shard after
        the publish with what the coordinator knew before it)."""
        with self.changed:
            self.view_safe = False
            self.view_ends += 1

    def point_read(self, read: Callable[[], T], view: bool = False) -> T:
        """``read()`` under a point read share (``view``: a view read). A view read that a write's publish
        step overlapped (``view_ends`` moved: it may have used the coordinator's state of before the
        write and a shard's of after it, as an alias resolved before a merge) is made again; the
        last of ``VIEW_READ_TRIES`` is a plain point read, which waits for the write's end."""
        for attempt in range(VIEW_READ_TRIES):
            as_view = view and attempt < VIEW_READ_TRIES - 1
            ends = self.view_ends
            with self.reading(point=True, view=as_view), view_call(as_view):
                try:
                    result = read()
                except SegengineError:
                    if not as_view or self.view_ends == ends:
                        raise
                    continue
                if not as_view or self.view_ends == ends:
                    return result
        raise AssertionError("unreachable: the last try is not a view read")

    def writing(self, timeout: float | None = None, view_safe: bool = False) -> ContextManager[None]:
        """Hold the write for the block (PublishTimeout if it cannot be had in time); ``view_safe``: view
        reads may go on beside it (see ``acquire_read``)."""
        return _holding(lambda limit: self.acquire_write(limit, view_safe), self.release_write, timeout)

    # -- captures ---------------------------------------------------------------------------
    @contextmanager
    def excluding_writers(self, timeout: float | None = None) -> Iterator[None]:
        """Keep writers out for the block while readers go on (a snapshot's capture)."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.writer is None and not self.writers_waiting,
                                         self._timeout(timeout)):
                raise PublishTimeout("deadline exceeded while waiting for the engine")
            self.pins += 1
        try:
            yield
        finally:
            with self.changed:
                self.pins -= 1
                self.changed.notify_all()


@contextmanager
def _holding(acquire: Callable[[float | None], bool], release: Callable[[], None],
             timeout: float | None) -> Iterator[None]:
    if not acquire(timeout):
        raise PublishTimeout("deadline exceeded while waiting for the engine")
    try:
        yield
    finally:
        release()


_calls = threading.local()


@contextmanager
def view_call(on: bool = True) -> Iterator[None]:
    """Mark the shard calls this thread makes in the block as view calls (a view read, or a write that
    leaves its membership switch to ``publish_view``: see the module docstring); the flag crosses to
    shard workers with each request (engine.shard.messages)."""
    before = in_view_call()
    _calls.view = on
    try:
        yield
    finally:
        _calls.view = before


def in_view_call() -> bool:
    """True inside ``view_call`` on this thread."""
    return getattr(_calls, "view", False)
