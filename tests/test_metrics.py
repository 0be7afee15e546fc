"""/metrics of a real durable server (a shard worker process, LMDB in a tmp dir): the metrics
docs/operations.md lists are exactly the ones served, and their values follow the calls made."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.client import SegengineClient

from doc_blocks import ROOT, blocks, section
from http_client import HttpClient

DOC = "docs/operations.md"
NOW = 1_800_000_000_000


def documented_metrics() -> set[str]:
    """The metric names of the table in docs/operations.md."""
    table = section(DOC, "Metrics")
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


def scraped(http: HttpClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric name (as exposed: counters with ``_total``) -> {labels: value} of one scrape."""
    answer = http.call("GET", "/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    found: dict[str, dict] = {}
    for family in text_string_to_metric_families(answer.text):
        name = family.name + ("_total" if family.type == "counter" else "")
        series = found.setdefault(name, {})
        for sample in family.samples:
            if sample.name in (family.name, family.name + "_total"):
                series[tuple(sorted(sample.labels.items()))] = sample.value
            elif sample.name.endswith("_count"):
                series[(("count", "count"),) + tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("metrics-db")
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1, backend="process", data_dir=str(data_dir))
    server = SegengineServer(engine, ServerConfig(port=0, http_port=0, refresh_ms=0), owns_engine=True).start()
    client = SegengineClient(server.address)
    http = HttpClient(f"http://127.0.0.1:{server.http_port}")
    yield server, client, http
    client.close()
    server.stop(grace_s=1)


def test_documented_metrics_are_exactly_the_served_ones(durable):
    server, client, http = durable
    client.upsert_profiles([{"id": f"u{i}", "country": "FR" if i % 2 else "BE"} for i in range(10)])
    http.call("POST", "/v1/events", [{"id": "u1", "event": "purchase", "ts": NOW - 1000, "amount": 5.0}])
    assert client.count("country = 'FR'") == 5
    with pytest.raises(Exception):
        client.count("country = ")
    http.call("POST", "/v1/count", {"query": "ALL"})
    client.snapshot()
    metrics = scraped(http)
    assert set(metrics) == documented_metrics()

    def value(name: str, **labels: str) -> float:
        return metrics[name][tuple(sorted(labels.items()))]

    def calls(transport: str, method: str, code: str) -> float:
        key = (("count", "count"),) + tuple(sorted({"transport": transport, "method": method, "code": code}.items()))
        return metrics["segengine_rpc_duration_seconds"][key]

    assert calls("grpc", "Count", "OK") == 1
    assert calls("grpc", "Count", "INVALID_ARGUMENT") == 1
    assert calls("http", "Count", "OK") == 1
    assert calls("http", "TrackEvents", "OK") == 1
    assert value("segengine_write_batches_total", kind="upsert") == 1
    assert value("segengine_write_records_total", kind="upsert") == 10
    assert value("segengine_write_records_total", kind="events") == 1
    assert (value("segengine_profiles"), value("segengine_events"), value("segengine_saved_segments")) == (10, 1, 0)
    assert value("segengine_shard_restarts_total", shard="0") == 0
    assert value("segengine_shard_resident_memory_bytes", shard="0") > 10e6
    assert value("segengine_rpc_in_flight", transport="grpc") == 0
    assert value("segengine_engine_waiting", kind="write") == 0
    assert metrics["segengine_wal_commit_seconds"][(("count", "count"),)] >= 2
    assert 0 <= value("segengine_snapshot_age_seconds") < 60
    assert value("segengine_snapshot_duration_seconds") > 0
    assert value("process_resident_memory_bytes") > 10e6


def test_alert_rules_name_documented_metrics():
    rules = blocks(DOC, "yaml")[0].text
    named = set(re.findall(r"\b((?:segengine|process)_[a-z_]+?)(?:_bucket|_count)?\b[\[{)\s]", rules))
    assert named and named <= documented_metrics(), named - documented_metrics()
    assert (ROOT / DOC).read_text().count("alert: ") == 8


def test_streams_refusals_and_health_checks_are_observed():
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1)
    config = ServerConfig(port=0, http_port=0, refresh_ms=0, token="t0k")
    server = SegengineServer(engine, config, owns_engine=True).start()
    client, stranger = SegengineClient(server.address, token="t0k"), SegengineClient(server.address)
    try:
        http = HttpClient(f"http://127.0.0.1:{server.http_port}")
        assert client.write([("profiles", [{"id": "a", "age": 3}]), ("profiles", [{"id": "b"}])]) == 2
        assert client.ids("ALL", chunk_size=1) == ["a", "b"]
        with pytest.raises(Exception, match="missing or invalid bearer token"):
            stranger.count("ALL")
        assert client.health() == "SERVING"
        metrics = scraped(http)["segengine_rpc_duration_seconds"]
        counted = {dict(key[1:])["method"] + " " + dict(key[1:])["code"]: n
                   for key, n in metrics.items() if key[0] == ("count", "count")}
        assert counted == {"Write OK": 1, "Query OK": 1, "Count UNAUTHENTICATED": 1,
                           "grpc.health.v1.Health/Check OK": 1}
    finally:
        client.close()
        stranger.close()
        server.stop(grace_s=1)


@pytest.mark.slow  # a server process of its own: ~5 s of imports and startup
def test_serve_command_opens_the_http_port():
    """``segengine serve --http-port 0``: prints the URL, is ready, serves metrics; SIGTERM ends it with 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--demo", "300", "--port", "0",
                                "--http-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=env, cwd=str(ROOT))
    try:
        url = None
        for line in process.stdout:
            if line.startswith("segengine HTTP (metrics, JSON API, console) on "):
                url = line.rsplit(" ", 1)[1].strip()
                break
        assert url is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        http = HttpClient(url.rstrip("/"))
        assert http.call("GET", "/readyz").json == {"status": "ready"}
        assert scraped(http)["segengine_profiles"][()] == 300
        assert http.call("GET", "/v1/segments").status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
