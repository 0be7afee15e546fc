"""The generator's data in chunks, for data sets larger than memory (100M profiles and more).

``generate_chunks`` yields one :class:`~loaders.generator.Dataset` per ``chunk`` profiles: chunk
``k`` holds the profiles ``u{start:08d}`` ... with the same distributions as ``generate`` and its
share of the events (each event belongs to a profile of its own chunk). A chunk is a function of
(seed, k, the sizes, now) only, so two processes regenerate the same data without sharing it,
and memory stays bounded by one chunk.

>>> chunks = list(generate_chunks(250, 1000, seed=3, now_ms=1_800_000_000_000, chunk=100))
>>> [(c.profiles.ids[0], len(c.profiles), sum(len(b) for b in c.events)) for c in chunks]
[('u00000000', 100, 400), ('u00000100', 100, 400), ('u00000200', 50, 200)]
>>> again = next(generate_chunks(250, 1000, seed=3, now_ms=1_800_000_000_000, chunk=100, first=1))
>>> again.profiles.ids[:2], again.events[0].ids[:1] == chunks[1].events[0].ids[:1]
(['u00000100', 'u00000101'], True)
"""
from __future__ import annotations

import copy
import time
from typing import Iterator

import numpy as np

from engine.columns import ProfileBatch

from .generator import DEMO_SCHEMA, Dataset, _events, _profiles


def chunk_bounds(profiles: int, events: int, chunk: int) -> list[tuple[int, int, int]]:
    """(first profile, profiles, events) of each chunk: events shared in proportion, the last takes the rest."""
    if profiles < 0 or events < 0 or chunk < 1:
        raise ValueError("profiles and events must be >= 0 and chunk >= 1")
    if events and not profiles:
        raise ValueError("events need at least one profile")
    bounds, given = [], 0
    for start in range(0, profiles, chunk):
        size = min(chunk, profiles - start)
        share = events - given if start + size == profiles else events * (start + size) // profiles - given
        bounds.append((start, size, share))
        given += share
    return bounds


def generate_chunks(profiles: int, events: int, seed: int = 0, now_ms: int | None = None,
                    chunk: int = 1_000_000, first: int = 0, events_too: bool = True) -> Iterator[Dataset]:
    """The chunks ``first``, ``first + 1``, ... of a ``profiles`` / ``events`` data set (see the module doc).

    ``events_too=False`` leaves the events out (the profiles are the same), for a loader that
    loads every profile before any event.
    """
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    for k, (start, size, share) in enumerate(chunk_bounds(profiles, events, chunk)):
        if k < first:
            continue
        rng = np.random.default_rng([seed, k])
        batch, activity = _profiles(rng, size, now)
        ids = [f"u{i:08d}" for i in range(start, start + size)]
        batch = ProfileBatch(ids, batch.columns, batch.consents)
        events = _events(rng, ids, activity, share, now) if events_too else []
        yield Dataset(copy.deepcopy(DEMO_SCHEMA), now, batch, events)
