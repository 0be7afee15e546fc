"""The examples of docs/activation.md run: the sessions of its sections "Segment size history" and
"Exporting members" (doctest), and its figures table names the benchmark that produced it."""
from __future__ import annotations

import doctest
import re

from doc_blocks import section

DOC = "docs/activation.md"
FENCE = re.compile(r"^```pycon\n(.*?)^```[ \t]*$", re.S | re.M)


def test_sessions_run_as_doctests() -> None:
    # the sessions of both sections share one engine, in order
    text = "\n".join(session for name in ("Segment size history", "Exporting members")
                     for session in FENCE.findall(section(DOC, name)))
    test = doctest.DocTestParser().get_doctest(text, {}, DOC, DOC, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert (runner.failures, runner.tries > 15) == (0, True)


def test_the_figures_name_their_command() -> None:
    text = section(DOC, "Exporting members")
    assert "python benchmarks/bench_export.py --profiles 1000000 --shards 2 --repeat 5" in text
    assert "| parquet |" in text
