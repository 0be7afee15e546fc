"""README.md does what it says: its "Your own data" commands run as written (on a free port), its
Python example prints what it says, and its links name files of the repository."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from doc_blocks import ROOT, blocks, section


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def own_data_script() -> str:
    (block,) = [b for b in blocks("README.md", "sh") if f"```sh\n{b.text}```" in section("README.md", "Your own data")]
    return block.text


@pytest.fixture
def segengine_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``segengine`` runs this checkout's CLI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "segengine"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m server.cli "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def test_own_data_commands_serve_and_answer(tmp_path: Path, segengine_on_path: dict[str, str]) -> None:
    script = own_data_script()
    assert "50052" in script
    port = str(free_port())
    work = tmp_path / "work"
    work.mkdir()
    process = subprocess.Popen(["bash", "-e", "-c", script.replace("50052", port)], cwd=work, env=segengine_on_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = out.decode()
    assert process.returncode == 0, err.decode()[-3000:]
    assert "generated 10000 profiles and 100000 events" in text
    assert "applied 10000 records, 0 errors" in text and "applied 100000 records, 0 errors" in text
    assert "profiles on the server: 10000" in text
    lines = text.splitlines()
    counts = [int(line) for line in lines if line.isdigit()]
    assert len(counts) == 2 and all(c > 0 for c in counts)
    assert '"profiles": 10000' in text and '"segments": 1' in text
    assert "SERVING" in lines
    assert (work / "mydata" / "db" / "schema.json").exists()


def test_python_example_prints_what_the_readme_says() -> None:
    (block,) = [b for b in blocks("README.md", "python") if f"```python\n{b.text}```" in
                section("README.md", "Using it from Python")]
    assert "prints `1` and `['u1']`" in section("README.md", "Using it from Python")
    done = subprocess.run([sys.executable, "-c", block.text], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout) == (0, "1\n['u1']\n"), done.stderr[-2000:]


def test_quick_start_states_the_demo_size() -> None:
    from server.commands import DEMO_SEGMENTS, serve_args

    text = section("README.md", "Quick start (two commands on a fresh machine)")
    assert "--demo 100000" in text and "100k profiles, 1M events" in text
    assert f"{len(DEMO_SEGMENTS)} saved segments" in text
    assert [a.options["help"] for a in serve_args() if a.flags == ("--demo-events",)] == [
        "demo events (default 10 per profile)"]


LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def markdown_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in tracked.stdout.split()]


def test_markdown_links_name_files_of_the_repository() -> None:
    for path in markdown_files():
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (path.parent / target).resolve().is_file(), f"{path.relative_to(ROOT)} links {target}"
            assert ROOT in (path.parent / target).resolve().parents


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|/work/|CONTRACT\.md|PERFORMANCE\.md")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".proto", ".sh", "") or name.endswith("test_readme.py"):
            continue
        if outside.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(name)
    assert offenders == []
