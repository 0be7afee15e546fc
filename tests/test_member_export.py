"""Member export (engine.member_export, engine.export_formats, ExportMembers, ``segengine export-members``):
every format read back (csv module, json, pyarrow) equals the members and their attributes as the engine
reports them, at shards 1 and 2, in several chunks, over gRPC and from the CLI."""
from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine import DataError, Engine, QueryError, Schema
from engine.errors import BadRequest, SegmentNotFound
from engine.export_formats import ByteChunks, open_writer
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.cli import main
from server.client import SegengineClient

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
NOW = 1_795_168_800_000
ATTRIBUTES = ["country", "age", "cart_value", "vip", "interests", "signup_at"]
KINDS = {name: SCHEMA.attributes[name].type for name in ATTRIBUTES}


def records(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """Profiles with every attribute type, nulls, empty tag lists and ids that need CSV quoting."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        record: dict[str, Any] = {"id": rng.choice([f"u{i}", f"ü,{i}", f'q"{i}', f"s {i}"])}
        if rng.random() < 0.8:
            record["country"] = rng.choice(["FR", "BE", "DE", "Côte, \"x\""])
        if rng.random() < 0.7:
            record["age"] = rng.randrange(-5, 120)
        if rng.random() < 0.7:
            record["cart_value"] = rng.choice([0.1, 2.0, 1e20, -3.75, rng.random() * 1000])
        if rng.random() < 0.7:
            record["vip"] = rng.random() < 0.5
        if rng.random() < 0.8:
            record["interests"] = rng.sample(["shoes", "tech", "a|b", "x"], rng.randrange(0, 3))
        if rng.random() < 0.7:
            record["signup_at"] = NOW - rng.randrange(0, 10**10)
        out.append(record)
    return out


def expected(engine: Engine, query: str, attributes: list[str]) -> list[list[Any]]:
    """[id, values...] of the members of ``query``, from the engine's profile records, sorted by id."""
    rows = []
    for profile_id in engine.ids(query, now=NOW):
        record = engine.profile(profile_id)
        rows.append([profile_id, *(record.get(name) for name in attributes)])
    return rows


def csv_value(kind: str, cell: str) -> Any:
    if cell == "":
        return None
    if kind in ("int", "timestamp"):
        return int(cell)
    if kind == "float":
        return float(cell)
    if kind == "bool":
        return {"true": True, "false": False}[cell]
    if kind == "tags":
        return [] if cell == "[]" else cell.split("|")
    return cell


def read_back(fmt: str, data: bytes, attributes: list[str]) -> list[list[Any]]:
    """The rows of an export file, as [id, values...], sorted by id."""
    if fmt == "csv":
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        assert next(reader) == ["id", *attributes]
        rows = [[row[0], *(csv_value(KINDS[a], cell) for a, cell in zip(attributes, row[1:]))] for row in reader]
    elif fmt == "jsonl":
        objects = [json.loads(line) for line in data.decode("utf-8").splitlines()]
        assert all(list(obj) == ["id", *attributes] for obj in objects)
        rows = [[obj["id"], *(obj[a] for a in attributes)] for obj in objects]
    else:
        table = pq.read_table(io.BytesIO(data))
        assert table.column_names == ["id", *attributes]
        rows = [[row["id"], *(row[a] for a in attributes)] for row in table.to_pylist()]
    return sorted(rows, key=lambda row: row[0])


def fix_tags(rows: list[list[Any]], attributes: list[str]) -> list[list[Any]]:
    """Tags with a '|' in a label cannot round-trip through CSV cells: compare them joined."""
    at = [i + 1 for i, a in enumerate(attributes) if KINDS[a] == "tags"]
    return [[("|".join(v) if i in at and v else v) for i, v in enumerate(row)] for row in rows]


@pytest.fixture(scope="module", params=[1, 2])
def engine(request):
    with Engine(SCHEMA, shards=request.param) as eng:
        eng.clock = lambda: NOW
        eng.upsert_profiles(records(500))
        eng.create_segment("some", "age > 20 OR interests IS NULL")
        eng.upsert_profiles([{"id": "u1", "age": None, "interests": None}])  # changed after the segment was made
        eng.delete_profiles(["u2", "u3"])
        yield eng


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_format_reads_back_as_the_members_and_their_attributes(engine: Engine, fmt: str) -> None:
    for attributes in (ATTRIBUTES, ["interests"], []):
        out = io.BytesIO()
        rows = engine.export_members(out, attributes, fmt, segment="some", chunk_rows=37)
        want = expected(engine, "SEGMENT('some')", attributes)
        assert rows == len(want) > 100
        got = read_back(fmt, out.getvalue(), attributes)
        if fmt == "csv":
            got, want = fix_tags(got, attributes), fix_tags(want, attributes)
        assert got == want


def test_a_streamed_parquet_file_of_many_row_groups_reads_back(engine: Engine) -> None:
    sink = ByteChunks()  # what the server streams: bytes taken out as they are written
    pieces: list[bytes] = []
    chunks = engine.member_chunks(ATTRIBUTES, segment="some", chunk_rows=50)
    writer = open_writer("parquet", sink, [(name, KINDS[name]) for name in ATTRIBUTES])
    for chunk in chunks:
        writer.write(chunk)
        pieces.extend(sink.take(piece_bytes=1000))
    writer.close()
    pieces.extend(sink.take(piece_bytes=1000))
    data = b"".join(pieces)
    assert len(pieces) > 3 and pq.ParquetFile(io.BytesIO(data)).num_row_groups > 3
    assert read_back("parquet", data, ATTRIBUTES) == expected(engine, "SEGMENT('some')", ATTRIBUTES)


def test_a_query_export_to_a_path(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "members.parquet"
    query = "country IN ('FR', 'BE') AND vip = TRUE"
    assert engine.export_members(str(path), ["country", "vip"], "parquet", query=query, now=NOW) == \
        engine.count(query, now=NOW)
    assert read_back("parquet", path.read_bytes(), ["country", "vip"]) == expected(engine, query, ["country", "vip"])
    assert [p.name for p in tmp_path.iterdir()] == ["members.parquet"]


def test_bad_exports_are_refused_before_anything_is_written(engine: Engine, tmp_path: Path) -> None:
    path = str(tmp_path / "out.csv")
    with pytest.raises(DataError, match="field 'nope': unknown attribute \\(attribute 2 of the export\\)"):
        engine.export_members(path, ["age", "nope"], segment="some")
    with pytest.raises(DataError, match="named twice"):
        engine.export_members(path, ["age", "age"], segment="some")
    with pytest.raises(SegmentNotFound):
        engine.export_members(path, ["age"], segment="missing")
    with pytest.raises(BadRequest, match="unknown export format 'xml'"):
        engine.export_members(path, ["age"], "xml", segment="some")
    with pytest.raises(QueryError, match="exactly one"):
        engine.export_members(path, ["age"], segment="some", query="ALL")
    with pytest.raises(QueryError):
        engine.export_members(path, ["age"], query="age = 'x'")
    assert list(tmp_path.iterdir()) == []


def test_export_and_history_over_grpc_and_from_the_cli(tmp_path: Path, capsys) -> None:
    clock = [NOW]
    with Engine(SCHEMA, shards=1) as eng:
        eng.clock = lambda: clock[0]
        eng.create_segment("some", "age > 20 OR interests IS NULL")
        clock[0] += 2_000
        eng.upsert_profiles(records(400, seed=9))
        config = ServerConfig(port=0, refresh_ms=0)
        server = SegengineServer(eng, config).start()
        try:
            with SegengineClient(server.address) as client:
                want = expected(eng, "SEGMENT('some')", ATTRIBUTES)
                for fmt in ("csv", "jsonl", "parquet"):
                    out = io.BytesIO()
                    assert client.export_members(out, ATTRIBUTES, fmt, segment="some") == len(want)
                    got = read_back(fmt, out.getvalue(), ATTRIBUTES)
                    assert (fix_tags(got, ATTRIBUTES) if fmt == "csv" else got) == \
                        (fix_tags(want, ATTRIBUTES) if fmt == "csv" else want)
                with pytest.raises(DataError, match="unknown attribute"):
                    client.export_members(str(tmp_path / "x.csv"), ["nope"], segment="some")
                assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.csv.part").exists()
                with pytest.raises(SegmentNotFound):
                    client.export_members(io.BytesIO(), [], segment="missing")
                assert client.segment_history("some") == [(NOW, 0), (NOW + 2_000, len(want))]
                assert client.segment_history("some", since=NOW + 1) == [(NOW + 2_000, len(want))]
                assert client.segment_history("some", until=NOW) == [(NOW, 0)]
                with pytest.raises(SegmentNotFound):
                    client.segment_history("missing")
            address = server.address
            path = tmp_path / "some.parquet"
            assert main(["export-members", "some", "--attributes", "country,age", "--out", str(path),
                         "--server", address]) == 0
            assert capsys.readouterr().err == f"exported {len(want)} members\n"
            assert read_back("parquet", path.read_bytes(), ["country", "age"]) == \
                expected(eng, "SEGMENT('some')", ["country", "age"])
            assert main(["export-members", "--query", "vip = TRUE", "--format", "jsonl", "--server", address]) == 0
            out = capsys.readouterr().out.encode()
            assert read_back("jsonl", out, []) == expected(eng, "vip = TRUE", [])
            assert main(["export-members", "--server", address]) == 2
            capsys.readouterr()
            assert main(["history", "some", "--since", "2026-11-20T10:00:01Z", "--server", address]) == 0
            assert capsys.readouterr().out == f"2026-11-20T10:00:02.000Z\t{len(want)}\n"
            assert main(["history", "some", "--json", "--server", address]) == 0
            assert json.loads(capsys.readouterr().out) == [[NOW, 0], [NOW + 2_000, len(want)]]
        finally:
            server.stop(grace_s=0)
