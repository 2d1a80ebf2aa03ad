"""Billing months (`YYYY-MM`) as half-open UTC windows: the one parser every stage uses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta

from usagebox_pipelines.errors import UsageboxError

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class MonthError(UsageboxError, ValueError):
    """A month that is not `YYYY-MM` (a user error, and a ValueError for library callers)."""


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) in UTC."""
    match = _MONTH.match(month or "")
    if not match:
        raise MonthError(f"period must be YYYY-MM, got {month!r}")
    year, mon = int(match.group(1)), int(match.group(2))
    return datetime(year, mon, 1, tzinfo=UTC), datetime(
        year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC
    )


def shift_month(month: str, delta: int) -> str:
    """`YYYY-MM` moved by `delta` months."""
    start, _ = month_bounds(month)
    index = start.year * 12 + start.month - 1 + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def utc_days(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut at UTC midnights (nothing when the window is empty)."""
    cursor = start
    while cursor < end:
        midnight = datetime.combine(cursor.astimezone(UTC).date(), time(), UTC) + timedelta(days=1)
        yield cursor, min(midnight, end)
        cursor = min(midnight, end)
