"""The Segmentation servicer: proto in, one engine call (through the gate), proto out.

The methods block (they run in the server's thread pool, or on its event loop for point reads:
see ``server.bridge``). Errors are not handled here: engine errors propagate to the bridge,
which maps them to status codes in one place.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from typing import Iterator

import grpc

from engine.engine import wall_clock_ms
from engine.errors import DataError, PermissionDenied
from engine.export_formats import ByteChunks, open_writer
from engine.watch import DEFAULT_CAPACITY

from . import analytics_convert, convert
from .gate import EngineGate, RequestTooLarge, ShuttingDown, Unimplemented
from .interceptors import ADMIN_DENIED, is_admin
from .proto_gen import segmentation_pb2 as pb
from .proto_gen import segmentation_pb2_grpc as pb_grpc

DEFAULT_CHUNK = 10_000
MAX_CHUNK = 100_000
WATCH_POLL_S = 0.5
#: Every erasure is written here: time, caller, number of profiles (never an id).
audit = logging.getLogger("segengine.audit")
#: The calls that run the executor (see ``SegmentationServicer.heavy``).
QUERY_METHODS = frozenset({"Count", "Query", "Explain", "Breakdown", "Why"})
#: Calls that always run in the heavy pool (a snapshot, a member export, a model trained and every profile scored).
HEAVY_METHODS = frozenset({"Snapshot", "ExportMembers", "Lookalike"})


class SegmentationServicer(pb_grpc.SegmentationServicer):
    """segengine.v1.Segmentation over an engine gate."""

    def __init__(self, gate: EngineGate, watch_buffer: int = DEFAULT_CAPACITY, max_watch_buffer: int = 1_000_000):
        self.gate = gate
        self.engine = gate.engine
        self.watch_buffer = watch_buffer
        self.max_watch_buffer = max_watch_buffer
        self.started = time.monotonic()
        self.closing = False  # set when shutdown starts: watch streams end with UNAVAILABLE
        self.tokens: tuple[str | None, str | None] = (None, None)  # (read/write, admin): see server.interceptors

    def heavy(self, method: str, request: object) -> bool:
        """True for the HEAVY_METHODS, and for a query call (Count, Query, Explain, Breakdown, Why) whose query
        is known to be heavy."""
        return method in HEAVY_METHODS or (method in QUERY_METHODS and self.gate.heavy(getattr(request, "query", "")))

    # -- writes -----------------------------------------------------------------------------
    def UpsertProfiles(self, request: pb.UpsertProfilesRequest, context: grpc.ServicerContext) -> pb.WriteResponse:
        records = convert.profile_records(request.profiles)
        return pb.WriteResponse(applied=self.gate.write(context, self.engine.upsert_profiles, records))

    def TrackEvents(self, request: pb.TrackEventsRequest, context: grpc.ServicerContext) -> pb.WriteResponse:
        records = convert.event_records(request.events)
        return pb.WriteResponse(applied=self.gate.write(context, self.engine.track_events, records))

    def LoadEvents(self, request: pb.EventColumns, context: grpc.ServicerContext) -> pb.WriteResponse:
        batch = convert.event_batch(request)
        return pb.WriteResponse(applied=self.gate.write(context, self.engine.load_checked_events, batch))

    def Write(self, requests: Iterator[pb.WriteRequest], context: grpc.ServicerContext) -> pb.WriteResponse:
        applied = 0
        for number, request in enumerate(requests):
            try:
                if request.HasField("profiles"):
                    records = convert.profile_records(request.profiles.profiles)
                    applied += self.gate.write(context, self.engine.upsert_profiles, records)
                elif request.HasField("events"):
                    records = convert.event_records(request.events.events)
                    applied += self.gate.write(context, self.engine.track_events, records)
                elif request.HasField("event_columns"):
                    batch = convert.event_batch(request.event_columns)
                    applied += self.gate.write(context, self.engine.load_checked_events, batch)
                elif request.HasField("merges"):
                    self._check_admin(context)
                    applied += self.gate.write(context, self.engine.merge_many, _pairs(request.merges))
            except DataError as error:  # name the message; earlier messages stay applied
                raise DataError(f"message {number}: {error} ({applied} records of earlier messages were applied)",
                                ) from None
        return pb.WriteResponse(applied=applied)

    # -- queries ----------------------------------------------------------------------------
    @staticmethod
    def _now(request: pb.QueryRequest) -> int | None:
        return request.now_ms or None

    def Count(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.CountResponse:
        return pb.CountResponse(count=self.gate.query(context, self.engine.count, request.query, self._now(request)))

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> Iterator[pb.IdsChunk]:
        size = request.chunk_size or DEFAULT_CHUNK
        if size > MAX_CHUNK:
            raise RequestTooLarge(f"chunk_size {size} is over the limit of {MAX_CHUNK}")
        ids = self.gate.query(context, self.engine.ids, request.query, self._now(request))
        for start in range(0, len(ids), size):
            yield pb.IdsChunk(ids=ids[start:start + size])

    def Explain(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        result = self.gate.query(context, self.engine.explain, request.query, self._now(request))
        return pb.ExplainResponse(query=result["query"], now_ms=result["now_ms"], count=result["count"],
                                  ms=result["ms"], plan=convert.plan_message(result["plan"]))

    def Lookalike(self, request: pb.LookalikeRequest, context: grpc.ServicerContext) -> pb.LookalikeResponse:
        seed = request.seed_query if request.WhichOneof("seed") != "seed_ids" else list(request.seed_ids.values)
        threshold = request.threshold if request.HasField("threshold") else None
        result = self.gate.read(context, self.engine.lookalike, seed, request.within or "ALL", request.size or None,
                                threshold, request.now_ms or None)
        return convert.lookalike_message(result)

    # -- profiles ---------------------------------------------------------------------------
    def GetProfile(self, request: pb.GetProfileRequest, context: grpc.ServicerContext) -> pb.ProfileRecord:
        return convert.profile_message(self.gate.read(context, self.engine.profile, request.id))

    def Membership(self, request: pb.MembershipRequest, context: grpc.ServicerContext) -> pb.MembershipResponse:
        names = self.gate.read(context, self.engine.membership, request.id, list(request.segments), view=True)
        return pb.MembershipResponse(segments=names)

    # -- saved segments ---------------------------------------------------------------------
    def CreateSegment(self, request: pb.CreateSegmentRequest, context: grpc.ServicerContext) -> pb.Segment:
        info = self.gate.write(context, self.engine.create_segment, request.name, request.query, request.replace)
        return convert.segment_message(info)

    def GetSegment(self, request: pb.GetSegmentRequest, context: grpc.ServicerContext) -> pb.Segment:
        return convert.segment_message(self.gate.read(context, self.engine.get_segment, request.name))

    def ListSegments(self, request: pb.ListSegmentsRequest, context: grpc.ServicerContext) -> pb.ListSegmentsResponse:
        infos = self.gate.read(context, self.engine.list_segments)
        return pb.ListSegmentsResponse(segments=[convert.segment_message(info) for info in infos])

    def DeleteSegment(self, request: pb.DeleteSegmentRequest,
                      context: grpc.ServicerContext) -> pb.DeleteSegmentResponse:
        self.gate.write(context, self.engine.delete_segment, request.name)
        return pb.DeleteSegmentResponse()

    def WatchSegments(self, request: pb.WatchSegmentsRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.WatchSegmentsResponse]:
        buffer = request.buffer or self.watch_buffer
        if buffer > self.max_watch_buffer:
            raise RequestTooLarge(f"buffer {buffer} is over the limit of {self.max_watch_buffer}")
        subscription = self.gate.write(context, self.engine.watch, list(request.segments), buffer)
        context.add_callback(subscription.close)
        try:
            yield pb.WatchSegmentsResponse()  # the subscription is live
            while context.is_active() and not subscription.closed:
                changes = subscription.get(timeout=WATCH_POLL_S)
                if changes:
                    yield convert.changes_message(changes)
            if self.closing:
                raise ShuttingDown("the server is shutting down; watch again elsewhere or later")
        finally:
            subscription.close()

    # -- operations -------------------------------------------------------------------------
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        fields = server_stats(self.gate, context, self.started)
        destinations = [convert.destination_message(d) for d in fields.pop("destinations")]
        return pb.StatsResponse(**fields, destinations=destinations)

    def GetSchema(self, request: pb.GetSchemaRequest, context: grpc.ServicerContext) -> pb.GetSchemaResponse:
        return pb.GetSchemaResponse(schema_json=json.dumps(self.engine.schema.to_dict(), sort_keys=True))

    def UpdateSchema(self, request: pb.UpdateSchemaRequest, context: grpc.ServicerContext) -> pb.UpdateSchemaResponse:
        spec = convert.schema_spec(request.schema_json)
        result = self.gate.write(context, self.engine.update_schema, spec)
        return pb.UpdateSchemaResponse(schema_json=json.dumps(result["schema"], sort_keys=True),
                                       changes=result["changes"])

    def Snapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext) -> pb.SnapshotResponse:
        snapshot = getattr(self.engine, "snapshot", None)
        if snapshot is None:
            raise Unimplemented("this engine cannot write snapshots")
        result = self.gate.write(context, snapshot)
        return pb.SnapshotResponse(detail="" if result is None else json.dumps(result, sort_keys=True, default=str))


    # -- identity and privacy (admin scope: see server.interceptors) ---------------------------
    def _check_admin(self, context: grpc.ServicerContext) -> None:
        if not is_admin(context.invocation_metadata(), *self.tokens):
            raise PermissionDenied(ADMIN_DENIED)

    def Merge(self, request: pb.MergeRequest, context: grpc.ServicerContext) -> pb.MergeResponse:
        return pb.MergeResponse(merged=self.gate.write(context, self.engine.merge_many, _pairs(request)))

    def DeleteProfiles(self, request: pb.DeleteProfilesRequest,
                       context: grpc.ServicerContext) -> pb.DeleteProfilesResponse:
        erased = self.gate.write(context, self.engine.delete_profiles, list(request.ids))
        audit.info("erasure caller=%s profiles=%d", context.peer(), erased)
        return pb.DeleteProfilesResponse(erased=erased)

    def ExportProfile(self, request: pb.ExportProfileRequest,
                      context: grpc.ServicerContext) -> pb.ExportProfileResponse:
        record = self.gate.read(context, self.engine.export_profile, request.id)
        if record is None:
            return pb.ExportProfileResponse(found=False)
        return pb.ExportProfileResponse(found=True, json=json.dumps(record, sort_keys=True))

    # -- analytics (see docs/analytics.md) -----------------------------------------------------
    def Breakdown(self, request: pb.BreakdownRequest, context: grpc.ServicerContext) -> pb.BreakdownResponse:
        now = request.now_ms or wall_clock_ms()
        counts = self.gate.query(context, self.engine.breakdown, request.query, request.by, now,
                                 analytics_convert.request_bins(request.bins))
        return analytics_convert.breakdown_message(counts, now)

    def Overlap(self, request: pb.OverlapRequest, context: grpc.ServicerContext) -> pb.OverlapResponse:
        now = request.now_ms or wall_clock_ms()
        matrix = self.gate.queries(context, self.engine.overlap, list(request.queries), now)
        return analytics_convert.overlap_message(matrix, now)

    def Why(self, request: pb.WhyRequest, context: grpc.ServicerContext) -> pb.WhyResponse:
        result = self.gate.query(context, self._why, request.query, request.id, self._now(request),
                                 not request.truth_only)
        return pb.WhyResponse(id=result["id"], now_ms=result["now_ms"],
                              tree=analytics_convert.why_message(result["tree"]))

    def _why(self, query: str, profile_id: str, now: int | None, events: bool) -> dict:
        return self.engine.why(profile_id, query, now, events)


    # -- activation: size history, member export --------------------------------------------
    def SegmentHistory(self, request: pb.SegmentHistoryRequest,
                       context: grpc.ServicerContext) -> pb.SegmentHistoryResponse:
        since = request.since_ms if request.HasField("since_ms") else None
        until = request.until_ms if request.HasField("until_ms") else None
        points = self.gate.read(context, self.engine.segment_history, request.name, since, until)
        return pb.SegmentHistoryResponse(points=[pb.SizePoint(time_ms=t, size=n) for t, n in points])

    def ExportMembers(self, request: pb.ExportMembersRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.ExportMembersChunk]:
        attributes = list(request.attributes)
        chunks = self.gate.read(context, self.engine.member_chunks, attributes, request.segment or None,
                                request.query or None, request.now_ms or None)
        sink = ByteChunks()
        writer = open_writer(request.format or "csv", sink, [(a, self.engine.schema.attributes[a].type)
                                                             for a in attributes])
        rows = 0
        while (chunk := self.gate.read(context, next, chunks, None)) is not None:
            writer.write(chunk)
            rows += len(chunk)
            for piece in sink.take():
                yield pb.ExportMembersChunk(data=piece, rows=rows)
        writer.close()
        for piece in sink.take():
            yield pb.ExportMembersChunk(data=piece, rows=rows)
    # -- destinations (webhooks; adding and removing are admin calls: see server.interceptors) ---
    def AddDestination(self, request: pb.AddDestinationRequest, context: grpc.ServicerContext) -> pb.Destination:
        add = functools.partial(self.engine.add_destination, **convert.destination_options(request.options))
        info = self.gate.write(context, add, request.segment, request.url, request.secret, request.name or None)
        return convert.destination_message(info)

    def RemoveDestination(self, request: pb.RemoveDestinationRequest,
                          context: grpc.ServicerContext) -> pb.RemoveDestinationResponse:
        self.gate.write(context, self.engine.remove_destination, request.name)
        return pb.RemoveDestinationResponse()

    def ListDestinations(self, request: pb.ListDestinationsRequest,
                         context: grpc.ServicerContext) -> pb.ListDestinationsResponse:
        infos = self.gate.read(context, self.engine.list_destinations)
        return pb.ListDestinationsResponse(destinations=[convert.destination_message(d) for d in infos])


def _pairs(request: pb.MergeRequest) -> list[tuple[str, str]]:
    return [(pair.from_id, pair.into_id) for pair in request.pairs]


def server_stats(gate: EngineGate, context: grpc.ServicerContext | None, started: float) -> dict[str, object]:
    """The fields of a Stats answer (also the HTTP API's): sizes, events by type, watchers, uptime, version."""
    engine = gate.engine
    stats = gate.read(context, engine.stats)
    by_type: dict[str, int] = {}
    for shard in stats["shards"]:
        for name, count in shard.get("events_by_type", {}).items():
            by_type[name] = by_type.get(name, 0) + count
    return {"profiles": stats["profiles"], "events": stats["events"], "shards": len(stats["shards"]),
            "segments": len(engine.catalog), "events_by_type": by_type, "watchers": len(engine.changes.subscribers),
            "uptime_s": time.monotonic() - started, "version": _version(), "destinations": stats["destinations"]}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("segengine")
    except Exception:  # noqa: BLE001 - not installed
        return "dev"
