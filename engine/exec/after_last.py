"""DID(e, AFTER LAST f) presence from per-row latest times, without a pass over e's events.

When the window reaches past e's newest event, "a row has an event of e in [lo, hi] after t_f"
is "its latest e time is after t_f and not before lo": one comparison of two kept per-row latest
times (``EventTypeStore.latest_before``) for each row that ever had both an e and an f event.
"""
from __future__ import annotations

import numba
import numpy as np
from pyroaring import BitMap

from ..store.bitmaps import rows_of, to_bitmap
from ..store.events import NO_TIME, EventTypeStore
from ..store.latest_times import time_at


@numba.njit(cache=True, nogil=True)
def later_rows(rows, low_e, high_e, epoch_e, low_f, high_f, epoch_f, earliest_f, lo):
    """The ``rows`` (ascending in, ascending out) whose latest e time is >= lo and after their
    latest f time, which must exist and be >= earliest_f (latest times: ``LatestTimes.parts``)."""
    out = np.empty(len(rows), dtype=np.uint32)
    n = 0
    for i in range(len(rows)):
        row = rows[i]
        t_f = time_at(low_f, high_f, epoch_f, row)
        t_e = time_at(low_e, high_e, epoch_e, row)
        if t_f != NO_TIME and t_f >= earliest_f and t_e > t_f and t_e >= lo:
            out[n] = row
            n += 1
    return out[:n]


def present_after_last(store: EventTypeStore, after: EventTypeStore, lo: int, hi: int, now: int, earliest: int,
                       found: BitMap | None) -> BitMap | None:
    """Rows with an event of ``store`` in [lo, hi] after their latest ``after`` event at or before
    ``now`` (and at or after ``earliest``); exact within ``found``. None unless ``hi`` reaches the
    newest event of ``store`` and both stores keep latest times at ``now``: the caller scans."""
    if lo > hi or not store.ever or not after.ever:
        return BitMap()
    if hi < store.max_ts or store.max_ts > now or after.max_ts > now:
        return None
    candidates = store.ever & after.ever
    if found is not None:
        candidates &= found
    if not candidates:
        return BitMap()
    size = max(int(store.ever.max()), int(after.ever.max())) + 1  # latest_before fills in every row's time
    latest_e = store.latest_before(now, size)
    latest_f = after.latest_before(now, size)
    return to_bitmap(later_rows(rows_of(candidates), *latest_e.parts, *latest_f.parts, earliest, lo), assume_sorted=True)
