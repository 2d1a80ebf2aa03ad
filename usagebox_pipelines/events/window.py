"""The plausible event-time window: events outside it are quarantined at ingest, never billed.

One setting decides both ends of what the pipeline accepts and where Dagster partitions start:

- `USAGEBOX_MIN_EVENT_TIME` (RFC 3339 or `YYYY-MM-DD`, default `2024-01-01T00:00:00Z`): the
  earliest accepted event time, truncated to its UTC hour. It is *also* the first hourly
  partition (and its month the first monthly partition). Tying the two together is the point:
  an accepted event can never fall before the first partition, so `events_inside_partitions`
  holds by construction and a close is never blocked by an event no partition can hold.
  The default is the pipeline's historical partition start, not an arbitrary "year 2000": an
  hourly partitions definition starting in 2000 would carry ~230,000 partitions (slow Dagster UI,
  enormous backfill ranges) for history no home has. A home that really has older usage sets the
  variable earlier, and its partitions extend to match (set it before `dagster dev` / the CLI
  starts: partitions are defined at import time).
- `USAGEBOX_MAX_FUTURE_DAYS` (default 7): events more than this many days after the moment of
  ingest are quarantined (clock skew tolerance; `9999-12-31` is a bug in the sender, not usage).

Both bounds are half-open like every window here: accepted when `min <= timestamp < now + days`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from usagebox_pipelines.errors import UsageboxError

DEFAULT_MIN_EVENT_TIME = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE_DAYS = 7


def min_event_time() -> datetime:
    """The first accepted event hour (UTC) = the first hourly partition."""
    text = os.environ.get("USAGEBOX_MIN_EVENT_TIME", "").strip()
    if not text:
        return DEFAULT_MIN_EVENT_TIME
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise UsageboxError(
            f"USAGEBOX_MIN_EVENT_TIME={text!r}: expected an RFC 3339 time or YYYY-MM-DD"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def max_future_days() -> int:
    text = os.environ.get("USAGEBOX_MAX_FUTURE_DAYS", "").strip()
    if not text:
        return DEFAULT_MAX_FUTURE_DAYS
    try:
        days = int(text)
    except ValueError as exc:
        raise UsageboxError(f"USAGEBOX_MAX_FUTURE_DAYS={text!r}: expected a whole number") from exc
    if days < 0:
        raise UsageboxError(f"USAGEBOX_MAX_FUTURE_DAYS={text!r}: must not be negative")
    return days


def event_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """[earliest, latest) accepted event time for an ingest running at `now`."""
    now = now or datetime.now(UTC)
    return min_event_time(), now + timedelta(days=max_future_days())
