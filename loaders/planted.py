"""A hidden group planted in a generated dataset, to measure lookalike quality honestly.

The group is a random ``share`` of the profiles. Each member is given each of the four parts of
``PATTERN`` independently with probability ``keep`` (otherwise it keeps its generated values,
which may or may not satisfy that part):

- ``age BETWEEN 25 AND 40`` (an age drawn uniformly in 25..40),
- ``country IN ('ES', 'NL')`` (one of the two, evenly),
- ``DID(purchase, COUNT >= 2, WITHIN 30d)`` (two or three carts ending in a purchase, each an
  ``add_to_cart`` followed minutes later by its ``purchase``, in the 28 days before ``now``),
- ``interests HAS 'travel'`` (the tag added to the member's set).

No single part captures the group (each holds for many non-members and misses many members),
and with the default ``keep = 0.6`` only about 13% of the members satisfy the whole pattern. Planting uses its own random stream, so
the rest of the dataset is the one ``generate`` makes without it, plus the planted events.

>>> from loaders.generator import generate
>>> ds = generate(1000, 5000, seed=3, now_ms=1_800_000_000_000, plant=PlantedGroup(share=0.05))
>>> len(ds.planted), sum(len(batch) for batch in ds.events) > 5000
(50, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.columns import CategoryColumn, EventBatch, ProfileBatch, TagsColumn, ValueColumn

#: The four parts of the planted pattern (a member satisfies each with probability ``keep``).
PARTS = ("age BETWEEN 25 AND 40", "country IN ('ES', 'NL')", "DID(purchase, COUNT >= 2, WITHIN 30d)",
         "interests HAS 'travel'")
#: The planted group's pattern, as a query.
PATTERN = " AND ".join(PARTS)
DAY_MS = 86_400_000


@dataclass(frozen=True)
class PlantedGroup:
    """Options of the planted group: its share of the profiles and the chance of each pattern part."""

    share: float = 0.02
    keep: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0 or not 0.0 <= self.keep <= 1.0:
            raise ValueError("share must be in (0, 1) and keep in [0, 1]")


def plant(profiles: ProfileBatch, events: list[EventBatch], group: PlantedGroup, seed: int,
          now: int) -> list[str]:
    """Plant ``group`` into ``profiles`` and ``events`` (changed in place); returns the members' ids, sorted."""
    rng = np.random.default_rng([seed, 0x1007A11C])
    n = len(profiles)
    members = np.sort(rng.choice(n, size=int(round(n * group.share)), replace=False)) if n else np.zeros(0, np.int64)
    parts = rng.random((4, len(members))) < group.keep
    _set_age(profiles.columns["age"], members[parts[0]], rng)
    _set_country(profiles.columns["country"], members[parts[1]], rng)
    _add_purchases(events, [profiles.ids[i] for i in members[parts[2]].tolist()], rng, now)
    _add_tag(profiles.columns["interests"], members[parts[3]], "travel")
    return [profiles.ids[i] for i in members.tolist()]


def _set_age(column: ValueColumn, rows: np.ndarray, rng: np.random.Generator) -> None:
    column.values[rows] = rng.integers(25, 41, len(rows))
    column.valid[rows] = True


def _set_country(column: CategoryColumn, rows: np.ndarray, rng: np.random.Generator) -> None:
    codes = np.array([column.labels.index("ES"), column.labels.index("NL")], dtype=np.int32)
    column.codes[rows] = codes[rng.integers(0, 2, len(rows))]


def _add_tag(column: TagsColumn, rows: np.ndarray, tag: str) -> None:
    """Add ``tag`` to the sets of ``rows`` (a null set becomes ``[tag]``)."""
    code = column.labels.index(tag)
    counts = np.diff(column.offsets)
    has = np.zeros(len(counts), dtype=bool)
    owners = np.repeat(np.arange(len(counts)), counts)
    has[owners[column.values == code]] = True
    rows = rows[~(has[rows] & column.valid[rows])]
    column.values = np.insert(column.values, column.offsets[rows + 1], np.int32(code)).astype(np.int32)
    counts[rows] += 1
    column.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    column.valid[rows] = True


def _add_purchases(events: list[EventBatch], ids: list[str], rng: np.random.Generator, now: int) -> None:
    """Two or three carts per id, each an add_to_cart then its purchase, within the 28 days before ``now``."""
    per_id = 2 + (rng.random(len(ids)) < 0.3)
    owners = np.repeat(np.array(ids, dtype=object), per_id).tolist()
    k = len(owners)
    bought = now - rng.integers(3_600_000, 28 * DAY_MS, k)
    carted = bought - rng.integers(60_000, 1_800_000, k)
    by_type = {batch.event: batch for batch in events}
    categories = by_type["purchase"].props["category"].labels
    category = rng.integers(0, len(categories), k).astype(np.int32)
    amount = np.round(rng.lognormal(np.log(60.0), 0.9, k), 2)
    _append(by_type["add_to_cart"], owners, carted, {"category": category, "cart_value": amount})
    _append(by_type["purchase"], owners, bought, {"category": category, "amount": amount})


def _append(batch: EventBatch, ids: list[str], ts: np.ndarray, values: dict[str, np.ndarray]) -> None:
    batch.ids = batch.ids + ids
    batch.ts = np.concatenate([batch.ts, ts.astype(np.int64)])
    for name, column in batch.props.items():
        if isinstance(column, CategoryColumn):
            column.codes = np.concatenate([column.codes, values[name]]).astype(np.int32)
        else:
            column.values = np.concatenate([column.values, values[name].astype(column.values.dtype)])
            column.valid = np.concatenate([column.valid, np.ones(len(ids), dtype=bool)])
