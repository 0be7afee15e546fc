"""Plan steps: the bitmap algebra a shard executes.

``Intersect(items, exclude)`` is the intersection of ``items`` minus the union of ``exclude``
(a NOT under an AND becomes an and-not); ``Union`` is a union; ``Pred`` wraps one AST
predicate (attribute, consent, sample, DID or SEGMENT) evaluated against the shard's indexes.
Steps are immutable and hashable; And/Or children are kept in canonical order.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..query.ast import Node


@dataclass(frozen=True)
class Step:
    """Base of every plan step."""


@dataclass(frozen=True)
class Universe(Step):
    """Every live profile."""


@dataclass(frozen=True)
class Nothing(Step):
    """The empty set."""


@dataclass(frozen=True)
class Pred(Step):
    """One predicate of the AST."""

    node: Node


@dataclass(frozen=True)
class Intersect(Step):
    """items[0] & items[1] & ... minus (exclude[0] | exclude[1] | ...)."""

    items: tuple[Step, ...]
    exclude: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Union(Step):
    """items[0] | items[1] | ..."""

    items: tuple[Step, ...]
