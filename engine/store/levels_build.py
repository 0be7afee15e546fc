"""Count levels built in the background, so no call waits for a build.

The first query that could use an event type's count levels (``engine.store.count_levels``) and
finds them missing starts their build on a thread of lower OS priority and counts the events
itself meanwhile; later queries use the levels once they are installed. Built from every stored
event, the levels of a large store take seconds (about 10 s for 50M events), and no reader,
writer or point read may queue behind that.

Writes go on during a build. An append only adds events to its rows, so the build records the
rows each committed append touched; when the build is done it recounts those rows from the
events as they are then (their old levels dropped, their new ones joined) and repeats for the
rows touched meanwhile, a few rounds, the last one holding the lock that commits take: then the
levels are exact for the store as it is and are installed. Any other change to the events
(erasure, a merge's removals, expiry, a re-encoded property) makes a running build stale: it is
dropped, and the next query that wants the levels starts a new one.

``SEGENGINE_LEVELS_SYNC=1`` builds in the calling thread instead (tests that must reach the
levels' code paths on the first query).
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..priority import lower_thread_priority
from .bitmaps import to_bitmap
from .count_levels import CountLevels

if TYPE_CHECKING:
    from .events import EventTypeStore

log = logging.getLogger("segengine")

#: How much lower the builder thread's OS priority is than the shard's.
BUILD_NICE = 10
#: Catch-up rounds outside the commit lock before the last one, taken holding it.
CATCH_UP_ROUNDS = 3
#: The builder's pause between slices of events, so the threads of calls get the interpreter.
PAUSE_S = 0.002


def synchronous() -> bool:
    """True if builds run in the calling thread (``SEGENGINE_LEVELS_SYNC=1``)."""
    return os.environ.get("SEGENGINE_LEVELS_SYNC", "") == "1"


@dataclass
class _Build:
    """One build in progress: the levels of ``prop`` (None: the whole type)."""

    prop: str | None
    touched: list[np.ndarray] = field(default_factory=list)  # rows of the appends committed since it began
    stale: bool = False


class LevelBuilds:
    """The count-level builds of one event type store. ``lock`` is held by every commit that changes
    the store's events (``EventTypeStore.commit_append``) while it changes them, so a build sees
    each commit whole."""

    def __init__(self, store: EventTypeStore):
        self._store = weakref.ref(store)  # the store owns this object: no reference cycle keeps it alive
        self.lock = threading.Lock()
        self.running: dict[str | None, _Build] = {}

    @property
    def store(self) -> EventTypeStore:
        """The store whose levels these builds are."""
        store = self._store()
        assert store is not None, "a store's level builds outlived it"
        return store

    def start(self, prop: str | None) -> None:
        """Build the levels of ``prop`` unless a build is running (in this thread if ``synchronous()``)."""
        if synchronous():
            with self.lock:
                self.store.install_levels(prop, self.store.build_levels(prop, self.store.runs))
            return
        with self.lock:
            if prop in self.running:
                return
            build = self.running[prop] = _Build(prop)
            runs = self.store.runs
        threading.Thread(target=self._run, args=(build, runs), name=f"levels-{prop or 'type'}", daemon=True).start()

    def building(self) -> int:
        """How many builds are running."""
        return len(self.running)

    def appended(self, rows: np.ndarray) -> None:
        """A commit appended events to ``rows`` (hold ``lock``)."""
        for build in self.running.values():
            build.touched.append(rows)

    def invalidate(self) -> None:
        """The events changed other than by an append: running builds are dropped (hold ``lock``)."""
        for build in self.running.values():
            build.stale = True
        self.running.clear()

    def _run(self, build: _Build, runs: list) -> None:
        lower_thread_priority(BUILD_NICE)
        store = self._store()  # held for the build
        if store is None:  # the store was dropped (its engine closed) before the build began
            return
        try:
            levels = store.build_levels(build.prop, runs, PAUSE_S)
            seen = 0
            for _ in range(CATCH_UP_ROUNDS):
                with self.lock:
                    if build.stale:
                        return
                    upto, runs = len(build.touched), store.runs
                    if upto == seen:
                        self._install(build, levels)
                        return
                self._catch_up(levels, build.prop, build.touched[seen:upto], runs)
                seen = upto
            with self.lock:  # the last round holds the lock: no commit meanwhile
                if build.stale:
                    return
                if len(build.touched) > seen:
                    self._catch_up(levels, build.prop, build.touched[seen:], store.runs)
                self._install(build, levels)
        except Exception:  # a build that fails is dropped; queries keep counting the events
            log.exception("count levels of %s: the build failed", build.prop or "the event type")
            with self.lock:
                if self.running.get(build.prop) is build:
                    del self.running[build.prop]

    def _install(self, build: _Build, levels: CountLevels) -> None:
        """Publish the levels of a build that is exact for the store as it is (hold ``lock``)."""
        self.store.install_levels(build.prop, levels)
        del self.running[build.prop]

    def _catch_up(self, levels: CountLevels, prop: str | None, touched: list[np.ndarray], runs: list) -> None:
        """Recount the rows of ``touched`` from ``runs`` into ``levels``."""
        rows = np.unique(np.concatenate(touched)) if len(touched) > 1 else np.unique(touched[0])
        if len(rows) == 0:
            return
        levels.drop(to_bitmap(rows))
        flag = np.zeros(int(rows[-1]) + 1, dtype=bool)
        flag[rows] = True
        parts = []
        for run in runs:
            inside = run.rows < len(flag)
            picks = np.flatnonzero(inside & flag[np.where(inside, run.rows, 0)])
            if len(picks):
                parts.append(run.take(picks))
        levels.join(self.store.build_levels(prop, parts))
