"""The benchmark report: runs the benchmarks and writes ``docs/report/index.md`` with PNG plots.

    python benchmarks/report.py [--sizes 1000000,10000000] [--large] [--repeat 7] [--out docs/report]
                                [--skip-services]

For each size (profiles; 5 events per profile) it runs ``compare.py`` (segengine, DuckDB and the
NumPy/numba scan on the same data, with a throughput sweep over client threads); at the first size
it also runs the gRPC (``bench_grpc.py``), ingest (``bench_ingest.py``) and persistence
(``bench_persist.py``) benchmarks. ``--large`` adds 100M profiles / 500M events. Each run's JSON is
kept under ``OUT/raw/``; ``--replot`` redraws the report from those files without running anything.
The report names the machine and the commit it measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENGINES = (("segengine", "segengine_ms", "tab:blue"), ("DuckDB", "duckdb_ms", "tab:orange"),
           ("NumPy/numba", "numpy_ms", "tab:green"))
LARGE = 100_000_000


def run(script: str, args: list[str], json_path: Path) -> dict[str, Any] | None:
    """Run ``benchmarks/SCRIPT`` with ``args --json JSON_PATH``; its JSON, or None when it failed."""
    command = [sys.executable, str(HERE / script), *args, "--json", str(json_path)]
    print("$", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0 or not json_path.exists():
        print(f"{script} failed with status {done.returncode}", file=sys.stderr)
        return None
    figures = json.loads(json_path.read_text())
    figures.get("args", {}).pop("json_out", None)  # an absolute path of this machine: kept out of the report
    json_path.write_text(json.dumps(figures, indent=2))
    return figures


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS and the commit measured."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(ram / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "commit": commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def geomean(rows: list[dict], key: str, kind: str | None = None) -> float:
    """Geometric mean of ``key`` over the queries (of one kind)."""
    return statistics.geometric_mean([r[key] for r in rows if kind is None or r["kind"] == kind])


def plot_queries(compare: dict, path: Path) -> None:
    """Per-query median latency of the three engines at one size (log scale)."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = compare["queries"]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    for k, (label, key, color) in enumerate(ENGINES):
        ax.barh(y + (k - 1) * 0.27, [r[key] for r in rows], height=0.27, label=label, color=color)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency per query, ms (log scale)")
    a = compare["args"]
    ax.set_title(f"Segment counts at {a['profiles']:,} profiles / {a['events']:,} events")
    ax.legend(loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(runs: dict[int, dict], path: Path) -> None:
    """Geometric-mean latency of the attribute and the event queries as the profiles grow."""
    import matplotlib.pyplot as plt

    sizes = sorted(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, key, color in ENGINES:
        for kind, style in (("attr", "-"), ("events", "--")):
            points = [(n, geomean(runs[n]["queries"], key, kind)) for n in sizes
                      if all(key in r for r in runs[n]["queries"])]
            if points:
                ax.plot(*zip(*points), style, marker="o", color=color, label=f"{label}, {kind} queries")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("profiles (5 events each)")
    ax.set_ylabel("geometric mean latency, ms")
    ax.set_title("Latency as profiles grow")
    ax.legend(fontsize=8)
    ax.grid(which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(runs: dict[int, dict], path: Path) -> None:
    """Counts per second by client threads (every query in turn), one line per size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n in sorted(runs):
        sweep = [t for t in runs[n].get("throughput_by_clients") or [] if t]
        if sweep:
            ax.plot([t["clients"] for t in sweep], [t["qps"] for t in sweep], marker="o", label=f"{n:,} profiles")
    ax.set_xlabel("client threads")
    ax.set_ylabel("counts per second")
    ax.set_title("Throughput by client threads (the compare.py queries in turn, shards=1)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_load_and_memory(runs: dict[int, dict], path: Path) -> None:
    """Bulk load rates and resident bytes per profile and per event, per size."""
    import matplotlib.pyplot as plt

    sizes = sorted(runs)
    labels = [f"{n / 1e6:g}M" for n in sizes]
    loads = [runs[n]["segengine_load"] for n in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(sizes))
    left.bar([i - 0.2 for i in x], [d["profiles_per_s"] / 1e6 for d in loads], 0.4, label="profiles/s")
    left.bar([i + 0.2 for i in x], [d["events_per_s"] / 1e6 for d in loads], 0.4, label="events/s")
    left.set_xticks(list(x), labels)
    left.set_ylabel("millions per second")
    left.set_title("Columnar load rate (in-process, shards=1)")
    left.legend()
    right.bar([i - 0.2 for i in x], [d["bytes_per_profile"] for d in loads], 0.4, label="bytes per profile")
    right.bar([i + 0.2 for i in x], [d["bytes_per_event"] for d in loads], 0.4, label="bytes per event")
    right.set_xticks(list(x), labels)
    right.set_ylabel("resident bytes")
    right.set_title("Memory (RSS growth while loading)")
    right.legend()
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def services_section(raw: Path) -> list[str]:
    """Markdown for the gRPC, ingest and persistence runs found under ``raw``."""
    lines: list[str] = []
    grpc_runs = sorted(raw.glob("grpc-*.json"))
    if grpc_runs:
        g = json.loads(grpc_runs[0].read_text())
        m, c = g["membership"]["Membership"], g["count"].get("Count", {})
        lines += ["## Served over gRPC", "", f"`python benchmarks/bench_grpc.py --profiles {g['args']['profiles']} "
                  f"--duration {g['args']['duration']:g}`", "",
                  "| call | QPS | p50 ms | p99 ms |", "|---|---:|---:|---:|",
                  f"| Membership ({g['args']['concurrency']} in flight) | {m['qps']:,.0f} | {m['p50']:.2f} | "
                  f"{m['p99']:.2f} |"]
        if c:
            lines.append(f"| Count, contract example (1 in flight) | {c['qps']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} |")
        inside = g["in_engine"]
        lines += ["", f"In-engine Membership p99 {inside['membership_p99_us']:.1f} µs; in-engine Count of the "
                      f"contract example p99 {inside['count_p99_ms']:.2f} ms.", ""]
    ingest_runs = sorted(raw.glob("ingest-*.json"))
    if ingest_runs:
        g = json.loads(ingest_runs[0].read_text())
        lines += ["## Durable ingest over gRPC", "", f"`python benchmarks/bench_ingest.py --profiles "
                  f"{g['args']['profiles']} --duration {g['args']['duration']:g}` ({g['args']['shards']} shards)", "",
                  "| RPC | events/s acknowledged |", "|---|---:|"]
        for rpc in ("LoadEvents", "TrackEvents"):
            if rpc in g:
                lines.append(f"| {rpc} | {g[rpc]['events_per_s']:,.0f} |")
        lines.append("")
    persist_runs = sorted(raw.glob("persist-*.json"))
    if persist_runs:
        g = json.loads(persist_runs[0].read_text())
        snap, restart, load = g["snapshot"], g["restart"], g["durable_load"]
        lines += ["## Persistence", "", f"`python benchmarks/bench_persist.py --profiles {g['profiles']} --events "
                  f"{g['events']}` ({g['shards']} shards)", "", "| figure | value |", "|---|---:|",
                  f"| durable columnar load, events/s | {load['events_per_s']:,.0f} |",
                  f"| snapshot size | {snap['bytes'] / 2**20:,.1f} MiB |",
                  f"| snapshot: writers paused | {snap['paused_s'] * 1000:,.0f} ms |",
                  f"| restart to serving | {restart['to_serving_s']:.2f} s |",
                  f"| answers identical after restart | {'yes' if restart['same_answers'] else 'NO'} |"]
        during = g.get("snapshot_while_writing")
        if during:
            lines.append(f"| snapshot while writing: pause / write p50 / write max | {during['paused_s'] * 1000:,.0f} ms / "
                         f"{during['write_p50_ms']} ms / {during['write_max_ms']} ms |")
        lines.append("")
    return lines


def write_report(out: Path, info: dict[str, Any]) -> Path:
    """Plots and ``index.md`` from the JSON files under ``out/raw``."""
    import matplotlib

    matplotlib.use("Agg")
    raw = out / "raw"
    runs = {json.loads(p.read_text())["args"]["profiles"]: json.loads(p.read_text())
            for p in [*raw.glob("compare-*.json"), *raw.glob("large-*.json")]}
    if not runs:
        raise SystemExit(f"no compare-*.json under {raw}")
    largest = max(n for n in runs if "numpy_ms" in runs[n]["queries"][0])  # the largest with every baseline
    plot_queries(runs[largest], out / "queries.png")
    plot_scaling(runs, out / "scaling.png")
    plot_throughput(runs, out / "throughput.png")
    plot_load_and_memory(runs, out / "load-memory.png")
    sizes = ", ".join(f"{n:,}" for n in sorted(runs))
    lines = ["# segengine benchmark report", "",
             f"Measured {info['date']} on commit `{info['commit']}`: {info['cpu']}, {info['cores']} cores, "
             f"{info['ram_gib']} GiB RAM, {info['os']}, Python {info['python']}. Sizes: {sizes} profiles with 5 "
             "events each (the generator's data, fixed seed and clock). Medians; the machine may be shared, so "
             "compare ratios within one run rather than absolute times across runs.", "",
             f"Reproduce: `python benchmarks/report.py --sizes {','.join(str(n) for n in sorted(runs) if n <= largest)}"
             f"{' --large' if max(runs) > largest else ''}`.", "",
             "![per-query latency](queries.png)", "",
             "## Geometric means", "",
             "| profiles | kind | segengine ms | DuckDB ms | NumPy ms | DuckDB/seg | NumPy/seg | counts agree |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for n in sorted(runs):
        rows = runs[n]["queries"]
        numpy = "numpy_ms" in rows[0]
        for kind in ("attr", "events"):
            def numpy_geomean(key: str, form: str) -> str:
                return form.format(geomean(rows, key, kind)) if numpy else "-"  # noqa: B023 (used at once)

            if any(r["kind"] == kind for r in rows):
                lines.append(f"| {n:,} | {kind} | {geomean(rows, 'segengine_ms', kind):.3f} | "
                             f"{geomean(rows, 'duckdb_ms', kind):.2f} | "
                             f"{numpy_geomean('numpy_ms', '{:.2f}')} | "
                             f"{geomean(rows, 'duckdb_over_segengine', kind):.1f}x | "
                             f"{numpy_geomean('numpy_over_segengine', '{:.1f}x')} | "
                             f"{'yes' if not runs[n]['mismatches'] else 'NO: ' + ', '.join(runs[n]['mismatches'])} |")
    lines += ["", f"## Every query at {largest:,} profiles", "",
              "| query | kind | count | segengine ms | DuckDB ms | NumPy ms | DuckDB/seg | NumPy/seg |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs[largest]["queries"]:
        lines.append(f"| {r['name']} | {r['kind']} | {r['count']:,} | {r['segengine_ms']:.3f} | {r['duckdb_ms']:.2f} | "
                     f"{r['numpy_ms']:.2f} | {r['duckdb_over_segengine']:.1f}x | {r['numpy_over_segengine']:.1f}x |")
    for n in sorted(runs):
        if n > largest:
            reused = (f", segengine at commit `{runs[n]['commit']}`" if runs[n].get("commit") else "") + (
                "; DuckDB's figures come from an earlier run of the same data on this machine (`--duckdb-from`)"
                if runs[n]["args"].get("duckdb_from") else "")
            lines += ["", f"## Every query at {n:,} profiles (DuckDB on a database file in its own process; no NumPy)",
                      "", f"`python benchmarks/large.py --profiles {n}`{reused}", "",
                      "| query | kind | count | segengine ms | DuckDB ms | DuckDB/seg |", "|---|---|---:|---:|---:|---:|"]
            bound = {True: "> ", False: ""}
            lines += [f"| {r['name']} | {r['kind']} | {r['count']:,} | {r['segengine_ms']:.3f} | "
                      f"{bound[r.get('ratio_is_lower_bound', False)]}{r['duckdb_ms']:.2f} | "
                      f"{bound[r.get('ratio_is_lower_bound', False)]}{r['duckdb_over_segengine']:.1f}x |"
                      for r in runs[n]["queries"]]
            if any(r.get("ratio_is_lower_bound") for r in runs[n]["queries"]):
                lines += ["", "\"> \": DuckDB was interrupted at its time budget (`--duckdb-budget-s`); the geometric "
                              "means count such a query at the budget."]
            restart = runs[n]["segengine"]["restart"]
            lines += ["", f"Snapshot {restart['snapshot_s']:.1f} s; restart to serving {restart['to_serving_s']:.1f} s "
                          f"reading {restart['snapshot_bytes'] / 2**30:.1f} GiB ({restart['read_rate_mb_s']:,.0f} MB/s"
                          f"{', page cache dropped first' if restart['cold_cache'] else ', page cache warm'})."]
    lines += ["", "## Scaling", "", "![latency as profiles grow](scaling.png)", "",
              "## Throughput", "", "![throughput by client threads](throughput.png)", "",
              "## Load and memory", "", "![load rates and memory](load-memory.png)", "",
              "| profiles | profiles/s | events/s | B/profile | B/event |", "|---:|---:|---:|---:|---:|"]
    for n in sorted(runs):
        d = runs[n]["segengine_load"]
        lines.append(f"| {n:,} | {d['profiles_per_s']:,.0f} | {d['events_per_s']:,.0f} | {d['bytes_per_profile']:.1f} | "
                     f"{d['bytes_per_event']:.1f} |")
    lines += ["", *services_section(raw)]
    index = out / "index.md"
    index.write_text("\n".join(lines).rstrip() + "\n")
    (raw / "machine.json").write_text(json.dumps(info, indent=2))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma list of profile counts")
    parser.add_argument("--large", action="store_true", help=f"also {LARGE:,} profiles")
    parser.add_argument("--repeat", type=int, default=7, help="runs per query (median)")
    parser.add_argument("--clients", default="1,2,4", help="client threads of the throughput sweep")
    parser.add_argument("--qps-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report")
    parser.add_argument("--skip-services", action="store_true", help="only compare.py (no gRPC/ingest/persist runs)")
    parser.add_argument("--service-seconds", type=float, default=5.0, help="seconds per gRPC / ingest phase")
    parser.add_argument("--replot", action="store_true", help="redraw from OUT/raw without running anything")
    args = parser.parse_args(argv)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if args.replot:
        info = json.loads((raw / "machine.json").read_text())
    else:
        info = machine()
        sizes = [int(s) for s in args.sizes.split(",")]
        for stale in raw.glob("*.json"):
            stale.unlink()
        for n in sizes:
            run("compare.py", ["--profiles", str(n), "--events", str(5 * n), "--repeat", str(args.repeat),
                               "--clients", args.clients, "--qps-seconds", str(args.qps_seconds)],
                raw / f"compare-{n}.json")
        if args.large:  # compare.py keeps every baseline in memory: large.py streams, DuckDB on a file
            run("large.py", ["--profiles", str(LARGE), "--repeat", str(args.repeat), "--cold"], raw / f"large-{LARGE}.json")
        if not args.skip_services:
            n, seconds = str(sizes[0]), str(args.service_seconds)
            run("bench_grpc.py", ["--profiles", n, "--duration", seconds], raw / f"grpc-{n}.json")
            run("bench_ingest.py", ["--profiles", n, "--duration", seconds, "--prepare-s", "5"], raw / f"ingest-{n}.json")
            run("bench_persist.py", ["--profiles", n, "--events", str(5 * int(n))], raw / f"persist-{n}.json")
    print(f"wrote {write_report(args.out, info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
