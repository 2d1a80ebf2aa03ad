"""Stages `usage_hourly` and `usage_monthly`: replace exactly the hours or month asked."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from usagebox_pipelines.catalog import (
    HOUR_BUILDS,
    USAGE_HOURLY,
    USAGE_MONTHLY,
)
from usagebox_pipelines.months import month_bounds, utc_days
from usagebox_pipelines.pricing import Accounts
from usagebox_pipelines.rollups.aggregate import rollup_hourly, rollup_monthly
from usagebox_pipelines.shards import SHARD_ROWS, WHOLE_MONTH, MonthShard, in_shard
from usagebox_pipelines.stages.events import (
    events_frame,
)
from usagebox_pipelines.stages.month_shards import replace_shard_rows, writes_month_shard
from usagebox_pipelines.storage import DeltaStore, writes_partition


@writes_partition("usage_hourly")
def build_usage_hourly(
    store: DeltaStore, start: datetime, end: datetime, run_id: str = "cli"
) -> int:
    """Replace exactly the hours [start, end) of `usage_hourly` and record them as built.

    The window is rolled up one UTC day at a time (a day's events are one `event_date`
    partition) and committed in runs of whole days of about `SHARD_ROWS` rows, each commit
    replacing its days' hours and recording them in `hour_builds`. delta-rs holds a write's
    rows in memory until it commits, so memory is bounded by that budget, not by the month a
    backfill asks for, and a month costs a few commits, not one per day. A reader sees each
    run of days either as before or rebuilt; after a crash the rerun rebuilds what is left.
    Holds the lease shared (ADR 0012): builds of other days run at the same time, never beside
    ingest or the events fold, so `events` does not move under the build and `built_at` is
    later than every event it counted."""
    events = events_frame(store)
    built = 0
    pending: list[pl.DataFrame] = []
    since = start
    for day_start, day_end in utc_days(start, end):
        pending.append(rollup_hourly(events, day_start, day_end))
        if day_end == end or sum(f.height for f in pending) >= SHARD_ROWS:
            rows = pl.concat(pending)
            _commit_hours(store, rows, since, day_end, run_id)
            built += rows.height
            pending, since = [], day_end
    return built


def _commit_hours(
    store: DeltaStore, rows: pl.DataFrame, start: datetime, end: datetime, run_id: str
) -> None:
    """`rows` as the hours [start, end) of `usage_hourly`, then those hours as built."""
    meta = {
        "run_id": run_id,
        "stage": "usage_hourly",
        "from": start.isoformat(),
        "to": end.isoformat(),
    }
    store.replace_partition(USAGE_HOURLY, rows, hour=slice(start, end), metadata=meta)
    hours = pl.datetime_range(start, end, "1h", closed="left", time_zone="UTC", eager=True)
    builds = pl.DataFrame({"hour": hours}).with_columns(
        built_at=pl.lit(datetime.now(UTC)), run_id=pl.lit(run_id)
    )
    store.replace_partition(HOUR_BUILDS, builds, hour=slice(start, end))


@writes_month_shard("usage_monthly")
def build_usage_monthly(
    store: DeltaStore,
    month: str,
    run_id: str = "cli",
    *,
    shard: MonthShard = WHOLE_MONTH,
    accounts: Accounts | None = None,
) -> int:
    """Replace one month of `usage_monthly` (or its month shard's accounts, whose roots come
    from `accounts`) from the hourly rollup of its hours."""
    hourly = store.scan(USAGE_HOURLY)
    root = accounts.root if accounts is not None else (lambda account: account)
    written: list[str] = []
    if not shard.whole:
        start, end = month_bounds(month)
        month_rows = hourly.filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        present = month_rows.select("account_id").unique().collect(engine="streaming")
        written = shard.owned(present.get_column("account_id"), root)
        hourly = hourly.filter(in_shard(written))
    rows = rollup_monthly(hourly, month)
    meta = {"run_id": run_id, "stage": "usage_monthly", "month": month}
    replace_shard_rows(
        store, USAGE_MONTHLY, rows, shard=shard, root=root, written=written, metadata=meta,
        month=month,
    )  # fmt: skip
    return rows.height
