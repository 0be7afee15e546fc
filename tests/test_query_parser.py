"""Tokenizer, parser and printer of the segment query language."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import QueryError
from engine.query import (
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
    parse,
    to_text,
)
from engine.query.tokens import KEYWORDS, tokenize

DAY = 86_400_000


def strict(value: object) -> object:
    """A comparable form that also distinguishes True/1/1.0 (plain == does not)."""
    if isinstance(value, (And, Or)):
        return (type(value).__name__, frozenset(strict(i) for i in value.items))
    if isinstance(value, Node):
        fields = tuple(strict(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare)
        return (type(value).__name__,) + fields
    if isinstance(value, tuple):
        return tuple(strict(v) for v in value)
    return (type(value).__name__, value)


def assert_parses(text: str, expected: Node) -> None:
    assert strict(parse(text)) == strict(expected)


def error_of(text: str) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse(text)
    return info.value


# -- tokenizer ---------------------------------------------------------------------------


def test_tokens_carry_kind_text_value_and_column() -> None:
    toks = tokenize("age >= 1.5e2 AND \"my \"\"x\"\"\" = 'O''Brien' OR w > 12h")
    assert [(t.kind, t.text, t.value, t.column) for t in toks] == [
        ("name", "age", "age", 1),
        ("op", ">=", ">=", 5),
        ("number", "1.5e2", 150.0, 8),
        ("keyword", "AND", "AND", 14),
        ("name", '"my ""x"""', 'my "x"', 18),
        ("op", "=", "=", 29),
        ("string", "'O''Brien'", "O'Brien", 31),
        ("keyword", "OR", "OR", 42),
        ("name", "w", "w", 45),
        ("op", ">", ">", 47),
        ("duration", "12h", 12 * 3_600_000, 49),
        ("eof", "", None, 52),
    ]


def test_keywords_are_case_insensitive_and_upper_cased_in_value() -> None:
    toks = tokenize("did Did DID within")
    assert [(t.kind, t.value) for t in toks[:-1]] == [("keyword", "DID")] * 3 + [("keyword", "WITHIN")]
    assert KEYWORDS == set(
        "AND OR NOT IN BETWEEN IS NULL HAS ANY ALL TRUE FALSE NOW DID WHERE COUNT WITHIN SINCE "
        "BEFORE AFTER LAST CONSENTED SEGMENT SAMPLE SEQUENCE BUCKET SUM AVG MIN MAX THEN SPAN".split()
    )


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30s", 30_000), ("30m", 1_800_000), ("12h", 43_200_000), ("7d", 7 * DAY), ("4w", 28 * DAY), ("0d", 0)],
)
def test_durations_are_milliseconds(text: str, ms: int) -> None:
    (tok, _eof) = tokenize(text)
    assert (tok.kind, tok.value) == ("duration", ms)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'abc", "unterminated string at column 8 near \"'abc\""),
        ('"abc = 1', "unterminated name at column 1 near '\"abc = 1'"),
        ("a = 1 ; b", "unexpected character at column 7 near ';'"),
        ("a = 7x", "invalid number or duration (units: s m h d w) at column 5 near '7x'"),
        ("a = 1.5d", "invalid number or duration (units: s m h d w) at column 5 near '1.5d'"),
        ("a = 7days", "invalid number or duration (units: s m h d w) at column 5 near '7days'"),
        ("a = 1e999", "number out of range at column 5 near '1e999'"),
        ('"" = 1', "empty quoted name at column 1 near '\"\"'"),
        ("a = 'é' AND é", "unexpected character at column 13 near 'é'"),
    ],
)
def test_tokenizer_errors_name_column_and_token(text: str, message: str) -> None:
    err = error_of(text)
    assert str(err) == message


# -- parser: exact ASTs ------------------------------------------------------------------


def test_contract_example() -> None:
    text = """country IN ('FR', 'BE') AND age BETWEEN 25 AND 40
  AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)
  AND NOT DID(purchase, WITHIN 7d)
  AND CONSENTED(email)"""
    assert_parses(
        text,
        And(
            (
                In("country", ("FR", "BE")),
                Between("age", 25, 40),
                Did("cart_abandoned", Compare("cart_value", ">", 50), ">=", 2, within_ms=7 * DAY),
                Not(Did("purchase", within_ms=7 * DAY)),
                Consented("email"),
            )
        ),
    )


def test_every_node_has_its_first_token_column() -> None:
    node = parse("(a = 1 OR b IS NULL) AND NOT DID(e WHERE p = 'x')")
    assert isinstance(node, And)
    assert node.pos == 1
    ors, nots = node.items
    assert (ors.pos, [i.pos for i in ors.items]) == (2, [2, 11])
    assert (nots.pos, nots.item.pos, nots.item.where.pos) == (26, 30, 42)


def test_and_or_precedence_and_flattening() -> None:
    a, b, c, d = (Compare(n, "=", 1) for n in "abcd")
    assert_parses("a = 1 OR b = 1 AND c = 1 OR d = 1", Or((a, And((b, c)), d)))
    assert_parses("a = 1 AND (b = 1 AND c = 1) AND d = 1", And((a, b, c, d)))
    assert_parses("(a = 1 OR b = 1) OR (c = 1)", Or((a, b, c)))
    assert_parses("((a = 1))", a)
    assert_parses("NOT NOT a = 1", Not(Not(a)))
    assert_parses("NOT (a = 1 AND b = 1)", Not(And((a, b))))


def test_attribute_predicates() -> None:
    assert_parses("x != 'a'", Compare("x", "!=", "a"))
    assert_parses("x NOT IN (1, 2.5, TRUE)", In("x", (1, 2.5, True), negated=True))
    assert_parses("x not between -3 and 3", Between("x", -3, 3, negated=True))
    assert_parses("x IS NOT NULL", IsNull("x", negated=True))
    assert_parses("x is null", IsNull("x"))
    assert_parses("tags HAS 'a'", Has("tags", "one", ("a",)))
    assert_parses("tags HAS ANY ('a', 'b')", Has("tags", "any", ("a", "b")))
    assert_parses("tags has all('a')", Has("tags", "all", ("a",)))
    assert_parses("x = false", Compare("x", "=", False))
    assert_parses("all", All())


def test_literals_negative_numbers_escapes_and_now() -> None:
    assert_parses("x = -5", Compare("x", "=", -5))
    assert_parses("x > - 2.5", Compare("x", ">", -2.5))
    assert_parses("x < 1e3", Compare("x", "<", 1000.0))
    assert_parses("x = 'it''s'", Compare("x", "=", "it's"))
    assert_parses("x = ''", Compare("x", "=", ""))
    assert_parses("t > now", Compare("t", ">", Now(0)))
    assert_parses("t > NOW - 7d", Compare("t", ">", Now(-7 * DAY)))
    assert_parses("t < Now + 2h", Compare("t", "<", Now(2 * 3_600_000)))
    assert_parses("t >= '2026-11-20T10:00:00Z'", Compare("t", ">=", "2026-11-20T10:00:00Z"))


def test_quoted_names_allow_keywords_and_any_text() -> None:
    assert_parses('"count" > 2', Compare("count", ">", 2))
    assert_parses('"my ""odd"" name" = 1', Compare('my "odd" name', "=", 1))
    assert_parses('DID("all" WHERE "last" = 1, AFTER LAST "where")', Did("all", Compare("last", "=", 1), after_last="where"))
    assert_parses('CONSENTED("not")', Consented("not"))


def test_did_options() -> None:
    text = "did(purchase, count < 3, since '2026-01-01T00:00:00Z', before now - 1d, after last cart_abandoned)"
    assert_parses(
        text,
        Did("purchase", None, "<", 3, since="2026-01-01T00:00:00Z", before=Now(-DAY), after_last="cart_abandoned"),
    )
    assert_parses("DID(e, SINCE 1700000000000, BEFORE NOW)", Did("e", since=1_700_000_000_000, before=Now(0)))
    assert_parses("DID(e, COUNT = 0)", Did("e", count_op="=", count_n=0))
    assert_parses("DID(e WHERE NOT p IS NULL OR q = 1)", Did("e", Or((Not(IsNull("p")), Compare("q", "=", 1)))))


def test_segment_and_sample() -> None:
    assert_parses("SEGMENT('vip ''gold''')", SegmentRef("vip 'gold'"))
    assert_parses("SAMPLE(12.5)", Sample(12.5, 0))
    assert_parses("sample(50, 42)", Sample(50, 42))


# -- parser: errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty query", 1),
        ("   ", "empty query", 4),
        ("country IN ('FR',", "unexpected end of query", 18),
        ("age", "unexpected end of query", 4),
        ("(a = 1", "unexpected end of query", 7),
        ("a = 1 b = 2", "unexpected token", 7),
        ("a = 1)", "unexpected token", 6),
        ("(a = 1 b", "expected ')'", 8),
        ("a 5", "expected an operator", 3),
        ("a AND b = 1", "expected an operator", 3),
        ("a NOT NULL", "expected IN or BETWEEN", 7),
        ("a = b", "expected a literal", 5),
        ("a = 7d", "expected a literal", 5),
        ("a = --1", "expected a number after '-'", 6),
        ("t > NOW - 5", "expected a duration like 7d", 11),
        ("a IN 1", "expected '('", 6),
        ("a BETWEEN 1 OR 2", "expected AND", 13),
        ("AND a = 1", "unexpected token", 1),
        ("count > 2", 'count is a keyword; write a name spelled like a keyword double-quoted: "count"', 1),
        ("a = 1 AND last IS NULL", 'last is a keyword; write a name spelled like a keyword double-quoted: "last"', 11),
        ("DID(purchase, AFTER LAST count)", 'count is a keyword; write a name spelled like a keyword double-quoted: "count"',
         26),
        ("CONSENTED(all)", 'all is a keyword; write a name spelled like a keyword double-quoted: "all"', 11),
        ("a <> 1 AND (b = 2", "unexpected end of query", 18),
        ("(a = 1) AND AND (b = 2)", "unexpected token", 13),
        ("a = 1 OR OR NOT b = 2", "unexpected token", 10),
        ("AND > 2", 'AND is a keyword; write a name spelled like a keyword double-quoted: "AND"', 1),
        ("NULL IS NULL", 'NULL is a keyword; write a name spelled like a keyword double-quoted: "NULL"', 1),
        ("DID(e, COUNT >= 1, COUNT >= 2)", "duplicate COUNT option", 20),
        ("DID(e, WITHIN 1d, WITHIN 2d)", "duplicate WITHIN option", 19),
        ("DID(e, COUNT >= -1)", "COUNT needs a non-negative integer", 17),
        ("DID(e, COUNT >= 1.5)", "COUNT needs a non-negative integer", 17),
        ("DID(e, COUNT 2)", "expected a comparison operator after COUNT", 14),
        ("DID(e, WITHIN 7)", "expected a duration like 7d", 15),
        ("DID(e, SINCE 1.5)", "expected an ISO 8601 string, epoch milliseconds or NOW", 14),
        ("DID(e, AFTER cart)", "expected LAST", 14),
        ("DID(e, FOO)", "expected COUNT, SUM, AVG, MIN, MAX, WITHIN, SINCE, BEFORE or AFTER LAST", 8),
        ("DID(e WHERE DID(f))", "DID is not allowed inside WHERE", 13),
        ("DID(e WHERE CONSENTED(email))", "CONSENTED is not allowed inside WHERE", 13),
        ("DID('e')", "expected an event name", 5),
        ("SEGMENT(vip)", "expected a segment name string", 9),
        ("SAMPLE('x')", "SAMPLE needs a percentage number", 8),
        ("SAMPLE(5, 1.5)", "SAMPLE seed must be an integer", 11),
        ("x HAS ANY 'a'", "expected '('", 11),
    ],
)
def test_syntax_errors_name_column_and_token(text: str, message: str, column: int) -> None:
    err = error_of(text)
    assert err.column == column
    assert str(err).startswith(f"{message} at column {column}")
    if message != "unexpected end of query" and message != "empty query":
        assert err.token == text[column - 1 : column - 1 + len(err.token)]


def test_unexpected_end_message_is_exact() -> None:
    assert str(error_of("country IN ('FR',")) == "unexpected end of query at column 18"
    assert str(error_of("a = 1 b")) == "unexpected token at column 7 near 'b'"


# -- printer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("b = 1 and a = 1", "a = 1 AND b = 1"),
        ("(b = 1 or a = 1) and c = 1", "(a = 1 OR b = 1) AND c = 1"),
        ("a = 1 or b = 1 and c = 1", "a = 1 OR b = 1 AND c = 1"),
        ("not (a = 1 or b = 1)", "NOT (a = 1 OR b = 1)"),
        ('"count" > 2 and "a b" = \'x\'\'y\'', '"a b" = \'x\'\'y\' AND "count" > 2'),
        ("x = true and y != -1.5", "x = TRUE AND y != -1.5"),
        ("t > now - 168h", "t > NOW - 1w"),
        ("t > now + 90m", "t > NOW + 90m"),
        ("t > now - 0d", "t > NOW"),
        ("x not in (1, 2)", "x NOT IN (1, 2)"),
        ("tags has any ('a')", "tags HAS ANY ('a')"),
        ("did(e where a = 1, count >= 1, within 48h, after last f)", "DID(e WHERE a = 1, WITHIN 2d, AFTER LAST f)"),
        ("did(e, since '2026-01-01T00:00:00Z', before 5)", "DID(e, SINCE '2026-01-01T00:00:00Z', BEFORE 5)"),
        ("sample(5) or sample(5, 0) or sample(1.5, 9)", "SAMPLE(1.5, 9) OR SAMPLE(5) OR SAMPLE(5)"),
        ("segment('x') and consented(email)", "CONSENTED(email) AND SEGMENT('x')"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert to_text(parse(text)) == canonical
    assert strict(parse(canonical)) == strict(parse(text))


def test_printer_flattens_hand_built_nesting() -> None:
    a, b, c = (Compare(n, "=", 1) for n in "abc")
    assert to_text(And((And((c, b)), a))) == "a = 1 AND b = 1 AND c = 1"


# -- round trip over generated ASTs --------------------------------------------------------

_names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(sorted(KEYWORDS) + [k.lower() for k in KEYWORDS]),
    st.text(min_size=1, max_size=8),
)
_durations = st.integers(0, 10_000).flatmap(lambda n: st.sampled_from([n * 1000, n * 60_000, n * 86_400_000]))
_nows = st.builds(Now, st.integers(-10_000, 10_000).map(lambda n: n * 60_000))
_literals = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    _nows,
)
_ops = st.sampled_from(("=", "!=", "<", "<=", ">", ">="))
_value_lists = st.lists(_literals, min_size=1, max_size=4).map(tuple)


def _leaves(in_where: bool) -> st.SearchStrategy[Node]:
    base = [
        st.just(All()),
        st.builds(Compare, _names, _ops, _literals),
        st.builds(In, _names, _value_lists, st.booleans()),
        st.builds(Between, _names, _literals, _literals, st.booleans()),
        st.builds(IsNull, _names, st.booleans()),
        st.builds(lambda n, v: Has(n, "one", (v,)), _names, _literals),
        st.builds(Has, _names, st.sampled_from(("any", "all")), _value_lists),
    ]
    if not in_where:
        whens = st.one_of(st.none(), st.text(max_size=8), st.integers(-(2**40), 2**40), _nows)
        base += [
            st.builds(
                Did,
                _names,
                st.none() | _trees(in_where=True),
                _ops,
                st.integers(0, 2**63),
                st.none() | _durations,
                whens,
                whens,
                st.none() | _names,
            ),
            st.builds(Consented, _names),
            st.builds(SegmentRef, st.text(max_size=8)),
            st.builds(Sample, st.floats(-1e6, 1e6) | st.integers(-1000, 1000), st.integers(-5, 2**64 - 1)),
        ]
    return st.one_of(base)


def _combine(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def chain(cls: type) -> st.SearchStrategy[Node]:
        # Parsed And/Or have >= 2 operands, none of the same class (the parser flattens).
        items = children.filter(lambda n: not isinstance(n, cls))
        return st.lists(items, min_size=2, max_size=4).map(lambda xs: cls(tuple(xs)))

    return st.one_of(st.builds(Not, children), chain(And), chain(Or))


def _trees(in_where: bool) -> st.SearchStrategy[Node]:
    return st.recursive(_leaves(in_where), _combine, max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(_trees(in_where=False))
def test_round_trip_parse_of_canonical_text(node: Node) -> None:
    text = to_text(node)
    reparsed = parse(text)
    assert strict(reparsed) == strict(node)
    assert reparsed == node
    assert to_text(reparsed) == text


_query_alphabet = st.sampled_from(
    list("()=!<>,-+'\" _.0123456789aeINTdw\n") + ["AND", "OR", "NOT", "DID", "NOW", "7d", "x", "IN", "HAS", "ALL"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_query_alphabet, max_size=30).map(" ".join) | st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_query_error(text: str) -> None:
    try:
        node = parse(text)
    except QueryError as err:
        assert err.column is not None and 1 <= err.column <= len(text) + 1
    else:
        assert parse(to_text(node)) == node
