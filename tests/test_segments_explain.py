"""EXPLAIN (engine.explain): the plan tree with rows and times per step, merged over shards."""
from __future__ import annotations

import pytest

from test_segments import NOW, make_engine

EXAMPLE = ("country IN ('FR', 'BE') AND age BETWEEN 25 AND 40"
           " AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)"
           " AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)")


@pytest.mark.parametrize("shards", [1, 2])
def test_explain_counts_each_step(shards):
    engine, clock, ids = make_engine(profiles=3000, events=30000, shards=shards)
    try:
        result = engine.explain(EXAMPLE, now=NOW)
        assert result["count"] == engine.count(EXAMPLE, now=NOW)
        assert result["query"].startswith("CONSENTED(email) AND DID(cart_abandoned")
        plan = result["plan"]
        assert plan["step"] == "AND" and plan["rows"] == result["count"]
        steps = {(c["step"], c["text"]): c for c in plan["children"]}
        country = steps[("PRED", "country IN ('BE', 'FR')")]
        assert country["rows"] == engine.count("country IN ('FR', 'BE')")
        assert ("NOT", "DID(purchase, WITHIN 1w)") in steps
        assert all(c["ms"] >= 0 for c in plan["children"]) and result["ms"] >= plan["ms"]
    finally:
        engine.close()


def test_explain_marks_skipped_steps():
    engine, clock, ids = make_engine(profiles=500, events=2000)
    try:
        plan = engine.explain("country = 'nowhere' AND age > 3 OR vip = TRUE", now=NOW)["plan"]
        assert plan["step"] == "OR"
        conjunction = next(c for c in plan["children"] if c["step"] == "AND")
        assert sorted((c["text"], c["visited"]) for c in conjunction["children"]) == [
            ("age > 3", False), ("country = 'nowhere'", True)]
    finally:
        engine.close()
