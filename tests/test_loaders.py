"""File loaders (JSONL, CSV), the dataset writer and the CLI.

Error reporting is tested against a recording stand-in for the engine; the round trips use the
real ``engine.Engine``.
"""
from __future__ import annotations

import csv
import json

import pytest

from engine.errors import DataError
from engine.schema import Schema
from engine.timeparse import parse_ts
from loaders.csv_profiles import load_profiles_csv
from loaders.generator import DEMO_SCHEMA, generate
from loaders.jsonl import load_events_jsonl, load_profiles_jsonl
from loaders.writer import dataset_records, write_dataset
from server.cli import main

NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z


class RecordingEngine:
    """Keeps every batch it is sent; rejects a whole batch holding the id ``engine-rejects``."""

    def __init__(self):
        self.schema = Schema.from_dict(DEMO_SCHEMA)
        self.profile_batches: list[list[dict]] = []
        self.event_batches: list[list[dict]] = []

    def _take(self, batches: list, records) -> int:
        records = list(records)
        for i, record in enumerate(records):
            if record.get("id") == "engine-rejects":
                raise DataError("rejected", i, "id")
        batches.append(records)
        return len(records)

    def upsert_profiles(self, records) -> int:
        return self._take(self.profile_batches, records)

    def track_events(self, records) -> int:
        return self._take(self.event_batches, records)

    @property
    def profiles(self) -> list[dict]:
        return [record for batch in self.profile_batches for record in batch]


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PROFILE_LINES = [
    '{"id": "u1", "country": "FR", "age": 31, "interests": ["shoes", "tech"]}',
    '{"id": "u2", "age": "thirty"}',
    "",
    '{"id": "u4", "country": "DE"',
    '{"id": "u5", "colour": "red"}',
    '{"id": "u6", "vip": null, "consent": {"email": true, "sms": false}}',
    '{"id": "u7", "consent": {"fax": true}}',
    "[1, 2]",
    '{"age": 40}',
    '{"id": "u10", "signup_at": "yesterday"}',
    '{"id": "u11", "interests": []}',
]


def test_profile_jsonl_reports_bad_lines_by_number_and_field(tmp_path):
    engine = RecordingEngine()
    report = load_profiles_jsonl(engine, write_lines(tmp_path / "p.jsonl", PROFILE_LINES), batch_size=2, progress=False)
    assert report.errors == [
        "line 2, field 'age': expected an integer, got str",
        "line 4: malformed JSON: Expecting ',' delimiter (column 29)",
        "line 5, field 'colour': unknown attribute",
        "line 7, field 'consent.fax': unknown consent purpose",
        "line 8: a profile record must be an object",
        "line 9, field 'id': missing",
        "line 10, field 'signup_at': malformed timestamp 'yesterday'",
    ]
    assert report.applied == 3
    assert [r["id"] for r in engine.profiles] == ["u1", "u6", "u11"]
    assert engine.profiles[1] == {"id": "u6", "vip": None, "consent": {"email": True, "sms": False}}
    assert [len(batch) for batch in engine.profile_batches] == [2, 1]


def test_batch_rejected_by_the_engine_is_retried_record_by_record(tmp_path):
    lines = ['{"id": "a"}', '{"id": "engine-rejects"}', '{"id": "b"}']
    engine = RecordingEngine()
    report = load_profiles_jsonl(engine, write_lines(tmp_path / "p.jsonl", lines), batch_size=10, progress=False)
    assert report.applied == 2
    assert [r["id"] for r in engine.profiles] == ["a", "b"]
    assert report.errors == ["line 2: rejected by the engine: record 0, field 'id': rejected"]


def test_event_jsonl_reports_bad_lines(tmp_path):
    lines = [
        '{"id": "u1", "event": "purchase", "ts": "2026-11-20T10:00:00Z", "amount": 12.5}',
        '{"id": "u1", "event": "refund", "ts": 1}',
        '{"id": "u1", "event": "purchase", "ts": "2026-11-20"}',
        '{"id": "u1", "event": "page_view", "ts": 1795168800000, "amount": 3}',
        '{"id": "u2", "event": "add_to_cart", "ts": 1795168800000, "cart_value": 3, "category": null}',
        '{"id": "u3", "event": "page_view"}',
    ]
    engine = RecordingEngine()
    report = load_events_jsonl(engine, write_lines(tmp_path / "e.jsonl", lines), progress=False)
    assert report.errors == [
        "line 2, field 'event': unknown event type 'refund'",
        "line 3, field 'ts': timestamp '2026-11-20' has no offset or Z",
        "line 4, field 'amount': unknown property of event 'page_view'",
        "line 6, field 'ts': missing",
    ]
    assert report.applied == 2
    assert [r["event"] for batch in engine.event_batches for r in batch] == ["purchase", "add_to_cart"]


def test_progress_false_prints_nothing(tmp_path, capsys):
    load_profiles_jsonl(RecordingEngine(), write_lines(tmp_path / "p.jsonl", PROFILE_LINES[:1]), progress=False)
    assert capsys.readouterr() == ("", "")


CSV_TEXT = (
    "id,country,age,cart_value,vip,interests,signup_at,consent.email,consent.ads\n"
    "u1,FR,31,12.5,true,shoes|tech,2026-01-01T00:00:00Z,true,false\n"
    "u2,DE,abc,,,,,,\n"
    'u3,"Côte, d\'Ivoire",null,1e3,FALSE,[],1700000000000,,TRUE\n'
    "u4,GB,40\n"
    "\n"
    "u6,,,,maybe,,,,\n"
    "u7,,,,,a||b,,,\n"
    "u8,,,,,,,yes,\n"
    ",US,,,,,,,\n"
    "u10,,,,,,2026-01-01,,\n"
)


def test_csv_profiles_cells_and_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(CSV_TEXT, encoding="utf-8")
    engine = RecordingEngine()
    report = load_profiles_csv(engine, path, progress=False)
    assert report.errors == [
        "line 3, field 'age': expected an integer, got 'abc'",
        "line 5: expected 9 cells, got 3",
        "line 7, field 'vip': expected true or false, got 'maybe'",
        "line 8, field 'interests': empty tag in 'a||b' (tags are separated by '|')",
        "line 9, field 'consent.email': expected true or false, got 'yes'",
        "line 10, field 'id': missing",
        "line 11, field 'signup_at': timestamp '2026-01-01' has no offset or Z",
    ]
    assert report.applied == 2
    assert engine.profiles == [
        {"id": "u1", "country": "FR", "age": 31, "cart_value": 12.5, "vip": True, "interests": ["shoes", "tech"],
         "signup_at": "2026-01-01T00:00:00Z", "consent": {"email": True, "ads": False}},
        {"id": "u3", "country": "Côte, d'Ivoire", "age": None, "cart_value": 1000.0, "vip": False, "interests": [],
         "signup_at": 1700000000000, "consent": {"ads": True}},
    ]


def test_csv_unknown_header_column_stops_before_loading(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,age,colour\nu1,3,red\n", encoding="utf-8")
    engine = RecordingEngine()
    report = load_profiles_csv(engine, path, progress=False)
    assert report.errors == ["line 1, field 'colour': unknown column (not id, an attribute or consent.<purpose>)"]
    assert report.applied == 0 and engine.profiles == []


def test_written_files_hold_the_dataset_records(tmp_path):
    ds = generate(200, 1500, seed=5, now_ms=NOW)
    paths = write_dataset(ds, tmp_path)
    assert json.loads(paths["schema"].read_text()) == DEMO_SCHEMA
    profiles, events = dataset_records(ds)

    def normalise(record: dict, timestamps: tuple[str, ...]) -> dict:
        out = {k: parse_ts(v) if k in timestamps else v for k, v in record.items()}
        if "interests" in out:
            out["interests"] = sorted(out["interests"])
        return out

    lines = paths["profiles"].read_text().splitlines()
    assert [normalise(json.loads(line), ("signup_at",)) for line in lines] == list(profiles)
    lines = paths["events"].read_text().splitlines()
    assert [normalise(json.loads(line), ("ts",)) for line in lines] == list(events)
    assert len(lines) == 1500


# -- round trips through the real engine ------------------------------------------------------

QUERIES = [
    "ALL",
    "country IN ('FR', 'DE') AND age BETWEEN 25 AND 40",
    "vip IS NULL",
    "interests HAS 'tech'",
    "signup_at > NOW - 30d",
    "CONSENTED(email) AND NOT CONSENTED(sms)",
    "DID(purchase WHERE amount > 50, WITHIN 7d)",
    "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
    "DID(page_view, COUNT >= 5)",
]


@pytest.fixture(scope="module")
def small_ds():
    return generate(300, 3000, seed=11, now_ms=NOW)


def test_round_trip_generate_write_load_count(tmp_path, small_ds):
    from engine import Engine

    paths = write_dataset(small_ds, tmp_path)
    with Engine(Schema.from_file(paths["schema"]), shards=1) as engine:
        profiles = load_profiles_jsonl(engine, paths["profiles"], batch_size=64, progress=False)
        events = load_events_jsonl(engine, paths["events"], batch_size=500, progress=False)
        assert (profiles.applied, profiles.errors) == (300, [])
        assert (events.applied, events.errors) == (3000, [])
        assert engine.count("ALL", now=NOW) == 300


def test_bulk_records_and_files_load_the_same_engine_state(tmp_path, small_ds):
    from engine import Engine

    schema = Schema.from_dict(small_ds.schema)
    paths = write_dataset(small_ds, tmp_path, ts_format="ms")
    bulk, records, files = Engine(schema), Engine(schema), Engine(schema)
    try:
        bulk.load_profiles(small_ds.profiles)
        for batch in small_ds.events:
            bulk.load_events(batch)
        profile_records, event_records = dataset_records(small_ds)
        records.upsert_profiles(profile_records)
        records.track_events(event_records)
        load_profiles_jsonl(files, paths["profiles"], progress=False)
        load_events_jsonl(files, paths["events"], progress=False)
        for query in QUERIES:
            expected = records.ids(query, now=NOW)
            assert bulk.ids(query, now=NOW) == expected, query
            assert files.ids(query, now=NOW) == expected, query
        assert records.count("ALL", now=NOW) == 300
    finally:
        for engine in (bulk, records, files):
            engine.close()


def test_csv_round_trip(tmp_path, small_ds):
    from engine import Engine

    schema = Schema.from_dict(small_ds.schema)
    header = ["id", *schema.attributes, *(f"consent.{p}" for p in schema.consents)]
    path = tmp_path / "profiles.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record in dataset_records(small_ds)[0]:
            cells = {k: ("|".join(v) or "[]") if isinstance(v, list) else str(v).lower() if isinstance(v, bool)
                     else str(v) for k, v in record.items() if k != "consent"}
            cells.update({f"consent.{p}": str(g).lower() for p, g in record["consent"].items()})
            writer.writerow([cells.get(column, "") for column in header])
    with Engine(schema) as from_csv, Engine(schema) as from_records:
        report = load_profiles_csv(from_csv, path, progress=False)
        assert (report.applied, report.errors) == (300, [])
        from_records.upsert_profiles(dataset_records(small_ds)[0])
        for query in QUERIES[:6]:
            assert from_csv.ids(query, now=NOW) == from_records.ids(query, now=NOW), query


def test_cli_generate_then_load(tmp_path, capsys):
    assert main(["generate", "--profiles", "50", "--events", "400", "--out", str(tmp_path), "--now-ms", str(NOW)]) == 0
    assert capsys.readouterr().out.startswith("generated 50 profiles and 400 events in ")
    status = main(["load", "--schema", str(tmp_path / "schema.json"), "--profiles", str(tmp_path / "profiles.jsonl"),
                   "--events", str(tmp_path / "events.jsonl"), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert "applied 50 records, 0 errors" in out and "applied 400 records, 0 errors" in out
    assert out.rstrip().endswith("profiles in the engine: 50")
