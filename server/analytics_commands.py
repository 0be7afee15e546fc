"""``segengine`` analytics subcommands: breakdown, overlap, why (readable tables and trees).

    segengine breakdown "CONSENTED(email)" --by country
    segengine breakdown "ALL" --by age --bins 0,18,30,50
    segengine overlap "country = 'FR'" "vip = TRUE" "SEGMENT('cart_abandoners_7d')"
    segengine why u42 "country = 'FR' AND DID(purchase, WITHIN 30d)"

>>> print(format_table(["key", "count"], [["FR", "12"], ["(null)", "3"]], right=[1]))
key     count
FR         12
(null)      3
>>> parse_bins("0,18.5,2026-11-20T10:00:00Z")
[0, 18.5, 1795168800000]
>>> describe({"kind": "did", "facts": {"event": "purchase", "count": 2, "first_ts": 0, "last_ts": 1000}}, {})
'2 purchase events counted, first 1970-01-01T00:00:00Z, last 1970-01-01T00:00:01Z'
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from engine.errors import SegengineError

from .cli_support import clock
from .commands import _fail, client_args, connect

#: Marks of a node's truth in ``segengine why``.
MARKS = {True: "✓", False: "✗"}


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC text (milliseconds shown only when there are some)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def format_table(header: list[str], rows: list[list[str]], right: list[int] = ()) -> str:  # type: ignore[assignment]
    """Columns padded to their widest cell (the columns ``right`` aligned right)."""
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if k in right else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def parse_bins(text: str) -> list[int | float]:
    """An argparse type: comma-separated bin edges (integers, decimals, or ISO 8601 times as epoch ms)."""
    edges: list[int | float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            edges.append(int(part))
        except ValueError:
            try:
                edges.append(float(part))
            except ValueError:
                edges.append(clock(part))
    return edges


def _key_text(key: Any, kind: str) -> str:
    if key is None:
        return "(null)"
    if isinstance(key, tuple):
        lo, hi = (iso_ms(edge) if kind == "timestamp" else repr(edge) for edge in key)
        return f"[{lo}, {hi})"
    return repr(key) if isinstance(key, str) else str(key).lower()


def run_breakdown(args: argparse.Namespace) -> int:
    """Print the members of a query counted by the value (or bin) of an attribute, one line per key."""
    try:
        with connect(args) as client:
            counts = client.breakdown(args.query, args.by, now=args.now, bins=args.bins)
            definition = client.schema.attributes.get(args.by)
    except SegengineError as error:
        return _fail(error)
    kind = definition.type if definition is not None else ""
    rows = [[_key_text(key, kind), str(count)] for key, count in counts.items()]
    print(format_table([args.by, "count"], rows, right=[1]))
    return 0


def run_overlap(args: argparse.Namespace) -> int:
    """Print the pairwise overlaps of queries as a matrix (#i = the i-th query)."""
    try:
        with connect(args) as client:
            matrix = client.overlap(args.queries, now=args.now)
    except SegengineError as error:
        return _fail(error)
    labels = [f"#{i}" for i in range(len(args.queries))]
    rows = [[label, *(str(count) for count in row)] for label, row in zip(labels, matrix)]
    print(format_table(["", *labels], rows, right=list(range(1, len(labels) + 1))))
    for label, text in zip(labels, args.queries):
        print(f"{label} = {text}")
    return 0


def describe(node: dict[str, Any], kinds: dict[str, str]) -> str:
    """What decided a why-tree node, as text (``kinds``: attribute name -> type, to show timestamps)."""
    facts, kind = node["facts"], node["kind"]
    if kind == "attribute":
        value = facts["value"]
        if value is None:
            return f"{facts['attribute']} is null"
        if kinds.get(facts["attribute"]) == "timestamp":
            value = iso_ms(value)
        return f"{facts['attribute']} = {value!r}"
    if kind == "consent":
        state = {True: "granted", False: "withdrawn", None: "never set"}[facts["consent"]]
        return f"{facts['purpose']} consent {state}"
    if kind in ("bucket", "sample"):
        below = f", in when below {facts['below']}" if kind == "sample" else ""
        return f"bucket {facts['bucket']} (seed {facts['seed']}){below}"
    if kind == "segment":
        return f"{'in' if node['value'] else 'not in'} saved segment {facts['segment']!r}"
    if kind == "did" and facts:
        parts = [f"{facts['count']} {facts['event']} event{'s' if facts['count'] != 1 else ''} counted"]
        if facts["count"]:
            parts.append(f"first {iso_ms(facts['first_ts'])}, last {iso_ms(facts['last_ts'])}")
        if "after_ts" in facts:
            after = facts["after_ts"]
            parts.append("no earlier event to count after" if after is None else f"after {iso_ms(after)}")
        parts += [f"{name} = {value!r}" for name, value in facts.items() if "(" in name]
        return ", ".join(parts)
    if kind == "sequence" and facts:
        chain = facts["matched_ts"]
        return "no matching chain of events" if chain is None else "matched " + " -> ".join(map(iso_ms, chain))
    return ""


def why_lines(node: dict[str, Any], kinds: dict[str, str], depth: int = 0) -> list[str]:
    """The why-tree as indented lines: mark, node text, and what decided it."""
    detail = describe(node, kinds)
    lines = [f"{'  ' * depth}{MARKS[node['value']]} {node['text']}" + (f"    [{detail}]" if detail else "")]
    for child in node["children"]:
        lines += why_lines(child, kinds, depth + 1)
    return lines


def run_why(args: argparse.Namespace) -> int:
    """Print why a profile is or is not in a query: the query's tree, one node a line."""
    try:
        with connect(args) as client:
            result = client.why(args.id, args.query, now=args.now, events=not args.truth_only)
            kinds = {name: a.type for name, a in client.schema.attributes.items()}
    except SegengineError as error:
        return _fail(error)
    verdict = "in" if result["tree"]["value"] else "not in"
    print(f"{result['id']} is {verdict} the segment at {iso_ms(result['now_ms'])}")
    print("\n".join(why_lines(result["tree"], kinds)))
    return 0


def commands() -> dict:
    """These subcommands by name (``server.cli`` adds them to its table)."""
    from .cli import Command, arg

    now = arg("--now", type=clock, default=None, help="query clock: epoch ms or ISO 8601 (default: the server's)")
    return {
        "breakdown": Command(run_breakdown, "count a query's members by the value of an attribute (--bins for numbers)",
                             (arg("query", help="segment query text"),
                              arg("--by", required=True, help="the attribute to break down by"),
                              arg("--bins", type=parse_bins, default=None,
                                  help="bin edges for int, float and timestamp attributes, e.g. 0,18,30,50"),
                              now, *client_args())),
        "overlap": Command(run_overlap, "print the pairwise overlaps of queries as a matrix",
                           (arg("queries", nargs="+", metavar="QUERY", help="segment query texts"),
                            now, *client_args())),
        "why": Command(run_why, "explain why a profile is or is not in a query, node by node",
                       (arg("id", help="profile id (canonical or alias)"), arg("query", help="segment query text"),
                        arg("--truth-only", action="store_true",
                            help="leave out the deciding events of DID and SEQUENCE"),
                        now, *client_args())),
    }
