"""The JSON HTTP API's endpoints: one blocking function per route, over the same gate and engine
calls as the gRPC servicer (``server.servicer``), so validation and errors are the engine's.

Each ``Route`` names the gRPC method it mirrors (the ``method`` label of its metrics) and how it
runs: ``inline`` point reads are tried on the event loop first (as ``server.bridge`` does for
gRPC), the rest in the server's thread pool, queries known to be heavy in its heavy pool.
A new engine call joins the API as one function here and one ``Route`` in ``ROUTES`` (and its
schemas in ``server.web.openapi``).
"""
from __future__ import annotations

import base64
import bisect
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from engine.engine import wall_clock_ms
from engine.errors import BadRequest, DataError
from engine.export_formats import ByteChunks, open_writer

from ..gate import EngineGate, RequestTooLarge, Unimplemented
from ..servicer import MAX_CHUNK, audit, server_stats

#: Ids per page when the request does not say.
DEFAULT_PAGE = 1000


class HttpCall:
    """The gate's view of one HTTP request (deadline, where it runs), like ``server.bridge.CallContext``."""

    def __init__(self, on_loop: bool = False, timeout_s: float | None = None, authorization: str = "",
                 peer: str = ""):
        self.on_loop = on_loop
        self._peer = peer
        self.until = None if timeout_s is None else time.monotonic() + timeout_s
        self.authorization = authorization

    def time_remaining(self) -> float | None:
        """Seconds left before the request's deadline (``X-Timeout-Ms``; None: no deadline)."""
        return None if self.until is None else self.until - time.monotonic()

    def peer(self) -> str:
        """The caller's address (e.g. ``http:127.0.0.1``; the audit log names it)."""
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request's credentials as gRPC metadata (``server.interceptors.is_admin`` reads them)."""
        return (("authorization", self.authorization),)


@dataclass
class ApiRequest:
    """One API request's inputs: path parameters, query-string parameters, the decoded body."""

    gate: EngineGate
    call: HttpCall
    path: Mapping[str, str]
    params: Mapping[str, Any]  # a MultiDict (``getall``) of the query string
    body: Any = None
    started: float = 0.0  # monotonic time the server started (for Stats)

    @property
    def engine(self) -> Any:
        """The engine behind the gate."""
        return self.gate.engine

    def field(self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        """Body field ``name`` checked to be of ``kind`` (BadRequest naming it otherwise)."""
        body = self.body if isinstance(self.body, dict) else None
        if body is None:
            raise BadRequest("the request body must be a JSON object")
        if name not in body or body[name] is None:
            if required:
                raise BadRequest(f"field {name!r} is required")
            return default
        value = body[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise BadRequest(f"field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def query_text(self) -> str:
        """The ``query`` field (required)."""
        return self.field("query", str, required=True)

    def param_ms(self, name: str) -> int | None:
        """Query-string parameter ``name`` as epoch ms (None if absent; BadRequest naming it unless an integer)."""
        text = self.params.get(name)
        if text is None or text == "":
            return None
        try:
            return int(text)
        except ValueError:
            raise BadRequest(f"parameter {name!r} must be an integer (epoch ms), got {text!r}") from None

    def now(self) -> int | None:
        """The ``now_ms`` field (epoch ms; absent, null or 0: the wall clock)."""
        return self.field("now_ms", int) or None


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "an array", float: "a number",
             dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


# -- writes -----------------------------------------------------------------------------------
def upsert_profiles(req: ApiRequest) -> dict[str, Any]:
    """Upsert profile records (a JSON array or NDJSON), all or none."""
    return {"applied": req.gate.write(req.call, req.engine.upsert_profiles, _records(req.body))}


def track_events(req: ApiRequest) -> dict[str, Any]:
    """Track event records (a JSON array or NDJSON), all or none."""
    return {"applied": req.gate.write(req.call, req.engine.track_events, _records(req.body))}


def _records(body: Any) -> list[Any]:
    if not isinstance(body, list):
        raise BadRequest("the request body must be a JSON array of records, or one JSON record per line (NDJSON)")
    return body


def parse_records(text: str, ndjson: bool) -> list[Any]:
    """The records of a write body: a JSON array, or NDJSON (one record per line; DataError names the line).

    >>> parse_records('{"id": "a"}\\n{"id": "b"}\\n', ndjson=True)
    [{'id': 'a'}, {'id': 'b'}]
    >>> parse_records('{"id": "a"}\\n{"id": ', ndjson=True)
    Traceback (most recent call last):
    ...
    engine.errors.DataError: line 2: not JSON: Expecting value at column 8
    """
    if not ndjson and text.lstrip().startswith("["):
        return parse_json(text)
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"not JSON: {error.msg} at column {error.colno}", f"line {number}") from None
    return records


def parse_json(text: str) -> Any:
    """A JSON body (BadRequest naming the line and column where it is not JSON)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(f"the request body is not JSON: {error.msg} at line {error.lineno} column {error.colno}") \
            from None


# -- queries ----------------------------------------------------------------------------------
def count(req: ApiRequest) -> dict[str, Any]:
    """The number of profiles in a query's segment."""
    return {"count": req.gate.query(req.call, req.engine.count, req.query_text(), req.now())}


def ids(req: ApiRequest) -> dict[str, Any]:
    """One page of a query's ids (sorted), and the cursor of the next page (null after the last)."""
    limit = req.field("limit", int, DEFAULT_PAGE)
    if limit < 1:
        raise BadRequest(f"field 'limit' must be at least 1, got {limit}")
    if limit > MAX_CHUNK:
        raise RequestTooLarge(f"limit {limit} is over the limit of {MAX_CHUNK}")
    after, now = None, req.now()
    cursor = req.field("cursor", str)
    if cursor:
        after, now = decode_cursor(cursor)
    if now is None:
        now = time.time_ns() // 1_000_000  # one clock for every page
    members = req.gate.query(req.call, req.engine.ids, req.query_text(), now)
    start = 0 if after is None else bisect.bisect_right(members, after)
    page = members[start:start + limit]
    more = start + limit < len(members)
    return {"ids": page, "now_ms": now, "next_cursor": encode_cursor(page[-1], now) if more else None}


def encode_cursor(after: str, now: int) -> str:
    """An opaque cursor: the last id given and the clock of the pages.

    >>> decode_cursor(encode_cursor("u42", 1700000000000))
    ('u42', 1700000000000)
    """
    text = json.dumps({"after": after, "now_ms": now}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """(last id given, clock) of a cursor (BadRequest if it is not one of ours)."""
    try:
        fields = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return str(fields["after"]), int(fields["now_ms"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BadRequest("field 'cursor' is not a cursor this API gave") from None


def explain(req: ApiRequest) -> dict[str, Any]:
    """The query's plan with each step's estimated and actual rows and time."""
    return req.gate.query(req.call, req.engine.explain, req.query_text(), req.now())


def breakdown(req: ApiRequest) -> dict[str, Any]:
    """The query's members counted by an attribute's value, tag or bin (``Engine.breakdown``): keys in the
    engine's order (bins by edge, other keys largest first, null last), a bin's key ``[lo, hi]``."""
    by = req.field("by", str, required=True)
    bins = req.field("bins", list)
    now = req.now() or wall_clock_ms()
    counts = req.gate.query(req.call, req.engine.breakdown, req.query_text(), by, now, bins)
    rows = [{"key": list(key) if isinstance(key, tuple) else key, "count": int(n)} for key, n in counts.items()]
    return {"by": by, "now_ms": now, "counts": rows}


def overlap(req: ApiRequest) -> dict[str, Any]:
    """``matrix[i][j]``: the profiles in both ``queries[i]`` and ``queries[j]`` (``Engine.overlap``)."""
    queries = req.field("queries", list, required=True)
    for position, text in enumerate(queries):
        if not isinstance(text, str):
            raise BadRequest(f"field 'queries': query {position} must be a string, got {type(text).__name__}")
    now = req.now() or wall_clock_ms()
    return {"now_ms": now, "matrix": req.gate.queries(req.call, req.engine.overlap, queries, now)}


def why(req: ApiRequest) -> dict[str, Any]:
    """Why a profile is or is not in the query's segment: the query's tree with each node's truth and
    deciding facts (``Engine.why``; ``truth_only`` leaves out the deciding events)."""
    profile_id = req.field("id", str, required=True)
    events = not req.field("truth_only", bool, False)
    now = req.now()
    return req.gate.query(req.call, lambda text: req.engine.why(profile_id, text, now, events), req.query_text())


# -- profiles ---------------------------------------------------------------------------------
def get_profile(req: ApiRequest) -> dict[str, Any]:
    """One profile's current record."""
    return req.gate.read(req.call, req.engine.profile, req.path["id"])


def membership(req: ApiRequest) -> dict[str, Any]:
    """The saved segments a profile is in (among ``?segment=`` ones if given)."""
    names = list(req.params.getall("segment", []))
    return {"segments": req.gate.read(req.call, req.engine.membership, req.path["id"], names, view=True)}


# -- saved segments ---------------------------------------------------------------------------
def create_segment(req: ApiRequest) -> dict[str, Any]:
    """Save a query as a segment (``replace``: overwrite one of the same name)."""
    name = req.field("name", str, required=True)
    return req.gate.write(req.call, req.engine.create_segment, name, req.query_text(), req.field("replace", bool, False))


def get_segment(req: ApiRequest) -> dict[str, Any]:
    """One saved segment: definition and member count."""
    return req.gate.read(req.call, req.engine.get_segment, req.path["name"])


def list_segments(req: ApiRequest) -> dict[str, Any]:
    """Every saved segment, in dependency order."""
    return {"segments": req.gate.read(req.call, req.engine.list_segments)}


def segment_history(req: ApiRequest) -> dict[str, Any]:
    """A saved segment's sizes over time (``?since_ms=&until_ms=``: only points between them, inclusive)."""
    since, until = req.param_ms("since_ms"), req.param_ms("until_ms")
    points = req.gate.read(req.call, req.engine.segment_history, req.path["name"], since, until)
    return {"name": req.path["name"], "points": [{"time_ms": t, "size": n} for t, n in points]}


def delete_segment(req: ApiRequest) -> dict[str, Any]:
    """Delete a saved segment."""
    req.gate.write(req.call, req.engine.delete_segment, req.path["name"])
    return {"deleted": req.path["name"]}


# -- operations -------------------------------------------------------------------------------
def get_schema(req: ApiRequest) -> dict[str, Any]:
    """The schema (the same JSON as a schema file)."""
    return req.engine.schema.to_dict()


def stats(req: ApiRequest) -> dict[str, Any]:
    """Sizes and state, as the gRPC Stats call answers them."""
    return server_stats(req.gate, req.call, req.started)


def update_schema(req: ApiRequest) -> dict[str, Any]:
    """Extend the schema (add attributes, event types, properties, consents, retention)."""
    if not isinstance(req.body, dict):
        raise BadRequest("the request body must be the new schema, a JSON object")
    result = req.gate.write(req.call, req.engine.update_schema, req.body)
    return {"schema": result["schema"], "changes": result["changes"]}


def snapshot(req: ApiRequest) -> dict[str, Any]:
    """Take a snapshot now (durable servers)."""
    take = getattr(req.engine, "snapshot", None)
    if take is None:
        raise Unimplemented("this engine cannot write snapshots")
    return {"detail": json.loads(json.dumps(req.gate.write(req.call, take), default=str))}


# -- identity and privacy (the admin token) ---------------------------------------------------
def merge(req: ApiRequest) -> dict[str, Any]:
    """Merge profiles: each ``[from_id, into_id]`` pair in order, all or none."""
    pairs = req.field("pairs", list, required=True)
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in pairs):
        raise BadRequest("field 'pairs' must be an array of [from_id, into_id] pairs of strings")
    return {"merged": req.gate.write(req.call, req.engine.merge_many, [tuple(p) for p in pairs])}


def delete_profiles(req: ApiRequest) -> dict[str, Any]:
    """Erase profiles and their aliases (durable on return); how many canonical profiles were erased."""
    ids = req.field("ids", list, required=True)
    erased = req.gate.write(req.call, req.engine.delete_profiles, ids)
    audit.info("erasure caller=%s profiles=%d", req.call.peer(), erased)
    return {"erased": erased}


def export_profile(req: ApiRequest) -> dict[str, Any]:
    """Everything held about a profile (aliases, attributes, consents, events), or found false."""
    record = req.gate.read(req.call, req.engine.export_profile, req.path["id"])
    return {"found": record is not None, "profile": record}


# -- member export (a streamed file) -----------------------------------------------------------
#: The ``Content-Type`` of each export format.
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson",
                "parquet": "application/vnd.apache.parquet"}


class MemberStream:
    """A member export's file, produced piece by piece: ``next_piece`` in the server's pool until None."""

    def __init__(self, req: ApiRequest, format: str, attributes: list[str], chunks: Any):
        self.req, self.format, self.chunks = req, format, chunks
        self.content_type = EXPORT_TYPES[format]
        self.sink = ByteChunks()
        schema = req.engine.schema.attributes
        self.writer = open_writer(format, self.sink, [(name, schema[name].type) for name in attributes])
        self.pending: list[bytes] = []
        self.rows = 0
        self.done = False

    def next_piece(self) -> bytes | None:
        """The file's next bytes (one chunk of members is read and written as needed), None at the end."""
        while not self.pending:
            if self.done:
                return None
            chunk = self.req.gate.read(self.req.call, next, self.chunks, None)
            if chunk is None:
                self.writer.close()
                self.done = True
            else:
                self.writer.write(chunk)
                self.rows += len(chunk)
            self.pending.extend(piece for piece in self.sink.take() if piece)
        return self.pending.pop(0)


def export_members(req: ApiRequest) -> MemberStream:
    """A saved segment's (``segment``) or a query's (``query``) members with ``attributes``, as the bytes of a
    ``format`` file (csv, jsonl or parquet), streamed (``Engine.member_chunks``, as gRPC ExportMembers)."""
    attributes = req.field("attributes", list, [])
    for position, name in enumerate(attributes):
        if not isinstance(name, str):
            raise BadRequest(f"field 'attributes': attribute {position} must be a string, got {type(name).__name__}")
    format = req.field("format", str, "csv")
    if format not in EXPORT_TYPES:
        raise BadRequest(f"unknown export format {format!r} (expected one of {', '.join(EXPORT_TYPES)})")
    segment, query = req.field("segment", str), req.field("query", str)
    chunks = req.gate.read(req.call, req.engine.member_chunks, attributes, segment, query, req.now())
    return MemberStream(req, format, attributes, chunks)


@dataclass(frozen=True)
class Route:
    """One endpoint: HTTP method and path, the gRPC method it mirrors, its function and how it runs."""

    http_method: str
    path: str
    name: str
    run: Callable[[ApiRequest], Any]
    inline: bool = False  # a point read: tried on the event loop first
    query: bool = False  # evaluates a query: runs in the heavy pool once known to be heavy
    body: str = "none"  # "json" (an object), "records" (a JSON array or NDJSON) or "none"
    status: int = 200
    admin: bool = False  # needs the admin token (as the gRPC identity calls do)
    heavy: bool = False  # always runs in the heavy pool (a member export, as over gRPC)
    stream: bool = False  # answers a MemberStream (a file streamed in pieces), not JSON


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/profiles", "UpsertProfiles", upsert_profiles, body="records"),
    Route("POST", "/v1/events", "TrackEvents", track_events, body="records"),
    Route("POST", "/v1/count", "Count", count, query=True, body="json"),
    Route("POST", "/v1/ids", "Query", ids, query=True, body="json"),
    Route("POST", "/v1/explain", "Explain", explain, query=True, body="json"),
    Route("POST", "/v1/breakdown", "Breakdown", breakdown, query=True, body="json"),
    Route("POST", "/v1/overlap", "Overlap", overlap, body="json"),
    Route("POST", "/v1/why", "Why", why, query=True, body="json"),
    Route("GET", "/v1/profiles/{id}", "GetProfile", get_profile, inline=True),
    Route("GET", "/v1/profiles/{id}/segments", "Membership", membership, inline=True),
    Route("GET", "/v1/segments", "ListSegments", list_segments),
    Route("POST", "/v1/segments", "CreateSegment", create_segment, body="json", status=201),
    Route("GET", "/v1/segments/{name}", "GetSegment", get_segment, inline=True),
    Route("DELETE", "/v1/segments/{name}", "DeleteSegment", delete_segment),
    Route("GET", "/v1/segments/{name}/history", "SegmentHistory", segment_history, inline=True),
    Route("POST", "/v1/members/export", "ExportMembers", export_members, body="json", heavy=True, stream=True),
    Route("GET", "/v1/schema", "GetSchema", get_schema, inline=True),
    Route("GET", "/v1/stats", "Stats", stats),
    Route("PUT", "/v1/schema", "UpdateSchema", update_schema, body="json"),
    Route("POST", "/v1/snapshot", "Snapshot", snapshot),
    Route("POST", "/v1/merge", "Merge", merge, body="json", admin=True),
    Route("POST", "/v1/profiles/delete", "DeleteProfiles", delete_profiles, body="json", admin=True),
    Route("GET", "/v1/profiles/{id}/export", "ExportProfile", export_profile, inline=True, admin=True),
)
