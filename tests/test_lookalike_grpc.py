"""Lookalikes over gRPC (real server on 127.0.0.1, ephemeral port): the Lookalike RPC through the
client, its errors, and ``segengine lookalike``."""
from __future__ import annotations

import json

import pytest

from engine import Engine, QueryError, Schema
from engine.errors import LookalikeError
from loaders.generator import generate
from loaders.planted import PlantedGroup
from server.app import SegengineServer, ServerConfig
from server.cli import main
from server.client import SegengineClient

NOW = 1_795_168_800_000


@pytest.fixture(scope="module")
def served():
    ds = generate(3000, 24_000, seed=8, now_ms=NOW, plant=PlantedGroup(share=0.04))
    engine = Engine(Schema.from_dict(ds.schema), shards=1)
    engine.load_profiles(ds.profiles)
    for batch in ds.events:
        engine.load_events(batch)
    server = SegengineServer(engine, ServerConfig(port=0, refresh_ms=0, heavy_nice=0), owns_engine=True).start()
    client = SegengineClient(server.address)
    yield engine, client, server.address, ds.planted[::2]
    client.close()
    server.stop(grace_s=1)


def without_timings(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "ms"}


def test_the_rpc_answers_what_the_engine_answers(served):
    engine, client, _, seed = served
    over_grpc = client.lookalike(seed + ["nobody"], size=20, now=NOW)
    assert over_grpc == without_timings(engine.lookalike(seed + ["nobody"], size=20, now=NOW))
    assert len(over_grpc["profiles"]) == 20 and over_grpc["unknown_seed_ids"] == ["nobody"]
    by_query = client.lookalike("vip = TRUE", within="age >= 30", threshold=0.7, now=NOW)
    assert by_query == without_timings(engine.lookalike("vip = TRUE", within="age >= 30", threshold=0.7, now=NOW))
    assert all(p["score"] >= 0.7 for p in by_query["profiles"])


def test_errors_arrive_as_the_engine_error(served):
    _, client, _, _ = served
    with pytest.raises(LookalikeError, match="the seed has no profiles"):
        client.lookalike("age > 500", size=3, now=NOW)
    with pytest.raises(LookalikeError, match="give size"):
        client.lookalike("vip = TRUE", now=NOW)
    with pytest.raises(QueryError, match="unexpected end of query at column 6"):
        client.lookalike("vip =", size=3, now=NOW)


def test_the_cli_prints_ids_scores_and_features(served, capsys, tmp_path):
    engine, _, address, seed = served
    path = tmp_path / "seed.txt"
    path.write_text("\n".join(seed + ["", "nobody"]) + "\n", encoding="utf-8")
    assert main(["lookalike", "--server", address, "--seed-ids", str(path), "--size", "5", "--now", str(NOW)]) == 0
    out, err = capsys.readouterr()
    expected = engine.lookalike(seed + ["nobody"], size=5, now=NOW)
    assert out.splitlines() == [f"{p['id']}\t{p['score']:.6f}\t{'; '.join(p['features'])}" for p in expected["profiles"]]
    assert "warning: 1 seed ids name no live profile and were ignored: nobody" in err
    assert f"seed {len(seed)} profiles, {3000 - len(seed)} candidates, 5 returned; top features: " in err

    assert main(["lookalike", "--server", address, "--seed-query", "vip = TRUE", "--threshold", "0.9", "--json",
                 "--now", str(NOW)]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == without_timings(engine.lookalike("vip = TRUE", threshold=0.9, now=NOW))


@pytest.mark.parametrize("argv,message", [
    (["--size", "3"], "give the seed as --seed-query QUERY or --seed-ids FILE (one of them)"),
    (["--seed-query", "vip = TRUE"], "give --size N, --threshold X, or both"),
    (["--seed-query", "vip = TRUE", "--threshold", "2"], "expected a score between 0 and 1, got '2'"),
])
def test_the_cli_refuses_bad_arguments(served, capsys, argv, message):
    assert main(["lookalike", "--server", served[2], *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_cli_reports_an_engine_error_on_one_line(served, capsys):
    assert main(["lookalike", "--server", served[2], "--seed-query", "ALL", "--size", "3", "--now", str(NOW)]) == 1
    err = capsys.readouterr().err
    assert err == ("segengine lookalike: error: the seed (3000 profiles) covers every profile of within: "
                   "nothing is left to rank\n")
