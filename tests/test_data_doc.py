"""The examples of docs/data.md load as the page says: schema, JSON Lines and CSV records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from loaders.files import load_file
from server.cli import main

from doc_blocks import blocks

DOC = "docs/data.md"
NOW = 1_795_168_800_000


def test_the_schema_example_is_the_built_in_schema() -> None:
    schemas = [json.loads(b.text) for b in blocks(DOC, "json") if '"attributes"' in b.text]
    assert schemas == [CONTRACT_SCHEMA]


def test_record_examples_are_valid_records() -> None:
    records = [json.loads(b.text) for b in blocks(DOC, "json") if '"attributes"' not in b.text]
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
        assert engine.upsert_profiles([r for r in records if "event" not in r]) == 1
        assert engine.track_events([r for r in records if "event" in r]) == 1
        assert engine.ids("country = 'FR' AND CONSENTED(email) AND NOT CONSENTED(sms) AND "
                          "DID(cart_abandoned WHERE cart_value > 100)", now=NOW) == ["u1"]


def load_examples(tmp_path: Path, lang: str, suffix: str) -> Engine:
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
    for number, block in enumerate(blocks(DOC, lang)):
        path = tmp_path / f"{number}.{suffix}"
        path.write_text(block.text)
        kind = "events" if '"event"' in block.text or block.text.startswith("id,event,") else "profiles"
        report = load_file(kind, engine, path, progress=False)
        assert (report.errors, report.warnings) == ([], []), block.text
    return engine


@pytest.mark.parametrize(("lang", "suffix"), [("jsonl", "jsonl"), ("csv", "csv")])
def test_file_examples_load_without_errors(tmp_path: Path, lang: str, suffix: str) -> None:
    with load_examples(tmp_path, lang, suffix) as engine:
        assert engine.ids("ALL") == (["u1", "u2", "u3"] if lang == "csv" else ["u1", "u2"])
        assert engine.ids("DID(purchase WHERE amount > 30, SINCE '2026-11-20')", now=NOW) == ["u2"]
        assert engine.ids("DID(page_view WHERE category = 'shoes', WITHIN 1d)", now=NOW) == ["u1"]
        assert engine.ids("interests HAS ALL ('shoes', 'tech') AND CONSENTED(email)", now=NOW) == ["u1"]


EVENT_QUERIES = ["DID(page_view WHERE category = 'shoes', SINCE '2026-11-19T18:02:11Z', BEFORE '2026-11-19T18:02:12Z')",
                 "DID(cart_abandoned WHERE cart_value = 120.5 AND category = 'shoes', SINCE 1795118400000, "
                 "BEFORE 1795118400001)",
                 "DID(purchase WHERE amount = 35.9 AND category IS NULL, SINCE '2026-11-20T08:15:00Z', "
                 "BEFORE '2026-11-20T08:15:00.001Z')"]


def test_jsonl_and_csv_examples_hold_the_same_events(tmp_path: Path) -> None:
    answers = []
    for lang in ("jsonl", "csv"):
        (tmp_path / lang).mkdir()
        with load_examples(tmp_path / lang, lang, lang) as engine:
            answers.append([engine.ids(q, now=NOW) for q in EVENT_QUERIES])
    assert answers[0] == answers[1] == [["u1"], ["u1"], ["u2"]]


def test_the_schema_error_examples_are_what_the_cli_prints(tmp_path: Path, capsys) -> None:
    (example,) = [b for b in blocks(DOC, "") if b.text.startswith("segengine load: error: schema")]
    specs = [{"attrs": {}}, {"attributes": {"plan": {"type": "string"}}}, {"attributes": {"id": {"type": "int"}}}]
    texts = [json.dumps(s) for s in specs] + ['{\n  "attributes": {}\n    "events": {}\n}']
    printed = []
    for text in texts:
        path = tmp_path / "my.json"
        path.write_text(text)
        assert main(["load", "--schema", str(path), "--profiles", str(path)]) == 1
        printed.append(capsys.readouterr().err.replace(str(path), "my.json"))
    assert "".join(printed) == example.text
