"""The command line's errors (one line, exit status 2 or 1, never a traceback) and its read commands."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.schema import CONTRACT_SCHEMA
from server.cli import main

from test_grpc import NOW, Served

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def cli(*argv: str | bytes, stdin: bytes = b"", shell: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m server.cli`` of this checkout in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if shell is not None:
        return subprocess.run(["bash", "-c", shell], capture_output=True, env=env, timeout=120)
    return subprocess.run([sys.executable, "-m", "server.cli", *argv], input=stdin, capture_output=True, env=env,
                          timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(CONTRACT_SCHEMA))
    (tmp_path / "p.jsonl").write_text('{"id": "u1", "age": 3}\n')
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--profiles", "-5", "--events", "1", "--out", "x"],
     "segengine generate: error: argument --profiles: expected an integer >= 1, got '-5' (see segengine generate --help)"),
    (["load", "--batch-size", "0", "--profiles", "{p}"],
     "segengine load: error: argument --batch-size: expected an integer >= 1, got '0' (see segengine load --help)"),
    (["load", "--shards", "0", "--profiles", "{p}"],
     "segengine load: error: argument --shards: expected an integer >= 1, got '0' (see segengine load --help)"),
    (["load", "--max-errors", "-1", "--profiles", "{p}"],
     "segengine load: error: argument --max-errors: expected an integer >= 0, got '-1' (see segengine load --help)"),
    (["load", "--schema", "{schema}", "--profiles", "{dir}/missing.jsonl"],
     "segengine load: error: argument --profiles: no such file: {dir}/missing.jsonl (see segengine load --help)"),
    (["load", "--profiles", "{p}"],
     "segengine load: error: give --schema (or --server to load into a running server)"),
    (["serve", "--shards", "0"],
     "segengine serve: error: argument --shards: expected an integer >= 1, got '0' (see segengine serve --help)"),
    (["query", "ALL", "--now", "yesterday"],
     "segengine query: error: argument --now: expected epoch milliseconds or ISO 8601 time: malformed timestamp "
     "'yesterday' (see segengine query --help)"),
    (["frob"], "segengine: error: argument COMMAND: invalid choice: 'frob' (choose from "),
])
def test_usage_errors_are_one_line_with_status_2(capsys, files: Path, argv: list[str], message: str) -> None:
    fill = {"p": str(files / "p.jsonl"), "schema": str(files / "schema.json"), "dir": str(files)}
    status, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(message.format(**fill))


@pytest.mark.parametrize(("schema", "message"), [
    ("{oops", "is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ('{"attrs": {}}', "unknown schema key 'attrs' (allowed: attributes, events, consents)"),
    ('{"attributes": {"a": {"type": "string"}}}',
     "attribute 'a': unknown type 'string' (types: category, int, float, bool, tags, timestamp)"),
])
def test_bad_schema_files_fail_in_one_line(capsys, files: Path, schema: str, message: str) -> None:
    path = files / "bad.json"
    path.write_text(schema)
    status, out, err = run(capsys, "load", "--schema", str(path), "--profiles", str(files / "p.jsonl"))
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith(f"segengine load: error: schema {path}") and message in err


def test_missing_schema_file(capsys, files: Path) -> None:
    assert run(capsys, "load", "--schema", str(files / "none.json"), "--profiles", str(files / "p.jsonl")) == (
        1, "", f"segengine load: error: cannot read schema {files / 'none.json'}: No such file or directory\n")


def test_epoch_seconds_warn_and_strict_refuses(capsys, files: Path) -> None:
    events = files / "e.jsonl"
    events.write_text("".join(
        json.dumps({"id": f"u{i}", "event": "purchase", "ts": 1_763_632_800 if i % 2 else NOW, "amount": 1.0}) + "\n"
        for i in range(30)))
    base = ["load", "--schema", str(files / "schema.json"), "--events", str(events), "--quiet"]
    status, out, _ = run(capsys, *base)
    assert status == 0
    assert out.splitlines()[1] == (
        "  warning: 15 events have a ts before 1973-03-03T09:46:40Z (epoch ms below 1e11: epoch seconds?), at lines "
        "2, 4, 6, 8, 10, 12, 14, 16, 18, 20, ...; ts is epoch milliseconds or ISO 8601 (--strict-timestamps refuses them)")
    status, out, _ = run(capsys, *base, "--strict-timestamps", "--max-errors", "1")
    lines = out.splitlines()
    assert status == 1 and lines[0].endswith("applied 15 records, 15 errors")
    assert lines[1] == ("  line 2, field 'ts': 1763632800 is before 1973-03-03T09:46:40Z (epoch ms below 1e11): epoch "
                        "seconds? ts is epoch milliseconds or ISO 8601 (refused by --strict-timestamps)")
    assert lines[2] == "  ... and 14 more errors"


def test_max_errors_zero_counts_every_error(capsys, files: Path) -> None:
    bad = files / "bad.jsonl"
    bad.write_text("".join('{"id": "b", "age": "x"}\n' for _ in range(20)))
    status, out, _ = run(capsys, "load", "--schema", str(files / "schema.json"), "--profiles", str(bad), "--quiet",
                         "--max-errors", "0")
    assert status == 1 and out.splitlines()[:2] == [
        f"profiles {bad} ({out.split('(')[1].split(')')[0]}): applied 0 records, 20 errors", "  ... and 20 more errors"]


def test_port_in_use_is_reported_before_the_demo_is_built() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("serve", "--demo", "2000000", "--port", str(port))
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode() == (f"segengine serve: error: cannot listen on 127.0.0.1:{port}: Address already in "
                                    "use (choose another --port, or stop what uses it)\n")


def test_arguments_that_are_not_utf8_are_a_usage_error() -> None:
    done = cli(b"query", b"country = '\xff\xfe'")
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode() == "segengine query: error: argument is not valid UTF-8 text: country = '\\xff\\xfe'\n"


@pytest.fixture(scope="module")
def served():
    s = Served(profiles=300)
    yield s
    s.close()


def test_a_closed_stdout_ends_quietly(served) -> None:
    done = cli(shell=f"{sys.executable} -m server.cli query ALL --server {served.server.address} | head -1; "
                     "echo status ${PIPESTATUS[0]}")
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0] in served.ids and lines[1] in ("status 0", "status 1")
    assert done.stderr == b""


def test_unreachable_server_is_one_line(capsys) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    status, out, err = run(capsys, "stats", "--server", f"127.0.0.1:{port}", "--timeout", "2")
    assert (status, out) == (1, "") and err.count("\n") == 1 and err.startswith("segengine stats: error: UNAVAILABLE")


def test_stats_schema_profile_health(served, capsys) -> None:
    address = served.server.address
    status, out, _ = run(capsys, "stats", "--server", address)
    stats = json.loads(out)
    assert status == 0 and (stats["profiles"], stats["shards"]) == (300, 1)
    status, out, _ = run(capsys, "schema", "--server", address)
    assert status == 0 and json.loads(out) == served.engine.schema.to_dict()
    status, out, _ = run(capsys, "profile", served.ids[0], "--server", address)
    assert status == 0 and json.loads(out)["id"] == served.ids[0]
    assert run(capsys, "profile", "nobody", "--server", address)[:2] == (1, "")
    assert run(capsys, "health", "--server", address) == (0, "SERVING\n", "")


def test_membership_of_a_profile_in_no_segment(served, capsys) -> None:
    assert run(capsys, "segments", "membership", served.ids[0], "--server", served.server.address) == (
        0, "(no segments)\n", "")


def test_now_takes_iso_8601_and_dates(served, capsys) -> None:
    address = served.server.address
    query = "DID(purchase, WITHIN 30d)"
    expected = served.engine.count(query, now=NOW)
    assert run(capsys, "query", query, "--count", "--server", address, "--now", str(NOW)) == (0, f"{expected}\n", "")
    from engine.timeparse import format_ts

    assert run(capsys, "query", query, "--count", "--server", address, "--now", format_ts(NOW)) == (
        0, f"{expected}\n", "")
    midnight = NOW - NOW % 86_400_000
    assert run(capsys, "query", query, "--count", "--server", address, "--now", format_ts(midnight)[:10]) == (
        0, f"{served.engine.count(query, now=midnight)}\n", "")


def test_load_into_a_data_dir_keeps_the_data(capsys, files: Path) -> None:
    from engine import Engine, Schema

    data_dir = files / "db"
    status, out, err = run(capsys, "load", "--schema", str(files / "schema.json"), "--data-dir", str(data_dir),
                           "--profiles", str(files / "p.jsonl"), "--quiet")
    assert (status, out.splitlines()[-1], err) == (0, "profiles in the engine: 1", "")
    with Engine(Schema.from_file(data_dir / "schema.json"), shards=1, data_dir=str(data_dir)) as engine:
        assert engine.ids("age = 3") == ["u1"]
    status, _, err = run(capsys, "load", "--schema", str(files / "schema.json"), "--profiles", str(files / "p.jsonl"),
                         "--quiet")
    assert (status, err) == (0, "checked only: nothing was kept (load into a server with --server, or a data dir "
                                "with --data-dir)\n")
