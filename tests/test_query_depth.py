"""Nesting limit and very long queries: errors past MAX_DEPTH, no RecursionError at or below it.

Queries at exactly the limit (parentheses, NOTs, NOT+parenthesis pairs, alternating AND/OR groups,
a DID's WHERE) and flat AND/OR chains of 10,000 terms evaluate through the Engine at 1 and 2
shards and through a real gRPC server, with counts checked against the naive oracle.
"""
from __future__ import annotations

import logging

import grpc
import pytest

from engine import Engine, QueryError, Schema
from engine.query import bind, parse, to_text
from engine.query.parser import MAX_DEPTH
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.client import SegengineClient
from server.proto_gen import segmentation_pb2 as pb

from oracle import NaiveStore

NOW = 1_800_000_000_000
SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
PROFILES = [{"id": f"u{i:03d}", "age": i % 90, "country": "FR" if i % 3 else "BE", "vip": i % 5 == 0}
            for i in range(300)]
EVENTS = [{"id": f"u{i:03d}", "event": "purchase", "ts": NOW - i * 60_000, "amount": float(i % 50)}
          for i in range(0, 300, 2)]


def parens(depth: int) -> str:
    return "(" * depth + "age > 30" + ")" * depth


def nots(depth: int) -> str:
    return "NOT " * depth + "age > 30"


def alternating(depth: int) -> str:
    """``depth`` nested groups alternating OR and AND (each group is one AST level)."""
    query = "age > 80"
    for i in range(depth):
        query = f"age > {i} {'AND' if i % 2 else 'OR'} ({query})"
    return query


def not_groups(depth: int) -> str:
    """``depth // 2`` levels of ``NOT (... OR ...)``: a NOT and a parenthesis per level."""
    query = "age > 80"
    for i in range(depth // 2):
        query = f"NOT (age > {i} OR vip = TRUE AND {query})"
    return query


def did_where(depth: int) -> str:
    """A DID whose WHERE nests ``depth - 1`` groups (the DID's WHERE counts one level)."""
    where = "amount > 40"
    for i in range(depth - 1):
        where = f"(amount > {i % 45} {'AND' if i % 2 else 'OR'} {where})"
    return f"DID(purchase WHERE {where})"


DEEP = {"parens": parens, "nots": nots, "alternating": alternating, "not_groups": not_groups,
        "did_where": did_where}
AND_CHAIN = " AND ".join(f"age != {50 + i}" for i in range(10_000))
OR_CHAIN = " OR ".join(f"age = {i % 120} OR country = 'C{i}'" for i in range(5_000))


def queries_at_the_limit() -> dict[str, str]:
    return {**{name: make(MAX_DEPTH) for name, make in DEEP.items()}, "and_chain": AND_CHAIN, "or_chain": OR_CHAIN}


@pytest.fixture(scope="module")
def expected() -> dict[str, int]:
    oracle = NaiveStore(CONTRACT_SCHEMA)
    oracle.upsert(PROFILES)
    oracle.track(EVENTS)
    return {name: len(oracle.evaluate(bind(parse(q), SCHEMA), NOW)) for name, q in queries_at_the_limit().items()}


def test_the_limit_is_64() -> None:
    assert MAX_DEPTH == 64


@pytest.mark.parametrize("name", sorted(DEEP))
def test_one_level_past_the_limit_is_an_error_naming_the_column(name: str) -> None:
    parse(DEEP[name](MAX_DEPTH))
    with pytest.raises(QueryError, match=f"^query nests deeper than {MAX_DEPTH} levels of parentheses and NOT at column"):
        parse(DEEP[name](MAX_DEPTH + 1 + (name == "not_groups")))


def test_error_columns_point_at_the_first_level_too_many() -> None:
    error = pytest.raises(QueryError, parse, "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1)).value
    assert (error.column, error.token) == (MAX_DEPTH + 1, "(")
    error = pytest.raises(QueryError, parse, "NOT " * (MAX_DEPTH + 1) + "a = 1").value
    assert (error.column, error.token) == (4 * MAX_DEPTH + 1, "NOT")


def test_sibling_groups_do_not_add_up() -> None:
    wide = " AND ".join([parens(MAX_DEPTH - 1)] * 50 + [nots(MAX_DEPTH)] * 50)
    assert isinstance(parse(wide), type(parse("a = 1 AND b = 2")))


def test_printer_round_trips_deep_and_long_queries() -> None:
    for query in queries_at_the_limit().values():
        node = bind(parse(query), SCHEMA)
        assert bind(parse(to_text(node)), SCHEMA) == node


@pytest.mark.parametrize("shards", [1, 2])
def test_engine_evaluates_queries_at_the_limit(shards: int, expected: dict[str, int]) -> None:
    with Engine(SCHEMA, shards=shards) as engine:
        engine.upsert_profiles(PROFILES)
        engine.track_events(EVENTS)
        for name, query in queries_at_the_limit().items():
            assert (name, engine.count(query, now=NOW)) == (name, expected[name])
            assert (name, len(engine.ids(query, now=NOW))) == (name, expected[name])
            assert (name, engine.explain(query, now=NOW)["count"]) == (name, expected[name])


def test_grpc_answers_deep_queries_and_refuses_deeper_ones(expected: dict[str, int], caplog) -> None:
    engine = Engine(SCHEMA, shards=1)
    engine.upsert_profiles(PROFILES)
    engine.track_events(EVENTS)
    config = ServerConfig(port=0, refresh_ms=0)
    with SegengineServer(engine, config, owns_engine=True) as server, \
            SegengineClient(server.address) as client:
        for name, query in queries_at_the_limit().items():
            assert (name, client.count(query, now=NOW)) == (name, expected[name])
            assert (name, len(client.ids(query, now=NOW))) == (name, expected[name])
            assert (name, client.explain(query, now=NOW).count) == (name, expected[name])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="segengine.server"):
            with pytest.raises(QueryError, match=f"nests deeper than {MAX_DEPTH} levels .* at column {MAX_DEPTH + 1}"):
                client.count(parens(MAX_DEPTH + 1), now=NOW)
        lines = [r.getMessage() for r in caplog.records if r.name == "segengine.server"]
        assert len(lines) == 1 and lines[0].startswith("Count failed: INVALID_ARGUMENT: query nests deeper")
        assert all(r.exc_info is None for r in caplog.records if r.levelno > logging.DEBUG)


def test_grpc_refuses_request_bytes_that_are_not_utf8(caplog) -> None:
    engine = Engine(SCHEMA, shards=1)
    engine.upsert_profiles(PROFILES)
    with SegengineServer(engine, ServerConfig(port=0, refresh_ms=0), owns_engine=True) as server, \
            grpc.insecure_channel(server.address) as channel:
        raw = bytes([0x0A, 4]) + b"a\xff\xfeb"  # QueryRequest.query (field 1) with bytes that are not UTF-8
        for method, streaming in (("Count", False), ("Query", True), ("Explain", False)):
            path = f"/segengine.v1.Segmentation/{method}"
            call = (channel.unary_stream if streaming else channel.unary_unary)(path)
            with pytest.raises(grpc.RpcError) as caught:
                result = call(raw, timeout=10)
                list(result) if streaming else result
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid segengine.v1.QueryRequest" in caught.value.details()
        count = channel.unary_unary("/segengine.v1.Segmentation/Count", request_serializer=pb.QueryRequest.SerializeToString,
                                    response_deserializer=pb.CountResponse.FromString)
        assert count(pb.QueryRequest(query="ALL"), timeout=10).count == len(PROFILES)
