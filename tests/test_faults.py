"""Worker faults: a worker killed mid-query fails that query fast, by name, and is respawned;
no worker outlives its coordinator."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from engine import Engine, Schema
from engine.errors import ShardError
from engine.schema import CONTRACT_SCHEMA
from engine.shard.partition import shard_of
from shard_hooks import Delays

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
PROFILES = 600
DETECTION_S = 1.0
YOUNG = sum(1 for i in range(PROFILES) if i % 80 < 40)  # profiles with age < 40


@pytest.fixture()
def delays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Delays:
    """Workers started in the test can be slowed down."""
    return Delays.install(monkeypatch, tmp_path)


@pytest.fixture()
def engine(delays: Delays) -> Iterator[Engine]:
    """Three worker processes holding PROFILES profiles."""
    with Engine(SCHEMA, shards=3) as eng:
        eng.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(PROFILES))
        yield eng


def per_shard(n: int = 3) -> list[int]:
    """How many of the PROFILES profiles each shard owns."""
    owned = [0] * n
    for i in range(PROFILES):
        owned[shard_of(f"p{i}", n)] += 1
    return owned


def kill_during(engine: Engine, delays: Delays, shard_no: int, call, delay_s: float = 3.0, kill_after_s: float = 0.3):
    """Run ``call()`` while shard ``shard_no`` is slowed down, SIGKILL that worker mid-request.

    Returns (the exception raised, seconds from the kill to the exception).
    """
    victim = engine.shards[shard_no]
    delays.set(shard_no, delay_s)
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.monotonic())
        os.kill(victim.pid, signal.SIGKILL)
        delays.set(shard_no, 0)  # for the new worker

    timer = threading.Timer(kill_after_s, kill)
    timer.start()
    try:
        call()
    except ShardError as error:
        return error, time.monotonic() - killed_at[0]
    finally:
        timer.join()
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("shard_no", [0, 1, 2])
def test_kill_mid_count_fails_fast_naming_the_shard_then_respawns(engine: Engine, delays: Delays, shard_no: int) -> None:
    old_pid = engine.shards[shard_no].pid
    error, elapsed = kill_during(engine, delays, shard_no, lambda: engine.count("ALL"))
    assert str(error) == f"shard {shard_no} died (exit code -9) while serving count; respawned"
    assert elapsed < DETECTION_S
    shard = engine.shards[shard_no]
    assert shard.pid != old_pid and shard.respawns == 1
    assert engine.shards.respawns() == [1 if i == shard_no else 0 for i in range(3)]
    # The respawned in-memory shard is empty; the others kept their data and answer at once.
    owned = per_shard()
    assert engine.count("ALL") == PROFILES - owned[shard_no]
    assert [s["profiles"] for s in engine.stats()["shards"]] == [0 if i == shard_no else n for i, n in enumerate(owned)]
    engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(PROFILES))
    assert engine.count("ALL") == PROFILES
    assert engine.count("age < 40") == YOUNG


def test_kill_mid_ids_while_other_shards_are_slow(engine: Engine, delays: Delays) -> None:
    delays.set(2, 0.5)
    error, elapsed = kill_during(engine, delays, 0, lambda: engine.ids("age >= 0"))
    assert str(error) == "shard 0 died (exit code -9) while serving ids; respawned"
    assert elapsed < DETECTION_S  # shard 2 is still busy: the failure did not wait for it
    delays.set(2, 0)
    assert len(engine.ids("ALL")) == PROFILES - per_shard()[0]


def test_a_worker_that_died_while_idle_fails_the_next_request(engine: Engine) -> None:
    victim = engine.shards[1]
    os.kill(victim.pid, signal.SIGKILL)
    while _running(victim.pid):  # dead, not yet reaped (reaping it here would hide its exit code)
        time.sleep(0.01)
    with pytest.raises(ShardError, match=r"^shard 1 died \(exit code -9\) while serving count; respawned$"):
        engine.count("ALL")
    assert engine.count("ALL") == PROFILES - per_shard()[1]


def test_a_worker_killed_during_concurrent_queries(engine: Engine) -> None:
    outcomes: list[str] = []
    stop = time.monotonic() + 1.5

    def client() -> None:
        while time.monotonic() < stop:
            try:
                outcomes.append(str(engine.count("age < 40")))
            except ShardError as error:
                outcomes.append(str(error))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    os.kill(engine.shards[2].pid, signal.SIGKILL)
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    lost = sum(1 for i in range(PROFILES) if shard_of(f"p{i}", 3) == 2 and i % 80 < 40)
    expected = {str(YOUNG), str(YOUNG - lost)}
    died = "shard 2 died (exit code -9) while serving count; respawned"
    assert set(outcomes) <= expected | {died}
    # every query the worker had started fails: one per client in flight, at most three at once
    assert 1 <= outcomes.count(died) <= 3
    assert engine.count("ALL") == PROFILES - per_shard()[2]


def test_close_during_a_query_does_not_hang(engine: Engine, delays: Delays) -> None:
    pids = [shard.pid for shard in engine.shards]
    delays.set(0, 30)
    errors: list[Exception] = []

    def query() -> None:
        try:
            engine.count("ALL")
        except ShardError as error:
            errors.append(error)

    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    engine.close()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert [str(e) for e in errors] == ["shard 0 is closed"]
    assert not any(_running(pid) for pid in pids)


COORDINATOR = """
import sys, time
from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2)
engine.upsert_profiles([{"id": "a"}])
if sys.argv[1] == "busy":  # shard 0 sleeps 60 s in every call (tests/shard_hooks.py)
    import threading
    threading.Thread(target=engine.count, args=("ALL",), daemon=True).start()
    time.sleep(0.3)
print(" ".join(str(shard.pid) for shard in engine.shards), flush=True)
if sys.argv[1] in ("killed", "busy"):
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exits", "killed", "busy"])
def test_no_worker_outlives_its_coordinator(how: str, tmp_path: Path) -> None:
    """Exit without close() (atexit), SIGKILL of the coordinator (EOF), SIGKILL while a worker is busy (watchdog)."""
    Delays(tmp_path).set(0, 60, "count")
    env = {**os.environ, **Delays.environment(tmp_path)}
    coordinator = subprocess.Popen([sys.executable, "-c", textwrap.dedent(COORDINATOR), how],
                                   stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in coordinator.stdout.readline().split()]
    assert len(pids) == 2 and all(_running(pid) for pid in pids)
    if how != "exits":
        coordinator.kill()
    coordinator.wait(30)
    coordinator.stdout.close()
    deadline = time.monotonic() + 3
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies awaiting their reaper count as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
