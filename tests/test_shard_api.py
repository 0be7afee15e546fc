"""The shard API (engine/shard/api.py): LocalShard implements exactly it, the remote handles
expose exactly it, and the worker dispatches nothing else."""
from __future__ import annotations

import inspect

import pytest

from engine.commands import SHARD_METHODS
from engine.schema import CONTRACT_SCHEMA, Schema
from engine.shard import api, messages
from engine.shard.local import LocalShard
from engine.shard.process import ProcessShard
from engine.shard.remote import RemoteShard
from engine.shard.worker import ShardServer

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)


def public_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def signature(cls: type, name: str) -> list[tuple[str, object, object]]:
    """Parameter names, defaults and annotations (text) of ``cls.name``, return annotation last."""
    sig = inspect.signature(getattr(cls, name))
    return [(p.name, p.default, p.annotation) for p in sig.parameters.values()] + [("->", None, sig.return_annotation)]


def test_local_shard_has_exactly_the_remote_methods_and_the_command_methods() -> None:
    assert public_methods(LocalShard) == set(api.METHODS) | SHARD_METHODS | api.LOCAL_ONLY
    assert not (api.METHODS & SHARD_METHODS)  # a write command reaches a shard as apply_logged only


def test_the_protocol_lists_every_method_with_local_shards_signature() -> None:
    assert public_methods(api.ShardAPI) == set(api.METHODS) == set(api.ACCESS)
    for name in api.METHODS:
        assert signature(api.ShardAPI, name) == signature(LocalShard, name), name


def test_remote_handles_have_exactly_the_remote_methods_with_the_same_signatures() -> None:
    assert public_methods(RemoteShard) == set(api.METHODS) | {"call"}
    for name in api.METHODS:
        assert signature(RemoteShard, name) == signature(LocalShard, name), name
    assert issubclass(ProcessShard, RemoteShard)


def test_every_method_is_a_read_a_write_a_snapshot_step_or_a_sync_step() -> None:
    writes = {n for n in api.METHODS if api.access(n) is api.Access.WRITE}
    assert writes == {"publish_view", "refresh_segments", "capture_changes", "take_changes", "apply_logged", "recover",
                      "snapshot_close"}
    assert set(api.METHODS) - api.READS - writes == {"snapshot_capture", "snapshot_prune", "sync_view"}
    assert all(api.access(n) is api.Access.SNAPSHOT for n in ("snapshot_capture", "snapshot_prune"))
    assert api.access("sync_view") is api.Access.SYNC
    assert {n for n in api.READS if api.access(n) is api.Access.QUERY} == {
        "count", "rows", "ids", "explain", "breakdown", "overlap", "why", "lookalike_counts", "lookalike_sample",
        "lookalike_score"}
    assert {n for n in api.READS if api.access(n) is api.Access.POINT} == {
        "segment_rows", "profile", "segment_info", "segment_infos", "membership", "snapshot_status", "stats",
        "identity_payloads", "canonical_ids", "alias_hashes", "export_profile", "segment_sizes", "member_columns"}
    assert {n for n in api.READS if api.access(n) is api.Access.PREPARE} == {"prepare_logged"}
    assert all(api.access(name) is api.Access.POINT for name in api.DIAGNOSTICS)


def test_the_server_dispatches_the_api_and_the_diagnostics_only() -> None:
    server = ShardServer(LocalShard(SCHEMA, 3))
    assert server.dispatch("stats", ())["shard"] == 3
    assert server.dispatch("_worker_load", ()) == {"served": 0, "busy_s": 0.0}
    for name in ("__init__", "saved", "_worker_delay", "nosuch", "_SegmentRowsOf"):
        with pytest.raises(AttributeError, match=f"^'{name}' is not a shard method$"):
            server.dispatch(name, ())


def test_an_undecodable_request_is_answered_with_its_id() -> None:
    server = ShardServer(LocalShard(SCHEMA, 0))
    assert messages.decode_reply(server.handle(messages.HEADER.pack(7) + b"\xc1")) == (7, False, ["FormatError", "", {}])
