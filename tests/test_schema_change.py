"""Schema evolution: a live engine's schema grows by a logged command; removing or retyping is refused."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import grpc
import pytest

from engine import Engine, Schema
from engine.errors import DataDirMismatch, DataError
from engine.schema import CONTRACT_SCHEMA
from engine.errors import SchemaChangeRefused
from engine.schema_change import diff
from server.app import SegengineServer, ServerConfig
from server.cli import main as cli
from server.client import SegengineClient
from server.proto_gen import segmentation_pb2 as pb

FAR = 10**7  # a clock after every event of these tests, within the retention of page_view (400d)


def extended() -> dict:
    """The contract schema plus one of every kind of addition."""
    spec = copy.deepcopy(CONTRACT_SCHEMA)
    spec["attributes"]["plan"] = {"type": "category"}
    spec["attributes"]["score"] = {"type": "float"}
    spec["events"]["login"] = {"properties": {"device": "category"}}
    spec["events"]["purchase"]["properties"]["coupon"] = "category"
    spec["events"]["page_view"]["properties"]["seconds"] = "int"
    spec["consents"] = [*spec["consents"], "postal"]
    spec["events"]["page_view"]["retention"] = "400d"
    return spec


def removed(path: list[str]) -> dict:
    spec = extended()
    holder = spec
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    return spec


# -- what a change is -------------------------------------------------------------------------
def test_diff_lists_every_addition() -> None:
    change = diff(Schema.from_dict(CONTRACT_SCHEMA), Schema.from_dict(extended()))
    assert change.describe() == [
        "attribute plan (category)", "attribute score (float)", "event login", "property page_view.seconds (int)",
        "property purchase.coupon (category)", "consent postal", "retention of page_view: 400d"]
    assert not diff(Schema.from_dict(extended()), Schema.from_dict(extended()))


@pytest.mark.parametrize("change, reason", [
    (lambda s: s["attributes"].pop("age"), "attribute 'age' is removed"),
    (lambda s: s["attributes"].__setitem__("age", {"type": "float"}), "attribute 'age' changes type from int to float"),
    (lambda s: s["events"].pop("purchase"), "event 'purchase' is removed"),
    (lambda s: s["events"]["purchase"]["properties"].pop("amount"), "property 'amount' of event 'purchase' is removed"),
    (lambda s: s["events"]["purchase"]["properties"].__setitem__("amount", "int"),
     "property 'amount' of event 'purchase' changes type from float to int"),
    (lambda s: s.__setitem__("consents", ["email", "sms", "push"]), "consent purpose 'ads' is removed"),
    (lambda s: s.__setitem__("consents", ["sms", "email", "push", "ads"]),
     "consent purposes are reordered (new ones go at the end)"),
])
def test_removing_or_retyping_is_refused(change, reason) -> None:
    spec = copy.deepcopy(CONTRACT_SCHEMA)
    change(spec)
    with pytest.raises(SchemaChangeRefused) as caught:
        diff(Schema.from_dict(CONTRACT_SCHEMA), Schema.from_dict(spec))
    assert str(caught.value) == f"schema change refused: {reason} (a schema may only grow)"


# -- a live engine ----------------------------------------------------------------------------
def write_before_and_after(engine: Engine) -> list[int]:
    """Data written before and after extending the schema, and counts that read the new names."""
    engine.upsert_profiles([{"id": "u1", "country": "FR"}, {"id": "u2", "country": "BE"}])
    engine.track_events([{"id": "u1", "event": "purchase", "ts": 1000, "amount": 3.5},
                         {"id": "u1", "event": "page_view", "ts": 1500}])
    assert engine.update_schema(extended())["changes"][0] == "attribute plan (category)"
    engine.upsert_profiles([{"id": "u2", "plan": "pro", "score": 0.5, "consent": {"postal": True}},
                            {"id": "u3", "plan": "free"}])
    engine.track_events([{"id": "u2", "event": "login", "ts": 2000, "device": "ios"},
                         {"id": "u1", "event": "purchase", "ts": 3000, "coupon": "X"},
                         {"id": "u3", "event": "page_view", "ts": 3000, "seconds": 40}])
    return answers(engine)


QUERIES = ["plan = 'pro'", "plan IS NULL", "score > 0.25", "CONSENTED(postal)", "NOT CONSENTED(postal)",
           "DID(purchase WHERE coupon IS NULL)", "DID(purchase WHERE coupon = 'X')", "DID(login WHERE device = 'ios')",
           "DID(page_view WHERE seconds >= 40)", "DID(page_view WHERE seconds IS NULL)", "ALL"]
EXPECTED = [1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 3]


def answers(engine: Engine) -> list[int]:
    return [engine.count(query, now=FAR) for query in QUERIES]


@pytest.mark.parametrize("shards", [1, 2])
def test_an_in_memory_engine_takes_new_names(shards: int) -> None:
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=shards) as engine:
        assert write_before_and_after(engine) == EXPECTED
        assert engine.profile("u2")["plan"] == "pro"
        with pytest.raises(SchemaChangeRefused):
            engine.update_schema(CONTRACT_SCHEMA)
        assert engine.update_schema(extended())["changes"] == []
        with pytest.raises(DataError) as caught:
            engine.update_schema({"attributes": {"x": {"type": "money"}}})
        assert "unknown type 'money'" in str(caught.value)


@pytest.mark.parametrize("shards", [1, 2])
def test_a_durable_engine_keeps_its_extended_schema(tmp_path: Path, shards: int) -> None:
    contract = Schema.from_dict(CONTRACT_SCHEMA)
    with Engine(contract, shards=shards, data_dir=str(tmp_path)) as engine:
        assert write_before_and_after(engine) == EXPECTED
    assert json.loads((tmp_path / "schema.json").read_text()) == Schema.from_dict(extended()).to_dict()
    # reopened with the schema it was created with: the directory's extended schema wins (log replay)
    with Engine(contract, shards=shards, data_dir=str(tmp_path)) as engine:
        assert engine.schema.to_dict() == Schema.from_dict(extended()).to_dict()
        assert answers(engine) == EXPECTED
        engine.snapshot()
    # from the snapshot, with the extended schema
    with Engine(Schema.from_dict(extended()), shards=shards, data_dir=str(tmp_path)) as engine:
        assert answers(engine) == EXPECTED
        engine.upsert_profiles([{"id": "u4", "plan": "pro"}])
        assert engine.count("plan = 'pro'") == 2


def test_opening_with_a_schema_that_adds_names_logs_the_change(tmp_path: Path) -> None:
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": "u1", "country": "FR"}])
    with Engine(Schema.from_dict(extended()), data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": "u1", "plan": "pro"}])
    with Engine(Schema.from_dict(CONTRACT_SCHEMA), data_dir=str(tmp_path)) as engine:
        assert engine.schema.to_dict() == Schema.from_dict(extended()).to_dict()
        assert engine.count("plan = 'pro' AND country = 'FR'") == 1


def test_opening_with_a_schema_that_does_not_extend_the_directory_is_refused(tmp_path: Path) -> None:
    with Engine(Schema.from_dict(extended()), data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": "u1", "plan": "pro"}])
    other = removed(["attributes", "plan"])
    other["attributes"]["tier"] = {"type": "int"}
    with pytest.raises(DataDirMismatch) as caught:
        Engine(Schema.from_dict(other), data_dir=str(tmp_path))
    assert "attribute 'tier' is removed" in str(caught.value) or "attribute 'plan' is removed" in str(caught.value)
    with Engine(Schema.from_dict(extended()), data_dir=str(tmp_path)) as engine:  # still usable
        assert engine.count("plan = 'pro'") == 1


# -- over gRPC and the command line -----------------------------------------------------------
def test_update_schema_over_grpc_and_the_cli(tmp_path: Path, capsys) -> None:
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), data_dir=str(tmp_path / "data"))
    server = SegengineServer(engine, ServerConfig(port=0, refresh_ms=0), owns_engine=True).start()
    try:
        with SegengineClient(server.address) as client:
            client.upsert_profiles([{"id": "u1", "country": "FR"}])
            assert client.update_schema(removed(["events", "login"]))[:2] == [
                "attribute plan (category)", "attribute score (float)"]
            client.upsert_profiles([{"id": "u1", "plan": "pro"}])
            assert client.count("plan = 'pro' AND country = 'FR'") == 1
            with pytest.raises(SchemaChangeRefused) as refused:
                client.update_schema(CONTRACT_SCHEMA)
            assert str(refused.value) == "schema change refused: attribute 'plan' is removed (a schema may only grow)"
            with pytest.raises(grpc.RpcError) as caught:
                client.stub.UpdateSchema(pb.UpdateSchemaRequest(schema_json="{nope"), metadata=client.metadata)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == ("field 'schema_json': schema_json is not JSON: Expecting property name "
                                              "enclosed in double quotes at line 1 column 2")
        schema_file = tmp_path / "schema.json"
        schema_file.write_text(json.dumps(extended()))
        assert cli(["update-schema", str(schema_file), "--server", server.address]) == 0
        assert capsys.readouterr().out == "event login\n"
        assert cli(["update-schema", str(schema_file), "--server", server.address]) == 0
        assert capsys.readouterr().out == "(no changes)\n"
        schema_file.write_text(json.dumps(CONTRACT_SCHEMA))
        assert cli(["update-schema", str(schema_file), "--server", server.address]) == 1
        assert capsys.readouterr().err == ("segengine update-schema: error: schema change refused: attribute 'plan' "
                                           "is removed (a schema may only grow)\n")
    finally:
        server.stop(grace_s=1)
