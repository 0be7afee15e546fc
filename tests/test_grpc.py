"""The gRPC server against a real server on 127.0.0.1 (ephemeral port): every RPC and its errors."""
from __future__ import annotations

import json
import os
import random
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine import DataError, Engine, QueryError, Schema
from engine.errors import (ProfileNotFound, SegengineError, SegmentExists, SegmentInUse, SegmentNotFound,
                           WatchOverflow)
from engine.priority import lower_thread_priority
from loaders.generator import generate
from server.app import SegengineServer, ServerConfig
from server.gate import WouldWait
from server.client import RpcError, SegengineClient
from server.proto_gen import segmentation_pb2 as pb
from server.proto_gen import segmentation_pb2_grpc as pb_grpc

from test_segments import DAY, HOUR, NOW, SEGMENTS, Clock, expand, random_writes

EXAMPLE = ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40"
           " AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)"
           " AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)")


class Served:
    """A running server over a small generated dataset, its clock and a client."""

    def __init__(self, config: ServerConfig | None = None, profiles: int = 2000, data_dir: str | None = None,
                 **client_options):
        ds = generate(profiles=profiles, events=profiles * 10, seed=4, now_ms=NOW)
        self.ids = list(ds.profiles.ids)
        self.engine = Engine(Schema.from_dict(ds.schema), shards=1, data_dir=data_dir)
        self.clock = Clock(NOW)
        self.engine.clock = self.clock
        self.engine.load_profiles(ds.profiles)
        for batch in ds.events:
            self.engine.load_events(batch)
        config = config or ServerConfig()
        config.port, config.refresh_ms = 0, 0
        self.server = SegengineServer(self.engine, config, owns_engine=True).start()
        self.client = SegengineClient(self.server.address, **client_options)

    def close(self) -> None:
        self.client.close()
        self.server.stop(grace_s=1)


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


@contextmanager
def holding(mode, wait: bool = True):
    """Hold a publish lock mode (``lock.reading()``, ``lock.writing()``) in another thread for the
    block, as a running query or write would; ``wait=False`` does not wait until it is held."""
    held, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with mode:
            held.set()
            leave.wait()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert not wait or held.wait(5)
        yield
    finally:
        leave.set()
        thread.join(5)
        assert not thread.is_alive()


def _write_after(publish, done: threading.Event) -> None:
    with publish.writing():
        done.set()


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


# -- every RPC --------------------------------------------------------------------------------
def test_count_matches_the_engine_and_now_zero_is_the_wall_clock(served):
    c = served.client
    assert c.count("ALL") == 2000
    assert c.count(EXAMPLE, now=NOW) == served.engine.count(EXAMPLE, now=NOW)
    assert c.count("DID(page_view)") == served.engine.count("DID(page_view)")  # now_ms 0 = wall clock


def test_pinned_count_message_shape(served):
    stub = pb_grpc.SegmentationStub(served.client.channel)
    response = stub.Count(pb.QueryRequest(query="country = 'FR'", now_ms=NOW))
    assert response.count == served.engine.count("country = 'FR'")
    assert [(f.name, f.number, f.type) for f in pb.QueryRequest.DESCRIPTOR.fields][:2] == [
        ("query", 1, 9), ("now_ms", 2, 3)]
    assert [(f.name, f.number, f.type) for f in pb.CountResponse.DESCRIPTOR.fields] == [("count", 1, 4)]
    assert pb.DESCRIPTOR.package == "segengine.v1"


def test_query_streams_sorted_ids_in_chunks(served):
    expected = served.engine.ids("country = 'FR'", now=NOW)
    chunks = list(served.client.iter_ids("country = 'FR'", now=NOW, chunk_size=100))
    assert [len(c) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert [i for chunk in chunks for i in chunk] == expected
    assert served.client.ids("NOT ALL") == []


def test_explain(served):
    result = served.client.explain(EXAMPLE, now=NOW)
    assert result.count == served.engine.count(EXAMPLE, now=NOW)
    assert result.plan["step"] == "AND" and len(result.plan["children"]) == 5
    assert result.now_ms == NOW and result.query.startswith("CONSENTED(email)")
    local = served.engine.explain(EXAMPLE, now=NOW)["plan"]
    assert [c["estimate"] for c in result.plan["children"]] == [c["estimate"] for c in local["children"]]
    assert any(c["estimate"] > 0 for c in result.plan["children"])


def test_writes_unary_and_client_stream(served):
    c = served.client
    assert c.upsert_profiles([{"id": "w1", "country": "FR", "age": 30, "interests": [], "vip": None,
                               "signup_at": "2026-11-20T10:00:00Z", "cart_value": 2.5,
                               "consent": {"email": True}}]) == 1
    assert c.track_events([{"id": "w1", "event": "cart_abandoned", "ts": "2026-11-20T10:00:00Z", "cart_value": 120.5},
                           {"id": "w2", "event": "purchase", "ts": NOW, "amount": None}]) == 2
    applied = c.write([("profiles", [{"id": f"s{i}", "age": i} for i in range(50)]),
                       ("events", [{"id": f"s{i}", "event": "page_view", "ts": NOW} for i in range(50)])])
    assert applied == 100
    record = c.profile("w1")
    assert record == {"id": "w1", "country": "FR", "age": 30, "interests": [], "cart_value": 2.5,
                      "signup_at": 1795168800000, "consent": {"email": True, "sms": False, "push": False,
                                                               "ads": False}}
    assert c.count("DID(page_view, SINCE NOW) AND age < 50", now=NOW) == 50
    assert c.count("DID(purchase) AND country IS NULL", now=NOW) >= 1


def test_saved_segments_crud(served):
    c = served.client
    info = c.create_segment("fr", "country = 'FR'")
    assert (info.name, info.count, info.time_relative) == ("fr", served.engine.count("country = 'FR'"), False)
    c.create_segment("fr_recent", "SEGMENT('fr') AND DID(page_view, WITHIN 1d)")
    assert c.get_segment("fr_recent").depends_on == ("fr",)
    assert c.get_segment("fr_recent").time_relative
    assert [s.name for s in c.list_segments()] == ["fr", "fr_recent"]
    replaced = c.create_segment("fr", "country = 'BE'", replace=True)
    assert replaced.query == "country = 'BE'" and replaced.count == served.engine.count("country = 'BE'")
    assert c.count("SEGMENT('fr_recent')") == served.engine.count("country = 'BE' AND DID(page_view, WITHIN 1d)",
                                                                   now=NOW)
    c.delete_segment("fr_recent")
    assert [s.name for s in c.list_segments()] == ["fr"]


def test_membership_and_profiles(served):
    c = served.client
    c.create_segment("fr", "country = 'FR'")
    c.create_segment("email", "CONSENTED(email)")
    c.upsert_profiles([{"id": "m1", "country": "FR", "consent": {"email": True}}])
    assert c.membership("m1") == ["email", "fr"]
    assert c.membership("m1", ["fr"]) == ["fr"]
    c.upsert_profiles([{"id": "m1", "consent": {"email": False}}])
    assert c.membership("m1") == ["fr"]  # read your writes


def test_stats_schema_health_and_reflection(served):
    c = served.client
    stats = c.stats()
    assert (stats["profiles"], stats["events"], stats["shards"]) == (2000, 20000, 1)
    assert sum(stats["events_by_type"].values()) == 20000
    assert "cart_abandoned" in c.schema.events
    assert c.health() == "SERVING" and c.health("segengine.v1.Segmentation") == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
    answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"segengine.v1.Segmentation", "grpc.health.v1.Health"} <= names


def test_snapshot_needs_a_data_dir(served):
    with pytest.raises(SegengineError) as caught:
        served.client.snapshot()
    assert caught.value.grpc_status == "FAILED_PRECONDITION"


def test_snapshot_and_restart_keep_saved_segments(tmp_path):
    s = Served(profiles=200, data_dir=str(tmp_path / "data"))
    try:
        s.client.create_segment("fr", "country = 'FR'")
        s.client.upsert_profiles([{"id": "d1", "country": "FR"}])
        assert json.loads(s.client.snapshot())
        count = s.client.get_segment("fr").count
    finally:
        s.close()
    engine = Engine(s.engine.schema, shards=1, data_dir=str(tmp_path / "data"))
    try:
        assert engine.get_segment("fr")["count"] == count and engine.membership("d1") == ["fr"]
    finally:
        engine.close()


# -- errors -----------------------------------------------------------------------------------
def test_bad_queries_are_invalid_argument_with_the_position(served):
    stub = pb_grpc.SegmentationStub(served.client.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Count(pb.QueryRequest(query="age = 'x'"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "type mismatch: attribute 'age' is int, got a string at column 7 near \"'x'\""
    for call in (lambda: served.client.count("country = "), lambda: served.client.ids("nope > 1"),
                 lambda: served.client.explain("DID(nothing)"), lambda: served.client.create_segment("x", "(")):
        with pytest.raises(QueryError, match="column"):
            call()


def test_bad_records_are_invalid_argument_naming_record_and_field(served):
    c = served.client
    with pytest.raises(DataError, match=r"^record 1, field 'age': expected an integer, got str$"):
        c.upsert_profiles([{"id": "ok"}, {"id": "bad", "age": "x"}])
    assert status_of(lambda: pb_grpc.SegmentationStub(c.channel).UpsertProfiles(
        pb.UpsertProfilesRequest(profiles=[pb.ProfileRecord(id="")]))) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ProfileNotFound):
        c.profile("ok")  # all or none: the good record was not applied either
    with pytest.raises(DataError, match=r"record 0, field 'ts': missing"):
        c.track_events([{"id": "u", "event": "purchase"}])
    with pytest.raises(DataError, match=r"record 0, field 'event': unknown event type 'nope'"):
        c.track_events([{"id": "u", "event": "nope", "ts": NOW}])
    with pytest.raises(DataError, match=r"record 0, field 'ts': malformed timestamp"):
        c.track_events([{"id": "u", "event": "purchase", "ts": "yesterday"}])
    with pytest.raises(DataError, match=r"record 0, field 'id': 'id' is reserved"):
        pb_request = pb.UpsertProfilesRequest(profiles=[pb.ProfileRecord(id="u", attributes={
            "id": pb.Value(string_value="other")})])
        try:
            pb_grpc.SegmentationStub(c.channel).UpsertProfiles(pb_request)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            raise DataError(error.details()) from None
    with pytest.raises(DataError, match=r"message 1: record 0, field 'age'.*\(2 records of earlier messages"):
        c.write([("profiles", [{"id": "k1"}, {"id": "k2"}]), ("profiles", [{"id": "k3", "age": 1.5}])])
    assert c.profile("k2")["id"] == "k2"


def test_unknown_segments_and_profiles_are_not_found(served):
    c = served.client
    c.create_segment("fr", "country = 'FR'")
    for call in (lambda: c.get_segment("nope"), lambda: c.delete_segment("nope"), lambda: c.count("SEGMENT('nope')"),
                 lambda: c.ids("SEGMENT('nope') AND ALL"), lambda: c.membership(served.ids[0], ["nope"]),
                 lambda: c.create_segment("x", "SEGMENT('nope')"), lambda: c.watch(["nope"])):
        with pytest.raises(SegmentNotFound, match="unknown segment 'nope'"):
            call()
    for call in (lambda: c.profile("nobody"), lambda: c.membership("nobody")):
        with pytest.raises(ProfileNotFound, match="unknown profile 'nobody'"):
            call()
    stub = pb_grpc.SegmentationStub(c.channel)
    assert status_of(lambda: stub.GetSegment(pb.GetSegmentRequest(name="nope"))) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.Membership(pb.MembershipRequest(id="nobody"))) == grpc.StatusCode.NOT_FOUND


def test_segment_conflicts(served):
    c = served.client
    c.create_segment("a", "country = 'FR'")
    c.create_segment("b", "SEGMENT('a')")
    with pytest.raises(SegmentExists):
        c.create_segment("a", "ALL")
    with pytest.raises(SegmentInUse, match="read by 'b'"):
        c.delete_segment("a")
    with pytest.raises(QueryError, match="segment reference cycle: a -> b -> a"):
        c.create_segment("a", "SEGMENT('b')", replace=True)
    stub = pb_grpc.SegmentationStub(c.channel)
    assert status_of(lambda: stub.CreateSegment(pb.CreateSegmentRequest(name="a", query="ALL"))) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert status_of(lambda: stub.DeleteSegment(pb.DeleteSegmentRequest(name="a"))) == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_oversized_requests_are_resource_exhausted():
    s = Served(ServerConfig(max_message_bytes=64 * 1024), profiles=100)
    try:
        with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
            s.client.upsert_profiles([{"id": f"big{i}", "country": "x" * 100} for i in range(2000)])
        with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
            s.client.ids("ALL", chunk_size=1_000_000)
        assert s.client.upsert_profiles([{"id": "small"}]) == 1
    finally:
        s.close()


def test_calls_over_the_concurrency_cap_are_resource_exhausted():
    s = Served(ServerConfig(max_concurrent_rpcs=1), profiles=100)
    try:
        with s.client.watch():  # holds the only slot
            with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
                s.client.count("ALL")
        for _ in range(50):  # the slot is freed once the stream is cancelled
            try:
                assert s.client.count("ALL") == 100
                break
            except RpcError:
                threading.Event().wait(0.05)
        else:
            pytest.fail("the slot was never freed")
    finally:
        s.close()


def test_deadlines_are_honoured(served):
    with holding(served.engine.publish.writing()):  # the engine is busy with a write
        for call in (lambda: served.client.count("ALL", timeout=0.2),
                     lambda: served.client.membership(served.ids[0], timeout=0.2)):
            with pytest.raises(RpcError, match="DEADLINE_EXCEEDED"):
                call()
        # the waiting calls wait in the thread pool: the event loop still answers at once
        health = health_pb2_grpc.HealthStub(served.client.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
    assert served.client.count("ALL", timeout=5) == 2000
    assert served.client.membership(served.ids[0], timeout=5) == []


def test_saved_segments_stay_exact_through_the_api(served):
    c = served.client
    names = {k: SEGMENTS[k] for k in ("fr", "carted_7d", "big_carts", "example", "fr_carted", "new_signups",
                                      "recent_views", "abandoned_unbought")}
    for name, text in names.items():
        c.create_segment(name, text)
    rng = random.Random(9)
    for _ in range(6):
        served.clock.now += rng.choice([1, 3 * HOUR, DAY, 4 * DAY])
        profiles, events = random_writes(rng, served.ids, served.clock.now, 40)
        c.upsert_profiles(profiles)
        c.track_events(events)
        members = {}
        for name, text in names.items():
            members[name] = c.ids(f"SEGMENT('{name}')")
            assert members[name] == c.ids(expand(text, names), now=served.clock.now), name
        for pid in [r["id"] for r in profiles[:10]]:
            assert c.membership(pid) == sorted(n for n, m in members.items() if pid in m)


# -- watch streams ----------------------------------------------------------------------------
def test_watch_streams_entries_and_exits_in_order(served):
    c = served.client
    c.create_segment("fr", "country = 'FR'")
    c.create_segment("carted_1h", "DID(cart_abandoned, WITHIN 1h)")
    with c.watch(["fr", "carted_1h"]) as watch:
        c.upsert_profiles([{"id": "z1", "country": "FR"}])
        c.track_events([{"id": "z1", "event": "cart_abandoned", "ts": NOW}])
        c.upsert_profiles([{"id": "z1", "country": "DE"}])
        served.clock.now += 2 * HOUR
        assert c.membership("z1") == []  # the read refreshes time-relative segments: z1 ages out
        changes = []
        for change in watch:
            if change.id == "z1":  # generated profiles also age out of carted_1h
                changes.append((change.kind, change.segment))
            if len(changes) == 4:
                break
    assert changes == [("entered", "fr"), ("entered", "carted_1h"), ("exited", "fr"), ("exited", "carted_1h")]


def test_timer_refresh_reaches_watchers_without_reads():
    s = Served(profiles=100)
    try:
        s.engine.refresh_ms = 0
        s.client.create_segment("carted_1h", "DID(cart_abandoned, WITHIN 1h)")
        s.client.track_events([{"id": "t1", "event": "cart_abandoned", "ts": NOW}])
        with s.client.watch(["carted_1h"]) as watch:
            s.clock.now += 2 * HOUR  # nobody reads: the server's timer refreshes
            change = next(c for c in watch if c.id == "t1")
        assert (change.kind, change.id, change.at_ms) == ("exited", "t1", NOW + 2 * HOUR)
    finally:
        s.close()


def test_a_heavy_query_holds_point_reads_back_neither_itself_nor_through_a_due_refresh():
    """While a heavy query (a background thread's read share) runs and a refresh of time-relative
    segments is due, point reads go on: the read skips the refresh and the timer's refresh waits
    for the heavy read without holding them back; it goes in once the heavy read ends."""
    s = Served(profiles=100)
    try:
        s.client.create_segment("carted_1h", "DID(cart_abandoned, WITHIN 1h)")
        s.client.track_events([{"id": "h1", "event": "cart_abandoned", "ts": NOW}])
        assert s.client.membership("h1") == ["carted_1h"]
        held, leave = threading.Event(), threading.Event()

        def heavy_query() -> None:
            lower_thread_priority(0)  # a background thread: its reads are heavy
            with s.engine.publish.reading():
                held.set()
                leave.wait(10)

        thread = threading.Thread(target=heavy_query)
        thread.start()
        try:
            assert held.wait(5)
            s.clock.now += 2 * HOUR  # a refresh is due: h1 leaves carted_1h once it runs
            deadline = time.monotonic() + 5
            while not s.engine.publish.writers_pending and time.monotonic() < deadline:
                time.sleep(0.005)
            assert s.engine.publish.writers_pending == 1  # the timer's refresh waits for the heavy read
            assert s.client.membership("h1", timeout=2) == ["carted_1h"]  # read before the refresh
        finally:
            leave.set()
            thread.join(5)
        deadline = time.monotonic() + 5
        while s.engine.refresh_due() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert s.client.membership("h1", timeout=2) == []
    finally:
        s.close()


def test_a_watcher_too_far_behind_is_dropped(served):
    c = served.client
    c.create_segment("all", "ALL")
    watch = c.watch(buffer=3)
    c.upsert_profiles([{"id": f"o{i}"} for i in range(10)])
    with pytest.raises(WatchOverflow, match="more than 3 changes pending"):
        list(watch)
    assert c.upsert_profiles([{"id": "after"}]) == 1  # writes were never blocked


def test_watch_ends_unavailable_on_shutdown():
    s = Served(profiles=100)
    watch = s.client.watch()
    stopper = threading.Thread(target=s.server.stop, kwargs={"grace_s": 5})
    stopper.start()
    with pytest.raises(RpcError, match="UNAVAILABLE"):
        list(watch)
    stopper.join(10)
    assert s.server.stopped.is_set()
    s.client.close()


def test_health_probe_uses_the_plain_health_api(served):
    stub = health_pb2_grpc.HealthStub(served.client.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


def test_schema_json_round_trips(served):
    response = pb_grpc.SegmentationStub(served.client.channel).GetSchema(pb.GetSchemaRequest())
    assert Schema.from_dict(json.loads(response.schema_json)).to_dict() == served.engine.schema.to_dict()


def test_queries_and_reads_run_alongside_a_query_but_not_alongside_a_write(served):
    publish = served.engine.publish
    with holding(publish.reading()):  # a query is running
        assert served.client.membership(served.ids[0], timeout=2) == []  # reads go on
        assert served.client.count("ALL", timeout=2) == 2000  # so do other queries
        with pytest.raises(RpcError, match="DEADLINE_EXCEEDED"):
            served.client.upsert_profiles([{"id": "w"}], timeout=0.2)  # a write waits for it
        time.sleep(0.3)  # the server's deadline for the call (counted from its arrival) passes too
    with pytest.raises(ProfileNotFound):
        served.client.profile("w")  # the write whose deadline passed while it waited never ran
    assert served.client.upsert_profiles([{"id": "w"}]) == 1


def test_reads_on_the_event_loop_never_wait(served):
    """A point read on the loop gives way (WouldWait) to a running write instead of blocking the
    loop; a running query does not stop it, nor does a write that waits for that query."""
    gate, publish, pid = served.server.gate, served.engine.publish, served.ids[0]
    on_loop = SimpleNamespace(on_loop=True)
    assert gate.read(on_loop, served.engine.membership, pid) == []
    query_done = threading.Event()
    with holding(publish.reading()):  # a query runs: the loop reads alongside it
        assert gate.read(on_loop, served.engine.membership, pid) == []
        writer = threading.Thread(target=_write_after, args=(publish, query_done), daemon=True)
        writer.start()  # a write waits for the query
        deadline = time.monotonic() + 5
        while not publish.writers_waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert publish.writers_waiting == 1
        assert gate.read(on_loop, served.engine.membership, pid) == []  # the query still holds the engine
    writer.join(5)
    assert query_done.is_set()
    with holding(publish.writing()):  # a write runs
        with pytest.raises(WouldWait):
            gate.read(on_loop, served.engine.membership, pid)
    assert publish.readers == 0 and publish.writer is None
    assert served.client.membership(pid, timeout=2) == []


# -- columnar event writes --------------------------------------------------------------------
def _columns(ids: list[str], ts: list[int], amounts: list[float | None]) -> pb.EventColumns:
    message = pb.EventColumns(event="purchase", ids=ids, ts_ms=ts)
    amount = message.properties["amount"]
    amount.float_values.values.extend([0.0 if a is None else a for a in amounts])
    amount.valid.extend([a is not None for a in amounts])
    return message


def test_load_events_columns_match_the_same_records(served):
    c = served.client
    ids = [f"col{i % 7}" for i in range(40)]
    ts = [NOW - i * HOUR for i in range(40)]
    amounts = [None if i % 5 == 0 else float(i * 10) for i in range(40)]
    categories = ["books", "toys"]
    message = _columns(ids, ts, amounts)
    message.properties["category"].categories.labels.extend(categories)
    message.properties["category"].categories.codes.extend([-1 if i % 3 == 0 else i % 2 for i in range(40)])
    assert pb_grpc.SegmentationStub(c.channel).LoadEvents(message).applied == 40
    twin = [{"id": i.replace("col", "rec"), "event": "purchase", "ts": t, "amount": a,
             "category": None if k % 3 == 0 else categories[k % 2]}
            for k, (i, t, a) in enumerate(zip(ids, ts, amounts))]
    assert c.track_events(twin) == 40
    for query in ("DID(purchase WHERE amount > 150, COUNT >= 2, WITHIN 1d)", "DID(purchase WHERE amount IS NULL)",
                  "DID(purchase WHERE category = 'toys', WITHIN 20h)", "DID(purchase WHERE category IS NULL)"):
        by_columns = len([i for i in c.ids(query, now=NOW) if i.startswith("col")])
        by_records = len([i for i in c.ids(query, now=NOW) if i.startswith("rec")])
        assert by_columns == by_records > 0, query


def test_load_events_through_the_client_and_the_write_stream(served):
    c = served.client
    ds = generate(profiles=300, events=3000, seed=9, now_ms=NOW)
    before = set(c.ids("DID(page_view)", now=NOW))
    applied = sum(c.load_events(batch) for batch in ds.events)
    assert applied == sum(len(b) for b in ds.events)
    engine = Engine(Schema.from_dict(ds.schema))
    for batch in ds.events:
        engine.load_events(batch)
    viewers = {i for batch in ds.events if batch.event == "page_view" for i, t in zip(batch.ids, batch.ts) if t <= NOW}
    assert viewers - before and set(c.ids("DID(page_view)", now=NOW)) == before | viewers
    for query in ("DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2)", "DID(purchase WHERE category = 'books')"):
        expected = set(engine.ids(query, now=NOW))
        assert expected and expected <= set(c.ids(query, now=NOW)), query
    assert c.write([("event_columns", ds.events[0]), ("events", [{"id": "z", "event": "purchase", "ts": NOW}])]) \
        == len(ds.events[0]) + 1


def test_bad_event_columns_name_the_event_and_field(served):
    stub = pb_grpc.SegmentationStub(served.client.channel)

    def error_of(message: pb.EventColumns) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            stub.LoadEvents(message)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return caught.value.details()

    good = ["a", "b", "c"]
    assert error_of(pb.EventColumns(event="nope", ids=good, ts_ms=[1, 2, 3])) == \
        "field 'event': unknown event type 'nope'"
    assert error_of(pb.EventColumns(event="purchase", ids=good, ts_ms=[1, 2])) == "field 'ts': 2 timestamps for 3 events"
    assert error_of(pb.EventColumns(event="purchase", ids=["a", "", "c"], ts_ms=[1, 2, 3])).startswith(
        "record 1, field 'id': id must be a non-empty string")
    assert error_of(pb.EventColumns(event="purchase", ids=["a", "x" * 300], ts_ms=[1, 2])).startswith(
        "record 1, field 'id'")
    assert error_of(_columns(good, [1, 2, 3], [1.0, float("nan"), 2.0])) == \
        "record 1, field 'amount': expected a finite number"
    assert error_of(_columns(good, [1, 2, 3], [1.0, 2.0])) == "field 'amount': 2 values for 3 events"
    wrong_type = pb.EventColumns(event="purchase", ids=good, ts_ms=[1, 2, 3])
    wrong_type.properties["amount"].int_values.values.extend([1, 2, 3])
    assert error_of(wrong_type) == "field 'amount': expected 3 float values"
    unknown = pb.EventColumns(event="purchase", ids=good, ts_ms=[1, 2, 3])
    unknown.properties["colour"].bool_values.values.extend([True, False, True])
    assert error_of(unknown) == "field 'colour': unknown property of event 'purchase'"
    codes = pb.EventColumns(event="purchase", ids=good, ts_ms=[1, 2, 3])
    codes.properties["category"].categories.labels.append("books")
    codes.properties["category"].categories.codes.extend([0, -1, 1])
    assert error_of(codes) == "record 2, field 'category': category code out of range (there are 1 labels; -1 = null)"
    assert error_of(pb.EventColumns(event="purchase", ids=good, ts_ms=[1, 2, 3],
                                    properties={"amount": pb.PropertyColumn()})) == "field 'amount': no values"
    for name in good:  # nothing of the refused batches was applied; the server still serves
        with pytest.raises(ProfileNotFound):
            served.client.profile(name)
    assert served.client.count("ALL", now=NOW) == len(served.ids)


def test_heavy_queries_run_in_the_lower_priority_pool(served):
    served.server.gate.heavy_ms = 0.0  # every query seen before counts as heavy
    ran: list[tuple[str, int]] = []
    count = served.engine.count

    def recorded(*args, **kwargs):
        ran.append((threading.current_thread().name,
                    os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return count(*args, **kwargs)

    served.engine.count = recorded
    try:
        assert [served.client.count("vip = TRUE") for _ in range(2)] == [served.engine.count("vip = TRUE")] * 2
    finally:
        del served.engine.count
    (first, first_nice), (second, second_nice), _ = ran
    assert first.startswith("segengine-rpc") and second.startswith("segengine-heavy")
    assert second_nice == min(first_nice + served.server.config.heavy_nice, 19)
