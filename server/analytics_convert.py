"""Protobuf messages <-> the engine's analytics answers (breakdowns, overlaps, why-trees).

A breakdown key travels typed: a category value or tag as ``value``, a bool as ``bool_value``, a
bin as ``bin`` (its edges as Values, so ints stay exact), null as ``null``.

>>> message = breakdown_message({"FR": 2, True: 1, (0, 18.5): 3, None: 4}, 7)
>>> breakdown_dict(message)
{'FR': 2, True: 1, (0, 18.5): 3, None: 4}
>>> why_dict(why_message({"text": "ALL", "kind": "all", "value": True, "facts": {}, "children": []}))
{'text': 'ALL', 'kind': 'all', 'value': True, 'facts': {}, 'children': []}
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable

from .convert import from_value, to_value
from .proto_gen import segmentation_pb2 as pb


def bins_values(bins: Iterable[int | float] | None) -> list[pb.Value]:
    """Bin edges as Values (none: an empty list)."""
    return [to_value(edge) for edge in bins or ()]


def request_bins(values: Iterable[pb.Value]) -> list[Any] | None:
    """The bin edges of a BreakdownRequest (None when it has none)."""
    edges = [from_value(value) for value in values]
    return edges or None


def breakdown_message(counts: dict[Hashable, int], now_ms: int) -> pb.BreakdownResponse:
    """A breakdown (key -> count) as a BreakdownResponse."""
    entries = []
    for key, count in counts.items():
        if key is None:
            entries.append(pb.BreakdownEntry(null=0, count=count))
        elif isinstance(key, bool):
            entries.append(pb.BreakdownEntry(bool_value=key, count=count))
        elif isinstance(key, tuple):
            entries.append(pb.BreakdownEntry(bin=pb.Bin(lo=to_value(key[0]), hi=to_value(key[1])), count=count))
        else:
            entries.append(pb.BreakdownEntry(value=key, count=count))
    return pb.BreakdownResponse(entries=entries, now_ms=now_ms)


def breakdown_dict(message: pb.BreakdownResponse) -> dict[Hashable, int]:
    """A BreakdownResponse as the engine's dict (key -> count, in the message's order)."""
    counts: dict[Hashable, int] = {}
    for entry in message.entries:
        kind = entry.WhichOneof("key")
        if kind == "bin":
            key: Hashable = (from_value(entry.bin.lo), from_value(entry.bin.hi))
        elif kind == "null" or kind is None:
            key = None
        else:
            key = getattr(entry, kind)
        counts[key] = entry.count
    return counts


def overlap_message(matrix: list[list[int]], now_ms: int) -> pb.OverlapResponse:
    """An overlap matrix as an OverlapResponse."""
    return pb.OverlapResponse(rows=[pb.OverlapRow(counts=row) for row in matrix], now_ms=now_ms)


def overlap_matrix(message: pb.OverlapResponse) -> list[list[int]]:
    """An OverlapResponse as the engine's matrix."""
    return [list(row.counts) for row in message.rows]


def why_message(node: dict[str, Any]) -> pb.WhyNode:
    """A why-tree node (and its children) as a WhyNode."""
    facts = dict(node["facts"])
    chain = facts.pop("matched_ts", ...)
    if chain is not ...:
        facts["matched"] = chain is not None
    return pb.WhyNode(text=node["text"], kind=node["kind"], value=node["value"],
                      facts={name: to_value(value) for name, value in facts.items()},
                      matched_ts=chain if isinstance(chain, list) else [],
                      children=[why_message(child) for child in node["children"]])


def why_dict(message: pb.WhyNode) -> dict[str, Any]:
    """A WhyNode as the engine's why-tree node (facts in the engine's order of names is not kept: sorted)."""
    facts = {name: from_value(message.facts[name]) for name in sorted(message.facts)}
    if "matched" in facts:
        facts["matched_ts"] = list(message.matched_ts) if facts.pop("matched") else None
    return {"text": message.text, "kind": message.kind, "value": message.value, "facts": facts,
            "children": [why_dict(child) for child in message.children]}
