"""Destinations over gRPC and the CLI (a real server on 127.0.0.1, an ephemeral port, and a real
webhook receiver): AddDestination, ListDestinations, Stats, RemoveDestination, the admin scope."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.errors import DestinationNotFound, SegmentNotFound
from engine.schema import CONTRACT_SCHEMA
from server.app import SegengineServer, ServerConfig
from server.cli import main
from server.client import RpcError, SegengineClient

from webhook_receiver import Receiver

SECRET = "grpc-secret"


@pytest.fixture
def server():
    config = ServerConfig(port=0, refresh_ms=0, token="rw", admin_token="root")
    served = SegengineServer(Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=1), config, owns_engine=True).start()
    yield served
    served.stop(grace_s=1)


@pytest.fixture
def receiver():
    r = Receiver(SECRET)
    yield r
    r.stop()


def test_destination_rpcs(server: SegengineServer, receiver: Receiver) -> None:
    with SegengineClient(server.address, token="rw") as writer, SegengineClient(server.address, token="root") as admin:
        writer.upsert_profiles([{"id": "a", "country": "FR"}, {"id": "b", "country": "DE"}])
        writer.create_segment("fr", "country = 'FR'")
        with pytest.raises(RpcError, match="PERMISSION_DENIED: this call needs the admin token"):
            writer.add_destination("fr", receiver.url, SECRET)
        with pytest.raises(SegmentNotFound, match="unknown segment 'nope'"):
            admin.add_destination("nope", receiver.url, SECRET)
        info = admin.add_destination("fr", receiver.url, SECRET, name="crm", batch_size=10, retry_base_s=0.01)
        assert (info["name"], info["segment"], info["url"]) == ("crm", "fr", receiver.url)
        assert info["options"] == {"batch_size": 10, "timeout_s": 10.0, "retry_base_s": 0.01, "retry_max_s": 60.0,
                                   "max_pending": 1_000_000}
        writer.upsert_profiles([{"id": "b", "country": "FR"}, {"id": "a", "country": "BE"}])
        receiver.wait_for(lambda: receiver.view("fr") == {"b"})
        deadline = time.monotonic() + 10
        while (stats := writer.list_destinations()[0])["pending"] or stats["state"] != "idle":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [listed] = writer.list_destinations()
        [in_stats] = writer.stats()["destinations"]
        for shown in (listed, in_stats):
            assert (shown["name"], shown["state"], shown["pending"], shown["delivered"], shown["failures"]) == \
                ("crm", "idle", 0, 3, 0)
            assert (shown["acked_change_id"], shown["oldest_pending_age_s"]) == (3, 0.0)
        assert SECRET not in json.dumps(listed)
        with pytest.raises(RpcError, match="PERMISSION_DENIED: this call needs the admin token"):
            writer.remove_destination("crm")
        with pytest.raises(DestinationNotFound, match="unknown destination 'x'"):
            admin.remove_destination("x")
        admin.remove_destination("crm")
        assert writer.list_destinations() == []


def test_destination_cli(server: SegengineServer, receiver: Receiver, tmp_path: Path, capsys) -> None:
    with SegengineClient(server.address, token="rw") as writer:
        writer.upsert_profiles([{"id": "a", "country": "FR"}])
        writer.create_segment("fr", "country = 'FR'")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    connection = ["--server", server.address, "--token", "root"]
    assert main(["destination", "add", "fr", receiver.url, "--secret-file", str(secret_file),
                 "--retry-base-s", "0.01", *connection]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["name"], added["segment"], added["options"]["retry_base_s"]) == ("fr", "fr", 0.01)
    receiver.wait_for(lambda: receiver.view("fr") == {"a"})  # signed with the file's secret
    deadline = time.monotonic() + 10
    while True:
        assert main(["destination", "list", *connection]) == 0
        out = capsys.readouterr().out
        if out == f"fr\tfr\tidle\t0\t1\t0\t{receiver.url}\n":
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.02)
    assert main(["destination", "add", "fr", receiver.url, *connection]) == 2
    assert "add needs --secret-file FILE" in capsys.readouterr().err
    assert main(["destination", "remove", "fr", *connection]) == 0
    assert capsys.readouterr().out == "removed fr\n"
    assert main(["destination", "remove", "fr", *connection]) == 1
    assert "unknown destination 'fr'" in capsys.readouterr().err
