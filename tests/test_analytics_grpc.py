"""Breakdown, Overlap and Why over gRPC (a real server on 127.0.0.1, an ephemeral port, two worker
shards) against the naive oracle, their error statuses, and the CLI's tables and trees."""
from __future__ import annotations

import random
from typing import Iterator

import grpc
import pytest

from engine import Engine, Schema
from engine.errors import ProfileNotFound, QueryError
from engine.query import bind, parse
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.cli import main
from server.client import SegengineClient
from server.proto_gen import segmentation_pb2 as pb

try:
    from oracle import NaiveStore
    from strategies import DAY, NOW, event_record, profile_record
    from test_analytics import naive_breakdown
except ImportError:  # tests/ imported as a package
    from tests.oracle import NaiveStore
    from tests.strategies import DAY, NOW, event_record, profile_record
    from tests.test_analytics import naive_breakdown

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
QUERIES = ["ALL", "country IN ('FR', 'BE') OR vip = TRUE", "DID(purchase, WITHIN 7d) AND NOT age < 18",
           "interests HAS ANY ('shoes', 'tech') AND CONSENTED(email)", "SEQUENCE(page_view THEN purchase)"]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SegengineServer, NaiveStore]]:
    rng = random.Random(23)
    ids = [f"u{i:03d}" for i in range(150)]
    profiles = [profile_record(rng, pid, 0.1, 0.9, 0.3) for pid in ids]
    events = [event_record(rng, rng.choice(ids), 0.1) for _ in range(600)]
    oracle = NaiveStore(CONTRACT_SCHEMA)
    oracle.upsert(profiles)
    oracle.track(events)
    server = SegengineServer(Engine(SCHEMA, shards=2), ServerConfig(port=0, refresh_ms=0), owns_engine=True).start()
    with SegengineClient(server.address) as client:
        client.upsert_profiles(profiles)
        client.track_events(events)
        client.upsert_profiles([{"id": "fixed", "country": "FR", "age": 31, "consent": {"email": True}}])
        client.track_events([{"id": "fixed", "event": "purchase", "ts": NOW - DAY, "amount": 12.5}])
    oracle.upsert([{"id": "fixed", "country": "FR", "age": 31, "consent": {"email": True}}])
    oracle.track([{"id": "fixed", "event": "purchase", "ts": NOW - DAY, "amount": 12.5}])
    yield server, oracle
    server.stop(grace_s=1)


@pytest.mark.parametrize(("by", "bins"), [("country", None), ("vip", None), ("interests", None),
                                          ("age", [-1000, 0, 18, 30.5, 65, 1000]), ("cart_value", [-50, 0.0, 50, 500]),
                                          ("signup_at", [NOW - 30 * DAY, NOW - DAY, NOW, NOW + DAY])])
def test_breakdown_over_grpc_matches_the_oracle(served, by: str, bins: list | None) -> None:
    server, oracle = served
    with SegengineClient(server.address) as client:
        for text in QUERIES:
            members = oracle.evaluate(bind(parse(text), SCHEMA), NOW)
            got = client.breakdown(text, by, now=NOW, bins=bins)
            assert got == naive_breakdown(oracle, members, by, bins), text
            for key in got:  # bins keep their edges' types (ints stay ints)
                if isinstance(key, tuple):
                    edges = bins[bins.index(key[0]):bins.index(key[0]) + 2]
                    assert [type(edge) for edge in key] == [type(edge) for edge in edges]


def test_overlap_and_why_over_grpc(served) -> None:
    server, oracle = served
    answers = [oracle.evaluate(bind(parse(t), SCHEMA), NOW) for t in QUERIES]
    with SegengineClient(server.address) as client:
        assert client.overlap(QUERIES, now=NOW) == [[len(a & b) for b in answers] for a in answers]
        for pid in ["u001", "u077", "fixed"]:
            for text in QUERIES[1:]:
                assert client.why(pid, text, now=NOW) == server.engine.why(pid, text, now=NOW)
                assert client.why(pid, text, now=NOW)["tree"]["value"] == (pid in answers[QUERIES.index(text)])
        tree = client.why("fixed", "DID(purchase, SUM(amount) > 10) OR SEQUENCE(purchase THEN purchase)",
                          now=NOW, events=False)["tree"]
        assert [(c["value"], c["facts"]) for c in tree["children"]] == [(True, {}), (False, {})]


def test_errors_over_grpc(served) -> None:
    server, _ = served
    with SegengineClient(server.address) as client:
        with pytest.raises(ProfileNotFound, match="^unknown profile 'nobody'$"):
            client.why("nobody", "ALL", now=NOW)
        with pytest.raises(QueryError, match=r"^argument 'bins': only int, float and timestamp attributes take bins"):
            client.breakdown("ALL", "country", now=NOW, bins=[1, 2])
        with pytest.raises(QueryError, match="^argument 'by': unknown attribute 'nope'$"):
            client.breakdown("ALL", "nope", now=NOW)
    channel = grpc.insecure_channel(server.address)
    from server.proto_gen import segmentation_pb2_grpc as pb_grpc

    stub = pb_grpc.SegmentationStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Why(pb.WhyRequest(id="nobody", query="ALL"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.Overlap(pb.OverlapRequest(queries=["ALL", "age >"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "argument 'queries', query 1: unexpected end of query at column 6"
    channel.close()


def test_cli_breakdown_overlap_why(served, capsys: pytest.CaptureFixture) -> None:
    server, oracle = served
    connection = ["--server", server.address, "--now", str(NOW)]
    assert main(["breakdown", "country = 'FR' AND age = 31", "--by", "age", "--bins", "0,18,65", *connection]) == 0
    fr_31 = sum(1 for a in oracle.attrs.values() if a.get("country") == "FR" and a.get("age") == 31)
    assert capsys.readouterr().out == f"age       count\n[18, 65){str(fr_31).rjust(7)}\n"
    assert main(["overlap", "id_is_fixed = 1", *connection]) == 1
    assert "unknown attribute 'id_is_fixed'" in capsys.readouterr().err
    assert main(["overlap", "country = 'FR' AND age = 31", "CONSENTED(email)", *connection]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#0", "#1"] and lines[-2:] == ["#0 = country = 'FR' AND age = 31",
                                                                "#1 = CONSENTED(email)"]
    assert main(["why", "fixed", "country = 'FR' AND DID(purchase, WITHIN 7d) AND NOT CONSENTED(email)",
                 *connection]) == 0
    assert capsys.readouterr().out == (
        "fixed is not in the segment at 2026-11-20T10:00:00.123Z\n"
        "✗ DID(purchase, WITHIN 1w) AND NOT CONSENTED(email) AND country = 'FR'\n"
        "  ✓ country = 'FR'    [country = 'FR']\n"
        "  ✓ DID(purchase, WITHIN 1w)    [1 purchase event counted, first 2026-11-19T10:00:00.123Z, "
        "last 2026-11-19T10:00:00.123Z]\n"
        "  ✗ NOT CONSENTED(email)\n"
        "    ✓ CONSENTED(email)    [email consent granted]\n")
    assert main(["why", "fixed", "DID(purchase, WITHIN 7d) OR vip = TRUE", "--truth-only", *connection]) == 0
    assert capsys.readouterr().out == (
        "fixed is in the segment at 2026-11-20T10:00:00.123Z\n"
        "✓ DID(purchase, WITHIN 1w) OR vip = TRUE\n"
        "  ✓ DID(purchase, WITHIN 1w)\n"
        "  ✗ vip = TRUE    [vip is null]\n")
    assert main(["why", "nobody", "ALL", *connection]) == 1
    assert capsys.readouterr().err == "error: unknown profile 'nobody'\n"
