"""Exact comparisons of aggregate values (float64 or int64) with query literals, as Python compares numbers.

>>> compare(np.array([9007199254740992.0]), ">", 2**53 + 1).tolist()
[False]
>>> float_bounds(2**53 + 1)
(9007199254740992.0, 9007199254740994.0)
"""
from __future__ import annotations

import math
import operator

import numpy as np

CMP = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def float_bounds(literal: int) -> tuple[float, float]:
    """The greatest float64 <= ``literal`` and the least float64 >= it."""
    try:
        f = float(literal)
    except OverflowError:
        return (np.finfo(np.float64).max, math.inf) if literal > 0 else (-math.inf, -np.finfo(np.float64).max)
    exact = int(f) if math.isfinite(f) else None
    if exact == literal:
        return f, f
    if exact is not None and exact < literal:
        return f, math.nextafter(f, math.inf)
    return math.nextafter(f, -math.inf), f


def compare(values: np.ndarray, op: str, literal: int | float) -> np.ndarray:
    """``values op literal`` exactly as Python compares numbers (float64 or int64 values)."""
    if values.dtype.kind == "f" and isinstance(literal, int):
        lo, hi = float_bounds(literal)
        if lo == hi:
            return CMP[op](values, lo)
        below, above = values <= lo, values >= hi
        return {"<": below, "<=": below, ">": above, ">=": above,
                "=": np.zeros(len(values), dtype=bool), "!=": np.ones(len(values), dtype=bool)}[op]
    if values.dtype.kind == "i" and isinstance(literal, float):
        if math.isnan(literal):
            return np.full(len(values), op == "!=")
        if math.isinf(literal):
            return np.full(len(values), CMP[op](0, literal))
        floor, ceil = math.floor(literal), math.ceil(literal)
        if floor == ceil:
            return compare(values, op, floor)
        below, above = compare(values, "<=", floor), compare(values, ">=", ceil)
        return {"<": below, "<=": below, ">": above, ">=": above,
                "=": np.zeros(len(values), dtype=bool), "!=": np.ones(len(values), dtype=bool)}[op]
    if values.dtype.kind == "i" and not INT64_MIN <= literal <= INT64_MAX:
        return np.full(len(values), CMP[op](0, 1 if literal > 0 else -1) if op not in ("=", "!=") else op == "!=")
    return CMP[op](values, literal)
