"""A query's members counted by the value of one attribute, as the API and the console show them.

``breakdown_counts`` is the one function the API calls: it uses ``Engine.breakdown`` when the
engine has it; otherwise (``counted_breakdown``) it counts ``(query) AND by = value`` for the
values of a category or bool attribute. A category's values are not listed by the engine, so
there they are the values held by up to ``SAMPLED`` members spread over the segment; members
with any other value are counted together as ``other``.
"""
from __future__ import annotations

from typing import Any

from engine.errors import BadRequest

#: Members whose values name a category attribute's keys in the counted breakdown.
SAMPLED = 200


def breakdown_counts(engine: Any, query: str, by: str, now: int, bins: list[Any] | None) -> dict[str, Any]:
    """``{"counts": [{"key", "count"}, ...] largest first, "other": n}`` of the members of ``query`` by ``by``.

    Keys are a value, ``[lo, hi]`` for a bin, or null for members whose ``by`` is null; keys
    counted 0 are left out; ``other`` counts members under no listed key (see the module docstring).
    """
    native = getattr(engine, "breakdown", None)
    if native is not None:
        counts, other = native(query, by, now=now, bins=bins), 0
    else:
        counts, other = counted_breakdown(engine, query, by, now, bins)
    rows = [{"key": list(key) if isinstance(key, tuple) else key, "count": int(n)} for key, n in counts.items() if n]
    rows.sort(key=lambda row: (-row["count"], str(row["key"])))
    return {"counts": rows, "other": int(other)}


def counted_breakdown(engine: Any, query: str, by: str, now: int, bins: list[Any] | None) -> tuple[dict[Any, int], int]:
    """(counts by value, members under no counted value) from counts of ``(query) AND by = value``."""
    spec = engine.schema.attributes.get(by)
    if spec is None:
        raise BadRequest(f"unknown attribute {by!r}")
    kind = getattr(spec, "type", spec)
    if bins is not None:
        raise BadRequest(f"bins need a numeric breakdown, which this server does not offer for {by!r}")
    if kind not in ("bool", "category"):
        raise BadRequest(f"attribute {by!r} is a {kind} attribute: a breakdown here needs a category or bool one")
    total = engine.count(query, now)
    values: list[Any] = [True, False] if kind == "bool" else sampled_values(engine, query, by, now)
    name = '"' + by.replace('"', '""') + '"'
    counts: dict[Any, int] = {}
    for value in values:
        literal = ("TRUE" if value else "FALSE") if isinstance(value, bool) else "'" + value.replace("'", "''") + "'"
        counts[value] = engine.count(f"({query}) AND {name} = {literal}", now)
    counts[None] = engine.count(f"({query}) AND {name} IS NULL", now)
    return counts, total - sum(counts.values())


def sampled_values(engine: Any, query: str, by: str, now: int) -> list[str]:
    """The values of ``by`` held by up to ``SAMPLED`` members of ``query`` spread over its ids."""
    members = engine.ids(query, now)
    step = max(len(members) // SAMPLED, 1)
    values = set()
    for profile_id in members[::step][:SAMPLED]:
        value = engine.profile(profile_id).get(by)
        if value is not None:
            values.add(str(value))
    return sorted(values)
