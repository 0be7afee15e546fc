"""The HTTP API's analytics and activation routes (breakdown with bins, overlap, why, segment size
history, member export) against one real server: every answer equals the engine's and gRPC's,
errors carry the same message, and every answer is checked against /openapi.json."""
from __future__ import annotations

import io
import json

import pytest

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.client import SegengineClient

from http_client import HttpClient

NOW = 1_800_000_000_000
DAY = 86_400_000
COUNTRIES = ("FR", "BE", "DE")
INTERESTS = (["shoes"], ["shoes", "tech"], [], None)
PROFILES = [{"id": f"u{i:02d}", "country": COUNTRIES[i % 3], "age": 20 + i, "vip": i % 4 == 0,
             "interests": INTERESTS[i % 4], "signup_at": NOW - i * DAY, "cart_value": i * 10.5,
             "consent": {"email": i % 2 == 0}} for i in range(20)]
EVENTS = [{"id": f"u{i:02d}", "event": "purchase", "ts": NOW - i * 3_600_000, "amount": float(i)} for i in range(0, 20, 5)]
TOKEN, ADMIN = "rw", "adm"
WHY_QUERY = "country = 'FR' AND (vip = TRUE OR DID(purchase, WITHIN 1d))"


@pytest.fixture(scope="module")
def served():
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2)
    engine.upsert_profiles(PROFILES)
    engine.track_events(EVENTS)
    engine.create_segment("fr", "country = 'FR'")
    engine.create_segment("vips", "vip = TRUE")
    engine.upsert_profiles([{"id": "u99", "country": "FR", "vip": True}])
    config = ServerConfig(port=0, http_port=0, refresh_ms=0, token=TOKEN, admin_token=ADMIN)
    server = SegengineServer(engine, config, owns_engine=True).start()
    grpc = SegengineClient(server.address, token=TOKEN)
    http = HttpClient(f"http://127.0.0.1:{server.http_port}", token=TOKEN)
    yield engine, grpc, http
    grpc.close()
    server.stop(grace_s=1)


def grpc_message(call, *args, **kwargs) -> str:
    with pytest.raises(Exception) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def rows(counts: dict) -> list[dict]:
    return [{"key": list(k) if isinstance(k, tuple) else k, "count": n} for k, n in counts.items()]


def test_breakdown_by_value_tag_and_bins(served):
    engine, grpc, http = served
    cases = [("ALL", "country", None), ("age >= 25", "interests", None), ("ALL", "vip", None),
             ("ALL", "age", [0, 25, 30, 100]), ("CONSENTED(email)", "cart_value", [0, 50.5, 1000]),
             ("ALL", "signup_at", [NOW - 30 * DAY, NOW - 7 * DAY, NOW + 1])]
    for query, by, bins in cases:
        answer = http.call("POST", "/v1/breakdown", {"query": query, "by": by, "bins": bins, "now_ms": NOW})
        assert answer.status == 200, answer.text
        expected = engine.breakdown(query, by, now=NOW, bins=bins)
        assert answer.json == {"by": by, "now_ms": NOW, "counts": rows(expected)}
        assert grpc.breakdown(query, by, now=NOW, bins=bins) == expected
    answer = http.call("POST", "/v1/breakdown", {"query": "ALL", "by": "age", "bins": [0, 25, 30, 100], "now_ms": NOW})
    assert answer.json["counts"] == [{"key": [0, 25], "count": 5}, {"key": [25, 30], "count": 5},
                                     {"key": [30, 100], "count": 10}, {"key": None, "count": 1}]
    answer = http.call("POST", "/v1/breakdown", {"query": "ALL", "by": "interests", "now_ms": NOW})
    assert answer.json["counts"] == [{"key": "shoes", "count": 10}, {"key": "tech", "count": 5},
                                     {"key": None, "count": 6}]
    for body in ({"query": "ALL", "by": "age"}, {"query": "ALL", "by": "age", "bins": [3, 3]},
                 {"query": "ALL", "by": "country", "bins": [1, 2]}, {"query": "ALL", "by": "nope"}):
        answer = http.call("POST", "/v1/breakdown", body)
        assert (answer.status, answer.json["error"]["code"]) == (400, "INVALID_ARGUMENT")
        assert answer.json["error"]["message"] == grpc_message(grpc.breakdown, "ALL", body["by"], bins=body.get("bins"))
    answer = http.call("POST", "/v1/breakdown", {"query": "ALL", "by": "age", "bins": "0,10"})
    assert answer.json["error"]["message"] == "field 'bins' must be an array, got str"


def test_overlap(served):
    engine, grpc, http = served
    queries = ["SEGMENT('fr')", "SEGMENT('vips')", "CONSENTED(email)", "DID(purchase, WITHIN 1d)"]
    answer = http.call("POST", "/v1/overlap", {"queries": queries, "now_ms": NOW})
    assert answer.json == {"now_ms": NOW, "matrix": engine.overlap(queries, now=NOW)}
    assert answer.json["matrix"][0][:2] == [8, 3]
    assert grpc.overlap(queries, now=NOW) == answer.json["matrix"]
    assert http.call("POST", "/v1/overlap", {"queries": [], "now_ms": NOW}).json == {"now_ms": NOW, "matrix": []}
    bad = http.call("POST", "/v1/overlap", {"queries": ["ALL", "agee > 3"]})
    assert (bad.status, bad.json["error"]["code"]) == (400, "INVALID_ARGUMENT")
    assert bad.json["error"]["message"] == grpc_message(grpc.overlap, ["ALL", "agee > 3"]) == \
        "argument 'queries', query 1: unknown attribute 'agee' at column 1 near 'agee'"
    assert http.call("POST", "/v1/overlap", {"queries": ["ALL", 3]}).json["error"]["message"] == \
        "field 'queries': query 1 must be a string, got int"


def test_why_equals_the_engine_and_needs_the_read_write_token(served):
    engine, grpc, http = served
    for profile_id in ("u00", "u03", "u15", "u99"):
        answer = http.call("POST", "/v1/why", {"id": profile_id, "query": WHY_QUERY, "now_ms": NOW})
        assert answer.status == 200, answer.text
        assert answer.json == json.loads(json.dumps(engine.why(profile_id, WHY_QUERY, now=NOW)))
        assert answer.json["tree"]["value"] == (profile_id in engine.ids(WHY_QUERY, now=NOW))
    tree = http.call("POST", "/v1/why", {"id": "u15", "query": WHY_QUERY, "now_ms": NOW}).json["tree"]
    assert (tree["value"], [c["value"] for c in tree["children"]]) == (True, [True, True])
    assert tree["children"][0]["facts"] == {"attribute": "country", "value": "FR"}
    did = tree["children"][1]["children"][1]
    assert (did["kind"], did["value"], did["facts"]["count"], did["facts"]["last_ts"]) == \
        ("did", True, 1, NOW - 15 * 3_600_000)
    short = http.call("POST", "/v1/why", {"id": "u15", "query": WHY_QUERY, "now_ms": NOW, "truth_only": True}).json
    assert short == json.loads(json.dumps(engine.why("u15", WHY_QUERY, now=NOW, events=False)))
    unknown = http.call("POST", "/v1/why", {"id": "zz", "query": "ALL"})
    assert (unknown.status, unknown.json["error"]) == (404, {"code": "NOT_FOUND", "message": "unknown profile 'zz'",
                                                             "position": None})
    assert grpc_message(grpc.why, "zz", "ALL") == "unknown profile 'zz'"
    bad = http.call("POST", "/v1/why", {"id": "u00", "query": "agee > 3"})
    assert (bad.status, bad.json["error"]["position"]) == (400, 1)
    assert http.call("POST", "/v1/why", {"query": "ALL"}).json["error"]["message"] == "field 'id' is required"
    # the read/write token is enough (as for GetProfile), over HTTP and gRPC alike; no token is not
    assert grpc.why("u15", WHY_QUERY, now=NOW)["tree"]["value"] is True
    assert http.call("POST", "/v1/why", {"id": "u15", "query": "ALL"}, token="").status == 401


def test_segment_history(served):
    engine, grpc, http = served
    answer = http.call("GET", "/v1/segments/fr/history")
    expected = engine.segment_history("fr")
    assert answer.json == {"name": "fr", "points": [{"time_ms": t, "size": n} for t, n in expected]}
    assert expected == grpc.segment_history("fr") and expected[-1][1] == 8
    last = expected[-1][0]
    assert http.call("GET", f"/v1/segments/fr/history?since_ms={last}").json["points"] == \
        [{"time_ms": last, "size": 8}]
    assert http.call("GET", f"/v1/segments/fr/history?until_ms={expected[0][0] - 1}").json["points"] == []
    bad = http.call("GET", "/v1/segments/fr/history?since_ms=yesterday")
    assert (bad.status, bad.json["error"]["message"]) == \
        (400, "parameter 'since_ms' must be an integer (epoch ms), got 'yesterday'")
    missing = http.call("GET", "/v1/segments/nope/history")
    assert (missing.status, missing.json["error"]["message"]) == (404, grpc_message(grpc.segment_history, "nope"))


@pytest.mark.parametrize("fmt,content_type", [("csv", "text/csv; charset=utf-8"), ("jsonl", "application/x-ndjson"),
                                              ("parquet", "application/vnd.apache.parquet")])
def test_member_export_streams_the_engines_file(served, fmt, content_type):
    engine, grpc, http = served
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    attributes = ["country", "age", "interests", "signup_at"]
    for source in ({"segment": "fr"}, {"query": "age > 30", "now_ms": NOW}):
        answer = http.call("POST", "/v1/members/export", {**source, "attributes": attributes, "format": fmt})
        assert (answer.status, answer.headers["Content-Type"]) == (200, content_type)
        expected = io.BytesIO()
        engine.export_members(expected, attributes, fmt, source.get("segment"), source.get("query"), source.get("now_ms"))
        assert answer.body == expected.getvalue()
    if fmt == "jsonl":
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert sorted(line["id"] for line in lines) == engine.ids("age > 30", now=NOW)


def test_member_export_errors(served):
    engine, grpc, http = served
    cases = [({"segment": "fr", "format": "xlsx"}, 400, "unknown export format 'xlsx' (expected one of csv, jsonl, parquet)"),
             ({"segment": "fr", "query": "ALL"}, 400,
              "export the members of a saved segment or of a query (exactly one of them)"),
             ({"segment": "nope"}, 404, "unknown segment 'nope'"),
             ({"segment": "fr", "attributes": ["colour"]}, 400, None),
             ({"query": "agee > 3"}, 400, "unknown attribute 'agee' at column 1 near 'agee'")]
    for body, status, message in cases:
        answer = http.call("POST", "/v1/members/export", body)
        assert (answer.status, answer.headers["Content-Type"]) == (status, "application/json")
        if body.get("format") != "xlsx":
            sink = io.BytesIO()
            assert answer.json["error"]["message"] == grpc_message(
                grpc.export_members, sink, body.get("attributes", []), "csv", body.get("segment"), body.get("query"))
        if message is not None:
            assert answer.json["error"]["message"] == message
