"""CPU time of SEQUENCE queries in an in-process engine (one shard), optionally against the SEQUENCE
evaluator of another git revision in the same process.

    python benchmarks/sequence_cpu.py [--profiles 1000000] [--repeat 7] [--against REV] [--only funnel,two] [--phases]
        [--row-index-budget BYTES_PER_EVENT]

Times ``Engine.count`` with ``time.thread_time()`` (CPU time of the calling thread: an in-process
shard runs there), so a loaded machine changes the figures far less than wall-clock time does.
With ``--against REV``, ``engine/exec/sequence.py`` of that revision is loaded as a second module
and each query runs with both evaluators in turn; the counts must agree (else MISMATCH, exit 1).
With ``--phases``, each query's CPU time is also split by the kernels of ``engine.exec.sequence``
it calls (medians of ``--repeat`` runs; the rest is bitmap work and Python). At the end it prints
the bytes of the runs' row indexes the queries built (``engine.store.row_index``) per event type.
``--row-index-budget`` sets the shard's row-index budget in bytes per event (``engine.store.row_index_cache``;
0: only its minimum; default: the engine's), and the number of indexes built is printed too.
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
import engine.exec.sequence as sequence  # noqa: E402
import engine.exec.sequence_index as sequence_index  # noqa: E402
from engine import Engine, Schema  # noqa: E402
from loaders.generator import generate  # noqa: E402

NOW_MS = 1_790_000_000_000
QUERIES = {
    "funnel": "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
    "funnel_nospan": "SEQUENCE(page_view THEN cart_abandoned THEN purchase, WITHIN 30d)",
    "two": "SEQUENCE(page_view THEN purchase, SPAN 2h, WITHIN 7d)",
    "where": "SEQUENCE(add_to_cart WHERE category = 'shoes' THEN purchase WHERE amount > 50, SPAN 1d, WITHIN 30d)",
    "pv_where": "SEQUENCE(page_view WHERE category = 'shoes' THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
    "since": "SEQUENCE(page_view THEN add_to_cart THEN purchase, SPAN 1h, SINCE NOW - 20d, BEFORE NOW - 5d)",
    "middle": "SEQUENCE(add_to_cart THEN page_view THEN purchase, SPAN 1d, WITHIN 30d)",
    "last": "SEQUENCE(purchase THEN page_view, SPAN 1h, WITHIN 30d)",
    "same": "SEQUENCE(page_view THEN page_view THEN purchase, SPAN 1d, WITHIN 14d)",
    "and_fr": "country = 'FR' AND SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
}


def _load(name: str, text: str) -> ModuleType:
    """``text`` loaded as the module ``engine.exec.<name>``."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"engine.exec.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def module_at(rev: str) -> ModuleType:
    """engine/exec/sequence.py as of git revision ``rev``, loaded as a module of the engine package, with
    the SEQUENCE modules it imports (``sequence_index``, ``sequence_keys``) as of that revision too."""
    def show(path: str) -> str | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=HERE.parent, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    text = show("engine/exec/sequence.py")
    assert text is not None, f"no engine/exec/sequence.py at {rev}"
    for sibling in ("sequence_keys", "sequence_index"):
        sibling_text = show(f"engine/exec/{sibling}.py")
        if sibling_text is not None and f"from .{sibling} import" in text:
            _load(f"{sibling}_at_rev", sibling_text.replace("from .sequence_keys import",
                                                             "from .sequence_keys_at_rev import"))
            text = text.replace(f"from .{sibling} import", f"from .{sibling}_at_rev import")
    return _load("sequence_at_rev", text)


def cpu_ms(eng: Engine, query: str, repeat: int) -> tuple[int, float]:
    """(count, median CPU ms of ``repeat`` calls after a warm-up call)."""
    count = eng.count(query, now=NOW_MS)
    samples = []
    for _ in range(repeat):
        started = time.thread_time()
        eng.count(query, now=NOW_MS)
        samples.append((time.thread_time() - started) * 1e3)
    return count, statistics.median(samples)


PHASES = ("present", "gather_keys", "merged_keys", "group_keys", "unpacked", "scan_intervals", "holding_rows",
          "interval_hits", "row_slices", "latest_before", "earliest_after", "last_two_steps", "edge_events")
INDEX_PHASES = ("row_slices", "latest_before", "earliest_after", "last_two_steps", "edge_events")  # engine.exec.sequence_index


def phase_ms(eng: Engine, query: str, repeat: int) -> dict[str, float]:
    """Median CPU ms per kernel of ``engine.exec.sequence`` (and the presence bitmaps) over ``repeat`` calls."""
    spent: dict[str, float] = {}
    modules = {name: sequence_index if name in INDEX_PHASES else sequence for name in PHASES if name != "present"}
    originals = {name: getattr(modules[name], name) for name in modules}
    original_present = did.DidEvaluator.present

    def timed(name: str, work):
        def call(*args, **kwargs):
            started = time.thread_time()
            try:
                return work(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.thread_time() - started
        return call

    samples: dict[str, list[float]] = {name: [] for name in PHASES}
    try:
        for name, work in originals.items():
            setattr(modules[name], name, timed(name, work))
        did.DidEvaluator.present = timed("present", original_present)
        for _ in range(repeat):
            spent.clear()
            eng.count(query, now=NOW_MS)
            for name in PHASES:
                samples[name].append(spent.get(name, 0.0) * 1e3)
    finally:
        for name, work in originals.items():
            setattr(modules[name], name, work)
        did.DidEvaluator.present = original_present
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", help="a git revision whose SEQUENCE evaluator runs too")
    parser.add_argument("--only", help="comma-separated query names")
    parser.add_argument("--phases", action="store_true", help="also split each query's CPU time by kernel")
    parser.add_argument("--row-index-budget", type=float, help="row-index bytes kept per event of the shard")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(QUERIES)
    other = module_at(args.against) if args.against else None
    current = did.sequence_rows
    ds = generate(args.profiles, 5 * args.profiles, seed=7, now_ms=NOW_MS)
    eng = Engine(Schema.from_dict(ds.schema), shards=1)
    cache = eng.shards[0].events.row_indexes
    if args.row_index_budget is not None:
        cache.bytes_per_event = args.row_index_budget
    eng.load_profiles(ds.profiles)
    for batch in ds.events:
        eng.load_events(batch)
    print(f"| query | count | CPU ms |{f' CPU ms at {args.against} |' if other else ''}")
    print(f"|---|---:|---:|{'---:|' if other else ''}")
    status = 0
    for name in names:
        did.sequence_rows = current
        count, ms = cpu_ms(eng, QUERIES[name], args.repeat)
        line = f"| {name} | {count:,} | {ms:.1f} |"
        if other is not None:
            did.sequence_rows = other.sequence_rows
            other_count, other_ms = cpu_ms(eng, QUERIES[name], args.repeat)
            did.sequence_rows = current
            line += f" {other_ms:.1f} |" + ("" if other_count == count else f" MISMATCH: {other_count:,}")
            status |= other_count != count
        print(line, flush=True)
        if args.phases:
            phases = phase_ms(eng, QUERIES[name], args.repeat)
            print("    " + ", ".join(f"{phase} {ms:.1f}" for phase, ms in phases.items() if ms), flush=True)
    store = getattr(eng.shards[0], "events", None)  # an in-process shard
    if store is not None:
        print(f"row indexes built: {cache.builds}; kept {cache.nbytes / len(store):.2f} B per event of the store, "
              f"budget {cache.budget / len(store):.2f}")
        total = sum(len(typed) for typed in store.types.values())
        for name, typed in store.types.items():
            size = sum(run.row_index.nbytes for run in typed.runs if run.row_index is not None)
            if size:
                print(f"row indexes of {name}: {size / 2**20:.1f} MiB, {size / len(typed):.2f} B per {name} event, "
                      f"{size / total:.2f} B per event of the store")
    eng.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
