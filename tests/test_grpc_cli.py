"""CLI commands built on the client: query, segments, snapshot, load --server."""
from __future__ import annotations

import json

import pytest

from server.cli import main

from test_grpc import NOW, Served


@pytest.fixture
def served():
    s = Served(profiles=300)
    yield s
    s.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_query_count_ids_and_explain(served, capsys):
    address = served.server.address
    expected = served.engine.count("country = 'FR'", now=NOW)
    assert run(capsys, "query", "--server", address, "--count", "country = 'FR'", "--now", str(NOW)) == (
        0, f"{expected}\n", "")
    status, out, _ = run(capsys, "query", "--server", address, "vip = TRUE")
    assert status == 0 and out.split() == served.engine.ids("vip = TRUE")
    status, out, _ = run(capsys, "query", "--server", address, "--explain", "vip = TRUE AND age > 30")
    assert status == 0 and "PRED age > 30" in out and "PRED vip = TRUE" in out
    status, out, err = run(capsys, "query", "--server", address, "age = 'x'")
    assert (status, out) == (1, "") and err.startswith("error: type mismatch") and "column 7" in err


def test_segments_commands(served, capsys):
    address = served.server.address
    status, out, _ = run(capsys, "segments", "create", "fr", "country = 'FR'", "--server", address)
    assert status == 0 and json.loads(out)["count"] == served.engine.count("country = 'FR'")
    assert run(capsys, "segments", "create", "fr", "ALL", "--server", address)[2] == \
        "error: segment 'fr' already exists\n"
    assert run(capsys, "segments", "create", "fr", "ALL", "--replace", "--server", address)[0] == 0
    status, out, _ = run(capsys, "segments", "list", "--server", address)
    assert out == "fr\t300\tALL\n"
    assert json.loads(run(capsys, "segments", "get", "fr", "--server", address)[1])["query"] == "ALL"
    assert run(capsys, "segments", "membership", served.ids[0], "--server", address)[1] == "fr\n"
    assert run(capsys, "segments", "delete", "fr", "--server", address)[1] == "deleted fr\n"
    assert run(capsys, "segments", "get", "fr", "--server", address) == (1, "", "error: unknown segment 'fr'\n")
    assert run(capsys, "segments", "get", "--server", address)[0] == 2


def test_load_into_a_server(served, capsys, tmp_path):
    profiles = tmp_path / "p.jsonl"
    profiles.write_text('{"id": "l1", "age": 5}\n{"id": "l2", "age": "x"}\n{"id": "l3"}\n')
    events = tmp_path / "e.jsonl"
    events.write_text('{"id": "l1", "event": "purchase", "ts": "2026-11-20T10:00:00Z", "amount": 3.5}\n')
    status, out, _ = run(capsys, "load", "--server", served.server.address, "--profiles", str(profiles),
                         "--events", str(events), "--quiet")
    assert status == 1  # one bad line
    assert "applied 2 records, 1 errors" in out and "line 2, field 'age'" in out and "applied 1 records, 0 errors" in out
    assert served.engine.profile("l1")["age"] == 5 and served.engine.count("DID(purchase) AND age = 5", now=NOW) == 1


def test_snapshot_command_reports_the_server_answer(served, capsys):
    status, out, err = run(capsys, "snapshot", "--server", served.server.address)
    assert (status, out) == (1, "") and err.startswith("error: this engine has no data_dir")
