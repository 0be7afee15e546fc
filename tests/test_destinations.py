"""Destinations (webhooks) with a real HTTP receiver on 127.0.0.1: delivery, order, signatures,
retries, a receiver that is down then up, a restart that resumes, erasure, and the errors."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine import Engine, Schema
from engine.destinations import signature
from engine.destinations.delivery import backoff_s
from engine.errors import BadRequest, DestinationExists, DestinationNotFound, SegmentInUse, SegmentNotFound
from engine.schema import CONTRACT_SCHEMA

from test_identity_erasure_disk import files_holding
from webhook_receiver import Receiver

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
SECRET = "s3cret-key"
FAST = {"retry_base_s": 0.01, "retry_max_s": 0.05}


@pytest.fixture
def receiver():
    r = Receiver(SECRET)
    yield r
    r.stop()


def members(engine: Engine, segment: str) -> set[str]:
    return set(engine.ids(f"SEGMENT('{segment}')"))


def wait_drained(engine: Engine, timeout_s: float = 20.0) -> None:
    """Until the destination is idle: nothing pending and no rebuild owed (pending can touch 0 while
    an outbox over max_pending still waits for its rebuild)."""
    deadline = time.monotonic() + timeout_s
    while (stats := engine.list_destinations()[0])["pending"] or stats["state"] != "idle":
        assert time.monotonic() < deadline, engine.list_destinations()
        time.sleep(0.01)


def test_entries_and_exits_are_posted_in_order_and_signed(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=2, backend="local") as engine:
        engine.upsert_profiles([{"id": f"u{i}", "age": 20 + i} for i in range(6)])
        engine.create_segment("older", "age >= 23")
        info = engine.add_destination("older", receiver.url, SECRET, **FAST)
        assert (info["name"], info["segment"], info["url"]) == ("older", "older", receiver.url)
        assert "secret" not in info and SECRET not in json.dumps(engine.list_destinations())
        engine.upsert_profiles([{"id": "u0", "age": 40}, {"id": "u5", "age": 1}])
        engine.upsert_profiles([{"id": "u9", "age": 30}])
        wait_drained(engine)
        got = [(c["change_id"], c["change"], c["profile_id"]) for c in receiver.changes()]
        assert got == [(1, "entered", "u3"), (2, "entered", "u4"), (3, "entered", "u5"),  # the members at the start
                       (4, "exited", "u5"), (5, "entered", "u0"), (6, "entered", "u9")]
        assert {c["segment"] for c in receiver.changes()} == {"older"}
        assert all(isinstance(c["at_ms"], int) for c in receiver.changes())
        assert receiver.bad_signatures == 0 and receiver.gaps == 0
        assert receiver.view("older") == members(engine, "older") == {"u0", "u3", "u4", "u9"}
        stats = engine.stats()["destinations"][0]
        assert (stats["state"], stats["pending"], stats["delivered"], stats["failures"]) == ("idle", 0, 6, 0)
        assert (stats["acked_change_id"], stats["sent_change_id"]) == (6, 6)


def test_the_signature_is_hmac_sha256_of_the_raw_body(receiver: Receiver) -> None:
    import hashlib
    import hmac

    body = b'{"destination":"d","segment":"s","changes":[]}'
    assert signature(SECRET.encode(), body) == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    wrong = Receiver("another secret")  # signed with the destination's secret: this one refuses every batch
    try:
        with Engine(SCHEMA, shards=1) as engine:
            engine.upsert_profiles([{"id": "u1", "age": 50}])
            engine.create_segment("older", "age >= 23")
            engine.add_destination("older", wrong.url, SECRET, **FAST)
            wrong.wait_for(lambda: wrong.bad_signatures >= 2)
            stats = engine.list_destinations()[0]
            assert (stats["state"], stats["pending"], stats["delivered"]) == ("retrying", 1, 0)
            assert stats["last_error"] == "HTTP 401"
            assert wrong.view("older") == set()
    finally:
        wrong.stop()


def test_a_failing_receiver_gets_retries_in_order_and_loses_nothing(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=2, backend="local") as engine:
        engine.create_segment("buyers", "DID(purchase)")
        engine.add_destination("buyers", receiver.url, SECRET, batch_size=3, **FAST)
        receiver.fail_next(4, status=500)
        for i in range(10):
            engine.track_events([{"id": f"u{i}", "event": "purchase", "ts": 1_000 + i, "amount": 1.0}])
        engine.delete_profiles(["u3"])
        engine.merge("u4", "u5")
        wait_drained(engine)
        assert receiver.view("buyers") == members(engine, "buyers")
        ids = [c["change_id"] for c in receiver.changes()]
        assert ids == sorted(ids) and ids == list(range(1, len(ids) + 1))  # each batch acknowledged once, in order
        assert receiver.gaps == 0 and receiver.duplicates == 0 and receiver.bad_signatures == 0
        stats = engine.list_destinations()[0]
        assert (stats["failures"], stats["retries"], stats["last_error"]) == (4, 4, "HTTP 500")
        assert receiver.requests == stats["batches"] + 4


def test_a_receiver_that_is_down_then_up_gets_everything(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=2, backend="local") as engine:
        engine.upsert_profiles([{"id": f"u{i}", "country": "FR"} for i in range(5)])
        engine.create_segment("fr", "country = 'FR'")
        engine.add_destination("fr", receiver.url, SECRET, **FAST)
        wait_drained(engine)
        receiver.stop()
        engine.upsert_profiles([{"id": "u1", "country": "DE"}, {"id": "u7", "country": "FR"}])
        deadline = time.monotonic() + 10
        while engine.list_destinations()[0]["failures"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stats = engine.list_destinations()[0]
        assert (stats["state"], stats["pending"]) == ("retrying", 2)
        assert stats["oldest_pending_age_s"] > 0 and "Connection" in stats["last_error"]
        receiver.start()
        wait_drained(engine)
        assert receiver.view("fr") == members(engine, "fr") == {"u0", "u2", "u3", "u4", "u7"}


def test_a_restart_resumes_from_the_durable_position(tmp_path: Path, receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=2, backend="local", data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": f"u{i}", "age": i} for i in range(10)])
        engine.create_segment("older", "age >= 5")
        engine.add_destination("older", receiver.url, SECRET, **FAST)
        wait_drained(engine)
        receiver.stop()
        engine.upsert_profiles([{"id": "u1", "age": 50}, {"id": "u9", "age": 1}])
    delivered = len(receiver.changes())
    assert delivered == 5
    receiver.start()
    with Engine(SCHEMA, shards=2, backend="local", data_dir=str(tmp_path)) as engine:
        assert [d["name"] for d in engine.list_destinations()] == ["older"]
        wait_drained(engine)
        later = [(c["change_id"], c["change"], c["profile_id"]) for c in receiver.changes()[delivered:]]
        # only what was never acknowledged; ids 6 and 7 were sent to the down receiver, so they are not reused
        assert later == [(8, "exited", "u9"), (9, "entered", "u1")]
        assert receiver.view("older") == members(engine, "older")
        engine.remove_destination("older")
        assert engine.list_destinations() == []
    with Engine(SCHEMA, shards=2, backend="local", data_dir=str(tmp_path)) as engine:
        assert engine.list_destinations() == []


def test_adding_a_destination_is_replayed_from_the_log(tmp_path: Path, receiver: Receiver) -> None:
    import shutil

    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": f"u{i}", "age": i} for i in range(4)])
        engine.create_segment("older", "age >= 2")
        engine.add_destination("older", receiver.url, SECRET, name="crm", batch_size=7, **FAST)
        wait_drained(engine)
    shutil.rmtree(tmp_path / "destinations")  # the definition is then only in the log
    with Engine(SCHEMA, shards=1, data_dir=str(tmp_path)) as engine:
        [info] = engine.list_destinations()
        assert (info["name"], info["segment"], info["options"]["batch_size"]) == ("crm", "older", 7)
        wait_drained(engine)
        assert receiver.view("older") == {"u2", "u3"}


def test_erasure_drops_pending_changes_and_leaves_no_byte_on_disk(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, keep_alive=False)  # then no request after stop() reaches it
    erased = [f"erase-me-{i}-canary" for i in range(6)]
    kept = [f"keep-me-{i}-canary" for i in range(6)]
    with Engine(SCHEMA, shards=2, backend="local", data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles([{"id": pid, "country": "FR"} for pid in erased[:3] + kept[:3]])
        engine.create_segment("fr", "country = 'FR'")
        engine.add_destination("fr", receiver.url, SECRET, **FAST)
        wait_drained(engine)  # the receiver was told erase-me-0..2 entered
        receiver.stop()
        engine.upsert_profiles([{"id": pid, "country": "FR"} for pid in erased[3:] + kept[3:]])
        engine.snapshot()
        needles = [pid.encode() for pid in erased]
        assert set(files_holding(tmp_path, needles)) == set(erased)
        assert engine.delete_profiles(erased) == 6
        # kept: the 3 new members; added: an exit (marked erased) for each erased id the receiver was told
        # entered; dropped: the entries of the 3 erased ids it never saw (their requests were refused)
        assert engine.list_destinations()[0]["pending"] == 6
        summary = engine.snapshot()
        assert summary["compacted"]["destinations"] is not None
        assert files_holding(tmp_path, needles) == {}
        receiver.start()
        wait_drained(engine)
        later = [(c["change"], c["profile_id"], c.get("erased", False)) for c in receiver.changes()[3 + 3:]]
        assert sorted(later) == sorted([("exited", pid, True) for pid in erased[:3]] +
                                       [("entered", pid, False) for pid in kept[3:]])
        assert receiver.view("fr") == members(engine, "fr") == set(kept)
        assert files_holding(tmp_path, needles) == {}
    receiver.stop()
    assert files_holding(tmp_path, needles) == {}


def test_bad_requests_name_what_is_wrong(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=1) as engine:
        engine.create_segment("all", "ALL")
        with pytest.raises(SegmentNotFound, match="unknown segment 'nope'"):
            engine.add_destination("nope", receiver.url, SECRET)
        with pytest.raises(BadRequest, match="bad destination url 'ftp://x/'"):
            engine.add_destination("all", "ftp://x/", SECRET)
        with pytest.raises(BadRequest, match="non-empty secret"):
            engine.add_destination("all", receiver.url, "")
        with pytest.raises(BadRequest, match="unknown destination option 'batch'"):
            engine.add_destination("all", receiver.url, SECRET, batch=3)
        with pytest.raises(BadRequest, match=r"batch_size = 0 is out of range \[1, 100000\]"):
            engine.add_destination("all", receiver.url, SECRET, batch_size=0)
        engine.add_destination("all", receiver.url, SECRET)
        with pytest.raises(DestinationExists, match="destination 'all' already exists"):
            engine.add_destination("all", receiver.url, SECRET)
        with pytest.raises(SegmentInUse, match="segment 'all' has destinations 'all'; remove them first"):
            engine.delete_segment("all")
        with pytest.raises(DestinationNotFound, match="unknown destination 'x'"):
            engine.remove_destination("x")
        engine.remove_destination("all")
        engine.delete_segment("all")


def test_backoff_is_capped_full_jitter() -> None:
    import random

    rng = random.Random(7)
    waits = [backoff_s(failures, 0.5, 4.0, rng) for failures in range(1, 200)]
    assert all(0 <= w <= 4.0 for w in waits)
    assert max(waits[:1]) <= 0.5 and max(waits[10:]) > 2.0


def test_an_outbox_over_max_pending_is_rebuilt_from_the_members(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=2, backend="local") as engine:
        engine.upsert_profiles([{"id": f"u{i}", "age": 60} for i in range(4)])
        engine.create_segment("older", "age >= 50")
        engine.add_destination("older", receiver.url, SECRET, batch_size=2, max_pending=5, **FAST)
        wait_drained(engine)
        receiver.stop()
        for round_ in range(5):  # 40 changes, far over max_pending: the history is dropped
            engine.upsert_profiles([{"id": f"u{i}", "age": 10 if (i + round_) % 2 else 70} for i in range(8)])
            deadline = time.monotonic() + 20
            while not round_ and not engine.list_destinations()[0]["failures"] and time.monotonic() < deadline:
                time.sleep(0.01)  # a batch in flight first (failing): the outbox is rebuilt once, after it
        stats = engine.list_destinations()[0]
        assert stats["state"] == "resync" and stats["pending"] <= 2  # only the batch in flight is kept
        receiver.start()
        wait_drained(engine)
        stats = engine.list_destinations()[0]
        assert stats["resyncs"] == 1
        assert receiver.view("older") == members(engine, "older") == {"u0", "u2", "u4", "u6"}
        # the net differences from what the receiver acknowledged, not the 40 changes
        assert len(receiver.changes()) < 4 + 2 + 8


def test_an_erasure_exit_survives_a_rebuild_of_the_outbox(receiver: Receiver) -> None:
    with Engine(SCHEMA, shards=1) as engine:
        engine.upsert_profiles([{"id": f"u{i}", "age": 60} for i in range(4)])
        engine.create_segment("older", "age >= 50")
        engine.add_destination("older", receiver.url, SECRET, max_pending=3, **FAST)
        wait_drained(engine)
        receiver.stop()
        engine.upsert_profiles([{"id": f"n{i}", "age": 70} for i in range(5)])  # over max_pending: a rebuild
        assert engine.delete_profiles(["u0"]) == 1  # before or after the rebuild: the exit is sent
        receiver.start()
        wait_drained(engine)
        erased = [(c["change"], c["profile_id"]) for c in receiver.changes() if c.get("erased")]
        assert erased == [("exited", "u0")]
        assert receiver.view("older") == members(engine, "older") == {"u1", "u2", "u3"} | {f"n{i}" for i in range(5)}


def test_a_rebuild_keeps_the_erasure_exits_queued_before_it() -> None:
    from engine.destinations.outbox import DeliveryOptions, DestinationDef, Outbox

    box = Outbox(DestinationDef("d", "s", "http://127.0.0.1:1/", "k", DeliveryOptions(max_pending=3)))
    box.reconcile(["u0", "u1"], at_ms=1)
    box.acknowledge(box.next_batch())
    box.offer_many("entered", ["n0", "n1", "n2", "n3"], at_ms=2)  # over max_pending: dropped
    assert box.needs_resync and not box.pending
    assert box.erase({"u0"}, at_ms=3) == ["u0"]
    box.reconcile(["u1", "n0", "n1", "n2", "n3"], at_ms=4)
    assert [(kind, pid, erased) for kind, pid, _, _, erased in box.pending] == [
        ("exited", "u0", True), ("entered", "n0", False), ("entered", "n1", False), ("entered", "n2", False),
        ("entered", "n3", False)]
