"""The JSON HTTP API against a real server (gRPC and HTTP on ephemeral 127.0.0.1 ports): every route,
its errors (the same message and position as gRPC), token auth, and every answer checked against
the OpenAPI document the server serves."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.client import SegengineClient

from http_client import HttpClient

NOW = 1_800_000_000_000
COUNTRIES = ("FR", "BE", "DE")
PROFILES = [{"id": f"u{i:02d}", "country": COUNTRIES[i % 3], "age": 20 + i, "vip": i % 4 == 0,
             "consent": {"email": i % 2 == 0}} for i in range(20)]
EVENTS = [{"id": f"u{i:02d}", "event": "purchase", "ts": NOW - i * 3_600_000, "amount": float(i)} for i in range(0, 20, 5)]


class HttpServed:
    """A server with an HTTP port over 20 known profiles, a gRPC client and a checking HTTP client."""

    def __init__(self, token: str | None = None, admin_token: str | None = None, **config_options):
        self.engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
        self.engine.upsert_profiles(PROFILES)
        self.engine.track_events(EVENTS)
        config = ServerConfig(port=0, http_port=0, refresh_ms=0, token=token, admin_token=admin_token,
                              **config_options)
        self.server = SegengineServer(self.engine, config, owns_engine=True).start()
        self.grpc = SegengineClient(self.server.address, token=token)
        self.http = HttpClient(f"http://127.0.0.1:{self.server.http_port}", token=token)

    def close(self) -> None:
        self.grpc.close()
        self.server.stop(grace_s=1)


@pytest.fixture(scope="module")
def served():
    s = HttpServed()
    yield s
    s.close()


def grpc_error(call, *args):
    with pytest.raises(Exception) as caught:
        call(*args)
    return str(caught.value)


def test_count_and_errors_match_grpc(served):
    http = served.http
    answer = http.call("POST", "/v1/count", {"query": "country = 'FR' AND age > 25", "now_ms": NOW})
    assert (answer.status, answer.json) == (200, {"count": 5})
    assert served.grpc.count("country = 'FR' AND age > 25", now=NOW) == 5
    bad = "country = 'FR' AND agee > 3"
    answer = http.call("POST", "/v1/count", {"query": bad})
    assert answer.status == 400
    assert answer.json == {"error": {"code": "INVALID_ARGUMENT", "position": 20,
                                     "message": "unknown attribute 'agee' at column 20 near 'agee'"}}
    assert grpc_error(served.grpc.count, bad) == answer.json["error"]["message"]
    answer = http.call("POST", "/v1/count", {"query": "SEGMENT('nope')"})
    assert (answer.status, answer.json["error"]["code"]) == (404, "NOT_FOUND")
    assert grpc_error(served.grpc.count, "SEGMENT('nope')") == answer.json["error"]["message"]


def test_request_errors(served):
    http = served.http
    assert http.call("POST", "/v1/count", {}).json["error"]["message"] == "field 'query' is required"
    answer = http.call("POST", "/v1/count", {"query": 5})
    assert (answer.status, answer.json["error"]["message"]) == (400, "field 'query' must be a string, got int")
    answer = http.call("POST", "/v1/count", '{"query": ')
    assert answer.status == 400
    assert answer.json["error"]["message"] == "the request body is not JSON: Expecting value at line 1 column 11"
    answer = http.call("POST", "/v1/count", {"query": "ALL", "now_ms": True})
    assert answer.json["error"]["message"] == "field 'now_ms' must be an integer, got bool"
    answer = http.call("POST", "/v1/count", {"query": "ALL"}, headers={"X-Timeout-Ms": "soon"})
    assert answer.json["error"]["message"] == "X-Timeout-Ms must be a number of milliseconds, got 'soon'"
    answer = http.call("POST", "/v1/count", {"query": "ALL"}, headers={"X-Timeout-Ms": "0.000001"})
    assert (answer.status, answer.json["error"]) == (504, {"code": "DEADLINE_EXCEEDED", "position": None,
                                                           "message": "deadline exceeded before the call started"})


def test_unknown_routes_and_large_bodies():
    served = HttpServed(max_message_bytes=1000)
    try:
        answer = served.http.call("GET", "/v1/nope", check=False)
        assert answer.status == 404
        assert answer.json == {"error": {"code": "NOT_FOUND", "position": None,
                                         "message": "no API route GET /v1/nope (see /openapi.json)"}}
        answer = served.http.call("POST", "/v1/profiles", [{"id": f"big{i}"} for i in range(100)])
        assert (answer.status, answer.json["error"]["code"]) == (429, "RESOURCE_EXHAUSTED")
        assert answer.json["error"]["message"] == "the request body is over the limit of 1000 bytes"
        assert served.engine.count("ALL") == 20
    finally:
        served.close()


def test_ids_pages_with_a_cursor(served):
    http = served.http
    pages, cursor = [], None
    while True:
        answer = http.call("POST", "/v1/ids", {"query": "age >= 22", "limit": 7, "cursor": cursor})
        assert answer.status == 200
        pages.append(answer.json["ids"])
        cursor = answer.json["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in pages] == [7, 7, 4]
    assert sum(pages, []) == served.engine.ids("age >= 22") == [f"u{i:02d}" for i in range(2, 20)]
    assert http.call("POST", "/v1/ids", {"query": "ALL", "cursor": "zzz"}).json["error"]["message"] == \
        "field 'cursor' is not a cursor this API gave"
    answer = http.call("POST", "/v1/ids", {"query": "ALL", "limit": 100_001})
    assert (answer.status, answer.json["error"]["code"]) == (429, "RESOURCE_EXHAUSTED")


def test_ingest_json_array_and_ndjson_all_or_none():
    served = HttpServed()
    try:
        http = served.http
        answer = http.call("POST", "/v1/profiles", [{"id": "n1", "country": "FR"}, {"id": "n2", "age": 40}])
        assert (answer.status, answer.json) == (200, {"applied": 2})
        ndjson = '{"id": "n3", "country": "BE"}\n\n{"id": "n4", "vip": true}\n'
        answer = http.call("POST", "/v1/profiles", ndjson, content_type="application/x-ndjson")
        assert answer.json == {"applied": 2}
        events = '{"id": "n1", "event": "page_view", "ts": "2026-01-15T08:00:00Z", "category": "shoes"}\n'
        assert http.call("POST", "/v1/events", events, content_type="application/x-ndjson").json == {"applied": 1}
        assert served.engine.count("DID(page_view WHERE category = 'shoes')") == 1
        before = served.engine.count("ALL")
        bad = [{"id": "n5", "age": 3}, {"id": "n6", "age": "old"}]
        answer = http.call("POST", "/v1/profiles", bad)
        assert answer.status == 400
        assert answer.json == {"error": {"code": "INVALID_ARGUMENT", "position": None, "record": 1, "field": "age",
                                         "message": "record 1, field 'age': expected an integer, got str"}}
        assert grpc_error(served.grpc.upsert_profiles, bad) == answer.json["error"]["message"]
        assert served.engine.count("ALL") == before == 24
        answer = http.call("POST", "/v1/events", '{"id": "n1"}\n{"id": ', content_type="application/x-ndjson")
        assert answer.json["error"] == {"code": "INVALID_ARGUMENT", "position": None, "record": "line 2", "field": None,
                                        "message": "line 2: not JSON: Expecting value at column 8"}
        assert http.call("POST", "/v1/profiles", {"id": "n7"}).json == {"applied": 1}  # one NDJSON line
    finally:
        served.close()


def test_saved_segments_profiles_and_membership():
    served = HttpServed()
    try:
        http = served.http
        answer = http.call("POST", "/v1/segments", {"name": "fr", "query": "country = 'FR'"})
        assert answer.status == 201
        assert (answer.json["name"], answer.json["count"], answer.json["depends_on"]) == ("fr", 7, [])
        answer = http.call("POST", "/v1/segments", {"name": "fr", "query": "ALL"})
        assert (answer.status, answer.json["error"]["code"]) == (409, "ALREADY_EXISTS")
        assert answer.json["error"]["message"] == "segment 'fr' already exists"
        http.call("POST", "/v1/segments", {"name": "fr_email", "query": "SEGMENT('fr') AND CONSENTED(email)"})
        assert [s["name"] for s in http.call("GET", "/v1/segments").json["segments"]] == ["fr", "fr_email"]
        assert http.call("GET", "/v1/segments/fr_email").json["count"] == 4
        missing = http.call("GET", "/v1/segments/nope")
        assert (missing.status, missing.json["error"]["code"]) == (404, "NOT_FOUND")
        assert http.call("GET", "/v1/profiles/u00/segments").json == {"segments": ["fr", "fr_email"]}
        assert http.call("GET", "/v1/profiles/u03/segments?segment=fr").json == {"segments": ["fr"]}
        assert http.call("GET", "/v1/profiles/u01/segments").json == {"segments": []}
        in_use = http.call("DELETE", "/v1/segments/fr")
        assert (in_use.status, in_use.json["error"]["code"]) == (400, "FAILED_PRECONDITION")
        assert http.call("DELETE", "/v1/segments/fr_email").json == {"deleted": "fr_email"}
        assert http.call("GET", "/v1/profiles/u04").json == {
            "id": "u04", "country": "BE", "age": 24, "vip": True,
            "consent": {"email": True, "sms": False, "push": False, "ads": False}}
        unknown = http.call("GET", "/v1/profiles/zz")
        assert (unknown.status, unknown.json["error"]) == (404, {"code": "NOT_FOUND", "message": "unknown profile 'zz'",
                                                                 "position": None})
    finally:
        served.close()


def test_explain_breakdown_schema_stats(served):
    http = served.http
    answer = http.call("POST", "/v1/explain", {"query": "country = 'FR' AND age > 25", "now_ms": NOW})
    plan = answer.json["plan"]
    assert (answer.json["count"], answer.json["now_ms"], plan["step"], plan["rows"]) == (5, NOW, "AND", 5)
    direct = served.engine.explain("country = 'FR' AND age > 25", now=NOW)["plan"]
    assert [(c["text"], c["estimate"], c["rows"]) for c in plan["children"]] == \
        [(c["text"], c["estimate"], c["rows"]) for c in direct["children"]]
    assert sorted(c["text"] for c in plan["children"]) == ["age > 25", "country = 'FR'"]
    answer = http.call("POST", "/v1/breakdown", {"query": "age < 30", "by": "country", "now_ms": NOW})
    assert answer.json == {"by": "country", "now_ms": NOW,
                           "counts": [{"key": "FR", "count": 4}, {"key": "BE", "count": 3}, {"key": "DE", "count": 3}]}
    answer = http.call("POST", "/v1/breakdown", {"query": "ALL", "by": "vip", "now_ms": NOW})
    assert answer.json["counts"] == [{"key": False, "count": 15}, {"key": True, "count": 5}]
    assert http.call("GET", "/v1/schema").json == served.engine.schema.to_dict()
    stats = http.call("GET", "/v1/stats").json
    assert (stats["profiles"], stats["events"], stats["shards"], stats["events_by_type"]["purchase"]) == (20, 4, 1, 4)


def test_token_auth_health_and_readiness():
    served = HttpServed(token="s3cret")
    try:
        http = served.http
        assert http.call("POST", "/v1/count", {"query": "ALL"}).json == {"count": 20}
        denied = http.call("POST", "/v1/count", {"query": "ALL"}, token="wrong")
        assert (denied.status, denied.json["error"]) == (401, {"code": "UNAUTHENTICATED", "position": None,
                                                               "message": "missing or invalid bearer token"})
        assert http.call("GET", "/v1/schema", token="").status == 401
        assert http.call("GET", "/healthz", token="").json == {"status": "alive"}
        assert http.call("GET", "/readyz", token="").json == {"status": "ready"}
        assert http.call("GET", "/metrics", token="").status == 200
        assert http.call("GET", "/", token="").text.startswith("<!doctype html>")
        assert served.http.checker.checked >= 3
    finally:
        served.close()
    assert served.server.serving is False


def test_readyz_turns_503_while_shutdown_drains():
    served = HttpServed(drain_s=1.0)
    assert served.http.call("GET", "/readyz").status == 200
    stopping = threading.Thread(target=served.close)
    stopping.start()
    try:
        deadline = time.monotonic() + 0.8
        while served.server.serving and time.monotonic() < deadline:
            time.sleep(0.01)
        answer = served.http.call("GET", "/readyz")
        assert (answer.status, answer.json) == (503, {"status": "not ready"})
        assert served.http.call("POST", "/v1/count", {"query": "ALL"}).json == {"count": 20}  # still serving
    finally:
        stopping.join()


def test_admin_calls_need_the_admin_token(tmp_path):
    served = HttpServed(token="rw", admin_token="adm", audit_log=str(tmp_path / "audit.log"))
    try:
        http = served.http
        denied = http.call("POST", "/v1/merge", {"pairs": [["u01", "u00"]]})
        assert (denied.status, denied.json["error"]) == (403, {"code": "PERMISSION_DENIED", "position": None,
                                                               "message": "this call needs the admin token"})
        assert http.call("GET", "/v1/profiles/u00/export", token="").status == 401
        assert http.call("POST", "/v1/merge", {"pairs": [["u01", "u00"]]}, token="adm").json == {"merged": 1}
        exported = http.call("GET", "/v1/profiles/u01/export", token="adm").json
        assert (exported["found"], exported["profile"]["id"], exported["profile"]["aliases"]) == (True, "u00", ["u01"])
        assert http.call("GET", "/v1/profiles/zz/export", token="adm").json == {"found": False, "profile": None}
        answer = http.call("POST", "/v1/merge", {"pairs": [["u02"]]}, token="adm")
        assert answer.json["error"]["message"] == "field 'pairs' must be an array of [from_id, into_id] pairs of strings"
        assert http.call("POST", "/v1/profiles/delete", {"ids": ["u00", "u05", "zz"]}, token="adm").json == \
            {"erased": 2}
        assert served.engine.count("ALL") == 17
        assert "erasure caller=http:127.0.0.1 profiles=2" in (tmp_path / "audit.log").read_text()
        spec = {**CONTRACT_SCHEMA, "consents": [*CONTRACT_SCHEMA["consents"], "calls"]}
        answer = http.call("PUT", "/v1/schema", spec)
        assert answer.json["changes"] == ["consent calls"]
        assert answer.json["schema"]["consents"][-1] == "calls"
        answer = http.call("POST", "/v1/snapshot")
        assert (answer.status, answer.json["error"]["code"]) == (400, "FAILED_PRECONDITION")
    finally:
        served.close()


def test_every_answer_was_checked_against_the_openapi_document(served):
    checker = served.http.checker
    assert checker.checked > 0
    assert sorted(checker.document["paths"]) == sorted({route.path for route in __import__(
        "server.web.api", fromlist=["ROUTES"]).ROUTES})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_server_serves_https(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
    config = ServerConfig(port=0, http_port=0, tls_cert=str(cert), tls_key=str(key), token="t")
    server = SegengineServer(engine, config, owns_engine=True).start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(f"https://127.0.0.1:{server.http_port}/v1/count", data=b'{"query": "ALL"}',
                                         headers={"Authorization": "Bearer t"}, method="POST")
        with urllib.request.urlopen(request, context=trusted, timeout=30) as answer:
            assert json.loads(answer.read()) == {"count": 0}
        with pytest.raises(Exception):  # plain HTTP is refused
            urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5).read()
    finally:
        server.stop(grace_s=1)
