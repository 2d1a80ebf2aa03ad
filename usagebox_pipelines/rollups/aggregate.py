"""Hourly and monthly usage rollups (pure Polars, lazy in, eager out).

Only events with status `ok` count: originals and applied corrections (in their original's
hour). Equal dimension sets group together because `dimensions` is canonical JSON.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.schemas import QTY, ROLLUP_KEYS, USAGE_HOURLY, USAGE_MONTHLY, conform


def rollup_hourly(events: pl.LazyFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """`usage_hourly` rows for hours in [start, end)."""
    rows = (
        events.filter(
            # event_date first: prunes the partitions of `events` before reading any file
            (pl.col("event_date") >= start.date())
            & (pl.col("event_date") <= end.date())
            & (pl.col("hour") >= start)
            & (pl.col("hour") < end)
            & (pl.col("status") == "ok")
        )
        .group_by([*ROLLUP_KEYS, "dimensions", "hour"])
        .agg(sum=pl.col("quantity").sum().cast(QTY), count=pl.len().cast(pl.Int64))
        .collect(engine="streaming")
    )
    return conform(rows, USAGE_HOURLY).sort([*ROLLUP_KEYS, "dimensions", "hour"], nulls_last=True)


def rollup_monthly(hourly: pl.LazyFrame, month: str) -> pl.DataFrame:
    """`usage_monthly` rows for one month (YYYY-MM) from the hourly rollup of its hours."""
    start, end = month_bounds(month)
    rows = (
        hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        .group_by(ROLLUP_KEYS)
        .agg(sum=pl.col("sum").sum().cast(QTY), count=pl.col("count").sum().cast(pl.Int64))
        .with_columns(month=pl.lit(month))
        .collect(engine="streaming")
    )
    return conform(rows, USAGE_MONTHLY).sort(ROLLUP_KEYS, nulls_last=True)
