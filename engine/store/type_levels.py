"""An event type store's count levels (``engine.store.count_levels``): built in the background on
first use (``engine.store.levels_build``), worked out in an append's prepare and ORed in at its
commit, recounted after expiry. ``TypeLevels`` is a part of ``EventTypeStore``.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .append_plan import AppendPlan
from .count_levels import WHOLE_TYPE, CountLevels, build_levels
from .property_bitmaps import DAY_MS
from .runs import Run

if TYPE_CHECKING:
    from .events import EventTypeStore

#: Events per slice when count levels are built from the stored events.
LEVEL_BUILD_EVENTS = 1 << 20


class TypeLevels:
    """The count-level methods of ``EventTypeStore`` (see the module docstring)."""

    def _plan_levels(self: EventTypeStore, plan: AppendPlan) -> None:
        """Work out what the plan's events add to the kept count levels (commit ORs it in)."""
        day_of = plan.ts // DAY_MS
        for prop, kept in list(self.prop_bitmaps.items()):
            plan.bins[prop] = keys = self.bin_keys(prop, plan.props[prop], plan.valid.get(prop))
            if kept.levels is not None:
                plan.levels[prop] = (kept.levels, kept.levels.plan_add(keys, day_of, plan.rows, kept.days, kept.ever))
        if self.count_levels is not None:
            plan.levels[None] = (self.count_levels, self.count_levels.plan_add(
                np.zeros(len(plan.rows), np.int64), day_of, plan.rows, {WHOLE_TYPE: self.days}, {WHOLE_TYPE: self.ever}))

    def levels(self: EventTypeStore, prop: str | None = None) -> CountLevels | None:
        """The kept count levels of the whole type (``prop`` None: key WHOLE_TYPE, level 1 in ``days``
        and ``ever``) or of the bins of ``prop`` (level 1 in its PropertyBitmaps); None while they are
        being built (the first call starts the build: engine.store.levels_build)."""
        kept = None if prop is None else self.property_bitmaps(prop)
        levels = self.count_levels if kept is None else kept.levels
        if levels is None:
            self.level_builds.start(prop)
            levels = self.count_levels if kept is None else kept.levels
        return levels

    def install_levels(self: EventTypeStore, prop: str | None, levels: CountLevels) -> None:
        """Keep ``levels`` (exact for the events as they are) as the count levels of ``prop``."""
        if prop is None:
            self.count_levels = levels
        else:
            kept = self.prop_bitmaps.get(prop)
            if kept is not None:
                kept.levels = levels

    def build_levels(self: EventTypeStore, prop: str | None, runs: list[Run], pause_s: float = 0.0) -> CountLevels:
        """The count levels of the whole type or of ``prop``'s bins, computed from the events of ``runs``
        (in slices of LEVEL_BUILD_EVENTS events, so the build's scratch memory stays bounded; ``pause_s``
        between slices lets the threads of other calls run)."""
        def slices() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for run in runs:
                for start in range(0, len(run), LEVEL_BUILD_EVENTS):
                    yield self.keyed_events(prop, [run.slice(start, start + LEVEL_BUILD_EVENTS)])
                    if pause_s:
                        time.sleep(pause_s)

        return build_levels(slices())

    def keyed_events(self: EventTypeStore, prop: str | None, parts: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key, UTC day, row) of every event of ``parts`` but those of dead rows: the key is WHOLE_TYPE,
        or its bin of ``prop``."""
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.concatenate([part.rows for part in parts])
        days = np.concatenate([part.absolute_ts() for part in parts]) // DAY_MS
        keys = np.zeros(len(rows), np.int64) if prop is None else \
            np.concatenate([self.bin_keys(prop, part.props[prop], part.valid.get(prop)) for part in parts])
        if self.dead:  # the events of rows deleted by marking are not counted
            alive = ~self.dead_mask()[rows]
            keys, days, rows = keys[alive], days[alive], rows[alive]
        return keys, days, rows

    def expire_levels(self: EventTypeStore, edge_day: int) -> None:
        """Recount the kept count levels after the events before some instant of ``edge_day`` went."""
        kept_levels = [(None, self.count_levels)] + [(prop, kept.levels) for prop, kept in self.prop_bitmaps.items()]
        edge_parts = self.window(edge_day * DAY_MS, (edge_day + 1) * DAY_MS - 1)
        runs = self.runs
        for prop, levels in kept_levels:
            if levels is not None:
                edge_keys, _, edge_rows = self.keyed_events(prop, edge_parts)
                all_keys, _, all_rows = self.keyed_events(prop, runs)
                levels.expire(edge_day, edge_keys, edge_rows, all_keys, all_rows)

