"""Binding parsed queries to a schema: name resolution, type checks, normalisation."""
from __future__ import annotations

from types import SimpleNamespace as NS

import dataclasses

import pytest

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
    bind,
    parse,
    to_text,
)

DAY = 86_400_000
T_2026_11_20 = 1_795_168_800_000  # 2026-11-20T10:00:00Z

SCHEMA = NS(
    attributes={
        "country": NS(type="category"),
        "age": NS(type="int"),
        "cart_value": NS(type="float"),
        "vip": NS(type="bool"),
        "interests": NS(type="tags"),
        "signup_at": NS(type="timestamp"),
        "count": NS(type="int"),
    },
    events={
        "page_view": NS(properties={"category": "category"}),
        "cart_abandoned": NS(properties={"cart_value": "float", "category": "category"}),
        "purchase": NS(properties={"amount": "float", "category": "category", "at": "timestamp"}),
    },
    consents=("email", "sms", "push", "ads"),
)


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


def bound(text: str) -> Node:
    return bind(parse(text), SCHEMA)


def assert_binds(text: str, expected: Node) -> None:
    assert strict(bound(text)) == strict(expected)


def error_of(text: str) -> QueryError:
    with pytest.raises(QueryError) as info:
        bound(text)
    return info.value


def test_contract_example_binds_unchanged() -> None:
    text = """country IN ('FR', 'BE') AND age BETWEEN 25 AND 40
  AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d)
  AND NOT DID(purchase, WITHIN 7d)
  AND CONSENTED(email)"""
    assert_binds(
        text,
        And(
            (
                In("country", ("BE", "FR")),
                Between("age", 25, 40),
                Did("cart_abandoned", Compare("cart_value", ">", 50), ">=", 2, within_ms=7 * DAY),
                Not(Did("purchase", within_ms=7 * DAY)),
                Consented("email"),
            )
        ),
    )


def test_type_mismatch_names_the_literal_column() -> None:
    err = error_of("age = 'x'")
    assert (err.column, err.token) == (7, "'x'")
    assert str(err) == "type mismatch: attribute 'age' is int, got a string at column 7 near \"'x'\""


@pytest.mark.parametrize(
    ("text", "message", "column", "token"),
    [
        ("nope = 1", "unknown attribute 'nope'", 1, "nope"),
        ("age > 3 AND nope IS NULL", "unknown attribute 'nope'", 13, "nope"),
        ("DID(refund)", "unknown event type 'refund'", 5, "refund"),
        ("DID(purchase, AFTER LAST refund)", "unknown event type 'refund'", 26, "refund"),
        ("DID(purchase WHERE age > 3)", "unknown property 'age' of event 'purchase'", 20, "age"),
        ("CONSENTED(fax)", "unknown consent purpose 'fax'", 11, "fax"),
        ("country = 3", "type mismatch: attribute 'country' is category, got a number", 11, "3"),
        ("country IN ('FR', TRUE)", "type mismatch: attribute 'country' is category, got a boolean", 19, "TRUE"),
        ("age = TRUE", "type mismatch: attribute 'age' is int, got a boolean", 7, "TRUE"),
        ("age BETWEEN 1 AND '9'", "type mismatch: attribute 'age' is int, got a string", 19, "'9'"),
        ("age > NOW", "type mismatch: NOW needs a timestamp, attribute 'age' is int", 7, "NOW"),
        ("age = 9223372036854775808", "integer out of the 64-bit range for attribute 'age'", 7, "9223372036854775808"),
        ("cart_value < 'x'", "type mismatch: attribute 'cart_value' is float, got a string", 14, "'x'"),
        ("vip = 1", "type mismatch: attribute 'vip' is bool, got a number", 7, "1"),
        ("vip < TRUE", "operator '<' is not allowed on bool attribute 'vip'", 5, "<"),
        ("vip BETWEEN FALSE AND TRUE", "BETWEEN is not allowed on bool attribute 'vip'", 5, "BETWEEN"),
        ("vip NOT BETWEEN FALSE AND TRUE", "BETWEEN is not allowed on bool attribute 'vip'", 5, "NOT"),
        ("interests = 'a'", "tags attribute 'interests' supports only HAS, HAS ANY, HAS ALL and IS [NOT] NULL", 11, "="),
        ("interests IN ('a')", "tags attribute 'interests' supports only HAS, HAS ANY, HAS ALL and IS [NOT] NULL", 11, "IN"),
        ("interests BETWEEN 'a' AND 'b'", "tags attribute 'interests' supports only HAS, HAS ANY, HAS ALL and IS [NOT] NULL", 11, "BETWEEN"),
        ("age HAS 'a'", "HAS needs a tags attribute, attribute 'age' is int", 5, "HAS"),
        ("country HAS ANY ('a')", "HAS needs a tags attribute, attribute 'country' is category", 9, "HAS"),
        ("interests HAS 5", "type mismatch: attribute 'interests' is tags, got a number", 15, "5"),
        ("interests HAS ALL ('a', NOW)", "type mismatch: NOW needs a timestamp, attribute 'interests' is tags", 25, "NOW"),
        ("signup_at > 'yesterday'", "invalid timestamp for attribute 'signup_at': malformed timestamp 'yesterday'", 13, "'yesterday'"),
        ("signup_at > '2026-11-20T10:00:00'", "invalid timestamp for attribute 'signup_at': timestamp '2026-11-20T10:00:00' has no offset or Z", 13, "'2026-11-20T10:00:00'"),
        ("signup_at > 1.5", "type mismatch: attribute 'signup_at' is timestamp, got a number", 13, "1.5"),
        ("signup_at = FALSE", "type mismatch: attribute 'signup_at' is timestamp, got a boolean", 13, "FALSE"),
        ("DID(purchase WHERE amount > 'x')", "type mismatch: property 'amount' of event 'purchase' is float, got a string", 29, "'x'"),
        ("DID(purchase WHERE at < 'soon')", "invalid timestamp for property 'at' of event 'purchase': malformed timestamp 'soon'", 25, "'soon'"),
        ("DID(purchase, SINCE 'soon')", "invalid SINCE time: malformed timestamp 'soon'", 21, "'soon'"),
        ("DID(purchase, BEFORE '2026-13-01T00:00:00Z')", "invalid BEFORE time", 22, "'2026-13-01T00:00:00Z'"),
        ("SAMPLE(100.5)", "SAMPLE percent must be between 0 and 100", 8, "100.5"),
        ("SAMPLE(-1)", "SAMPLE percent must be between 0 and 100", 8, "-1"),
        ("SAMPLE(5, -1)", "SAMPLE seed must be an integer in 0..2**64-1", 11, "-1"),
        ("SAMPLE(5, 18446744073709551616)", "SAMPLE seed must be an integer in 0..2**64-1", 11, "18446744073709551616"),
    ],
)
def test_binding_errors(text: str, message: str, column: int, token: str) -> None:
    err = error_of(text)
    assert str(err).startswith(message)
    assert (err.column, err.token) == (column, token)
    assert f"at column {column}" in str(err)


def test_category_allows_all_comparisons_with_strings() -> None:
    for op in ("=", "!=", "<", "<=", ">", ">="):
        assert_binds(f"country {op} 'FR'", Compare("country", op, "FR"))
    assert_binds("country NOT BETWEEN 'A' AND 'M'", Between("country", "A", "M", negated=True))


def test_numeric_literals_keep_their_type() -> None:
    assert_binds("age > 30.5", Compare("age", ">", 30.5))
    assert_binds("age >= -3", Compare("age", ">=", -3))
    assert_binds("cart_value <= 50", Compare("cart_value", "<=", 50))
    assert_binds("age BETWEEN 1 AND 2.5", Between("age", 1, 2.5))


def test_bool_equality_and_in() -> None:
    assert_binds("vip != TRUE", Compare("vip", "!=", True))
    assert_binds("vip NOT IN (TRUE, FALSE, TRUE)", In("vip", (False, True), negated=True))


def test_tags_predicates() -> None:
    assert_binds("interests HAS 'shoes'", Has("interests", "one", ("shoes",)))
    assert_binds("interests HAS ANY ('tech', 'shoes', 'tech')", Has("interests", "any", ("shoes", "tech")))
    assert_binds("interests HAS ALL ('tech', 'tech')", Has("interests", "one", ("tech",)))
    assert_binds("interests IS NOT NULL", IsNull("interests", negated=True))


def test_timestamps_become_epoch_ms() -> None:
    assert_binds("signup_at >= '2026-11-20T10:00:00Z'", Compare("signup_at", ">=", T_2026_11_20))
    assert_binds("signup_at < '2026-11-20T11:00:00+01:00'", Compare("signup_at", "<", T_2026_11_20))
    assert_binds("signup_at = 1795168800000", Compare("signup_at", "=", T_2026_11_20))
    assert_binds("signup_at > NOW - 30d", Compare("signup_at", ">", Now(-30 * DAY)))
    assert_binds(
        "signup_at BETWEEN '2026-11-20T10:00:00Z' AND NOW",
        Between("signup_at", T_2026_11_20, Now(0)),
    )
    assert_binds(
        "signup_at IN (NOW, 5, '2026-11-20T10:00:00Z', 5)",
        In("signup_at", (5, T_2026_11_20, Now(0))),
    )


def test_did_times_and_where_scope() -> None:
    assert_binds(
        "DID(purchase WHERE amount > 10 AND at < '2026-11-20T10:00:00Z', SINCE '2026-11-20T10:00:00Z',"
        " BEFORE NOW - 1d, COUNT = 0, AFTER LAST cart_abandoned)",
        Did(
            "purchase",
            And((Compare("amount", ">", 10), Compare("at", "<", T_2026_11_20))),
            "=",
            0,
            since=T_2026_11_20,
            before=Now(-DAY),
            after_last="cart_abandoned",
        ),
    )
    assert_binds("DID(page_view, SINCE 0, BEFORE 1000)", Did("page_view", since=0, before=1000))
    assert_binds('"count" > 1 AND DID(page_view WHERE category = \'x\')', And((
        Compare("count", ">", 1), Did("page_view", Compare("category", "=", "x")),
    )))


def test_in_values_are_deduplicated_and_sorted() -> None:
    assert_binds("country IN ('FR', 'BE', 'FR', 'AT')", In("country", ("AT", "BE", "FR")))
    node = bound("age NOT IN (3, 1.5, 3, -2)")
    assert strict(node) == strict(In("age", (-2, 1.5, 3), negated=True))
    assert bound("age IN (2, 1)") == bound("age IN (1, 2, 1)")


def test_and_or_are_flattened_deduplicated_and_unwrapped() -> None:
    a, b, c = Compare("age", "=", 1), Compare("age", "=", 2), Compare("age", "=", 3)
    nested = And((And((a, b), pos=1), Or((c,), pos=1), a), pos=1)
    assert strict(bind(nested, SCHEMA)) == strict(And((a, b, c)))
    assert strict(bind(Or((Or((a, b)), Or((b, c)))), SCHEMA)) == strict(Or((a, b, c)))
    assert strict(bound("age = 1 AND age = 1")) == strict(a)


def test_sample_and_segment() -> None:
    assert_binds("SAMPLE(0)", Sample(0.0, 0))
    assert_binds("SAMPLE(100, 18446744073709551615)", Sample(100.0, 2**64 - 1))
    assert_binds("SEGMENT('best')", SegmentRef("best"))
    assert strict(bind(Sample(12, 3), SCHEMA)) == strict(Sample(12.0, 3))


def test_hand_built_nodes_are_checked_too() -> None:
    with pytest.raises(QueryError, match="COUNT needs a non-negative integer"):
        bind(Did("purchase", count_n=-1), SCHEMA)
    with pytest.raises(QueryError, match="DID is not allowed inside WHERE"):
        bind(Did("purchase", Did("page_view")), SCHEMA)
    with pytest.raises(QueryError, match="empty value list"):
        bind(In("age", ()), SCHEMA)


def test_binding_keeps_positions() -> None:
    node = bound("vip = TRUE AND signup_at > '2026-11-20T10:00:00Z'")
    assert isinstance(node, And)
    assert [item.pos for item in node.items] == [1, 16]
    assert node.pos == 1


def test_bound_queries_print_and_reparse() -> None:
    node = bound("signup_at > '2026-11-20T10:00:00Z' AND interests HAS ANY ('b', 'a') AND ALL")
    assert to_text(node) == "ALL AND interests HAS ANY ('a', 'b') AND signup_at > 1795168800000"
    assert strict(bind(parse(to_text(node)), SCHEMA)) == strict(node)


def test_binder_returns_all_and_is_null_unchanged() -> None:
    assert_binds("ALL", All())
    assert_binds("NOT country IS NULL", Not(IsNull("country")))
