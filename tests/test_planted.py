"""The planted group of the generator (loaders/planted.py): opt-in, and it changes only its members."""
from __future__ import annotations

import numpy as np

from engine import Engine, Schema
from loaders.generator import generate
from loaders.planted import PARTS, PlantedGroup
from loaders.writer import dataset_records

NOW = 1_795_168_800_000


def records(ds) -> tuple[list, list]:
    profiles, events = dataset_records(ds)
    return list(profiles), list(events)


def test_planting_changes_only_the_members_and_adds_their_purchases():
    plain = generate(2000, 12_000, seed=4, now_ms=NOW)
    planted = generate(2000, 12_000, seed=4, now_ms=NOW, plant=PlantedGroup(share=0.05))
    assert plain.planted == [] and len(planted.planted) == 100 and planted.planted == sorted(planted.planted)
    members = set(planted.planted)
    plain_profiles, planted_profiles = records(plain)[0], records(planted)[0]
    assert [p for p in plain_profiles if p["id"] not in members] == \
        [p for p in planted_profiles if p["id"] not in members]
    for before, after in zip(plain.events, planted.events):
        assert after.ids[:len(before)] == before.ids and np.array_equal(after.ts[:len(before)], before.ts)
        added = after.ids[len(before):]
        assert set(added) <= members
        if before.event in ("page_view", "cart_abandoned"):
            assert added == []
    carts, bought = (len(b.ids) - len(a.ids) for a, b in zip(plain.events[1::2], planted.events[1::2]))
    assert carts == bought > 0  # each planted purchase follows its own add_to_cart


def test_members_satisfy_each_part_more_often_than_the_rest():
    """Each part is given with probability 0.6 (80 members here: some sampling noise)."""
    ds = generate(4000, 30_000, seed=6, now_ms=NOW, plant=PlantedGroup())
    members = set(ds.planted)
    with Engine(Schema.from_dict(ds.schema), shards=1) as eng:
        eng.load_profiles(ds.profiles)
        for batch in ds.events:
            eng.load_events(batch)
        for part in PARTS:
            hits = set(eng.ids(part, now=NOW))
            inside = len(hits & members) / len(members)
            outside = len(hits - members) / (4000 - len(members))
            assert inside >= 0.5 and inside > 1.5 * outside, (part, inside, outside)
