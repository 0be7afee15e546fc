"""Crashes: kill -9 the writing process at random moments; every acknowledged write survives.

Each cycle starts ``tests/durability_harness.py`` (an engine on one data directory, three
writer threads acknowledging batches on stdout, snapshots every 0.15 s), kills it with SIGKILL
after a random delay, reopens the data directory here and checks every acknowledged batch of
every cycle so far is present, and no batch is half-applied or applied twice.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA

from durability_harness import Acks, check

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
HARNESS = str(Path(__file__).with_name("durability_harness.py"))
ROOT = str(Path(__file__).resolve().parents[1])


def start_writer(data_dir: Path, cycle: int, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, HARNESS, str(data_dir), str(cycle), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def kill_at_random(process: subprocess.Popen, rng: random.Random, max_delay_s: float, after_ack: bool = False) -> str:
    """Wait for the writer to be ready (and, with ``after_ack``, for its first acknowledged write, so a
    loaded machine still kills during acknowledged writes), let it write for a random time, SIGKILL it;
    its stdout."""
    assert process.stdout is not None
    first = process.stdout.readline()
    if first != "ready\n":
        process.kill()
        raise AssertionError(f"writer did not start: {first!r} {process.stderr.read() if process.stderr else ''}")
    acked = process.stdout.readline() if after_ack else ""
    time.sleep(rng.uniform(0.0, max_delay_s))
    os.kill(process.pid, signal.SIGKILL)
    out, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err
    return acked + out


def crash_cycles(tmp_path: Path, cycles: int, seed: int, max_delay_s: float = 1.5, *args: str) -> dict[str, int]:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acks = Acks()
    summary: dict[str, int] = {}
    for cycle in range(cycles):
        acks.read(kill_at_random(start_writer(data_dir, cycle, *args), rng, max_delay_s, after_ack=cycle == 0))
        with Engine(SCHEMA, shards=2, data_dir=str(data_dir), backend="local",
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as engine:
            summary = check(engine, acks)
    assert summary["acked"] == len(acks.profiles | acks.events)
    return summary


def test_kill_9_during_acknowledged_writes_loses_nothing(tmp_path: Path) -> None:
    summary = crash_cycles(tmp_path, 4, seed=1)
    assert summary["acked"] > 0


def test_kill_9_of_a_coordinator_with_worker_processes_loses_nothing(tmp_path: Path) -> None:
    # its workers are orphaned for up to 0.5 s: the next owner of their stores waits for them
    summary = crash_cycles(tmp_path, 2, 3, 1.5, "--backend", "process")
    assert summary["acked"] > 0


@pytest.mark.slow
def test_200_kill_9_cycles_lose_no_acknowledged_write(tmp_path: Path) -> None:
    summary = crash_cycles(tmp_path, 200, seed=2, max_delay_s=1.0)
    assert summary["acked"] > 1000
