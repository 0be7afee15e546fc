"""Plain counters the engine keeps about itself, for a server to export (no metrics library here).

``LatencyHistogram`` counts durations into fixed buckets (cumulative on read, as Prometheus
histograms are); ``WriteCounters`` counts applied write batches and records by command kind.
Both are updated by one thread at a time (the log committer, the write path) and read by any:
a reader may see a count one update behind, never a torn one.

>>> h = LatencyHistogram((0.001, 0.01))
>>> for seconds in (0.0005, 0.002, 0.5):
...     h.observe(seconds)
>>> h.cumulative(), h.count, round(h.total, 4)
([1, 2, 3], 3, 0.5025)
>>> w = WriteCounters()
>>> w.add("events", 3); w.add("events", 2)
>>> w.totals()
{'events': (2, 5)}
"""
from __future__ import annotations

import bisect
import threading

#: Bucket upper bounds (seconds) of the log's commit latency: an fsync'd commit takes ~0.5 ms.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """Durations (seconds) counted into buckets with upper bounds ``bounds`` (and one over the last)."""

    def __init__(self, bounds: tuple[float, ...] = COMMIT_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[int]:
        """Counts of durations <= each bound, then of all (the last entry)."""
        out, running = [], 0
        for n in list(self.counts):
            running += n
            out.append(running)
        return out


class WriteCounters:
    """Applied write batches and records, by command kind (``engine.commands``)."""

    def __init__(self) -> None:
        self._by_kind: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, records: int) -> None:
        """Count one applied batch of ``records`` records."""
        with self._lock:
            batches, total = self._by_kind.get(kind, (0, 0))
            self._by_kind[kind] = (batches + 1, total + records)

    def totals(self) -> dict[str, tuple[int, int]]:
        """``{kind: (batches, records)}`` so far."""
        with self._lock:
            return dict(self._by_kind)
