"""Fenced code blocks of the project's Markdown files, for the tests that run the documentation."""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


class Block(NamedTuple):
    """One fenced block: its language tag, its text and the line of its first text line."""

    lang: str
    text: str
    line: int


def blocks(relative: str, lang: str | None = None) -> list[Block]:
    """The fenced blocks of ``relative`` (a path from the repository root), of one language if given."""
    source = (ROOT / relative).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(source):
        line = source.count("\n", 0, match.start(2)) + 1
        found.append(Block(match.group(1), match.group(2), line))
    return [b for b in found if lang is None or b.lang == lang]


def section(relative: str, heading: str) -> str:
    """The text of a Markdown section (from its heading to the next heading of the same level or higher)."""
    source = (ROOT / relative).read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", source, re.M)
    if match is None:
        raise LookupError(f"no section {heading!r} in {relative}")
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(source, match.end())
    return source[match.end(): end.start() if end else len(source)]
