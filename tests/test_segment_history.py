"""Segment size history (engine.segment_history, engine.persist.history_store): exact points under writes,
clock refreshes, the one-point-a-second throttle, thinning after a day, 90-day expiry, deletes, replaces,
restarts and a kill -9."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.errors import SegmentNotFound
from engine.schema import CONTRACT_SCHEMA
from engine.segment_history import DAY_MS, KEEP_MS, MINUTE_MS, SizeHistory

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
T = 1_795_168_800_000  # 2026-11-20T10:00:00Z
HOUR = 3_600_000
ROOT = str(Path(__file__).resolve().parents[1])


class Clock:
    """A settable engine clock."""

    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def naive(raw: list[tuple[int, int]], now: int) -> list[tuple[int, int]]:
    """The history of points ``raw`` (one a second, sizes changing) at clock ``now``, computed at once."""
    old = [p for p in raw if p[0] < now - DAY_MS]
    new = [p for p in raw if p[0] >= now - DAY_MS]
    thinned = [p for i, p in enumerate(old) if i + 1 == len(old) or old[i + 1][0] // MINUTE_MS != p[0] // MINUTE_MS]
    kept: list[tuple[int, int]] = []
    for p in thinned:
        if not kept or kept[-1][1] != p[1]:
            kept.append(p)
    return [p for p in kept + new if p[0] >= now - KEEP_MS]


# -- the model --------------------------------------------------------------------------------
def test_one_point_a_second_the_latest_size_wins() -> None:
    history = SizeHistory()
    history.start("s", T + 100, 0)
    history.observe(T + 900, {"s": 5})  # same second as the start: replaces it
    history.observe(T + 1_200, {"s": 6})
    history.observe(T + 1_500, {"s": 7})  # replaces (T + 1_200, 6)
    history.observe(T + 2_100, {"s": 8})
    history.observe(T + 2_900, {"s": 7})  # back to the previous point's size within the second: no point
    history.observe(T + 3_000, {"s": 7})  # unchanged
    assert history.points("s") == [(T + 900, 5), (T + 1_500, 7)]
    assert history.points("s", since=T + 1_000) == [(T + 1_500, 7)]
    assert history.points("s", until=T + 900) == [(T + 900, 5)]
    assert history.points("unknown") == []


def test_points_older_than_a_day_keep_the_last_of_each_minute() -> None:
    history = SizeHistory()
    m = T - T % MINUTE_MS
    history.start("s", m + 1_000, 1)
    for at, size in [(m + 20_000, 2), (m + 59_000, 3), (m + 61_000, 4), (m + 62_000, 3), (m + 120_500, 5)]:
        history.observe(at, {"s": size})
    assert len(history.points("s")) == 6
    history.observe(m + DAY_MS + 60_999, {})  # the first minute is older than a day, the second half of it
    assert history.points("s") == [(m + 59_000, 3), (m + 61_000, 4), (m + 62_000, 3), (m + 120_500, 5)]
    history.observe(m + DAY_MS + 62_001, {})  # the second minute's points are all old: its last is 3, as before
    assert history.points("s") == [(m + 59_000, 3), (m + 120_500, 5)]
    history.observe(m + KEEP_MS + 60_000, {})  # more than 90 days after m + 59_000
    assert history.points("s") == [(m + 120_500, 5)]
    history.observe(m + KEEP_MS + 120_501, {})
    assert history.points("s") == []


def test_thinning_step_by_step_equals_thinning_at_once() -> None:
    rng = random.Random(5)
    for _ in range(20):
        history = SizeHistory()
        raw: list[tuple[int, int]] = []
        at, size = T, 0
        history.start("s", at, size)
        raw.append((at, size))
        for _ in range(300):
            at += rng.choice([1_000, 7_000, 30_000, 65_000, HOUR, DAY_MS // 3])
            size = size + rng.choice([-1, 1]) if rng.random() < 0.9 else size
            history.observe(at, {"s": size})
            if raw[-1][1] != size:
                raw.append((at, size))
            if rng.random() < 0.2:
                assert history.points("s") == naive(raw, at)
        assert history.points("s") == naive(raw, at)


# -- the engine -------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 2])
def test_writes_and_refreshes_make_points_at_the_engine_clock(shards: int) -> None:
    clock = Clock(T)
    with Engine(SCHEMA, shards=shards, backend="local") as eng:  # two in-process shards: sizes are summed
        eng.clock = clock
        eng.create_segment("fr", "country = 'FR'")
        eng.create_segment("carted", "DID(cart_abandoned, WITHIN 1h)")
        clock.now = T + 1_000
        eng.upsert_profiles([{"id": f"u{i}", "country": "FR"} for i in range(3)])
        clock.now = T + 1_400
        eng.upsert_profiles([{"id": "u9", "country": "FR"}, {"id": "u0", "country": "BE"}])  # 3 -> 3: no point
        clock.now = T + 2_500
        eng.track_events([{"id": "u1", "event": "cart_abandoned", "ts": T + 2_000},
                          {"id": "u2", "event": "cart_abandoned", "ts": T + 2_400}])
        clock.now = T + 3_000
        eng.upsert_profiles([{"id": "u1", "country": None}])
        eng.refresh_segments(now=T + 2_000 + HOUR)  # u1's event leaves the window
        assert eng.segment_history("carted")[-1] == (T + 2_000 + HOUR, 1)
        eng.refresh_segments(now=T + 2_400 + HOUR)  # u2's too, in the same second: that second's point is 0
        assert eng.segment_history("fr") == [(T, 0), (T + 1_000, 3), (T + 3_000, 2)]
        assert eng.segment_history("carted") == [(T, 0), (T + 2_500, 2), (T + 2_400 + HOUR, 0)]
        assert eng.segment_history("carted", since=T + 2_500, until=T + 2_400 + HOUR - 1) == [(T + 2_500, 2)]
        with pytest.raises(SegmentNotFound):
            eng.segment_history("nope")


def test_the_servers_refresh_timer_records_exits_caused_by_time_alone() -> None:
    from server.app import SegengineServer, ServerConfig
    from server.client import SegengineClient

    clock = Clock(T)
    with Engine(SCHEMA, shards=1) as eng:
        eng.clock = clock
        server = SegengineServer(eng, ServerConfig(port=0, refresh_ms=20)).start()
        try:
            with SegengineClient(server.address) as client:
                client.create_segment("carted", "DID(cart_abandoned, WITHIN 1h)")
                clock.now = T + 1_000
                client.track_events([{"id": "u1", "event": "cart_abandoned", "ts": T + 500}])
                clock.now = T + 2 * HOUR  # no write: only the server's timer moves the segment
                deadline = time.monotonic() + 10
                while len(client.segment_history("carted")) < 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert client.segment_history("carted") == [(T, 0), (T + 1_000, 1), (T + 2 * HOUR, 0)]
        finally:
            server.stop(grace_s=0)


def test_delete_drops_the_history_and_replace_starts_a_new_one() -> None:
    clock = Clock(T)
    with Engine(SCHEMA, shards=1) as eng:
        eng.clock = clock
        eng.upsert_profiles([{"id": "a", "country": "FR", "age": 30}, {"id": "b", "country": "BE", "age": 50}])
        eng.create_segment("s", "country = 'FR'")
        clock.now = T + 5_000
        eng.upsert_profiles([{"id": "c", "country": "FR"}])
        clock.now = T + 9_000
        eng.create_segment("s", "age > 40", replace=True)
        assert eng.segment_history("s") == [(T + 9_000, 1)]
        eng.delete_segment("s")
        clock.now = T + 12_000
        eng.create_segment("s", "ALL")
        assert eng.segment_history("s") == [(T + 12_000, 3)]


def test_a_day_later_the_engine_serves_one_point_a_minute() -> None:
    clock = Clock(T)
    with Engine(SCHEMA, shards=1) as eng:
        eng.clock = clock
        eng.create_segment("all", "ALL")
        for second in range(1, 121):  # a profile a second for two minutes
            clock.now = T + second * 1_000 + 250
            eng.upsert_profiles([{"id": f"u{second}"}])
        assert len(eng.segment_history("all")) == 121
        clock.now = T + DAY_MS + 130_000
        eng.upsert_profiles([{"id": "late"}])
        assert eng.segment_history("all") == [(T + 59_250, 59), (T + 119_250, 119), (T + 120_250, 120),
                                              (T + DAY_MS + 130_000, 121)]
        eng.refresh_segments(now=T + 120_250 + KEEP_MS + 1)
        assert eng.segment_history("all") == [(T + DAY_MS + 130_000, 121)]


# -- durability -------------------------------------------------------------------------------
def test_history_survives_a_restart_without_deleted_or_replaced_segments(tmp_path: Path) -> None:
    clock = Clock(T)
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as eng:
        eng.clock = clock
        for name in ("fr", "gone", "redefined"):
            eng.create_segment(name, "country = 'FR'")
        for step in range(1, 4):
            clock.now = T + step * 1_000
            eng.upsert_profiles([{"id": f"u{step}", "country": "FR"}])
        clock.now = T + 10_000
        eng.delete_segment("gone")
        eng.create_segment("redefined", "country = 'BE'", replace=True)
        expected = [(T, 0), (T + 1_000, 1), (T + 2_000, 2), (T + 3_000, 3)]
        assert eng.segment_history("fr") == expected
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as eng:
        eng.clock = Clock(T + 20_000)
        assert eng.segment_history("fr") == expected
        assert eng.segment_history("redefined") == [(T + 10_000, 0)]
        with pytest.raises(SegmentNotFound):
            eng.segment_history("gone")
        eng.upsert_profiles([{"id": "b", "country": "BE"}])
        assert eng.segment_history("redefined") == [(T + 10_000, 0), (T + 20_000, 1)]
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as eng:
        eng.clock = Clock(T + 30_000)
        eng.create_segment("gone", "ALL")  # the old history of this name does not come back
        assert eng.segment_history("gone") == [(T + 30_000, 4)]
        assert eng.segment_history("redefined") == [(T + 10_000, 0), (T + 20_000, 1)]


WRITER = textwrap.dedent("""
    import sys, time
    from engine import Engine, Schema
    from engine.schema import CONTRACT_SCHEMA
    T = int(sys.argv[2])
    eng = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, data_dir=sys.argv[1])
    eng.clock = lambda: T
    eng.create_segment("fr", "country = 'FR'")
    eng.create_segment("doomed", "ALL")
    for step in range(1, 4):
        eng.clock = lambda: T + step * 1_000
        eng.upsert_profiles([{"id": f"u{step}", "country": "FR"}])
    time.sleep(2.5)  # more than a flush interval: these points are on disk
    eng.clock = lambda: T + 60_000
    eng.delete_segment("doomed")
    eng.upsert_profiles([{"id": "u4", "country": "FR"}])  # logged; its point may be lost with the last second
    print("written", flush=True)
    time.sleep(60)
""")


def test_kill_9_loses_at_most_the_last_second(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(T)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    assert writer.stdout is not None
    line = writer.stdout.readline()
    os.kill(writer.pid, signal.SIGKILL)
    _, err = writer.communicate()
    assert line == "written\n", err
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as eng:
        eng.clock = Clock(T + 70_000)
        # the flushed points, then the recovered size at the recovered clock (the write of u4 is in the log)
        assert eng.segment_history("fr") == [(T, 0), (T + 1_000, 1), (T + 2_000, 2), (T + 3_000, 3),
                                             (T + 60_000, 4)]
        with pytest.raises(SegmentNotFound):
            eng.segment_history("doomed")
        assert [name for name, _ in eng.segment_definitions()] == ["fr"]
