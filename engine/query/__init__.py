"""Segment query language: text -> tokens -> AST (:func:`parse`), schema checks (:func:`bind`),
canonical text (:func:`to_text`)."""
from __future__ import annotations

from engine.query.ast import (
    CMP_OPS,
    All,
    And,
    Between,
    Compare,
    Consented,
    Did,
    Has,
    In,
    IsNull,
    Node,
    Not,
    Now,
    Or,
    Sample,
    SegmentRef,
    Value,
)
from engine.query.binder import bind
from engine.query.parser import parse
from engine.query.printer import to_text

__all__ = [
    "CMP_OPS",
    "All",
    "And",
    "Between",
    "Compare",
    "Consented",
    "Did",
    "Has",
    "In",
    "IsNull",
    "Node",
    "Not",
    "Now",
    "Or",
    "Sample",
    "SegmentRef",
    "Value",
    "bind",
    "parse",
    "to_text",
]
