"""segengine vs DuckDB at a size larger than a one-shot generation fits in memory (100M profiles).

    python benchmarks/large.py [--profiles 100000000] [--events-per-profile 5] [--chunk 2000000]
                               [--repeat 5] [--data-dir DIR] [--duckdb-file FILE] [--cold] [--json out.json]
                               [--duckdb-budget-s 300] [--duckdb-reuse] [--duckdb-from JSON]
                               [--reuse-data-dir] [--only-profiles]

1. segengine (shards 1, durable in --data-dir): the data set is generated chunk by chunk
   (``loaders.chunks``: bounded memory) and loaded through the columnar path; load rates (by wall
   time, and per CPU second of the whole process: its log and apply threads included, generation
   excluded) and resident bytes per profile and per event are reported. The resident bytes are
   read with the numba kernels compiled beforehand (``compare.warm_up_jit``), the last generated
   chunk dropped and free heap pages returned to the OS (``settled_rss``), so they are the data's.
   Then a snapshot is written, the engine is closed and reopened from the data dir (restart to
   serving, with the bytes read and the read rate), and each compare.py query is timed on the
   restarted engine (median of --repeat warm runs, after what its first run started building in
   the background is built).
2. DuckDB, in its own process, regenerates the same chunks into a database file and times the same
   queries' SQL (warm runs). The NumPy scan is left out at this size. A DuckDB query whose first run
   passes ``--duckdb-budget-s`` is interrupted and reported as taking more than the budget (its
   ratio is then a lower bound); one taking over 10 s gets a single warm run instead of --repeat.
   ``--duckdb-reuse`` queries an existing ``--duckdb-file`` without loading it again, and
   ``--duckdb-from`` takes DuckDB's figures from an earlier run's ``--json`` output instead.
   ``--reuse-data-dir`` opens the data an earlier run left in ``--data-dir`` instead of loading
   it again (no load figures), then snapshots, restarts and queries as above; ``--only-profiles``
   loads the profiles and stops there (the profile load rate and bytes per profile).
The counts must agree (exit status 1 otherwise); ratios are DuckDB's median over segengine's.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from compare import rss_bytes, timed, warm_up_jit  # noqa: E402
from queries import NOW_MS, all_queries  # noqa: E402


def chunks(args: argparse.Namespace, events_too: bool = True):
    """The data set's chunks (the same in every process: a function of the arguments)."""
    from loaders.chunks import generate_chunks

    return generate_chunks(args.profiles, args.profiles * args.events_per_profile, seed=args.seed, now_ms=NOW_MS,
                           chunk=args.chunk, events_too=events_too)


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (an LMDB file's map size is sparse: blocks, not its length)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def drop_page_cache() -> bool:
    """Ask the kernel to drop clean page-cache pages (root only); whether it worked."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def settled_rss() -> int:
    """Resident bytes once the benchmark's own freed memory (generated chunks) is returned to the OS:
    the heap's free pages trimmed (the engine keeps up to 256 MiB of them between its loads)."""
    from engine.store.memory import release_free_memory

    gc.collect()
    release_free_memory()
    return rss_bytes()


def segengine_run(args: argparse.Namespace, data_dir: Path) -> dict:
    """Load, time the queries, snapshot, restart; the figures and each query's count and median."""
    from engine import Engine, Schema
    from loaders.generator import DEMO_SCHEMA

    schema = Schema.from_dict(DEMO_SCHEMA)
    warm_up_jit(schema, 1, all_queries(), NOW_MS)  # JIT memory is not the data's (as compare.py measures)
    base = settled_rss()
    durability = {"snapshot_every_s": None, "snapshot_log_bytes": None}
    if args.reuse_data_dir:  # the data of an earlier run: its load is not measured again
        t = time.perf_counter()
        eng = Engine(schema, shards=1, data_dir=str(data_dir), durability=durability)
        print(f"  reopened {data_dir} in {time.perf_counter() - t:.1f} s", flush=True)
        held = [eng]
        del eng  # the callee drops the last reference before the restart
        return {"load": None, **snapshot_restart_and_query(args, held, data_dir, schema)}
    eng = Engine(schema, shards=1, data_dir=str(data_dir), durability=durability)
    empty = settled_rss()
    generate_s = profile_s = event_s = profile_cpu_s = event_cpu_s = 0.0
    started = time.perf_counter()
    for chunk in chunks(args, events_too=False):  # every profile first, so memory splits by kind
        generate_s += time.perf_counter() - started
        t, cpu = time.perf_counter(), time.process_time()
        eng.load_profiles(chunk.profiles)
        profile_s += time.perf_counter() - t
        profile_cpu_s += time.process_time() - cpu
        del chunk
        started = time.perf_counter()
    after_profiles = settled_rss()
    print(f"  loaded {eng.stats()['profiles']:,} profiles", flush=True)
    if args.only_profiles:
        n = eng.stats()["profiles"]
        eng.close()
        print(f"segengine profile load: {n / profile_s:,.0f} profiles/s ({n / profile_cpu_s:,.0f} per CPU second of "
              f"the process), {(after_profiles - empty) / n:.1f} B/profile", flush=True)
        return {"load": {"profiles": n, "profile_load_s": profile_s, "profile_load_cpu_s": profile_cpu_s,
                         "profiles_per_s": n / profile_s, "profiles_per_cpu_s": n / profile_cpu_s,
                         "bytes_per_profile": (after_profiles - empty) / n}}
    n_events = 0
    started = time.perf_counter()
    for chunk in chunks(args):
        generate_s += time.perf_counter() - started
        t, cpu = time.perf_counter(), time.process_time()
        for batch in chunk.events:
            eng.load_events(batch)
            n_events += len(batch)
        event_s += time.perf_counter() - t
        event_cpu_s += time.process_time() - cpu
        print(f"  loaded {n_events:,} events", flush=True)
        del chunk
        started = time.perf_counter()
    after_events = settled_rss()
    stats = eng.stats()
    load = {"profiles": stats["profiles"], "events": stats["events"], "generate_s": generate_s,
            "profile_load_s": profile_s, "event_load_s": event_s,
            "profiles_per_s": stats["profiles"] / profile_s, "events_per_s": n_events / event_s,
            "profile_load_cpu_s": profile_cpu_s, "event_load_cpu_s": event_cpu_s,
            "profiles_per_cpu_s": stats["profiles"] / profile_cpu_s, "events_per_cpu_s": n_events / event_cpu_s,
            "engine_start_rss_bytes": empty - base,
            "bytes_per_profile": (after_profiles - empty) / max(stats["profiles"], 1),
            "bytes_per_event": (after_events - after_profiles) / max(n_events, 1)}
    print(f"segengine load: {load['profiles_per_s']:,.0f} profiles/s, {load['events_per_s']:,.0f} events/s "
          f"(durable, shards 1; per CPU second of the process: {load['profiles_per_cpu_s']:,.0f} profiles, "
          f"{load['events_per_cpu_s']:,.0f} events); {load['bytes_per_profile']:.1f} B/profile, "
          f"{load['bytes_per_event']:.1f} B/event", flush=True)
    held = [eng]
    del eng  # the callee drops the last reference before the restart
    return {"load": load, **snapshot_restart_and_query(args, held, data_dir, schema)}


def snapshot_restart_and_query(args: argparse.Namespace, held: list[Any], data_dir: Path, schema: Any) -> dict:
    """Snapshot the engine in ``held`` (its only reference: taken out, so its memory is freed before
    the restart), close it, reopen it from ``data_dir`` and time the queries on it."""
    from engine import Engine

    eng = held.pop()

    rss_before = rss_bytes()
    peak = PeakAnon().start()
    t = time.perf_counter()
    snap = eng.snapshot()
    snapshot_s = time.perf_counter() - t
    snapshot_peak = peak.stop()
    eng.close()
    del eng  # an in-process shard's data lives as long as its engine object: freed before the restart
    closed_rss = settled_rss()
    on_disk = dir_bytes(data_dir)
    cold = args.cold and drop_page_cache()
    t = time.perf_counter()
    eng = Engine(schema, shards=1, data_dir=str(data_dir))
    restart_s = time.perf_counter() - t
    restart = {"snapshot_s": snapshot_s, "snapshot_bytes": snap.get("bytes"), "data_dir_bytes": on_disk,
               "rss_before_snapshot_bytes": rss_before, "snapshot_peak_anon_bytes": snapshot_peak,
               "rss_after_close_bytes": closed_rss,
               "cold_cache": cold, "to_serving_s": restart_s,
               "read_rate_mb_s": snap["bytes"] / 1e6 / restart_s}  # a restart reads the snapshot (the log is empty)
    print(f"snapshot {snapshot_s:.1f} s (resident {rss_before / 2**30:.1f} GiB before, anonymous memory peaked "
          f"at {snapshot_peak / 2**30:.1f} GiB, {closed_rss / 2**30:.1f} GiB once closed); restart to serving "
          f"{restart_s:.1f} s (read {snap['bytes'] / 2**30:.2f} GiB at {restart['read_rate_mb_s']:,.0f} MB/s; "
          f"the data dir holds {on_disk / 2**30:.2f} GiB{', page cache dropped' if cold else ''})", flush=True)
    queries = {}
    for q in all_queries():  # on the restarted engine: its answers are checked against DuckDB's
        count = eng.count(q.seg, now=NOW_MS)
        first, ms, _ = timed(lambda q=q: eng.count(q.seg, now=NOW_MS), args.repeat, eng)
        queries[q.name] = {"kind": q.kind, "count": count, "segengine_ms": ms, "segengine_first_ms": first}
        print(f"  {q.name:<28} {count:>12,} {ms:>10.2f} ms", flush=True)
    eng.close()
    return {"restart": restart, "queries": queries}


class PeakAnon:
    """The peak anonymous resident memory of this process while it runs (sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> "PeakAnon":
        self.thread.start()
        return self

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak

    def _sample(self) -> None:
        while not self.done.is_set():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self.done.wait(0.05)


def duckdb_run(args: argparse.Namespace) -> dict:
    """(In its own process.) Load the chunks into a DuckDB file and time every query's SQL."""
    import threading

    from baselines import DuckDBBaseline

    reuse = args.duckdb_reuse and Path(args.duckdb_file).exists()
    duck = DuckDBBaseline(threads=args.threads, path=args.duckdb_file)
    if args.duckdb_memory:
        duck.con.execute(f"SET memory_limit = '{args.duckdb_memory}'")
    if not reuse:
        for chunk in chunks(args):
            duck.append(chunk)
            print(f"  duckdb loaded {duck.loaded:,} profiles", flush=True)
    load = {"reused_file": reuse, "profile_load_s": None if reuse else duck.profile_seconds,
            "event_load_s": None if reuse else duck.event_seconds, "file_bytes": Path(args.duckdb_file).stat().st_size}
    queries = {}
    for q in all_queries():
        timer = threading.Timer(args.duckdb_budget_s, duck.con.interrupt)
        timer.start()
        try:
            started = time.perf_counter()
            count = duck.count(q.sql, NOW_MS)
            first = (time.perf_counter() - started) * 1000
        except Exception:  # interrupted at the budget (duckdb raises its own InterruptException)
            queries[q.name] = {"count": None, "duckdb_ms": None, "duckdb_first_ms": None,
                               "over_budget_s": args.duckdb_budget_s}
            print(f"  duckdb {q.name:<28} over the {args.duckdb_budget_s:.0f} s budget", flush=True)
            continue
        finally:
            timer.cancel()
        _, ms, _ = timed(lambda q=q: duck.count(q.sql, NOW_MS), args.repeat if first < 10_000 else 1)
        queries[q.name] = {"count": count, "duckdb_ms": ms, "duckdb_first_ms": first}
        print(f"  duckdb {q.name:<28} {count:>12,} {ms:>10.2f} ms", flush=True)
    duck.close()
    return {"load": load, "queries": queries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000_000)
    parser.add_argument("--events-per-profile", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=2_000_000, help="profiles per generated chunk")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="DuckDB threads")
    parser.add_argument("--duckdb-memory", default="8GB", help="DuckDB memory_limit ('' for its default)")
    parser.add_argument("--data-dir", default=None, help="segengine's data dir (default: a temporary one, removed)")
    parser.add_argument("--duckdb-file", default=None, help="DuckDB database file (default: a temporary one, removed)")
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--only-profiles", action="store_true",
                        help="generate and load the profiles only: the profile load rate and bytes per profile")
    parser.add_argument("--reuse-data-dir", action="store_true",
                        help="open the data of an earlier run in --data-dir instead of generating and loading it")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before the restart (needs root)")
    parser.add_argument("--duckdb-budget-s", type=float, default=300.0,
                        help="interrupt a DuckDB query after this many seconds (reported as over the budget)")
    parser.add_argument("--duckdb-reuse", action="store_true", help="query an existing --duckdb-file without loading")
    parser.add_argument("--duckdb-from", default=None, help="DuckDB's figures from an earlier run's --json file")
    parser.add_argument("--duckdb-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duckdb_worker:
        print(json.dumps(duckdb_run(args)))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="segengine-large-"))
    data_dir = Path(args.data_dir) if args.data_dir else scratch / "data"
    duck_file = args.duckdb_file or str(scratch / "duck.db")
    try:
        print(f"# {args.profiles:,} profiles, {args.profiles * args.events_per_profile:,} events, chunks of "
              f"{args.chunk:,}", flush=True)
        seg = segengine_run(args, data_dir)
        if args.only_profiles:
            if args.json_out:
                Path(args.json_out).write_text(json.dumps({"args": vars(args), "segengine_load": seg["load"]}, indent=2))
            return 0
        if args.duckdb_from:
            duck = json.loads(Path(args.duckdb_from).read_text())["duckdb"]
        else:
            print("# DuckDB in its own process, on a database file", flush=True)
            command = [sys.executable, __file__, "--duckdb-worker", "--duckdb-file", duck_file,
                       *[f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                         ("profiles", "events_per_profile", "chunk", "seed", "repeat", "threads", "duckdb_memory",
                          "duckdb_budget_s")], *(["--duckdb-reuse"] if args.duckdb_reuse else [])]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            duck = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mismatches = []
    rows = []
    for name, s in seg["queries"].items():
        d = duck["queries"][name]
        over = d.get("over_budget_s")
        if over is None and s["count"] != d["count"]:
            mismatches.append(name)
        # a query over DuckDB's budget: its ratio is a lower bound (the budget over segengine's time)
        ratio = (over * 1000 if over else d["duckdb_ms"]) / s["segengine_ms"]
        rows.append({"name": name, **d, **s, "duckdb_ms": over * 1000 if over else d["duckdb_ms"],
                     "duckdb_over_segengine": ratio, "ratio_is_lower_bound": bool(over)})
    print(f"\n{'query':<28} {'count':>12} {'seg ms':>9} {'duck ms':>10} {'duck/seg':>9}")
    for r in rows:
        flag = "" if r["name"] not in mismatches else "  MISMATCH"
        duck_ms = f"{'> ' if r['ratio_is_lower_bound'] else ''}{r['duckdb_ms']:.2f}"
        print(f"{r['name']:<28} {r['count']:>12,} {r['segengine_ms']:>9.2f} {duck_ms:>10} "
              f"{'>' if r['ratio_is_lower_bound'] else ' '}{r['duckdb_over_segengine']:>7.1f}x{flag}")
    geo = statistics.geometric_mean([r["duckdb_over_segengine"] for r in rows])
    print(f"geometric mean of DuckDB/segengine: {geo:.1f}x (queries over DuckDB's budget count at the budget)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True).stdout.strip()
    report = {"args": {**vars(args), "events": args.profiles * args.events_per_profile}, "commit": commit,
              "segengine": seg, "duckdb": duck, "segengine_load": seg["load"], "queries": rows,
              "mismatches": mismatches}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
