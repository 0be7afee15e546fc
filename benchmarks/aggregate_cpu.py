"""CPU time of DID aggregate queries in an in-process engine (one shard), optionally against the
aggregate evaluator of another git revision in the same process.

    python benchmarks/aggregate_cpu.py [--profiles 1000000] [--repeat 7] [--against REV] [--only a,b] [--clock-step MS]

Times ``Engine.count`` with ``time.thread_time()`` (CPU time of the calling thread: an in-process
shard runs there), so a loaded machine changes the figures far less than wall-clock time does.
With ``--against REV``, ``engine/exec/aggregate.py`` of that revision is loaded as a second module
and each query runs with both evaluators in turn; the counts must agree (else MISMATCH, exit 1).
With ``--clock-step MS``, call i runs at clock ``NOW + i * MS`` (a moving clock, as the server's wall
clock: windows move, so answers kept for an unchanged window are not reused); else every call runs
at ``NOW``.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import engine.exec.did as did  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

NOW_MS = 1_790_000_000_000
QUERIES = {
    "spent_over_100_30d": "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
    "fr_be_avg_cart_14d": "country IN ('FR', 'BE') AND DID(cart_abandoned, AVG(cart_value) > 80, COUNT >= 2, "
                          "WITHIN 14d)",
    "spent_under_10_30d": "DID(purchase, SUM(amount) < 10, WITHIN 30d)",
    "max_cart_7d": "DID(cart_abandoned, MAX(cart_value) >= 200, WITHIN 7d)",
    "min_where_30d": "DID(purchase WHERE category = 'shoes', MIN(amount) < 20, WITHIN 30d)",
    "avg_all_time": "DID(purchase, AVG(amount) > 60)",
    "vip_sum_90d": "vip = TRUE AND DID(purchase, SUM(amount) >= 250, WITHIN 90d)",
}


def module_at(rev: str) -> ModuleType:
    """engine/exec/aggregate.py as of git revision ``rev``, loaded as a module of the engine package."""
    text = subprocess.run(["git", "show", f"{rev}:engine/exec/aggregate.py"], cwd=HERE.parent, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "aggregate_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("engine.exec.aggregate_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_ms(eng: Engine, query: str, repeat: int, step: int) -> tuple[int, float]:
    """(count, median CPU ms of ``repeat`` calls after a warm-up call; call i at clock NOW + i * step)."""
    count = eng.count(query, now=NOW_MS)
    samples = []
    for i in range(1, repeat + 1):
        started = time.thread_time()
        eng.count(query, now=NOW_MS + i * step)
        samples.append((time.thread_time() - started) * 1e3)
    return count, statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", help="a git revision whose aggregate evaluator runs too")
    parser.add_argument("--only", help="comma-separated query names")
    parser.add_argument("--clock-step", type=int, default=0, help="ms the clock moves between calls (default 0)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(QUERIES)
    other = module_at(args.against) if args.against else None
    current = did.aggregate_rows
    ds = generate(args.profiles, 5 * args.profiles, seed=7, now_ms=NOW_MS)
    eng = Engine(Schema.from_dict(ds.schema), shards=1)
    eng.load_profiles(ds.profiles)
    for batch in ds.events:
        eng.load_events(batch)
    print(f"| query | count | CPU ms |{f' CPU ms at {args.against} |' if other else ''}")
    print(f"|---|---:|---:|{'---:|' if other else ''}")
    status = 0
    for name in names:
        did.aggregate_rows = current
        count, ms = cpu_ms(eng, QUERIES[name], args.repeat, args.clock_step)
        line = f"| {name} | {count:,} | {ms:.2f} |"
        if other is not None:
            did.aggregate_rows = other.aggregate_rows
            other_count, other_ms = cpu_ms(eng, QUERIES[name], args.repeat, args.clock_step)
            did.aggregate_rows = current
            line += f" {other_ms:.2f} |" + ("" if other_count == count else f" MISMATCH: {other_count:,}")
            status |= other_count != count
        print(line, flush=True)
    eng.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
