"""A typed Python client of the segengine gRPC API, with default deadlines.

Errors come back as the engine's own classes when the server names one (``QueryError``,
``DataError``, ``SegmentNotFound``, ``ProfileNotFound``, ...; see the trailing metadata key
``segengine-error``), otherwise as ``RpcError`` carrying the status code. Both subclass
``engine.SegengineError``; ``QueryError`` and ``DataError`` are ``ValueError``s as in the
embedded API, so code (and the JSONL loaders) can use a client where it used an ``Engine``.

    with SegengineClient("127.0.0.1:50051") as client:
        client.create_segment("fr_vip", "country = 'FR' AND vip = TRUE")
        client.count("SEGMENT('fr_vip')")
        client.membership("u1")
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine import errors
from engine.columns import EventBatch
from engine.errors import SegengineError
from engine.schema import Schema
from engine.watch import Change

from . import analytics_convert, convert
from .interceptors import ERROR_KEY
from .proto_gen import segmentation_pb2 as pb
from .proto_gen import segmentation_pb2_grpc as pb_grpc

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 300.0


class RpcError(SegengineError):
    """A call failed with a status the engine has no error class for (UNAVAILABLE, ...)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code = code
        self.grpc_status = code.name
        super().__init__(f"{code.name}: {details}")


def _translate(error: grpc.RpcError) -> SegengineError:
    """The engine error class the server named, or RpcError."""
    code, details = error.code(), error.details() or ""
    trailing = dict(error.trailing_metadata() or ())
    cls = getattr(errors, str(trailing.get(ERROR_KEY, "")), None)
    if isinstance(cls, type) and issubclass(cls, SegengineError) and cls is not SegengineError:
        return cls(details)
    return RpcError(code, details)


@dataclass(frozen=True)
class SegmentInfo:
    """A saved segment: definition and current member count."""

    name: str
    query: str
    count: int
    time_relative: bool
    depends_on: tuple[str, ...]
    created_ms: int
    updated_ms: int
    as_of_ms: int

    @classmethod
    def from_message(cls, message: pb.Segment) -> "SegmentInfo":
        """From a Segment message."""
        return cls(message.name, message.query, message.count, message.time_relative, tuple(message.depends_on),
                   message.created_ms, message.updated_ms, message.as_of_ms)


@dataclass(frozen=True)
class Explanation:
    """An explained query: canonical text, clock, count, time and the plan tree (dicts)."""

    query: str
    now_ms: int
    count: int
    ms: float
    plan: dict[str, Any] = field(repr=False)


class Watch:
    """An open WatchSegments stream: iterate for changes; ``cancel()`` to stop."""

    def __init__(self, call: Any):
        self.call = call
        try:
            next(call)  # the empty first message: the subscription is live once this returns
        except grpc.RpcError as error:
            raise _translate(error) from None

    def __iter__(self) -> Iterator[Change]:
        try:
            for message in self.call:
                for change in message.changes:
                    yield convert.change(change)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise _translate(error) from None

    def cancel(self) -> None:
        """End the stream."""
        self.call.cancel()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class SegengineClient:
    """A connection to a segengine server (``address`` is host:port).

    ``token``: bearer token sent with every call; ``timeout``: default deadline in seconds of
    unary calls (streams: ``stream_timeout``; watches have none); ``tls``: use TLS, trusting
    ``root_certificates`` (PEM bytes; None = the system roots).
    """

    def __init__(self, address: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 stream_timeout: float = STREAM_TIMEOUT_S, tls: bool = False, root_certificates: bytes | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self._schema: Schema | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> "SegengineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------
    def upsert_profiles(self, records: Iterable[dict], timeout: float | None = None) -> int:
        """Upsert profile records (contract shapes), all or none; returns the number applied."""
        request = pb.UpsertProfilesRequest(profiles=[convert.profile_message(r) for r in records])
        return self._call(self.stub.UpsertProfiles, request, timeout).applied

    def track_events(self, records: Iterable[dict], timeout: float | None = None) -> int:
        """Track event records, all or none; returns the number applied."""
        request = pb.TrackEventsRequest(events=[convert.event_message(r) for r in records])
        return self._call(self.stub.TrackEvents, request, timeout).applied

    def load_events(self, batch: EventBatch, timeout: float | None = None) -> int:
        """Send a columnar batch of events of one type (LoadEvents); returns the number applied."""
        return self._call(self.stub.LoadEvents, convert.event_columns(batch), timeout).applied

    def write(self, batches: Iterable[tuple[str, Any]], timeout: float | None = None) -> int:
        """Stream ``("profiles" | "events", records)``, ``("event_columns", EventBatch)`` or ``("merges", pairs)``
        (the admin token) over one call.

        Returns the number of records applied.
        """

        def requests() -> Iterator[pb.WriteRequest]:
            for kind, records in batches:
                if kind == "profiles":
                    yield pb.WriteRequest(profiles=pb.UpsertProfilesRequest(
                        profiles=[convert.profile_message(r) for r in records]))
                elif kind == "events":
                    yield pb.WriteRequest(events=pb.TrackEventsRequest(events=[convert.event_message(r) for r in records]))
                elif kind == "event_columns":
                    yield pb.WriteRequest(event_columns=convert.event_columns(records))
                elif kind == "merges":
                    yield pb.WriteRequest(merges=pb.MergeRequest(
                        pairs=[pb.MergePair(from_id=f, into_id=i) for f, i in records]))
                else:
                    raise ValueError(f"batch kind must be 'profiles', 'events', 'event_columns' or 'merges', "
                                     f"not {kind!r}")

        return self._call(self.stub.Write, requests(), timeout or self.stream_timeout).applied

    # -- queries ----------------------------------------------------------------------------
    def count(self, query: str, now: int | None = None, timeout: float | None = None) -> int:
        """Number of profiles in the segment ``query`` (``now``: epoch ms, None = the server's clock)."""
        return self._call(self.stub.Count, pb.QueryRequest(query=query, now_ms=now or 0), timeout).count

    def iter_ids(self, query: str, now: int | None = None, chunk_size: int = 0) -> Iterator[list[str]]:
        """The ids of the segment ``query``, sorted ascending, in chunks."""
        request = pb.QueryRequest(query=query, now_ms=now or 0, chunk_size=chunk_size)
        try:
            for chunk in self.stub.Query(request, timeout=self.stream_timeout, metadata=self.metadata):
                yield list(chunk.ids)
        except grpc.RpcError as error:
            raise _translate(error) from None

    def ids(self, query: str, now: int | None = None, chunk_size: int = 0) -> list[str]:
        """Every id of the segment ``query``, sorted ascending."""
        return [i for chunk in self.iter_ids(query, now, chunk_size) for i in chunk]

    def explain(self, query: str, now: int | None = None) -> Explanation:
        """The plan of ``query`` with per-step rows and times."""
        result = self._call(self.stub.Explain, pb.QueryRequest(query=query, now_ms=now or 0))
        return Explanation(result.query, result.now_ms, result.count, result.ms, convert.plan_dict(result.plan))

    def lookalike(self, seed: str | Iterable[str], within: str = "ALL", size: int | None = None,
                  threshold: float | None = None, now: int | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
        """``Engine.lookalike`` on the server: ``seed`` a query or ids; the result as that method's dict
        (without timings). Its deadline defaults to the stream timeout (it trains a model)."""
        request = pb.LookalikeRequest(within=within, size=size or 0, now_ms=now or 0)
        if isinstance(seed, str):
            request.seed_query = seed
        else:
            request.seed_ids.values.extend(seed)
        if threshold is not None:
            request.threshold = threshold
        response = self._call(self.stub.Lookalike, request, timeout or self.stream_timeout)
        return convert.lookalike_result(response)

    # -- profiles ---------------------------------------------------------------------------
    def profile(self, profile_id: str) -> dict[str, Any]:
        """The current record of one profile (ProfileNotFound if unknown)."""
        return convert.profile_dict(self._call(self.stub.GetProfile, pb.GetProfileRequest(id=profile_id)))

    def membership(self, profile_id: str, segments: Iterable[str] | None = None,
                   timeout: float | None = None) -> list[str]:
        """The saved segments ``profile_id`` is in (sorted), among ``segments`` if given."""
        request = pb.MembershipRequest(id=profile_id, segments=list(segments or ()))
        return list(self._call(self.stub.Membership, request, timeout).segments)

    # -- saved segments ---------------------------------------------------------------------
    def create_segment(self, name: str, query: str, replace: bool = False) -> SegmentInfo:
        """Save ``query`` as segment ``name`` (SegmentExists if taken, unless ``replace``)."""
        request = pb.CreateSegmentRequest(name=name, query=query, replace=replace)
        return SegmentInfo.from_message(self._call(self.stub.CreateSegment, request))

    def get_segment(self, name: str) -> SegmentInfo:
        """One saved segment (SegmentNotFound if unknown)."""
        return SegmentInfo.from_message(self._call(self.stub.GetSegment, pb.GetSegmentRequest(name=name)))

    def list_segments(self) -> list[SegmentInfo]:
        """Every saved segment, in dependency order."""
        response = self._call(self.stub.ListSegments, pb.ListSegmentsRequest())
        return [SegmentInfo.from_message(m) for m in response.segments]

    def delete_segment(self, name: str) -> None:
        """Delete a saved segment (SegmentInUse if another one reads it)."""
        self._call(self.stub.DeleteSegment, pb.DeleteSegmentRequest(name=name))

    def watch(self, segments: Iterable[str] | None = None, buffer: int = 0) -> Watch:
        """Subscribe to membership changes (of ``segments``, or all); live when this returns."""
        request = pb.WatchSegmentsRequest(segments=list(segments or ()), buffer=buffer)
        return Watch(self.stub.WatchSegments(request, metadata=self.metadata))

    # -- operations -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Server statistics: profiles, events (and per type), shards, segments, watchers, uptime."""
        s = self._call(self.stub.Stats, pb.StatsRequest())
        return {"profiles": s.profiles, "events": s.events, "shards": s.shards, "segments": s.segments,
                "events_by_type": dict(s.events_by_type), "watchers": s.watchers, "uptime_s": s.uptime_s,
                "version": s.version, "destinations": [convert.destination_dict(d) for d in s.destinations]}

    @property
    def schema(self) -> Schema:
        """The server's schema (fetched once)."""
        if self._schema is None:
            response = self._call(self.stub.GetSchema, pb.GetSchemaRequest())
            self._schema = Schema.from_dict(json.loads(response.schema_json))
        return self._schema

    def update_schema(self, schema: Schema | dict[str, Any]) -> list[str]:
        """Extend the server's schema to ``schema`` (it must contain everything of the current one);
        returns one line per change (empty if nothing changed)."""
        spec = schema.to_dict() if isinstance(schema, Schema) else schema
        response = self._call(self.stub.UpdateSchema, pb.UpdateSchemaRequest(schema_json=json.dumps(spec)))
        self._schema = Schema.from_dict(json.loads(response.schema_json))
        return list(response.changes)

    # -- identity and privacy (the server's admin token) -----------------------------------------
    def merge(self, from_id: str, into_id: str, timeout: float | None = None) -> int:
        """Make ``from_id`` an alias of ``into_id``; 1 if anything changed, else 0."""
        return self.merge_many([(from_id, into_id)], timeout)

    def merge_many(self, pairs: Iterable[tuple[str, str]], timeout: float | None = None) -> int:
        """Merges applied in order, all or none; how many changed anything."""
        request = pb.MergeRequest(pairs=[pb.MergePair(from_id=f, into_id=i) for f, i in pairs])
        return self._call(self.stub.Merge, request, timeout).merged

    def delete_profiles(self, ids: Iterable[str], timeout: float | None = None) -> int:
        """Erase the canonical profiles ``ids`` name and their aliases; how many canonical profiles."""
        return self._call(self.stub.DeleteProfiles, pb.DeleteProfilesRequest(ids=list(ids)), timeout).erased

    def export_profile(self, profile_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Everything held about the profile ``profile_id`` names (contract section 6), None if unknown."""
        reply = self._call(self.stub.ExportProfile, pb.ExportProfileRequest(id=profile_id), timeout)
        return json.loads(reply.json) if reply.found else None

    # -- activation -------------------------------------------------------------------------
    def segment_history(self, name: str, since: int | None = None, until: int | None = None,
                        timeout: float | None = None) -> list[tuple[int, int]]:
        """Saved segment ``name``'s size over time: ``(time ms, size)`` points with ``since <= time <= until``."""
        request = pb.SegmentHistoryRequest(name=name, since_ms=since, until_ms=until)
        return [(p.time_ms, p.size) for p in self._call(self.stub.SegmentHistory, request, timeout).points]

    def iter_export(self, attributes: Iterable[str], format: str = "csv", segment: str | None = None,
                    query: str | None = None, now: int | None = None) -> Iterator[tuple[bytes, int]]:
        """The bytes of a member export file in pieces, each with the members written up to its end."""
        request = pb.ExportMembersRequest(segment=segment or "", query=query or "", attributes=list(attributes),
                                          format=format, now_ms=now or 0)
        try:
            for chunk in self.stub.ExportMembers(request, timeout=self.stream_timeout, metadata=self.metadata):
                yield chunk.data, chunk.rows
        except grpc.RpcError as error:
            raise _translate(error) from None

    def export_members(self, out: str | BinaryIO, attributes: Iterable[str], format: str = "csv",
                       segment: str | None = None, query: str | None = None, now: int | None = None) -> int:
        """Write the members of saved segment ``segment`` or of ``query`` with ``attributes`` to ``out`` (a path,
        written whole or not at all, or a binary file) as ``format``; returns the members written."""
        if isinstance(out, str):
            partial = out + ".part"
            try:
                with open(partial, "wb") as handle:
                    rows = self.export_members(handle, attributes, format, segment, query, now)
                os.replace(partial, out)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            return rows
        rows = 0
        for data, rows in self.iter_export(attributes, format, segment, query, now):
            out.write(data)
        return rows

    # -- analytics (see docs/analytics.md) -----------------------------------------------------
    def breakdown(self, query: str, by: str, now: int | None = None, bins: Iterable[int | float] | None = None,
                  timeout: float | None = None) -> dict[Any, int]:
        """The members of ``query`` counted by the value (or bin) of attribute ``by`` (as Engine.breakdown)."""
        request = pb.BreakdownRequest(query=query, now_ms=now or 0, by=by, bins=analytics_convert.bins_values(bins))
        return analytics_convert.breakdown_dict(self._call(self.stub.Breakdown, request, timeout))

    def overlap(self, queries: Iterable[str], now: int | None = None, timeout: float | None = None) -> list[list[int]]:
        """``m[i][j]``: the profiles in both ``queries[i]`` and ``queries[j]`` (as Engine.overlap)."""
        request = pb.OverlapRequest(queries=list(queries), now_ms=now or 0)
        return analytics_convert.overlap_matrix(self._call(self.stub.Overlap, request, timeout))

    def why(self, profile_id: str, query: str, now: int | None = None, events: bool = True,
            timeout: float | None = None) -> dict[str, Any]:
        """Why a profile is or is not in ``query`` (as Engine.why; ProfileNotFound for an unknown id)."""
        request = pb.WhyRequest(id=profile_id, query=query, now_ms=now or 0, truth_only=not events)
        reply = self._call(self.stub.Why, request, timeout)
        return {"id": reply.id, "now_ms": reply.now_ms, "tree": analytics_convert.why_dict(reply.tree)}

    # -- webhook destinations (see docs/activation.md) -------------------------------------------
    def add_destination(self, segment: str, url: str, secret: str, name: str | None = None,
                        **options: float) -> dict[str, Any]:
        """Deliver saved segment ``segment``'s entries and exits to webhook ``url`` (admin token); its info."""
        request = pb.AddDestinationRequest(name=name or "", segment=segment, url=url, secret=secret,
                                           options=pb.DestinationOptions(**options))
        return convert.destination_dict(self._call(self.stub.AddDestination, request))

    def remove_destination(self, name: str) -> None:
        """Stop delivering to destination ``name`` and forget it (admin token)."""
        self._call(self.stub.RemoveDestination, pb.RemoveDestinationRequest(name=name))

    def list_destinations(self) -> list[dict[str, Any]]:
        """Every destination: definition (no secret), delivery state, counters and lag."""
        reply = self._call(self.stub.ListDestinations, pb.ListDestinationsRequest())
        return [convert.destination_dict(d) for d in reply.destinations]

    def snapshot(self) -> str:
        """Ask the server to write a snapshot now; returns its description."""
        return self._call(self.stub.Snapshot, pb.SnapshotRequest(), timeout=max(self.timeout, 600.0)).detail

    def health(self, service: str = "") -> str:
        """The health status name of ``service`` ("" = the server): SERVING, NOT_SERVING, ..."""
        try:
            response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.RpcError as error:
            raise _translate(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
