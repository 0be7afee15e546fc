"""The engine's record of its saved segments' sizes over time (the data of ``Engine.segment_history``).

After every write with a clock and every refresh, the coordinator reads each shard's member
counts and notes them in a ``SizeHistory`` (engine.segment_history); with a data directory the
history is kept in ``DATA_DIR/history`` (engine.persist.history_store).
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

from .commands import Command, DeleteSegment
from .errors import ShardError
from .segment_history import SizeHistory

if TYPE_CHECKING:
    from .engine import Engine
    from .persist.history_store import HistoryStore
    from .segment_catalog import SegmentDef

log = logging.getLogger("segengine.engine")


class SegmentSizes:
    """Every saved segment's size over time, read from the shards of ``engine``."""

    def __init__(self, engine: Engine, durable: bool):
        self._engine = weakref.ref(engine)  # no reference cycle: a dropped engine frees its shards at once
        self.history = SizeHistory(durable=durable)
        self.store: HistoryStore | None = None

    @property
    def engine(self) -> Engine:
        """The engine whose segments these are."""
        engine = self._engine()
        assert engine is not None, "segment sizes outlived their engine"
        return engine

    def current(self) -> dict[str, int]:
        """Every saved segment's member count now (call under the publish lock)."""
        sizes: dict[str, int] = {}
        for part in self.engine.shards.call_all("segment_sizes"):
            for name, size in part.items():
                sizes[name] = sizes.get(name, 0) + size
        return sizes

    def observe(self, at: int) -> None:
        """Note every saved segment's size at clock ``at`` (after a refresh)."""
        self.history.observe(at, self.current())

    def after_write(self, command: Command, definition: SegmentDef | None) -> None:
        """After applying ``command``: note the saved segments' sizes at its clock (``definition``: a
        segment it created)."""
        if isinstance(command, DeleteSegment):
            self.history.drop(command.name)
            return
        now = getattr(command, "now", None)
        if now is None or not len(self.engine.catalog):
            return
        try:
            sizes = self.current()
        except ShardError:  # the write is applied: its caller gets its result; the next write notes the sizes
            log.warning("reading segment sizes after a write failed; their history misses this write", exc_info=True)
            return
        if definition is not None:
            self.history.start(definition.name, now, sizes[definition.name],
                               self.history.stamp(definition.text, definition.updated_ms))
        self.history.observe(now, sizes)

    def open(self, data_dir: str) -> None:
        """Load the stored histories of the recovered segments, note their sizes now, start flushing."""
        from .persist.history_store import HistoryStore

        engine = self.engine
        self.store = HistoryStore(os.path.join(data_dir, "history"), self.history)
        definitions = [engine.catalog.get(name) for name in engine.catalog.order]
        self.store.load({d.name: self.history.stamp(d.text, d.updated_ms) for d in definitions})
        if definitions:
            with engine.publish.reading():
                sizes = self.current()
                infos = [info for part in engine.shards.call_all("segment_infos") for info in part]
            at = max(info["as_of_ms"] for info in infos) or engine.clock()  # the recovered segments' clock
            for d in definitions:
                if d.name not in self.history.series:
                    self.history.start(d.name, at, sizes[d.name], self.history.stamp(d.text, d.updated_ms))
            self.history.observe(at, sizes)
        self.store.start()

    def points(self, name: str, since: int | None, until: int | None) -> list[tuple[int, int]]:
        """``(time ms, size)`` points of ``name`` with ``since <= time <= until``."""
        return self.history.points(name, since, until)

    def close(self) -> None:
        """Flush and close the durable store, if any."""
        if self.store is not None:
            self.store.close()
