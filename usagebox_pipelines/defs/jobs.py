"""Jobs the schedules, sensors and `usagebox run` launch (the same ones everywhere)."""

import dagster as dg

from usagebox_pipelines.defs.partitions import daily, monthly

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=["raw_events", "events"],
    description="Ingest inbox files and fold them into `events`.",
)
daily_job = dg.define_asset_job(
    "daily_job",
    selection=["events", "usage_hourly"],
    partitions_def=daily,
    description="Bring `events` up to date, then rebuild every hour of the selected UTC days of "
    "`usage_hourly`.",
)
monthly_job = dg.define_asset_job(
    "monthly_job",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("raw_events", "events", "usage_hourly")
    - dg.AssetSelection.groups("close"),
    partitions_def=monthly,
    description="Monthly stages: usage_monthly and everything priced or reconciled per month.",
)
close_job = dg.define_asset_job(
    "close_job",
    selection=dg.AssetSelection.groups("close"),
    partitions_def=monthly,
    description="Month close: issue numbered, frozen invoices (needs approval).",
)

PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"


def day_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Tags that make one run materialise a range of daily partitions (single-run backfill)."""
    return {PARTITION_RANGE_START: first_key, PARTITION_RANGE_END: last_key}
