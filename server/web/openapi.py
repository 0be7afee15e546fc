"""The OpenAPI 3.1 document of the JSON HTTP API (served at ``/openapi.json``).

Schemas are JSON Schema 2020-12 (as OpenAPI 3.1 has them); every path of ``server.web.api.ROUTES``
is described, and tests/test_http_api.py checks every response of its tests against this document.

>>> doc = openapi_document()
>>> doc["openapi"], sorted(doc["paths"])[:3]
('3.1.0', ['/v1/breakdown', '/v1/count', '/v1/events'])
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any


def ref(name: str) -> dict[str, str]:
    """A reference to component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: tuple[str, ...] | None = None, extra: bool = False) -> dict[str, Any]:
    """An object schema (every property required unless ``required`` says otherwise)."""
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required), "additionalProperties": extra}


STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
NOW_MS = {"type": ["integer", "null"], "description": "the query clock in epoch ms (absent, null or 0: the wall clock)"}
QUERY = {"type": "string", "description": "a segment query (docs/query-language.md)"}
VALUE = {"type": ["string", "number", "boolean", "array", "null"], "items": STRING}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": obj({
        "code": {"type": "string", "description": "the gRPC status name the same error answers over gRPC"},
        "message": STRING,
        "position": {"type": ["integer", "null"], "description": "the query's 1-based column at fault"},
        "record": {"type": ["integer", "string", "null"], "description": "the bad record (0-based index) or line"},
        "field": {"type": ["string", "null"]},
    }, required=("code", "message", "position"))}),
    "QueryRequest": obj({"query": QUERY, "now_ms": NOW_MS}, required=("query",)),
    "IdsRequest": obj({"query": QUERY, "now_ms": NOW_MS, "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
                       "cursor": {"type": ["string", "null"]}}, required=("query",)),
    "BreakdownRequest": obj({"query": QUERY, "now_ms": NOW_MS, "by": STRING,
                             "bins": {"type": ["array", "null"], "items": NUMBER}}, required=("query", "by")),
    "Records": {"type": "array", "items": {"type": "object"},
                "description": "profile or event records (docs/data.md); also accepted as NDJSON"},
    "WriteResponse": obj({"applied": COUNT}),
    "CountResponse": obj({"count": COUNT}),
    "IdsPage": obj({"ids": {"type": "array", "items": STRING}, "now_ms": INTEGER,
                    "next_cursor": {"type": ["string", "null"]}}),
    "PlanNode": obj({"step": STRING, "text": STRING, "estimate": NUMBER, "rows": INTEGER, "input_rows": INTEGER,
                     "ms": NUMBER, "visited": BOOLEAN, "children": {"type": "array", "items": ref("PlanNode")}}),
    "ExplainResponse": obj({"query": STRING, "now_ms": INTEGER, "count": COUNT, "ms": NUMBER, "plan": ref("PlanNode")}),
    "BreakdownResponse": obj({"by": STRING, "now_ms": INTEGER, "counts": {"type": "array", "items": obj({
        "key": {"type": ["string", "boolean", "array", "null"], "items": NUMBER, "minItems": 2, "maxItems": 2,
                "description": "a value or tag, [lo, hi] for the bin lo <= v < hi, null for null"},
        "count": COUNT})}}),
    "OverlapRequest": obj({"queries": {"type": "array", "items": QUERY}, "now_ms": NOW_MS}, required=("queries",)),
    "OverlapResponse": obj({"now_ms": INTEGER, "matrix": {"type": "array", "items": {"type": "array", "items": COUNT},
                                                          "description": "matrix[i][j]: in both queries i and j"}}),
    "WhyRequest": obj({"id": STRING, "query": QUERY, "now_ms": NOW_MS,
                       "truth_only": {"type": "boolean", "description": "leave out the deciding events"}},
                      required=("id", "query")),
    "WhyNode": obj({"text": STRING, "kind": STRING, "value": BOOLEAN,
                    "facts": {"type": "object", "description": "what decided the node (docs/analytics.md)"},
                    "children": {"type": "array", "items": ref("WhyNode")}}),
    "WhyResponse": obj({"id": STRING, "now_ms": INTEGER, "tree": ref("WhyNode")}),
    "SegmentHistory": obj({"name": STRING, "points": {"type": "array", "items": obj({"time_ms": INTEGER,
                                                                                     "size": COUNT})}}),
    "ExportMembersRequest": obj({
        "segment": {"type": ["string", "null"], "description": "a saved segment (or give query)"},
        "query": {"type": ["string", "null"], "description": "a query (or give segment)"},
        "attributes": {"type": "array", "items": STRING, "description": "columns after id, in this order"},
        "format": {"enum": ["csv", "jsonl", "parquet"]}, "now_ms": NOW_MS}, required=()),
    "Profile": {"type": "object", "required": ["id"], "properties": {
        "id": STRING, "consent": {"type": "object", "additionalProperties": BOOLEAN}},
        "additionalProperties": VALUE},
    "Membership": obj({"segments": {"type": "array", "items": STRING}}),
    "CreateSegmentRequest": obj({"name": STRING, "query": QUERY, "replace": BOOLEAN}, required=("name", "query")),
    "Segment": obj({"name": STRING, "query": STRING, "count": COUNT, "time_relative": BOOLEAN,
                    "depends_on": {"type": "array", "items": STRING}, "created_ms": INTEGER, "updated_ms": INTEGER,
                    "as_of_ms": INTEGER}),
    "SegmentList": obj({"segments": {"type": "array", "items": ref("Segment")}}),
    "Deleted": obj({"deleted": STRING}),
    "Schema": {"type": "object", "required": ["attributes", "events", "consents"],
               "description": "the schema JSON of docs/data.md"},
    "SchemaChange": obj({"schema": ref("Schema"), "changes": {"type": "array", "items": STRING}}),
    "SnapshotResponse": obj({"detail": {"type": "object"}}),
    "MergeRequest": obj({"pairs": {"type": "array", "items": {"type": "array", "items": STRING,
                                                                "minItems": 2, "maxItems": 2}}}),
    "MergeResponse": obj({"merged": COUNT}),
    "DeleteProfilesRequest": obj({"ids": {"type": "array", "items": STRING}}),
    "DeleteProfilesResponse": obj({"erased": COUNT}),
    "ExportResponse": obj({"found": BOOLEAN, "profile": {"type": ["object", "null"]}}),
    "Stats": obj({"profiles": COUNT, "events": COUNT, "shards": COUNT, "segments": COUNT,
                  "events_by_type": {"type": "object", "additionalProperties": COUNT}, "watchers": COUNT,
                  "uptime_s": NUMBER, "version": STRING,
                  "destinations": {"type": "array", "description": "webhook destinations' delivery state and lag "
                                   "(docs/activation.md)", "items": {"type": "object"}}}),
}

#: (HTTP method, path) -> (summary, request schema or None, success status, response schema).
OPERATIONS: dict[tuple[str, str], tuple[str, str | None, int, str]] = {
    ("post", "/v1/profiles"): ("Upsert profiles, all or none (UpsertProfiles)", "Records", 200, "WriteResponse"),
    ("post", "/v1/events"): ("Track events, all or none (TrackEvents)", "Records", 200, "WriteResponse"),
    ("post", "/v1/count"): ("Count a segment query (Count)", "QueryRequest", 200, "CountResponse"),
    ("post", "/v1/ids"): ("One page of a segment's sorted ids (Query)", "IdsRequest", 200, "IdsPage"),
    ("post", "/v1/explain"): ("A query's plan with estimated and actual rows (Explain)", "QueryRequest", 200,
                              "ExplainResponse"),
    ("post", "/v1/breakdown"): ("A query's members counted by an attribute's value, tag or bin (Breakdown)",
                                "BreakdownRequest", 200,
                                "BreakdownResponse"),
    ("post", "/v1/overlap"): ("The pairwise overlaps of several queries (Overlap)", "OverlapRequest", 200,
                              "OverlapResponse"),
    ("post", "/v1/why"): ("Why a profile is or is not in a query's segment (Why)", "WhyRequest", 200, "WhyResponse"),
    ("get", "/v1/segments/{name}/history"): ("A saved segment's size over time (SegmentHistory)", None, 200,
                                             "SegmentHistory"),
    ("post", "/v1/members/export"): ("Members with chosen attributes as a CSV, JSON Lines or Parquet file, streamed "
                                     "(ExportMembers)", "ExportMembersRequest", 200, "file"),
    ("get", "/v1/profiles/{id}"): ("One profile's record (GetProfile)", None, 200, "Profile"),
    ("get", "/v1/profiles/{id}/segments"): ("The saved segments a profile is in (Membership)", None, 200,
                                            "Membership"),
    ("get", "/v1/segments"): ("Every saved segment (ListSegments)", None, 200, "SegmentList"),
    ("post", "/v1/segments"): ("Save a segment (CreateSegment)", "CreateSegmentRequest", 201, "Segment"),
    ("get", "/v1/segments/{name}"): ("One saved segment (GetSegment)", None, 200, "Segment"),
    ("delete", "/v1/segments/{name}"): ("Delete a saved segment (DeleteSegment)", None, 200, "Deleted"),
    ("get", "/v1/schema"): ("The schema (GetSchema)", None, 200, "Schema"),
    ("get", "/v1/stats"): ("Sizes and state (Stats)", None, 200, "Stats"),
    ("put", "/v1/schema"): ("Extend the schema (UpdateSchema)", "Schema", 200, "SchemaChange"),
    ("post", "/v1/snapshot"): ("Take a snapshot now (Snapshot)", None, 200, "SnapshotResponse"),
    ("post", "/v1/merge"): ("Merge profiles, all or none (Merge; admin token)", "MergeRequest", 200, "MergeResponse"),
    ("post", "/v1/profiles/delete"): ("Erase profiles and their aliases (DeleteProfiles; admin token)",
                                      "DeleteProfilesRequest", 200, "DeleteProfilesResponse"),
    ("get", "/v1/profiles/{id}/export"): ("Everything held about a profile (ExportProfile; admin token)", None, 200,
                                          "ExportResponse"),
}
#: The answer of a member export (``"file"`` above): the file's bytes, typed by its format.
FILE_CONTENT = {
    "text/csv": {"schema": STRING},
    "application/x-ndjson": {"schema": STRING},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "contentMediaType": "application/vnd.apache.parquet"}},
}
ERROR_STATUSES = ("400", "401", "403", "404", "409", "429", "500", "503", "504")


def _parameters(path: str, method: str) -> list[dict[str, Any]]:
    params = [{"name": part[1:-1], "in": "path", "required": True, "schema": STRING}
              for part in path.split("/") if part.startswith("{")]
    if path.endswith("/segments") and "{id}" in path:
        params.append({"name": "segment", "in": "query", "required": False, "schema": {"type": "array", "items": STRING},
                       "description": "only these saved segments (repeat the parameter)"})
    if path.endswith("/history"):
        params += [{"name": name, "in": "query", "required": False, "schema": INTEGER,
                    "description": f"only points with time_ms {op} this (epoch ms)"}
                   for name, op in (("since_ms", ">="), ("until_ms", "<="))]
    params.append({"name": "X-Timeout-Ms", "in": "header", "required": False, "schema": NUMBER,
                   "description": "the request's deadline in milliseconds"})
    return params


def _json_content(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(schema)}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (one object per process: callers must not change it)."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), (summary, request, status, response) in OPERATIONS.items():
        operation: dict[str, Any] = {
            "summary": summary, "parameters": _parameters(path, method),
            "responses": {str(status): {"description": "success", "content": FILE_CONTENT if response == "file"
                                        else _json_content(response)},
                          **{code: {"description": "an error", "content": _json_content("Error")}
                             for code in ERROR_STATUSES}},
        }
        if request is not None:
            content = _json_content(request)
            if request == "Records":
                content["application/x-ndjson"] = {"schema": STRING}
            operation["requestBody"] = {"required": True, "content": content}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "segengine HTTP API", "version": "1",
                 "description": "The JSON mirror of the segengine.v1.Segmentation gRPC service"},
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
