"""Retention per event type against the oracle (tests/oracle_retention.py): the query-time rule
(DID, AFTER LAST, export) at several clocks, ``expire(now)`` and its durability, at 1 and 2 shards."""
from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, Schema
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA

try:
    from oracle_retention import RetentionStore
except ImportError:  # tests/ imported as a package
    from tests.oracle_retention import RetentionStore

DAY = 86_400_000
NOW = 1_800_000_000_000
SPEC = copy.deepcopy(CONTRACT_SCHEMA)
SPEC["events"]["page_view"]["retention"] = "3d"
SPEC["events"]["cart_abandoned"]["retention"] = "12h"
SCHEMA = Schema.from_dict(SPEC)
QUERIES = ["DID(page_view)", "DID(page_view, COUNT >= 2)", "DID(page_view, COUNT = 0)", "DID(cart_abandoned)",
           "DID(purchase, AFTER LAST cart_abandoned)", "DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
           "DID(page_view, WITHIN 5d)", "DID(purchase)", "DID(page_view, AFTER LAST purchase)",
           "SEQUENCE(page_view THEN cart_abandoned)", "SEQUENCE(page_view THEN purchase, SPAN 2d)",
           "SEQUENCE(cart_abandoned THEN page_view THEN purchase, WITHIN 5d)",
           "DID(cart_abandoned, SUM(cart_value) > 50)", "DID(cart_abandoned, MAX(cart_value) < 30)",
           "DID(purchase, AVG(amount) > 20)"]
CLOCKS = [NOW, NOW - DAY, NOW + DAY, NOW + 2 * DAY + 7]


def random_events(seed: int, count: int = 300) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = [{"id": f"p{rng.randrange(40)}", "event": rng.choice(["page_view", "cart_abandoned", "purchase"]),
               "ts": NOW - rng.randrange(-DAY, 6 * DAY)} for _ in range(count)]
    for event in events:
        if event["event"] == "cart_abandoned":
            event["cart_value"] = rng.choice([None, 10.0, 25.5, 60.0])
        elif event["event"] == "purchase":
            event["amount"] = rng.choice([None, 5.0, 19.99, 40.0])
    return events


def assert_matches(engine: Engine, oracle: RetentionStore, now: int) -> None:
    for text in QUERIES:
        expected = sorted(oracle.evaluate(bind(parse(text), SCHEMA), now))
        assert engine.ids(text, now=now) == expected, f"{text} at {now}"


@pytest.mark.parametrize("shards", [1, 2])
def test_retention_at_query_time_and_expire_match_the_oracle(shards: int) -> None:
    oracle = RetentionStore(SPEC)
    with Engine(SCHEMA, shards=shards) as engine:
        events = random_events(shards)
        engine.track_events(events)
        oracle.track(events)
        for now in CLOCKS:
            assert_matches(engine, oracle, now)
        assert engine.expire(NOW) == oracle.expire(NOW) > 0
        assert engine.expire(NOW) == 0
        for now in CLOCKS:  # an earlier clock never brings expired events back
            assert_matches(engine, oracle, now)
        assert engine.expire(NOW + DAY) == oracle.expire(NOW + DAY) > 0
        assert engine.stats()["events"] == sum(len(e) for e in oracle.events.values())
        for now in CLOCKS:
            assert_matches(engine, oracle, now)


def test_export_leaves_out_events_past_retention() -> None:
    with Engine(SCHEMA, shards=1) as engine:
        wall = time.time_ns() // 1_000_000
        engine.track_events([{"id": "a", "event": "page_view", "ts": wall - 4 * DAY},
                             {"id": "a", "event": "page_view", "ts": wall - DAY},
                             {"id": "a", "event": "purchase", "ts": wall - 40 * DAY}])
        assert [(e["event"], e["ts"]) for e in engine.export_profile("a")["events"]] == [
            ("purchase", wall - 40 * DAY), ("page_view", wall - DAY)]


def test_expire_is_durable_and_a_segment_follows_it(tmp_path: Path) -> None:
    with Engine(SCHEMA, shards=2, data_dir=str(tmp_path)) as engine:
        engine.clock = lambda: NOW
        engine.track_events([{"id": "old", "event": "page_view", "ts": NOW - 4 * DAY},
                             {"id": "new", "event": "page_view", "ts": NOW - DAY}])
        engine.create_segment("viewers", "DID(page_view)")
        assert engine.expire(NOW) == 1
        assert engine.ids("SEGMENT('viewers')", now=NOW) == ["new"]
    with Engine(SCHEMA, shards=2, data_dir=str(tmp_path)) as engine:
        assert engine.stats()["events"] == 1
        assert engine.ids("DID(page_view)", now=NOW - 3 * DAY) == []  # deleted for good
