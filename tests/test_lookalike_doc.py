"""The example session of docs/analytics.md, section "Lookalikes", runs as written (doctest)."""
from __future__ import annotations

import doctest

from doc_blocks import ROOT, blocks, section

DOC = "docs/analytics.md"


def test_the_lookalike_session_runs_as_written() -> None:
    text = section(DOC, "Lookalikes")
    (session,) = [b for b in blocks(DOC, "python") if b.text in text]
    test = doctest.DocTestParser().get_doctest(session.text, {}, "analytics.md#lookalikes", str(ROOT / DOC),
                                               session.line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_the_section_names_the_pattern_and_the_figures() -> None:
    from loaders.planted import PATTERN

    text = section(DOC, "Lookalikes")
    assert PATTERN in text
    assert "python benchmarks/bench_lookalike.py" in text
