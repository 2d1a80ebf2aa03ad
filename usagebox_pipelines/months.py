"""Billing months (`YYYY-MM`) as half-open UTC windows: the one parser every stage uses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

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


@dataclass(frozen=True)
class Period:
    """A billing period: the half-open UTC window [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.utcoffset() != timedelta(0) or self.end.utcoffset() != timedelta(0):
            raise ValueError("a Period is in UTC")
        if self.end <= self.start:
            raise ValueError(f"empty period [{self.start}, {self.end})")

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def zone_period(month: str, zone: str | None = None) -> Period:
    """Month `YYYY-MM` in IANA zone `zone` (None or "UTC": the UTC month) as a UTC Period:
    [local midnight of the 1st, local midnight of the next 1st), DST by zoneinfo."""
    start, end = month_bounds(month)
    if zone is None or zone == "UTC":
        return Period(start, end)
    tz = ZoneInfo(zone)
    local = [datetime(t.year, t.month, 1, tzinfo=tz).astimezone(UTC) for t in (start, end)]
    return Period(local[0], local[1])


def fractional_offset(zone: str, month: str) -> timedelta | None:
    """The first UTC offset of `zone` that is not a whole number of hours at any instant of
    local month `month` (None when every offset is whole hours). usage_hourly is rolled up by
    UTC hour, so a boundary at +05:30 would fall inside an hour."""
    tz = ZoneInfo(zone)
    start, end = month_bounds(month)
    cursor = start - timedelta(days=1)  # covers the local month on either side of UTC
    while cursor <= end + timedelta(days=1):
        offset = cursor.astimezone(tz).utcoffset() or timedelta(0)
        if offset % timedelta(hours=1):
            return offset
        cursor += timedelta(hours=1)
    return None
