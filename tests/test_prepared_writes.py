"""A write's prepare phase (engine/shard/prepared.py): the same result as the whole write, and
readers go on while it runs."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from engine import Engine, Schema
from engine.columns import EventBatch, column_from_values
from engine.plan_cache import PlanCache
from engine.schema import CONTRACT_SCHEMA
from engine.shard.local import LocalShard
from engine.store.events import DAY_MS
from shard_hooks import Delays

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
PLANS = PlanCache(SCHEMA)
NOW = 1_764_000_000_000  # a clock in the middle of a UTC day
SEGMENTS = {
    "viewed_shoes_today": "DID(page_view WHERE category = 'shoes', WITHIN 1d)",
    "viewed_twice": "DID(page_view, COUNT >= 2, WITHIN 7d)",
    "fr_viewers": "country = 'FR' AND DID(page_view, WITHIN 2h)",
    "never_viewed": "NOT DID(page_view)",
}
QUERIES = [*SEGMENTS.values(), "DID(page_view, WITHIN 10m)", "DID(page_view WHERE category = 'toys', COUNT = 1)",
           "DID(page_view, AFTER LAST page_view, COUNT = 0)", "ALL"]


@pytest.fixture(autouse=True, scope="module")
def levels_built_by_the_caller() -> Iterator[None]:
    """Count levels are built by the query that first wants them, so prepared writes grow them and
    the answers compared (stats included) do not depend on a background build's progress."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGENGINE_LEVELS_SYNC", "1")
        yield


def page_views(rng: np.random.Generator, ids: list[str], spread_ms: int, labels: list[str],
               event_ids: bool = False) -> EventBatch:
    """Page views of ``ids`` (as given, repeats included) over the ``spread_ms`` before NOW."""
    ts = (NOW - rng.integers(0, spread_ms, len(ids))).astype(np.int64)
    category = column_from_values("category", [labels[i] for i in rng.integers(0, len(labels), len(ids)).tolist()])
    eids = [f"e{i}" for i in rng.integers(0, 50, len(ids)).tolist()] if event_ids else None
    return EventBatch("page_view", ids, ts, {"category": category}, eids)


def writes(rng: np.random.Generator) -> list[EventBatch]:
    """Batches with repeated, known and new ids, a new label, event ids, and two days of events."""
    known = [f"u{i}" for i in range(300)]
    return [
        page_views(rng, [known[i] for i in rng.integers(0, 300, 6000).tolist()], 3_600_000, ["shoes", "tech"]),
        page_views(rng, [f"u{i}" for i in rng.integers(200, 500, 5000).tolist()], 2 * DAY_MS, ["shoes", "tech"]),
        page_views(rng, [f"n{i}" for i in range(40)] + known[:10], 600_000, ["toys"]),  # a new label
        page_views(rng, known[:100], DAY_MS, ["shoes"], event_ids=True),
        page_views(rng, [f"u{i}" for i in rng.integers(0, 700, 8000).tolist()], 3 * DAY_MS, ["shoes", "toys"]),
    ]


def new_shard() -> LocalShard:
    shard = LocalShard(SCHEMA, 0)
    shard.apply_logged(1, "upsert", ([SCHEMA.validate_profile({"id": f"u{i}", "country": "FR" if i % 3 else "BE"}, i)
                                      for i in range(300)], NOW))
    for n, (name, query) in enumerate(SEGMENTS.items()):
        shard.apply_logged(2 + n, "create_segment", (name, query, PLANS.get(query), NOW, False))
    return shard


def answers(shard: LocalShard) -> dict[str, Any]:
    """Everything the tests compare: query answers, segment members, stats and a few exports."""
    return {
        "ids": [shard.ids(PLANS.get(q), NOW) for q in QUERIES],
        "segments": {name: sorted(shard.segment_rows(name)) for name in SEGMENTS},
        "stats": shard.stats(),
        "exports": [shard.export_profile(i) for i in ("u1", "u250", "n3", "u650")],
    }


def test_prepared_writes_apply_exactly_as_whole_writes():
    rng = np.random.default_rng(4)
    batches = writes(rng)
    prepared, whole = new_shard(), new_shard()
    for shard in (prepared, whole):  # both keep the slot bitmaps of today, so appends maintain them
        shard.events.types["page_view"].ensure_slots(NOW // DAY_MS)
    outcomes = []
    for seq, batch in enumerate(batches, start=10):
        outcomes.append(prepared.prepare_logged(seq, "load_events", (batch, NOW)))
        assert prepared.apply_logged(seq, "load_events", (batch, NOW)) == whole.apply_logged(seq, "load_events",
                                                                                              (batch, NOW))
    assert outcomes == [True] * 5
    assert prepared.events.types["page_view"].slots == whole.events.types["page_view"].slots
    assert answers(prepared) == answers(whole)


def test_a_plan_that_no_longer_fits_is_worked_out_again():
    rng = np.random.default_rng(5)
    first, second = page_views(rng, [f"x{i}" for i in range(50)], 600_000, ["shoes"]), \
        page_views(rng, [f"x{i % 80}" for i in range(5000)], DAY_MS, ["tech"])
    shard, reference = new_shard(), new_shard()
    # prepared against the state before ``first``, which creates rows the plan does not know of
    assert shard.prepare_logged(11, "load_events", (second, NOW))
    shard.apply_logged(10, "load_events", (first, NOW))
    shard.apply_logged(11, "load_events", (second, NOW))
    # a day whose slots a query starts keeping between the prepare and the commit
    third = page_views(rng, [f"u{i}" for i in range(200)], 3_600_000, ["toys"])
    assert shard.prepare_logged(12, "load_events", (third, NOW))
    shard.events.types["page_view"].ensure_slots(NOW // DAY_MS)
    shard.apply_logged(12, "load_events", (third, NOW))
    for seq, batch in ((10, first), (11, second), (12, third)):
        if seq == 12:
            reference.events.types["page_view"].ensure_slots(NOW // DAY_MS)
        reference.apply_logged(seq, "load_events", (batch, NOW))
    assert shard.events.types["page_view"].slots == reference.events.types["page_view"].slots
    assert answers(shard) == answers(reference)


def test_a_prepare_is_not_taken_for_a_write_already_applied():
    shard = new_shard()
    batch = page_views(np.random.default_rng(6), ["u1", "u2"], 1000, ["shoes"])
    assert shard.prepare_logged(10, "load_events", (batch, NOW))
    assert shard.apply_logged(10, "load_events", (batch, NOW)) == 2
    assert not shard.prepare_logged(10, "load_events", (batch, NOW))  # replayed: nothing to prepare
    assert not shard.prepare_logged(11, "upsert", ([], NOW))  # no prepare phase for this write
    assert shard.stats()["events"] == 2


def test_reads_go_on_while_an_in_process_shard_prepares_a_write():
    with Engine(SCHEMA, shards=1, backend="local") as engine:
        engine.upsert_profiles([{"id": "u1", "country": "FR"}])
        shard = engine.shards[0]
        entered, release = threading.Event(), threading.Event()
        prepare = shard.prepare_logged

        def held_prepare(*args: Any) -> bool:  # the test's hook: the prepare waits for the test
            entered.set()
            assert release.wait(30)
            return prepare(*args)

        shard.prepare_logged = held_prepare
        batch = page_views(np.random.default_rng(7), ["u1", "u2", "u3"], 1000, ["shoes"])
        writer = threading.Thread(target=engine.load_events, args=(batch,))
        writer.start()
        try:
            assert entered.wait(30)
            assert engine.count("DID(page_view)", now=NOW) == 0  # the write is being prepared: not seen yet
            assert engine.count("ALL", now=NOW) == 1
            assert writer.is_alive()
        finally:
            release.set()
            writer.join(30)
        assert engine.count("DID(page_view)", now=NOW) == 3


def test_reads_go_on_while_a_worker_prepares_a_write(monkeypatch, tmp_path):
    delays = Delays.install(monkeypatch, tmp_path)
    with Engine(SCHEMA, shards=2, backend="process") as engine:
        engine.upsert_profiles([{"id": f"u{i}", "country": "FR"} for i in range(20)])
        for shard_no in range(2):
            delays.set(shard_no, 5.0, "prepare_logged")
        batch = page_views(np.random.default_rng(8), [f"u{i}" for i in range(20)], 1000, ["shoes"])
        writer = threading.Thread(target=engine.load_events, args=(batch,))
        writer.start()
        time.sleep(0.5)  # the write is in its prepare by now (it waits 5 s there)
        try:
            for _ in range(5):  # each answered while both workers sleep in their prepare
                assert engine.count("DID(page_view)", now=NOW) == 0
                assert engine.membership("u3") == []
            assert writer.is_alive()
        finally:
            writer.join(60)
        assert engine.count("DID(page_view)", now=NOW) == 20
