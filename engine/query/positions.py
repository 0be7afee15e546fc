"""Source columns of the parts of a node that are not nodes themselves (literals, names, options).

``Node.pos`` gives the column of a node's first token. Error messages about a literal
(``age = 'x'`` -> column 7) need the literal's own column, which the AST has no field for.
The parser records such columns here, as a non-field attribute on the node instance: it takes
no part in equality, hashing or repr, and nodes built by hand simply have none (lookups fall
back to ``node.pos``).

Keys are field names (``"value"``, ``"op"``, ``"event"``, ``"after_last"``, ...); for tuple
fields (``In.values``, ``Has.values``) the column is a tuple with one entry per element.

>>> from engine.query.ast import Compare
>>> node = Compare("age", "=", "x", pos=1)
>>> set_columns(node, {"op": 5, "value": 7})
>>> column_of(node, "value"), column_of(node, "missing")
(7, 1)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from engine.query.ast import Node

_ATTR = "_source_columns"


def set_columns(node: Node, columns: dict[str, Any]) -> None:
    """Attach the source columns of ``node``'s parts (merged with any already attached)."""
    merged = {**getattr(node, _ATTR, {}), **columns}
    object.__setattr__(node, _ATTR, merged)


def columns_of(node: Node) -> dict[str, Any]:
    """All recorded part columns of ``node`` (empty for hand-built nodes)."""
    return dict(getattr(node, _ATTR, {}))


def column_of(node: Node, key: str, index: int | None = None) -> int:
    """Column of part ``key`` (element ``index`` of a tuple part), else ``node.pos``."""
    col = getattr(node, _ATTR, {}).get(key)
    if isinstance(col, tuple):
        col = col[index] if index is not None and index < len(col) else None
    return col if isinstance(col, int) and col > 0 else node.pos


def replace(node: Node, **changes: Any) -> Node:
    """``dataclasses.replace`` that keeps ``pos`` and the recorded part columns."""
    new = dataclasses.replace(node, **changes)
    cols = getattr(node, _ATTR, None)
    if cols:
        object.__setattr__(new, _ATTR, dict(cols))
    return new
