"""Every example of docs/analytics.md runs: the Python sessions as one doctest, then each command line
of the ``console`` blocks against a server (127.0.0.1, an ephemeral port) over the engine those
sessions built, printing exactly the lines the document shows."""
from __future__ import annotations

import doctest
import shlex

import pytest

from server.app import SegengineServer, ServerConfig
from server.cli import main

from doc_blocks import blocks

DOC = "docs/analytics.md"


def commands() -> list[tuple[str, str]]:
    """(command line, expected output) of every ``$ ...`` line of the console blocks."""
    found = []
    for block in blocks(DOC, "console"):
        for chunk in block.text.split("$ ")[1:]:
            line, _, output = chunk.partition("\n")
            found.append((line, output))
    return found


@pytest.fixture(scope="module")
def session() -> dict:
    """The names the document's sessions leave behind (``eng``: the engine they built)."""
    sessions = blocks(DOC, "pycon")
    names: dict = {}
    test = doctest.DocTestParser().get_doctest("\n".join(b.text for b in sessions), names, DOC, DOC,
                                               sessions[0].line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, clear_globs=False)
    names = test.globs
    names["results"] = (runner.failures, runner.tries)
    yield names
    names["eng"].close()


def test_sessions_run_as_doctests(session: dict) -> None:
    failures, tries = session["results"]
    assert (failures, tries > 15) == (0, True)


@pytest.fixture(scope="module")
def server(session: dict):
    served = SegengineServer(session["eng"], ServerConfig(port=0, refresh_ms=0)).start()
    yield served
    served.stop(grace_s=1)


@pytest.mark.parametrize(("line", "output"), commands())
def test_command_lines_print_what_the_document_shows(server: SegengineServer, line: str, output: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    argv = shlex.split(line)
    assert argv[0] == "segengine"
    assert main([*argv[1:], "--server", server.address]) == 0
    assert capsys.readouterr().out == output
