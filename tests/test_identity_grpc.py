"""Identity over gRPC: Merge, DeleteProfiles, ExportProfile and merges inside Write, the admin scope,
the audit log, and the CLI (a real server on 127.0.0.1, an ephemeral port)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.errors import DataError, PermissionDenied
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.cli import main
from server.client import RpcError, SegengineClient

NOW = 1_800_000_000_000


@pytest.fixture
def server(tmp_path: Path):
    config = ServerConfig(port=0, refresh_ms=0, token="rw", admin_token="root", audit_log=str(tmp_path / "audit.log"))
    served = SegengineServer(Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1), config, owns_engine=True).start()
    yield served
    served.stop(grace_s=1)


def test_identity_rpcs_with_the_admin_token(server: SegengineServer, tmp_path: Path) -> None:
    with SegengineClient(server.address, token="rw") as writer, SegengineClient(server.address, token="root") as admin:
        writer.upsert_profiles([{"id": "a", "age": 3}, {"id": "b", "consent": {"email": True}}])
        writer.track_events([{"id": "a", "event": "purchase", "ts": NOW - 1, "amount": 2.5}])
        assert admin.merge("a", "b") == 1
        assert admin.merge("a", "b") == 0
        assert writer.ids("age = 3 AND DID(purchase)", now=NOW) == ["b"]
        assert admin.write([("merges", [("c", "b"), ("b", "d")]), ("events", [
            {"id": "c", "event": "page_view", "ts": NOW - 2}])]) == 3
        assert admin.export_profile("a") == {
            "id": "d", "aliases": ["a", "b", "c"], "attributes": {"age": 3}, "consent": {"email": True},
            "events": [{"event": "page_view", "ts": NOW - 2}, {"event": "purchase", "ts": NOW - 1, "amount": 2.5}]}
        assert admin.export_profile("nobody") is None
        assert admin.delete_profiles(["c", "nobody"]) == 1
        assert writer.ids("ALL", now=NOW) == []
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("profiles=1") and "erasure caller=" in lines[0]
    assert "c" not in lines[0].split("erasure")[1].replace("caller", "")


def test_the_read_write_token_cannot_merge_erase_or_export(server: SegengineServer) -> None:
    with SegengineClient(server.address, token="rw") as writer:
        writer.upsert_profiles([{"id": "a"}])
        for call in (lambda: writer.merge("a", "b"), lambda: writer.delete_profiles(["a"]),
                     lambda: writer.export_profile("a"), lambda: writer.write([("merges", [("a", "b")])])):
            with pytest.raises((PermissionDenied, RpcError), match="admin token"):
                call()
        assert writer.ids("ALL", now=NOW) == ["a"]
    with SegengineClient(server.address, token="wrong") as stranger, pytest.raises(RpcError, match="bearer token"):
        stranger.export_profile("a")


def test_cli_merge_erase_export(server: SegengineServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with SegengineClient(server.address, token="rw") as writer:
        writer.upsert_profiles([{"id": "a", "age": 1}, {"id": "b"}, {"id": "x"}, {"id": "y"}])
    connection = ["--server", server.address, "--token", "root"]
    assert main(["merge", "a", "b", *connection]) == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('["x", "b"]\n{"from": "y", "into": "b"}\n')
    assert main(["merge", "--file", str(pairs), *connection]) == 0
    assert main(["export", "y", *connection]) == 0
    out = capsys.readouterr().out
    assert "merged 1 of 1" in out and "merged 2 of 2" in out
    exported = json.loads(out[out.index("{"):])
    assert exported == {"id": "b", "aliases": ["a", "x", "y"], "attributes": {"age": 1}, "consent": {}, "events": []}
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    assert main(["erase", "nobody", "--file", str(ids), *connection]) == 0
    assert "erased 1 profiles" in capsys.readouterr().out
    assert main(["export", "b", *connection]) == 1
    assert main(["erase", "b", "--server", server.address, "--token", "rw"]) == 1


def test_event_ids_over_grpc(server: SegengineServer) -> None:
    """EventRecord.event_id, EventColumns.event_ids and the Write stream: a retried event is not applied."""
    import numpy as np

    from engine.columns import EventBatch

    with SegengineClient(server.address, token="rw") as writer, SegengineClient(server.address, token="root") as admin:
        events = [{"id": "a", "event": "purchase", "ts": NOW - 2, "amount": 1.5, "event_id": "o-1"},
                  {"id": "a", "event": "purchase", "ts": NOW - 1, "event_id": "o-1"}]
        assert writer.track_events(events) == 1
        assert writer.write([("events", events)]) == 0
        batch = EventBatch("page_view", ["a", "a", "b"], np.array([NOW - 3, NOW - 3, NOW - 3], dtype=np.int64), {},
                           ["v-1", None, "v-1"])
        assert writer.load_events(batch) == 3
        assert writer.write([("event_columns", batch)]) == 1
        with pytest.raises(DataError, match="record 0, field 'event_id': event_id is longer than 128 UTF-8 bytes"):
            writer.track_events([{**events[0], "event_id": "x" * 129}])
        exported = admin.export_profile("a")["events"]  # the order within a tie is unspecified
        assert sorted(exported, key=lambda e: (e["ts"], e.get("event_id", ""))) == [
            {"event": "page_view", "ts": NOW - 3}, {"event": "page_view", "ts": NOW - 3},
            {"event": "page_view", "ts": NOW - 3, "event_id": "v-1"},
            {"event": "purchase", "ts": NOW - 2, "event_id": "o-1", "amount": 1.5}]


def test_the_export_example_of_the_grpc_doc(server: SegengineServer) -> None:
    """docs/grpc.md's export example is what ExportProfile answers for the data it shows."""
    from doc_blocks import blocks

    (block,) = [b for b in blocks("docs/grpc.md", "json") if '"aliases"' in b.text]
    with SegengineClient(server.address, token="root") as admin:
        admin.upsert_profiles([{"id": "u2", "country": "FR", "consent": {"email": True}}])
        admin.track_events([{"id": "anon-7", "event": "purchase", "ts": 1795168800000, "amount": 35.9,
                             "event_id": "order-5512"}])
        assert admin.merge("anon-7", "u2") == 1
        assert admin.export_profile("anon-7") == json.loads(block.text)
