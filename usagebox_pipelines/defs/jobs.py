"""Jobs the schedules, sensors and `usagebox run` launch (the same ones everywhere).

Each job is tagged with the lease its steps take (ADR 0012), so a deployment's run queue can
hold exclusive runs back instead of starting them only to wait on the lease
(`deploy/dagster.yaml`: one `usagebox/lease=exclusive` run at a time, one run per
`dagster/partition`). `hourly_job` is the one that fans out: one run per UTC day, any number at
once, each replacing only its day of `usage_hourly`.
"""

import dagster as dg

from usagebox_pipelines.defs.partitions import daily, monthly

LEASE_TAG = "usagebox/lease"
EXCLUSIVE_RUN = {LEASE_TAG: "exclusive"}
SHARED_RUN = {LEASE_TAG: "shared"}

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=["raw_events", "events"],
    description="Ingest inbox files and fold them into `events`.",
    tags=EXCLUSIVE_RUN,
)
daily_job = dg.define_asset_job(
    "daily_job",
    selection=["events", "usage_hourly"],
    partitions_def=daily,
    description="Bring `events` up to date, then rebuild every hour of the selected UTC days of "
    "`usage_hourly`.",
    tags=EXCLUSIVE_RUN,
)
hourly_job = dg.define_asset_job(
    "hourly_job",
    selection=["usage_hourly"],
    partitions_def=daily,
    description="Rebuild every hour of one UTC day of `usage_hourly` from `events` as it is; "
    "runs of different days go together (the shared lease; a backfill fans out by day).",
    tags=SHARED_RUN,
)
monthly_job = dg.define_asset_job(
    "monthly_job",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("raw_events", "events", "usage_hourly")
    - dg.AssetSelection.groups("close"),
    partitions_def=monthly,
    description="Monthly stages: usage_monthly and everything priced or reconciled per month.",
    tags=EXCLUSIVE_RUN,
)
close_job = dg.define_asset_job(
    "close_job",
    selection=dg.AssetSelection.groups("close"),
    partitions_def=monthly,
    description="Month close: issue numbered, frozen invoices (needs approval).",
    tags=EXCLUSIVE_RUN,
)

PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"


def day_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Tags that make one run materialise a range of daily partitions (single-run backfill)."""
    return {PARTITION_RANGE_START: first_key, PARTITION_RANGE_END: last_key}
