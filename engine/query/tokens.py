"""Tokenizer of the segment query language.

Tokens carry a ``kind``, the source ``text``, a decoded ``value`` and the 1-based ``column``
of their first character (counted from the start of the query text, newlines included).
Kinds: ``keyword`` (value: the upper-case keyword), ``name`` (identifier or double-quoted
name; value: the name), ``string`` (value: the decoded string), ``number`` (value: int or
float), ``duration`` (value: milliseconds), ``op`` (value: the operator) and ``eof``
(column = len(text) + 1).

A bare identifier that spells a keyword (any case) is always the keyword; a name that
collides with a keyword must be double-quoted: ``"count" > 3``.

>>> [(t.kind, t.value) for t in tokenize("age >= 30 AND name = 'O''Brien'")][:3]
[('name', 'age'), ('op', '>='), ('number', 30)]
>>> tokenize('did("my event", WITHIN 7d)')[5].value
604800000
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.errors import QueryError
from engine.timeparse import MAX_DURATION_MS

KEYWORDS = frozenset(
    "AND OR NOT IN BETWEEN IS NULL HAS ANY ALL TRUE FALSE NOW DID WHERE COUNT WITHIN SINCE "
    "BEFORE AFTER LAST CONSENTED SEGMENT SAMPLE SEQUENCE BUCKET SUM AVG MIN MAX THEN SPAN".split()
)

#: Duration unit suffix -> milliseconds.
DURATION_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

#: Operators, longest first so that ``<=`` wins over ``<``.
OPERATORS = ("!=", "<>", "<=", ">=", "=", "<", ">", "(", ")", ",", "-", "+")
#: Operators written in more than one way -> the spelling the AST uses.
OPERATOR_ALIASES = {"<>": "!="}

_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
#: A UTF-16 surrogate code point: a Python str may hold one, UTF-8 text cannot.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Token:
    """One lexical token: kind, source text, decoded value and 1-based column."""

    kind: str
    text: str
    value: object
    column: int


def is_identifier(name: str) -> bool:
    """True if ``name`` can be written bare: an identifier that is not a keyword."""
    return (
        bool(name)
        and name[0] in _IDENT_START
        and all(c in _IDENT_CHARS for c in name)
        and name.upper() not in KEYWORDS
    )


def tokenize(text: str) -> list[Token]:
    """Split query text into tokens, ending with one ``eof`` token; QueryError on bad input."""
    if not text.isascii():
        surrogate = _SURROGATE.search(text)
        if surrogate:
            raise QueryError("a lone surrogate is not a character (query text must be valid Unicode)",
                             surrogate.start() + 1, surrogate.group())
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in _IDENT_START:
            j = _scan_ident(text, i)
            word = text[i:j]
            upper = word.upper()
            if upper in KEYWORDS:
                tokens.append(Token("keyword", word, upper, i + 1))
            else:
                tokens.append(Token("name", word, word, i + 1))
            i = j
        elif c in _DIGITS:
            tok, i = _scan_number(text, i)
            tokens.append(tok)
        elif c == "'":
            value, j = _scan_quoted(text, i, "'", "string")
            tokens.append(Token("string", text[i:j], value, i + 1))
            i = j
        elif c == '"':
            value, j = _scan_quoted(text, i, '"', "name")
            if not value:
                raise QueryError("empty quoted name", i + 1, text[i:j])
            tokens.append(Token("name", text[i:j], value, i + 1))
            i = j
        else:
            for op in OPERATORS:
                if text.startswith(op, i):
                    tokens.append(Token("op", op, OPERATOR_ALIASES.get(op, op), i + 1))
                    i += len(op)
                    break
            else:
                raise QueryError("unexpected character", i + 1, c)
    tokens.append(Token("eof", "", None, n + 1))
    return tokens


def _scan_ident(text: str, i: int) -> int:
    j = i + 1
    while j < len(text) and text[j] in _IDENT_CHARS:
        j += 1
    return j


def _scan_quoted(text: str, i: int, quote: str, what: str) -> tuple[str, int]:
    """Decode a quoted string/name starting at ``text[i] == quote``; return (value, end)."""
    parts: list[str] = []
    j = i + 1
    while True:
        k = text.find(quote, j)
        if k < 0:
            raise QueryError(f"unterminated {what}", i + 1, text[i:])
        parts.append(text[j:k])
        if text.startswith(quote, k + 1):  # doubled quote -> one literal quote
            parts.append(quote)
            j = k + 2
        else:
            return "".join(parts), k + 1


def _scan_number(text: str, i: int) -> tuple[Token, int]:
    """Scan an int, a decimal (optional exponent) or a duration like ``7d``."""
    n = len(text)
    j = i
    while j < n and text[j] in _DIGITS:
        j += 1
    is_float = False
    if j + 1 < n and text[j] == "." and text[j + 1] in _DIGITS:
        is_float = True
        j += 1
        while j < n and text[j] in _DIGITS:
            j += 1
    if j < n and text[j] in "eE":
        k = j + 1
        if k < n and text[k] in "+-":
            k += 1
        if k < n and text[k] in _DIGITS:
            is_float = True
            j = k
            while j < n and text[j] in _DIGITS:
                j += 1
    if j < n and (text[j] in _IDENT_CHARS or text[j] == "."):
        # A unit suffix or garbage glued to the number.
        end = _scan_ident(text, j) if text[j] != "." else j + 1
        suffix = text[j:end]
        if not is_float and suffix in DURATION_UNITS:
            ms = int(text[i:j]) * DURATION_UNITS[suffix] if j - i <= 30 else MAX_DURATION_MS + 1
            if ms > MAX_DURATION_MS:
                raise QueryError("duration out of range (at most 2**62 - 1 ms)", i + 1, text[i:end])
            return Token("duration", text[i:end], ms, i + 1), end
        raise QueryError("invalid number or duration (units: s m h d w)", i + 1, text[i:end])
    word = text[i:j]
    if not is_float:
        try:
            return Token("number", word, int(word), i + 1), j
        except ValueError:  # more digits than int() accepts
            raise QueryError("number out of range", i + 1, word) from None
    value = float(word)
    if not math.isfinite(value):
        raise QueryError("number out of range", i + 1, word)
    return Token("number", word, value, i + 1), j
