"""Benchmark segments: each in the segengine language, in hand-written DuckDB SQL and as a NumPy scan.

The three forms must give the same count on any dataset with the generator's schema
(loaders/generator.py: the built-in schema plus ``add_to_cart``). SQL reads the tables of
``baselines.DuckDBBaseline`` with the query clock as the named parameter ``$now``; a scan takes
a ``baselines.NumpyBaseline`` and the clock and returns a bool mask over the profiles.

Semantics the SQL has to spell out (docs/query-language.md):
- a comparison on NULL is false, and ``NOT q`` is the complement, so SQL ``NOT (x)`` is written
  ``(x) IS NOT TRUE`` (plain ``NOT`` would drop the NULL rows);
- only events with ``ts <= $now`` count; ``WITHIN d`` is ``$now - d < ts <= $now``,
  ``SINCE t`` is ``ts >= t``, ``BEFORE t`` is ``ts < t``;
- a COUNT condition that holds at zero includes profiles without any event (an anti-join);
- ``SAMPLE(p, seed)``: splitmix64(h ^ seed) % 10000 < round(100 p), h = the blake2b-64 of the id
  (stored as ``profiles.h``); the 64-bit wrap-around is done in UHUGEINT masked to 64 bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

#: The fixed query clock of the benchmarks (2026-09-21T14:13:20Z, a Monday).
NOW_MS = 1_790_000_000_000

Scan = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Query:
    """One benchmark segment in its three forms."""

    name: str
    kind: str  # "attr" (profile predicates only) or "events" (has DID)
    seg: str  # segengine query text
    sql: str  # DuckDB SQL returning one row holding the count; $now = the query clock
    scan: Scan  # scan(numpy_baseline, now) -> bool mask over the profiles
    note: str = ""


def iso(ms: int) -> str:
    """Epoch ms -> ISO 8601 UTC with milliseconds and Z."""
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _events(kind: str, *conds: str) -> str:
    """SQL: the pids of events of ``kind`` with ts <= now and ``conds`` (one row per event)."""
    where = " AND ".join((f"type = '{kind}'", "ts <= $now") + conds)
    return f"SELECT pid FROM events WHERE {where}"


def _within(days: float) -> str:
    return f"ts > $now - {int(days * DAY)}"


def _at_least(kind: str, n: int, *conds: str) -> str:
    """SQL: pids with at least ``n`` matching events."""
    return f"{_events(kind, *conds)} GROUP BY pid HAVING count(*) >= {n}"


def _sample_sql(seed: int, percent: float, columns: str, where: str) -> str:
    """SQL: count of profiles satisfying ``where`` (over ``columns``) that are in SAMPLE(percent, seed).

    splitmix64 in UHUGEINT, wrapped to 64 bits with ``& (2**64 - 1)``: a 128-bit ``% 2**64``
    is a software division and made this query ~250x slower.
    """
    m = "18446744073709551615::UHUGEINT"
    return f"""
WITH s0 AS (SELECT {columns}, (xor(h, {seed}::UBIGINT)::UHUGEINT + 11400714819323198485::UHUGEINT) & {m} AS x
            FROM profiles WHERE {where}),
     s1 AS (SELECT {columns}, (xor(x, x >> 30) * 13787848793156543929::UHUGEINT) & {m} AS x FROM s0),
     s2 AS (SELECT {columns}, (xor(x, x >> 27) * 10723151780598845931::UHUGEINT) & {m} AS x FROM s1)
SELECT count(*) FROM s2 WHERE xor(x, x >> 31)::UBIGINT % 10000 < {int(round(percent * 100))}"""


def attribute_queries(now_ms: int = NOW_MS) -> list[Query]:
    """Segments over profile attributes and consents only."""
    lo_iso, hi_iso = iso(now_ms - 400 * DAY + 123), iso(now_ms - 200 * DAY)
    lo_ms, hi_ms = (now_ms - 400 * DAY + 123), (now_ms - 200 * DAY)
    return [
        Query(
            "fr_email", "attr",
            "country = 'FR' AND CONSENTED(email)",
            "SELECT count(*) FROM profiles WHERE country = 'FR' AND consent_email",
            lambda b, now: b.cat_in("country", "FR") & b.consent("email"),
            "2 bitmaps: the planning/dispatch overhead probe",
        ),
        Query(
            "contract_attrs", "attr",
            "country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 AND CONSENTED(email)",
            "SELECT count(*) FROM profiles WHERE country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 AND consent_email",
            lambda b, now: b.cat_in("country", "FR", "BE") & b.between("age", 25, 40) & b.consent("email"),
            "the attribute half of the contract example",
        ),
        Query(
            "vip_big_cart", "attr",
            "vip = TRUE AND cart_value > 100",
            "SELECT count(*) FROM profiles WHERE vip = true AND cart_value > 100",
            lambda b, now: b.cmp("vip", "=", True) & b.cmp("cart_value", ">", 100),
        ),
        Query(
            "tags_any_young_sms", "attr",
            "interests HAS ANY ('shoes', 'fashion') AND age BETWEEN 18 AND 30 AND CONSENTED(sms)",
            "SELECT count(*) FROM profiles WHERE list_has_any(interests, ['shoes', 'fashion']) "
            "AND age BETWEEN 18 AND 30 AND consent_sms",
            lambda b, now: b.has_any("interests", "shoes", "fashion") & b.between("age", 18, 30) & b.consent("sms"),
        ),
        Query(
            "tech_not_us_gb", "attr",
            "interests HAS 'tech' AND NOT country IN ('US', 'GB')",
            "SELECT count(*) FROM profiles WHERE list_contains(interests, 'tech') "
            "AND (country IN ('US', 'GB')) IS NOT TRUE",
            lambda b, now: b.has_any("interests", "tech") & ~b.cat_in("country", "US", "GB"),
            "NOT keeps null countries",
        ),
        Query(
            "recent_signup_push", "attr",
            "signup_at > NOW - 365d AND CONSENTED(push) AND country IN ('DE', 'FR', 'ES', 'IT')",
            f"SELECT count(*) FROM profiles WHERE signup_at > $now - {365 * DAY} AND consent_push "
            "AND country IN ('DE', 'FR', 'ES', 'IT')",
            lambda b, now: b.cmp("signup_at", ">", now - 365 * DAY) & b.consent("push")
            & b.cat_in("country", "DE", "FR", "ES", "IT"),
        ),
        Query(
            "null_age_or_vip_no_ads", "attr",
            "age IS NULL OR (vip = TRUE AND NOT CONSENTED(ads))",
            "SELECT count(*) FROM profiles WHERE age IS NULL OR (vip = true AND NOT consent_ads)",
            lambda b, now: b.is_null("age") | (b.cmp("vip", "=", True) & ~b.consent("ads")),
        ),
        Query(
            "or_of_ands", "attr",
            "(country = 'NL' AND age >= 50) OR (country = 'SE' AND cart_value > 200) "
            "OR interests HAS ALL ('travel', 'photography')",
            "SELECT count(*) FROM profiles WHERE (country = 'NL' AND age >= 50) "
            "OR (country = 'SE' AND cart_value > 200) OR list_has_all(interests, ['travel', 'photography'])",
            lambda b, now: (b.cat_in("country", "NL") & b.cmp("age", ">=", 50))
            | (b.cat_in("country", "SE") & b.cmp("cart_value", ">", 200))
            | b.has_all("interests", "travel", "photography"),
        ),
        Query(
            "sample_email_young", "attr",
            "SAMPLE(10, 42) AND CONSENTED(email) AND age < 35",
            _sample_sql(42, 10, "pid", "consent_email AND age < 35"),
            lambda b, now: b.sample(10, 42) & b.consent("email") & b.cmp("age", "<", 35),
        ),
        Query(
            "six_predicates", "attr",
            "country IN ('FR', 'DE', 'GB') AND age BETWEEN 30 AND 55 AND cart_value > 40 AND vip = FALSE "
            "AND interests HAS ANY ('tech', 'gaming', 'music') AND CONSENTED(email)",
            "SELECT count(*) FROM profiles WHERE country IN ('FR', 'DE', 'GB') AND age BETWEEN 30 AND 55 "
            "AND cart_value > 40 AND vip = false AND list_has_any(interests, ['tech', 'gaming', 'music']) "
            "AND consent_email",
            lambda b, now: b.cat_in("country", "FR", "DE", "GB") & b.between("age", 30, 55)
            & b.cmp("cart_value", ">", 40) & b.cmp("vip", "=", False)
            & b.has_any("interests", "tech", "gaming", "music") & b.consent("email"),
        ),
        Query(
            "neq_notnull_not_books", "attr",
            "country != 'FR' AND cart_value IS NOT NULL AND NOT interests HAS 'books'",
            "SELECT count(*) FROM profiles WHERE country <> 'FR' AND cart_value IS NOT NULL "
            "AND list_contains(interests, 'books') IS NOT TRUE",
            lambda b, now: b.cat_cmp("country", "!=", "FR") & ~b.is_null("cart_value")
            & ~b.has_any("interests", "books"),
            "!= excludes nulls; NOT HAS includes null and empty tag sets; a broad result",
        ),
        Query(
            "not_between_not_vip", "attr",
            "age NOT BETWEEN 25 AND 60 AND NOT vip = TRUE AND CONSENTED(email)",
            "SELECT count(*) FROM profiles WHERE age NOT BETWEEN 25 AND 60 AND (vip = true) IS NOT TRUE "
            "AND consent_email",
            lambda b, now: b.valid["age"] & ~b.between("age", 25, 60) & ~b.cmp("vip", "=", True) & b.consent("email"),
            "NOT BETWEEN excludes null ages, NOT (vip = TRUE) includes null vip",
        ),
        Query(
            "country_range_old_signup", "attr",
            "country < 'D' AND signup_at <= NOW - 730d",
            f"SELECT count(*) FROM profiles WHERE country < 'D' AND signup_at <= $now - {730 * DAY}",
            lambda b, now: b.cat_cmp("country", "<", "D") & b.cmp("signup_at", "<=", now - 730 * DAY),
            "category order is by code point",
        ),
        Query(
            "signup_iso_window", "attr",
            f"signup_at BETWEEN '{lo_iso}' AND '{hi_iso}' AND CONSENTED(ads)",
            f"SELECT count(*) FROM profiles WHERE signup_at BETWEEN {lo_ms} AND {hi_ms} AND consent_ads",
            lambda b, now: b.between("signup_at", lo_ms, hi_ms) & b.consent("ads"),
            "ISO 8601 literals with milliseconds",
        ),
    ]


def event_queries(now_ms: int = NOW_MS) -> list[Query]:
    """Segments with behavioural (DID) predicates."""
    since_ms, before_ms = now_ms - 20 * DAY, now_ms - 10 * DAY
    return [
        Query(
            "viewed_7d", "events",
            "DID(page_view, WITHIN 7d)",
            f"SELECT count(DISTINCT pid) FROM ({_events('page_view', _within(7))})",
            lambda b, now: b.did("page_view", now, within=7 * DAY),
        ),
        Query(
            "abandoned_twice_7d", "events",
            "DID(cart_abandoned, COUNT >= 2, WITHIN 7d)",
            f"SELECT count(*) FROM ({_at_least('cart_abandoned', 2, _within(7))})",
            lambda b, now: b.did("cart_abandoned", now, within=7 * DAY, count=(">=", 2)),
        ),
        Query(
            "big_cart_abandoned", "events",
            "DID(cart_abandoned WHERE cart_value > 50)",
            f"SELECT count(DISTINCT pid) FROM ({_events('cart_abandoned', 'cart_value > 50')})",
            lambda b, now: b.did("cart_abandoned", now, where=lambda ev, p: ev.cmp("cart_value", p, ">", 50)),
        ),
        Query(
            "browsed_not_bought_30d", "events",
            "DID(page_view, WITHIN 30d) AND NOT DID(purchase, WITHIN 30d)",
            f"SELECT count(*) FROM ({_events('page_view', _within(30))} EXCEPT {_events('purchase', _within(30))})",
            lambda b, now: b.did("page_view", now, within=30 * DAY) & ~b.did("purchase", now, within=30 * DAY),
        ),
        Query(
            "abandoned_no_buy_since", "events",
            "DID(cart_abandoned) AND DID(purchase, AFTER LAST cart_abandoned, COUNT = 0)",
            "WITH last_abandon AS (SELECT pid, max(ts) AS t FROM events "
            "WHERE type = 'cart_abandoned' AND ts <= $now GROUP BY pid) "
            "SELECT count(*) FROM last_abandon l WHERE NOT EXISTS (SELECT 1 FROM events e "
            "WHERE e.type = 'purchase' AND e.pid = l.pid AND e.ts > l.t AND e.ts <= $now)",
            lambda b, now: b.did("cart_abandoned", now)
            & b.did("purchase", now, after_last="cart_abandoned", count=("=", 0)),
            "the contract's 'abandoned a cart and bought nothing since'",
        ),
        Query(
            "lapsed_viewers", "events",
            "DID(page_view, SINCE NOW - 30d, BEFORE NOW - 7d) AND NOT DID(page_view, WITHIN 7d)",
            f"SELECT count(*) FROM ({_events('page_view', f'ts >= $now - {30 * DAY}', f'ts < $now - {7 * DAY}')} "
            f"EXCEPT {_events('page_view', _within(7))})",
            lambda b, now: b.did("page_view", now, since=now - 30 * DAY, before=now - 7 * DAY)
            & ~b.did("page_view", now, within=7 * DAY),
        ),
        Query(
            "repeat_buyers_abs_window", "events",
            f"DID(purchase, SINCE '{iso(since_ms)}', BEFORE {before_ms}, COUNT >= 2)",
            f"SELECT count(*) FROM ({_at_least('purchase', 2, f'ts >= {since_ms}', f'ts < {before_ms}')})",
            lambda b, now: b.did("purchase", now, since=since_ms, before=before_ms, count=(">=", 2)),
            "absolute ISO and epoch-ms instants",
        ),
        Query(
            "fr_vip_big_purchase_30d", "events",
            "country = 'FR' AND vip = TRUE AND DID(purchase WHERE amount > 100 AND category IN "
            "('electronics', 'jewelry'), WITHIN 30d)",
            "SELECT count(*) FROM profiles WHERE country = 'FR' AND vip = true AND pid IN ("
            + _events("purchase", "amount > 100", "category IN ('electronics', 'jewelry')", _within(30)) + ")",
            lambda b, now: b.cat_in("country", "FR") & b.cmp("vip", "=", True)
            & b.did("purchase", now, within=30 * DAY,
                    where=lambda ev, p: ev.cmp("amount", p, ">", 100) & ev.cat_in("category", p, "electronics", "jewelry")),
        ),
        Query(
            "contract_example", "events",
            "country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
            "AND DID(cart_abandoned WHERE cart_value > 50, COUNT >= 2, WITHIN 7d) "
            "AND NOT DID(purchase, WITHIN 7d) AND CONSENTED(email)",
            "SELECT count(*) FROM profiles WHERE country IN ('FR', 'BE') AND age BETWEEN 25 AND 40 "
            f"AND pid IN ({_at_least('cart_abandoned', 2, 'cart_value > 50', _within(7))}) "
            f"AND pid NOT IN ({_events('purchase', _within(7))}) AND consent_email",
            lambda b, now: b.cat_in("country", "FR", "BE") & b.between("age", 25, 40)
            & b.did("cart_abandoned", now, within=7 * DAY, count=(">=", 2),
                    where=lambda ev, p: ev.cmp("cart_value", p, ">", 50))
            & ~b.did("purchase", now, within=7 * DAY) & b.consent("email"),
            "the contract's example, verbatim",
        ),
        Query(
            "seniors_few_views_14d", "events",
            "age > 60 AND DID(page_view, COUNT < 3, WITHIN 14d)",
            f"SELECT count(*) FROM profiles WHERE age > 60 AND pid NOT IN ({_at_least('page_view', 3, _within(14))})",
            lambda b, now: b.cmp("age", ">", 60) & b.did("page_view", now, within=14 * DAY, count=("<", 3)),
            "a count that holds at zero includes profiles with no events",
        ),
        Query(
            "non_book_buyers", "events",
            "DID(purchase WHERE NOT category = 'books', COUNT >= 3)",
            "SELECT count(*) FROM (" + _at_least("purchase", 3, "(category = 'books') IS NOT TRUE") + ")",
            lambda b, now: b.did("purchase", now, count=(">=", 3),
                                 where=lambda ev, p: ~ev.cat_in("category", p, "books")),
            "NOT inside WHERE keeps events with a null category",
        ),
        Query(
            "cart_no_checkout_12h", "events",
            "DID(add_to_cart, WITHIN 12h) AND NOT DID(purchase, WITHIN 12h) AND CONSENTED(push)",
            "SELECT count(*) FROM profiles WHERE consent_push "
            f"AND pid IN ({_events('add_to_cart', f'ts > $now - {12 * HOUR}')}) "
            f"AND pid NOT IN ({_events('purchase', f'ts > $now - {12 * HOUR}')})",
            lambda b, now: b.did("add_to_cart", now, within=12 * HOUR) & ~b.did("purchase", now, within=12 * HOUR)
            & b.consent("push"),
        ),
        Query(
            "buyers_or_engaged_vips", "events",
            "DID(purchase, WITHIN 7d) OR (vip = TRUE AND DID(page_view, COUNT >= 5, WITHIN 30d))",
            f"SELECT count(*) FROM profiles WHERE pid IN ({_events('purchase', _within(7))}) "
            f"OR (vip = true AND pid IN ({_at_least('page_view', 5, _within(30))}))",
            lambda b, now: b.did("purchase", now, within=7 * DAY)
            | (b.cmp("vip", "=", True) & b.did("page_view", now, within=30 * DAY, count=(">=", 5))),
        ),
        Query(
            "abandoned_null_or_toys_30d", "events",
            "DID(cart_abandoned WHERE cart_value IS NULL OR category IN ('toys', 'books'), WITHIN 30d)",
            "SELECT count(DISTINCT pid) FROM ("
            + _events("cart_abandoned", "(cart_value IS NULL OR category IN ('toys', 'books'))", _within(30)) + ")",
            lambda b, now: b.did("cart_abandoned", now, within=30 * DAY,
                                 where=lambda ev, p: ev.is_null("cart_value", p) | ev.cat_in("category", p, "toys", "books")),
        ),
    ]


def _bucket_sql(seed: int, lo: int, hi: int, where: str) -> str:
    """SQL: count of profiles satisfying ``where`` whose BUCKET(seed) lies in [lo, hi] (as _sample_sql)."""
    m = "18446744073709551615::UHUGEINT"
    return f"""
WITH s0 AS (SELECT (xor(h, {seed}::UBIGINT)::UHUGEINT + 11400714819323198485::UHUGEINT) & {m} AS x
            FROM profiles WHERE {where}),
     s1 AS (SELECT (xor(x, x >> 30) * 13787848793156543929::UHUGEINT) & {m} AS x FROM s0),
     s2 AS (SELECT (xor(x, x >> 27) * 10723151780598845931::UHUGEINT) & {m} AS x FROM s1)
SELECT count(*) FROM s2 WHERE xor(x, x >> 31)::UBIGINT % 10000 BETWEEN {lo} AND {hi}"""


def _sequence_sql(types: tuple[str, ...], span: int, within: int) -> str:
    """SQL: profiles with events of ``types`` in strictly increasing time, the last at most ``span``
    after the first, all in the window: per first event, the earliest next step (greedy), by self-joins."""
    window = f"ts <= $now AND ts > $now - {within}"
    steps = [f"s0 AS (SELECT pid, ts AS t0, ts AS t FROM events WHERE type = '{types[0]}' AND {window})"]
    for i, kind in enumerate(types[1:], start=1):
        steps.append(
            f"s{i} AS (SELECT a.pid, a.t0, min(e.ts) AS t FROM s{i - 1} a JOIN events e ON e.pid = a.pid "
            f"AND e.type = '{kind}' AND e.ts <= $now AND e.ts > $now - {within} "
            f"AND e.ts > a.t AND e.ts <= a.t0 + {span} GROUP BY a.pid, a.t0)")
    return f"WITH {', '.join(steps)} SELECT count(DISTINCT pid) FROM s{len(types) - 1}"


def behaviour_queries(now_ms: int = NOW_MS) -> list[Query]:
    """Segments with aggregates, sequences and buckets (docs/query-language.md, section 5 of the contract)."""
    return [
        Query(
            "spent_over_100_30d", "events",
            "DID(purchase, SUM(amount) > 100, WITHIN 30d)",
            f"SELECT count(*) FROM (SELECT pid FROM events WHERE type = 'purchase' AND ts <= $now AND {_within(30)} "
            "GROUP BY pid HAVING coalesce(sum(amount), 0) > 100)",
            lambda b, now: b.did_aggregate("purchase", now, "amount", "sum", ">", 100, within=30 * DAY),
            "SUM of no values is 0: only buyers can exceed 100",
        ),
        Query(
            "fr_be_avg_cart_14d", "events",
            "country IN ('FR', 'BE') AND DID(cart_abandoned, AVG(cart_value) > 80, COUNT >= 2, WITHIN 14d)",
            "SELECT count(*) FROM profiles WHERE country IN ('FR', 'BE') AND pid IN (SELECT pid FROM events "
            f"WHERE type = 'cart_abandoned' AND ts <= $now AND {_within(14)} GROUP BY pid "
            "HAVING count(*) >= 2 AND avg(cart_value) > 80)",
            lambda b, now: b.cat_in("country", "FR", "BE")
            & b.did_aggregate("cart_abandoned", now, "cart_value", "avg", ">", 80, within=14 * DAY)
            & b.did("cart_abandoned", now, within=14 * DAY, count=(">=", 2)),
            "AVG ignores nulls; a profile with only null values has no average",
        ),
        Query(
            "funnel_1d_30d", "events",
            "SEQUENCE(page_view THEN cart_abandoned THEN purchase, SPAN 1d, WITHIN 30d)",
            _sequence_sql(("page_view", "cart_abandoned", "purchase"), DAY, 30 * DAY),
            lambda b, now: b.sequence(("page_view", "cart_abandoned", "purchase"), now, span=DAY, within=30 * DAY),
            "strictly increasing times, the last at most a day after the first",
        ),
        Query(
            "variant_a_email", "attr",
            "BUCKET(42) BETWEEN 1000 AND 5499 AND CONSENTED(email)",
            _bucket_sql(42, 1000, 5499, "consent_email"),
            lambda b, now: b.bucket_between(42, 1000, 5499) & b.consent("email"),
            "one kept bitmap per (seed, range)",
        ),
    ]


def all_queries(now_ms: int = NOW_MS) -> list[Query]:
    """Every benchmark segment, attribute ones first."""
    return attribute_queries(now_ms) + event_queries(now_ms) + behaviour_queries(now_ms)
