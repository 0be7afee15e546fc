"""Protobuf messages <-> the engine's plain data (record dicts, info dicts, changes).

Records travel as typed ``Value`` maps and become the contract's JSON-shaped dicts, so the
engine validates gRPC writes exactly like JSON Lines ones.

>>> from server.proto_gen import segmentation_pb2 as pb
>>> record = profile_message({"id": "u1", "age": 31, "interests": ["a"], "vip": None, "consent": {"email": True}})
>>> profile_record(record, 0) == {"id": "u1", "age": 31, "interests": ["a"], "vip": None, "consent": {"email": True}}
True
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from engine.columns import CategoryColumn, Column, EventBatch, ValueColumn
from engine.errors import DataError
from engine.schema import RESERVED_NAMES
from engine.watch import Change

from .proto_gen import segmentation_pb2 as pb

KIND_OF_CHANGE = {
    "entered": pb.SegmentChange.KIND_ENTERED,
    "exited": pb.SegmentChange.KIND_EXITED,
    "created": pb.SegmentChange.KIND_CREATED,
    "replaced": pb.SegmentChange.KIND_REPLACED,
    "deleted": pb.SegmentChange.KIND_DELETED,
}
CHANGE_OF_KIND = {number: name for name, number in KIND_OF_CHANGE.items()}


# -- values -----------------------------------------------------------------------------------
def from_value(value: pb.Value) -> Any:
    """A Value as a Python value (unset = None)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "tags_value":
        return list(value.tags_value.values)
    return getattr(value, kind)


def to_value(value: Any) -> pb.Value:
    """A Python value (None, bool, int, float, str, list of str) as a Value."""
    if value is None:
        return pb.Value(null_value=0)
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(float_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return pb.Value(tags_value=pb.StringList(values=list(value)))
    raise DataError(f"cannot send a {type(value).__name__} value")


def _fields(values: Any, where: int, what: str) -> dict[str, Any]:
    fields = {}
    for name, value in values.items():
        if name in RESERVED_NAMES:
            raise DataError(f"{name!r} is reserved and cannot name {what}", where, name)
        fields[name] = from_value(value)
    return fields


# -- records ----------------------------------------------------------------------------------
def profile_record(message: pb.ProfileRecord, where: int) -> dict[str, Any]:
    """A ProfileRecord as a contract profile record (``where`` names it in errors)."""
    record: dict[str, Any] = {"id": message.id, **_fields(message.attributes, where, "an attribute")}
    if message.consent:
        record["consent"] = dict(message.consent)
    return record


def event_record(message: pb.EventRecord, where: int) -> dict[str, Any]:
    """An EventRecord as a contract event record."""
    record: dict[str, Any] = {"id": message.id, "event": message.event}
    if message.HasField("ts"):
        record["ts"] = from_value(message.ts)
    record.update(_fields(message.properties, where, "a property"))
    if message.event_id:
        record["event_id"] = message.event_id
    return record


def profile_records(messages: Iterable[pb.ProfileRecord]) -> list[dict[str, Any]]:
    """Every ProfileRecord of a request as a record dict (record numbers from 0)."""
    return [profile_record(m, i) for i, m in enumerate(messages)]


def event_records(messages: Iterable[pb.EventRecord]) -> list[dict[str, Any]]:
    """Every EventRecord of a request as a record dict."""
    return [event_record(m, i) for i, m in enumerate(messages)]


def event_batch(message: pb.EventColumns) -> EventBatch:
    """EventColumns as an engine EventBatch (shapes checked here, values by engine.batch_check)."""
    n = len(message.ids)
    if len(message.ts_ms) != n:
        raise DataError(f"{len(message.ts_ms)} timestamps for {n} events", None, "ts")
    props = {name: _property_column(column, n, name) for name, column in message.properties.items()}
    event_ids = None
    if len(message.event_ids):
        if len(message.event_ids) != n:
            raise DataError(f"{len(message.event_ids)} event ids for {n} events", None, "event_ids")
        event_ids = [value or None for value in message.event_ids]
    return EventBatch(message.event, list(message.ids), np.array(message.ts_ms, dtype=np.int64), props, event_ids)


def _property_column(column: pb.PropertyColumn, n: int, name: str) -> Column:
    kind = column.WhichOneof("values")
    if kind is None:
        raise DataError("no values", None, name)
    if kind == "categories":
        codes = np.array(column.categories.codes, dtype=np.int32)
        if len(codes) != n:
            raise DataError(f"{len(codes)} values for {n} events", None, name)
        if len(column.valid):
            codes[~_valid(column, n, name)] = -1
        return CategoryColumn(codes, list(column.categories.labels))
    dtype = {"float_values": np.float64, "int_values": np.int64, "bool_values": np.bool_}[kind]
    values = np.array(getattr(column, kind).values, dtype=dtype)
    if len(values) != n:
        raise DataError(f"{len(values)} values for {n} events", None, name)
    valid = _valid(column, n, name) if len(column.valid) else np.ones(n, dtype=bool)
    return ValueColumn(values, valid)


def _valid(column: pb.PropertyColumn, n: int, name: str) -> np.ndarray:
    valid = np.array(column.valid, dtype=bool)
    if len(valid) != n:
        raise DataError(f"{len(valid)} validity flags for {n} events", None, name)
    return valid


def event_columns(batch: EventBatch) -> pb.EventColumns:
    """An EventBatch as EventColumns (what a producer sends to LoadEvents)."""
    message = pb.EventColumns(event=batch.event, ids=batch.ids, ts_ms=np.asarray(batch.ts, dtype=np.int64).tolist())
    if batch.event_ids is not None:
        message.event_ids.extend(value or "" for value in batch.event_ids)
    for name, column in batch.props.items():
        target = message.properties[name]
        if isinstance(column, CategoryColumn):
            target.categories.labels.extend(column.labels)
            target.categories.codes.extend(np.asarray(column.codes).tolist())
            continue
        values = np.asarray(column.values)
        lists = {"f": target.float_values, "i": target.int_values, "b": target.bool_values}
        lists[values.dtype.kind].values.extend(values.tolist())
        if not np.all(column.valid):
            target.valid.extend(np.asarray(column.valid, dtype=bool).tolist())
    return message


def schema_spec(text: str) -> dict[str, Any]:
    """The schema JSON object of a request (DataError naming the position of bad JSON)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"schema_json is not JSON: {error.msg} at line {error.lineno} column {error.colno}",
                        None, "schema_json") from None
    if not isinstance(spec, dict):
        raise DataError("schema_json must be a JSON object", None, "schema_json")
    return spec


def profile_message(record: dict[str, Any]) -> pb.ProfileRecord:
    """A contract profile record (or a profile as the engine returns it) as a ProfileRecord."""
    message = pb.ProfileRecord(id=str(record.get("id", "")))
    for name, value in record.items():
        if name == "consent":
            message.consent.update({str(k): bool(v) for k, v in (value or {}).items()})
        elif name != "id":
            message.attributes[name].CopyFrom(to_value(value))
    return message


def event_message(record: dict[str, Any]) -> pb.EventRecord:
    """A contract event record as an EventRecord."""
    message = pb.EventRecord(id=str(record.get("id", "")), event=str(record.get("event", "")))
    if record.get("ts") is not None:
        message.ts.CopyFrom(to_value(record["ts"]))
    for name, value in record.items():
        if name == "event_id" and isinstance(value, str):
            message.event_id = value
        elif name not in ("id", "event", "ts"):
            message.properties[name].CopyFrom(to_value(value))
    return message


def profile_dict(message: pb.ProfileRecord) -> dict[str, Any]:
    """A ProfileRecord (e.g. a GetProfile answer) as a plain dict."""
    return profile_record(message, 0)


# -- segments, plans, changes -----------------------------------------------------------------
def segment_message(info: dict[str, Any]) -> pb.Segment:
    """An engine segment info dict as a Segment."""
    return pb.Segment(name=info["name"], query=info["query"], count=info["count"], time_relative=info["time_relative"],
                      depends_on=info["depends_on"], created_ms=info["created_ms"], updated_ms=info["updated_ms"],
                      as_of_ms=info["as_of_ms"])


def plan_message(node: dict[str, Any]) -> pb.PlanNode:
    """An explain tree node as a PlanNode."""
    return pb.PlanNode(step=node["step"], text=node["text"], rows=node["rows"], input_rows=node["input_rows"],
                       ms=node["ms"], visited=node["visited"], estimate=node["estimate"], children=[plan_message(c) for c in node["children"]])


def plan_dict(node: pb.PlanNode) -> dict[str, Any]:
    """A PlanNode as the engine's explain tree dict."""
    return {"step": node.step, "text": node.text, "rows": node.rows, "input_rows": node.input_rows, "ms": node.ms,
            "visited": node.visited, "estimate": node.estimate,
            "children": [plan_dict(c) for c in node.children]}


def changes_message(changes: list[Change]) -> pb.WatchSegmentsResponse:
    """Changes as one WatchSegmentsResponse."""
    return pb.WatchSegmentsResponse(changes=[
        pb.SegmentChange(seq=c.seq, kind=KIND_OF_CHANGE[c.kind], segment=c.segment, id=c.id, at_ms=c.at_ms)
        for c in changes])


def change(message: pb.SegmentChange) -> Change:
    """A SegmentChange as an engine Change."""
    return Change(message.seq, CHANGE_OF_KIND.get(message.kind, "unspecified"), message.segment, message.id,
                  message.at_ms)


#: DestinationOptions fields (0 in a request means the engine's default).
DESTINATION_OPTIONS = ("batch_size", "timeout_s", "retry_base_s", "retry_max_s", "max_pending")


def destination_options(message: pb.DestinationOptions) -> dict[str, float]:
    """The options a request sets (its non-zero fields)."""
    return {name: getattr(message, name) for name in DESTINATION_OPTIONS if getattr(message, name)}


def destination_message(info: dict[str, Any]) -> pb.Destination:
    """A Destination message from ``Engine.list_destinations``' form."""
    fields = {name: info[name] for name in pb.Destination.DESCRIPTOR.fields_by_name if name != "options"}
    return pb.Destination(options=pb.DestinationOptions(**info["options"]), **fields)


def destination_dict(message: pb.Destination) -> dict[str, Any]:
    """``Engine.list_destinations``' form of a Destination message."""
    info: dict[str, Any] = {name: getattr(message, name) for name in pb.Destination.DESCRIPTOR.fields_by_name}
    info["options"] = {name: getattr(message.options, name) for name in DESTINATION_OPTIONS}
    return info


def lookalike_message(result: dict[str, Any]) -> pb.LookalikeResponse:
    """An ``Engine.lookalike`` result as a LookalikeResponse."""
    trained = result["trained_on"]
    return pb.LookalikeResponse(
        profiles=[pb.LookalikeProfile(id=p["id"], score=p["score"], features=p["features"]) for p in result["profiles"]],
        top_features=[pb.FeatureWeight(**w) for w in result["top_features"]],
        seed=result["seed"], unknown_seed_ids=result["unknown_seed_ids"], candidates=result["candidates"],
        positives=trained["positives"], negatives=trained["negatives"], features=trained["features"],
        pairs=trained["pairs"],
        intercept=result["model"]["intercept"], weights=[pb.FeatureWeight(**w) for w in result["model"]["weights"]])


def lookalike_result(message: pb.LookalikeResponse) -> dict[str, Any]:
    """A LookalikeResponse as the dict ``Engine.lookalike`` returns (without its timings)."""
    weights = lambda items: [{"feature": w.feature, "weight": w.weight} for w in items]  # noqa: E731
    return {
        "profiles": [{"id": p.id, "score": p.score, "features": list(p.features)} for p in message.profiles],
        "top_features": weights(message.top_features),
        "seed": message.seed, "unknown_seed_ids": list(message.unknown_seed_ids), "candidates": message.candidates,
        "trained_on": {"positives": message.positives, "negatives": message.negatives, "features": message.features,
                       "pairs": message.pairs},
        "model": {"intercept": message.intercept, "weights": weights(message.weights)},
    }
