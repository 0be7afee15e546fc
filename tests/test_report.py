"""benchmarks/report.py end to end at a tiny size: the runs, the plots and the Markdown report."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_report_runs_compare_and_writes_plots_and_index(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--sizes", "3000,6000",
                           "--repeat", "1", "--clients", "1,2", "--qps-seconds", "0.2", "--skip-services",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for png in ("queries.png", "scaling.png", "throughput.png", "load-memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "index.md").read_text()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert f"commit `{commit.stdout.strip()}" in index
    assert "| 3,000 | attr |" in index and "| 6,000 | events |" in index and "NO:" not in index
    small = json.loads((out / "raw" / "compare-3000.json").read_text())
    assert [t["clients"] for t in small["throughput_by_clients"]] == [1, 2]
    every_query = index.split("## Every query at 6,000 profiles")[1].split("## Scaling")[0]
    rows = [line for line in every_query.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(small["queries"])  # the header, then one row per query


def test_large_streams_chunks_and_agrees_with_duckdb_on_a_file(tmp_path):
    out = tmp_path / "large.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "large.py"), "--profiles", "3000", "--chunk", "1000",
                           "--repeat", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mismatches"] == []  # the restarted engine's counts against DuckDB's
    assert report["segengine_load"]["profiles"] == 3000 and report["segengine_load"]["events"] == 15000
    assert {r["name"] for r in report["queries"]} == set(report["duckdb"]["queries"])
