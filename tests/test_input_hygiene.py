"""Input hygiene: schema keys, names spelled like keywords, ``<>``, date-only literals, CSV events."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import Engine, QueryError, Schema
from engine.schema import CONTRACT_SCHEMA
from loaders.csv_events import load_events_csv
from loaders.files import load_file

DAY = 86_400_000
NOW = 1_795_168_800_000  # 2026-11-20T10:00:00Z


def test_unknown_top_level_schema_keys_are_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"^unknown schema key 'attrs' \(allowed: attributes, events, consents\)$"):
        Schema.from_dict({"attrs": {"a": {"type": "int"}}})


@pytest.mark.parametrize(("spec", "message"), [
    ({"attributes": {"a": {"type": "string"}}},
     "attribute 'a': unknown type 'string' (types: category, int, float, bool, tags, timestamp)"),
    ({"events": {"e": {"properties": {"p": "tags"}}}},
     "event 'e', property 'p': unknown type 'tags' (types: category, int, float, bool, timestamp)"),
    ({"attributes": {"ts": {"type": "int"}}}, "attribute name 'ts' is empty or reserved (reserved: consent, event, event_id, id, ts)"),
    ({"attributes": []}, "schema 'attributes' must be an object of name: definition"),
    ({"events": {"e": {"properties": ["p"]}}}, "event 'e': properties must be an object of name: type"),
    ({"consents": "email"}, "consents must be a list of purpose names"),
])
def test_schema_errors_say_what_is_allowed(spec: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Schema.from_dict(spec)
    assert str(caught.value) == message


KEYWORD_SCHEMA = {
    "attributes": {"AND": {"type": "int"}, "count": {"type": "category"}},
    "events": {"last": {"properties": {"count": "int"}}},
    "consents": ["all"],
}


@pytest.fixture
def keyword_engine():
    with Engine(Schema.from_dict(KEYWORD_SCHEMA), shards=1) as engine:
        engine.upsert_profiles([{"id": "a", "AND": 3, "count": "x", "consent": {"all": True}}, {"id": "b", "AND": 1}])
        engine.track_events([{"id": "a", "event": "last", "ts": NOW - DAY, "count": 7}])
        yield engine


def test_names_spelled_like_keywords_work_double_quoted(keyword_engine: Engine) -> None:
    query = '"AND" > 2 AND "count" = \'x\' AND DID("last" WHERE "count" = 7) AND CONSENTED("all")'
    assert keyword_engine.ids(query, now=NOW) == ["a"]


@pytest.mark.parametrize(("query", "word", "column"), [
    ("count = 'x'", "count", 1),
    ("\"AND\" > 2 AND count IS NULL", "count", 15),
    ("DID(last)", "last", 5),
    ("DID(\"last\" WHERE count = 7)", "count", 18),
    ("CONSENTED(all)", "all", 11),
])
def test_keywords_used_as_names_get_an_error_with_the_quoted_form(keyword_engine: Engine, query: str, word: str,
                                                                   column: int) -> None:
    with pytest.raises(QueryError) as caught:
        keyword_engine.count(query, now=NOW)
    assert str(caught.value) == (f'{word} is a keyword; write a name spelled like a keyword double-quoted: "{word}" '
                                 f"at column {column} near '{word}'")


def test_angle_brackets_mean_not_equal_and_dates_mean_midnight_utc() -> None:
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
        engine.upsert_profiles([{"id": "a", "age": 30, "signup_at": "2026-11-01T00:00:00Z"},
                                {"id": "b", "age": 31, "signup_at": "2026-10-31T23:59:59.999Z"}, {"id": "c"}])
        assert engine.ids("age <> 30") == engine.ids("age != 30") == ["b"]
        assert engine.ids("signup_at >= '2026-11-01'") == ["a"]
        assert engine.ids("signup_at < '2026-11-01'") == ["b"]
        assert engine.ids("signup_at BETWEEN '2026-10-31' AND '2026-11-01'") == ["a", "b"]
        engine.track_events([{"id": "a", "event": "purchase", "ts": "2026-11-01T00:00:00Z"}])
        assert engine.ids("DID(purchase, SINCE '2026-11-01')", now=NOW) == ["a"]
        assert engine.ids("DID(purchase, BEFORE '2026-11-01')", now=NOW) == []


def test_the_api_accepts_small_epoch_milliseconds() -> None:
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
        assert engine.track_events([{"id": "a", "event": "purchase", "ts": 1_763_632_800}]) == 1
        assert engine.count("DID(purchase, BEFORE '1970-01-31')", now=NOW) == 1


def test_csv_events_load_with_per_type_properties(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "id,event,ts,amount,category,cart_value\n"
        "u1,purchase,2026-11-20T09:00:00Z,19.5,shoes,\n"
        "u1,page_view,1795165200000,,books,\n"
        "u2,cart_abandoned,2026-11-19T09:00:00Z,,null,80\n"
        "u2,page_view,2026-11-19T09:00:00Z,3,,\n"
        "u3,purchase,,1,,\n"
        "u3,refund,2026-11-19T09:00:00Z,,,\n"
        "u3,purchase,2026-11-19T09:00:00Z,x,,\n"
        "u4,purchase,1763632800,1,,\n")
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
        report = load_file("events", engine, path, progress=False)
        assert (report.applied, report.errors) == (4, [
            "line 5, field 'amount': unknown property of event 'page_view'",
            "line 6, field 'ts': missing",
            "line 7, field 'event': unknown event type 'refund'",
            "line 8, field 'amount': expected a number, got 'x'",
        ])
        assert report.warnings == [
            "1 events have a ts before 1973-03-03T09:46:40Z (epoch ms below 1e11: epoch seconds?), at line 9; "
            "ts is epoch milliseconds or ISO 8601 (--strict-timestamps refuses them)"]
        assert engine.ids("DID(purchase WHERE amount > 10 AND category = 'shoes')", now=NOW) == ["u1"]
        assert engine.ids("DID(page_view WHERE category = 'books', WITHIN 2h)", now=NOW) == ["u1"]
        assert engine.ids("DID(cart_abandoned WHERE category IS NULL AND cart_value = 80)", now=NOW) == ["u2"]


def test_csv_event_headers_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    for header, error in (("id,event,amount", "line 1, field 'ts': missing column"),
                          ("id,event,ts,colour", "line 1, field 'colour': unknown column (not id, event, ts, event_id "
                                                 "or an event property)"),
                          ("id,event,ts,ts", "line 1, field 'ts': repeated column")):
        path.write_text(header + "\nu1,purchase,1795165200000\n")
        with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
            report = load_events_csv(engine, path, progress=False)
            assert (report.applied, report.errors) == (0, [error])


def test_jsonl_and_csv_events_load_the_same(tmp_path: Path) -> None:
    records = [{"id": "u1", "event": "purchase", "ts": "2026-11-20T09:00:00Z", "amount": 19.5, "category": "shoes"},
               {"id": "u2", "event": "page_view", "ts": 1795165200000, "category": "books"}]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "e.csv").write_text("id,event,ts,amount,category\nu1,purchase,2026-11-20T09:00:00Z,19.5,shoes\n"
                                    "u2,page_view,1795165200000,,books\n")
    exports = []
    for name in ("e.jsonl", "e.csv"):
        with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1) as engine:
            assert load_file("events", engine, tmp_path / name, progress=False).applied == 2
            exports.append([engine.profile(i) for i in ("u1", "u2")])
    assert exports[0] == exports[1]
