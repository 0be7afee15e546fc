"""fanout_floor.py runs end to end: a row per round, each with its ratio to the bare round trip,
and no worker process left behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a benchmark script's smoke run: -m slow


def test_fanout_floor_prints_a_row_per_round() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "fanout_floor.py"), "--shards", "2", "--calls", "50",
               "--rounds", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 shards, median of 50 calls per round, microseconds"
    assert lines[1].split() == ["round", "bare", "segengine", "ratio", "local", "x1"]
    rows = [re.fullmatch(r"\s*(\d+)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d\d)\s+(\d+\.\d)", line) for line in lines[2:]]
    assert [row.group(1) for row in rows if row] == ["1", "2"] and len(rows) == 2
    for row in rows:
        bare, ours, ratio = float(row.group(2)), float(row.group(3)), float(row.group(4))
        assert bare > 0 and ours > 0
        assert abs(ratio - ours / bare) <= 0.01 + ratio * 0.01  # the printed ratio is of the printed times
    assert _echo_processes() == []


def _echo_processes() -> list[int]:
    """Process ids of bare echo workers still running."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except OSError:
            continue
        if any(word.endswith(b"fanout_floor.py") for word in words) and b"--echo" in words:
            found.append(int(pid))
    return found
