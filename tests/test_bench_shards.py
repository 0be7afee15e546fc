"""bench_shards.py runs end to end on a tiny data set: every configuration loaded at once,
measured in rounds, and the final table gives each figure's median ratio over the rounds."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a benchmark script's smoke run: -m slow
FIGURES = ["fan-out", "int miss", "attrs", "tags+consent", "behaviour", "contract", "ids", "qps mixed",
           "qps nothing"]


def test_bench_shards_measures_every_configuration_in_rounds() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_shards.py"), "--profiles", "2000",
               "--events", "10000", "--configs", "local x1,process x2", "--rounds", "2", "--repeat", "3",
               "--overhead-repeat", "5", "--seconds", "0.2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert [line for line in out.splitlines() if line.startswith("== round")] == [
        "== round 1 of 2: local x1", "== round 1 of 2: process x2", "== round 1: ratios against local x1 "
        "(latency: lower is better; qps: higher is better)", "== round 2 of 2: local x1",
        "== round 2 of 2: process x2", "== round 2: ratios against local x1 (latency: lower is better; "
        "qps: higher is better)"]
    final = out.split("== ratios against local x1, median of 2 rounds")[1].splitlines()[2:]
    assert [line[:12].strip() for line in final] == FIGURES
    for line in final:
        cells = re.findall(r"(\d+\.\d\d) \((\d+\.\d\d)-(\d+\.\d\d)\)", line)
        assert len(cells) == 2, line
        assert cells[0] == ("1.00", "1.00", "1.00")  # the baseline against itself
        median, low, high = map(float, cells[1])
        assert low <= median <= high


def test_bench_shards_runs_compare_queries_when_asked() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from queries import all_queries
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    names = [query.name for query in all_queries()]
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_shards.py"), "--profiles", "2000",
               "--events", "10000", "--configs", "local x1,process x2", "--rounds", "1", "--repeat", "2",
               "--overhead-repeat", "5", "--seconds", "0.1", "--queries", "compare"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    final = done.stdout.split("== ratios against local x1, median of 1 round")[1].splitlines()[2:]
    assert [line.split()[0] for line in final] == ["fan-out", "int", *names, "ids", "qps", "qps"]
