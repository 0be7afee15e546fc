"""Timestamps: ISO 8601 (with an offset or Z) or integer epoch milliseconds -> UTC epoch ms.

>>> parse_ts("2026-11-20T10:00:00Z")
1795168800000
>>> parse_ts("2026-11-20T11:00:00.5+01:00")
1795168800500
>>> parse_ts(1795168800000)
1795168800000
>>> parse_query_ts("2026-11-20")
1795132800000
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from .errors import BadRequest, quoted

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The largest duration a query may write, and the widest query clock: ``now`` +- a duration
#: stays within int64 (2**62 ms is about 146 million years).
MAX_DURATION_MS = 2**62 - 1
MAX_CLOCK_MS = 2**62


def check_clock(now: int) -> int:
    """``now`` as an int if it is a query clock the engine accepts (|now| <= 2**62 ms), else ValueError."""
    if isinstance(now, bool) or not -MAX_CLOCK_MS <= int(now) <= MAX_CLOCK_MS:
        raise ValueError(f"query clock now={now!r} is outside -2**62..2**62 epoch milliseconds")
    return int(now)


def parse_ts(value: object) -> int:
    """Convert an ISO 8601 string with offset/Z or an int epoch ms to int epoch ms (ValueError if bad)."""
    if isinstance(value, bool):
        raise ValueError("expected an ISO 8601 string or integer epoch milliseconds, got a boolean")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("epoch milliseconds out of the 64-bit range")
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) < 10:
            raise ValueError(f"malformed timestamp {quoted(value)}")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"malformed timestamp {quoted(value)} (expected ISO 8601 with offset or Z)") from None
        if moment.tzinfo is None:
            raise ValueError(f"timestamp {quoted(value)} has no offset or Z")
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise ValueError(f"expected an ISO 8601 string or integer epoch milliseconds, got {type(value).__name__}")


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_query_ts(value: object) -> int:
    """Like :func:`parse_ts`, and a date alone (``2026-11-01``) means midnight UTC (query literals, ``--now``)."""
    if isinstance(value, str) and _DATE_ONLY.fullmatch(value.strip()):
        try:
            return parse_ts(value.strip() + "T00:00:00Z")
        except ValueError:
            raise ValueError(f"malformed date {quoted(value)}") from None
    return parse_ts(value)


def format_ts(ms: int) -> str:
    """Epoch ms -> ISO 8601 UTC text with millisecond precision."""
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wall_clock_ms() -> int:
    """The current UTC time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def query_clock(now: int | None) -> int:
    """The clock of a query: the wall clock for None, else ``now`` (BadRequest past +-2**62 ms)."""
    if now is None:
        return wall_clock_ms()
    try:
        return check_clock(now)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None
